//! Where a model runs and in what precision: `--device` and `--dtype`.
//!
//! `auto` picks the first GPU when this build has CUDA and a GPU answers, else the
//! CPU. bf16 is the GPU default and f32 the CPU default: bf16 halves the memory
//! and uses the GPU's tensor cores, while the CPU's matmul kernels are fastest in
//! f32. Under bf16, norms, softmaxes, log-probs, losses, the KL and the optimiser
//! (master weights and moments) stay in f32 (`Llama::compute_in`).

use super::load::{load, Loaded};
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The compute precision a user can choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats throughout.
    F32,
    /// bfloat16 weights and activations; sums, outputs and the optimiser in f32.
    Bf16,
}

impl Precision {
    /// The candle dtype of the weights and activations.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }

    /// The default on `device`: bf16 on a GPU, f32 on the CPU.
    pub fn default_for(device: &Device) -> Self {
        if device.is_cpu() {
            Precision::F32
        } else {
            Precision::Bf16
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

/// A device and compute precision.
#[derive(Debug, Clone)]
pub struct Placement {
    /// Where tensors live.
    pub device: Device,
    /// What weights and activations are computed in.
    pub precision: Precision,
}

impl Default for Placement {
    fn default() -> Self {
        Self { device: Device::Cpu, precision: Precision::F32 }
    }
}

impl Placement {
    /// Resolves `--device` (`auto`, `cpu`, `cuda`, `cuda:N`) and `--dtype` (the
    /// device's default when `None`).
    pub fn resolve(device: &str, precision: Option<Precision>) -> anyhow::Result<Self> {
        let device = parse_device(device)?;
        let precision = precision.unwrap_or_else(|| Precision::default_for(&device));
        Ok(Self { device, precision })
    }

    /// Loads a model for inference: weights stored and computed in the precision.
    pub fn load(&self, path: &Path) -> anyhow::Result<Loaded> {
        load(path, self.precision.dtype(), &self.device)
    }

    /// [`Self::load`] with a LoRA adapter directory applied when given.
    pub fn load_with(&self, path: &Path, adapter: Option<&Path>) -> anyhow::Result<Loaded> {
        super::load::load_with_adapter(path, adapter, self.precision.dtype(), &self.device)
    }

    /// The device's name as `--device` spells it (`cpu`, `cuda:N`).
    pub fn device_name(&self) -> String {
        device_name(&self.device)
    }
}

/// `cpu` or `cuda:N`.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Parses a device name; `auto` is the first GPU when one answers, else the CPU.
pub fn parse_device(spec: &str) -> anyhow::Result<Device> {
    let index = match spec {
        "cpu" => return Ok(Device::Cpu),
        "auto" => return Ok(first_gpu().unwrap_or(Device::Cpu)),
        "cuda" => Some(0),
        s => s.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()),
    };
    let Some(index) = index else { anyhow::bail!("--device {spec}: expected auto, cpu, cuda or cuda:N") };
    gpu(index).map_err(|why| anyhow::anyhow!("--device {spec}: {why}"))
}

/// The first GPU, when this build has CUDA and the driver finds one.
fn first_gpu() -> Option<Device> {
    gpu(0).ok()
}

#[cfg(feature = "cuda")]
fn gpu(index: usize) -> Result<Device, String> {
    Device::new_cuda(index).map_err(|e| {
        // candle appends a backtrace to driver errors: keep the error's own line
        let e = e.to_string().lines().next().unwrap_or_default().to_string();
        if e.contains("STUB_LIBRARY") || e.contains("NO_DEVICE") {
            format!("no usable NVIDIA GPU on this machine (the CUDA driver says: {e})")
        } else {
            format!("cannot open the GPU: {e}")
        }
    })
}

#[cfg(not(feature = "cuda"))]
fn gpu(_index: usize) -> Result<Device, String> {
    Err("this build has no GPU support (build it with scripts/build-cuda.sh)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_defaults_follow_the_device() {
        let cpu = Placement::resolve("cpu", None).unwrap();
        assert!(cpu.device.is_cpu());
        assert_eq!(cpu.precision, Precision::F32);
        assert_eq!(Placement::resolve("cpu", Some(Precision::Bf16)).unwrap().precision, Precision::Bf16);
        assert_eq!(cpu.device_name(), "cpu");
        let bad = Placement::resolve("gpu0", None).unwrap_err().to_string();
        assert!(bad.contains("expected auto, cpu, cuda or cuda:N"), "{bad}");
        if !cfg!(feature = "cuda") {
            assert!(Placement::resolve("auto", None).unwrap().device.is_cpu());
            let no_gpu = Placement::resolve("cuda:1", None).unwrap_err().to_string();
            assert!(no_gpu.contains("no GPU support"), "{no_gpu}");
        }
    }
}
