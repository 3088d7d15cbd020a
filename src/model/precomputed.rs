//! A forward result computed outside a custom op and handed to it once: the
//! pattern of spo's ops with hand-written backwards (`frozen_linear`,
//! `fused_logprob`), whose forwards are ordinary tensor code and whose custom op
//! only attaches the gradient path.

use candle_core::{CpuStorage, Result, Shape, Storage, Tensor};
use std::sync::Mutex;

/// The result, taken (not kept) by the op's forward so the graph holds one copy.
pub struct Precomputed(Mutex<Option<Tensor>>);

impl Precomputed {
    /// Wraps `out` (made contiguous).
    pub fn new(out: Tensor) -> Result<Self> {
        Ok(Self(Mutex::new(Some(out.contiguous()?))))
    }

    fn take(&self) -> Result<Tensor> {
        let out = self.0.lock().map_err(|_| candle_core::Error::Msg("precomputed result: poisoned".into()))?.take();
        out.ok_or_else(|| candle_core::Error::Msg("precomputed result: the op's forward ran twice".into()))
    }

    /// The result's CPU storage and shape (for `cpu_fwd`).
    pub fn cpu(&self) -> Result<(CpuStorage, Shape)> {
        let out = self.take()?;
        let (storage, layout) = out.storage_and_layout();
        match &*storage {
            Storage::Cpu(s) if layout.start_offset() == 0 => Ok((s.clone(), layout.shape().clone())),
            _ => candle_core::bail!("precomputed result: not a whole CPU tensor"),
        }
    }

    /// The result's CUDA storage and shape (for `cuda_fwd`).
    #[cfg(feature = "cuda")]
    pub fn cuda(&self) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let out = self.take()?;
        let (storage, layout) = out.storage_and_layout();
        match &*storage {
            Storage::Cuda(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
            _ => candle_core::bail!("precomputed result: not a CUDA tensor"),
        }
    }
}

/// The `cpu_fwd` and `cuda_fwd` of a custom op whose result is its
/// `out: Precomputed` field, one `storage layout` name pair per input.
macro_rules! precomputed_forward {
    ($($s:ident $l:ident),+) => {
        fn cpu_fwd(
            &self,
            $($s: &candle_core::CpuStorage, $l: &candle_core::Layout),+
        ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
            $(let _ = ($s, $l);)+
            self.out.cpu()
        }

        #[cfg(feature = "cuda")]
        fn cuda_fwd(
            &self,
            $($s: &candle_core::CudaStorage, $l: &candle_core::Layout),+
        ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
            $(let _ = ($s, $l);)+
            self.out.cuda()
        }
    };
}
pub(crate) use precomputed_forward;

/// The largest absolute elementwise difference of two tensors, as f64 (tests of
/// the hand-written backwards against the composed ops).
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a.to_dtype(candle_core::DType::F64).unwrap() - b.to_dtype(candle_core::DType::F64).unwrap()).unwrap();
    d.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
}
