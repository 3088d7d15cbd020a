//! A llama-architecture decoder written for candle autograd.
//!
//! Only differentiable primitives are used (composed RMSNorm, `ops::softmax`,
//! composed RoPE, an additive causal mask): candle's fused ops drop gradients
//! silently (shared/notes/engine.md). Weights are [`Var`]s named as in Hugging Face
//! checkpoints; inference detaches them so no graph is recorded.

use super::config::LlamaConfig;
use super::decode_linear::{DecodeLinear, MAX_ROWS};
use super::frozen_linear::{frozen_linear, lora_linear};
use super::fused_attention::attention;
use super::fused_elementwise::swiglu;
use super::fused_kl::{linear_kl, Reference};
use super::fused_logprob::linear_logprob;
use super::fused_norm::rms_norm;
use super::lora::Lora;
use super::rope::Rope;
use candle_core::{DType, Device, Result, Tensor, Var, D};
use candle_nn::ops::log_softmax;

/// One decoder block's weights.
#[derive(Debug, Clone)]
struct Block {
    attn_norm: Var,
    wq: Var,
    wk: Var,
    wv: Var,
    wo: Var,
    ffn_norm: Var,
    w_gate: Var,
    w_up: Var,
    w_down: Var,
}

/// Per-layer key/value cache for incremental decoding, `[B, KV, T, head_dim]`.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map_or(0, |(k, _)| k.dim(2).unwrap_or(0))
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the rows of `other` after this cache's, left-padding the shorter of
    /// the two with zeros (masked by the caller's pad counts) so their lengths
    /// match: continuous batching, where a new sequence joins running ones.
    /// Returns the padding added in front of (this cache's rows, `other`'s rows).
    pub fn append_rows(&mut self, other: KvCache) -> Result<(usize, usize)> {
        if self.layers.is_empty() {
            *self = other;
            return Ok((0, 0));
        }
        let (a, b) = (self.len(), other.len());
        let pad_front = |t: &Tensor, n: usize| -> Result<Tensor> {
            if n == 0 {
                return Ok(t.clone());
            }
            let (rows, heads, _, hd) = t.dims4()?;
            let zeros = Tensor::zeros((rows, heads, n, hd), t.dtype(), t.device())?;
            Tensor::cat(&[&zeros, t], 2)
        };
        let (grow_self, grow_other) = (b.saturating_sub(a), a.saturating_sub(b));
        for (mine, theirs) in self.layers.iter_mut().zip(other.layers) {
            if let (Some((k, v)), Some((k2, v2))) = (mine.as_mut(), theirs) {
                *k = Tensor::cat(&[&pad_front(k, grow_self)?, &pad_front(&k2, grow_other)?], 0)?;
                *v = Tensor::cat(&[&pad_front(v, grow_self)?, &pad_front(&v2, grow_other)?], 0)?;
            }
        }
        Ok((grow_self, grow_other))
    }

    /// Drops the first `n` positions of every row (padding that no row needs any more).
    pub fn trim_front(&mut self, n: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        for (k, v) in self.layers.iter_mut().flatten() {
            let len = k.dim(2)?;
            *k = k.narrow(2, n, len - n)?.contiguous()?;
            *v = v.narrow(2, n, len - n)?.contiguous()?;
        }
        Ok(())
    }

    /// Keeps only the batch rows in `rows` (finished sequences dropped).
    pub fn select_rows(&mut self, rows: &Tensor) -> Result<()> {
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.index_select(rows, 0)?;
            *v = v.index_select(rows, 0)?;
        }
        Ok(())
    }
}

/// The decoder.
#[derive(Debug, Clone)]
pub struct Llama {
    config: LlamaConfig,
    embed: Var,
    blocks: Vec<Block>,
    norm: Var,
    lm_head: Option<Var>,
    rope: Rope,
    dtype: DType,
    device: Device,
    /// LoRA adapters: when present they train and every base weight is frozen.
    lora: Option<Lora>,
}

/// A weight: tracked for training, detached for inference.
fn w(v: &Var, track: bool) -> Tensor {
    if track {
        v.as_tensor().clone()
    } else {
        v.as_tensor().detach()
    }
}

/// The rotary embedding of `config`, rotations in `dtype`.
fn rope_of(config: &LlamaConfig, dtype: DType) -> Rope {
    let c = config;
    Rope::new(c.head_dim(), c.max_position_embeddings, c.rope_theta, c.rope_scaling.as_ref(), dtype)
}

/// Whether `dtype` is a 16-bit float, whose sums (norms, softmax, log-softmax) are
/// taken in f32.
fn is_half(dtype: DType) -> bool {
    matches!(dtype, DType::BF16 | DType::F16)
}

/// The dtype sums and outputs are computed in: f32 for 16-bit compute, else the
/// compute dtype itself (f64 in exact tests).
pub fn accumulation_dtype(compute: DType) -> DType {
    if is_half(compute) {
        DType::F32
    } else {
        compute
    }
}

/// `x @ wᵀ` for `x: [..., in]`, `w: [out, in]`. Untracked f32 calls with few rows
/// (decoding steps) take the weight-streaming kernel.
fn linear(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let inner = dims[dims.len() - 1];
    let rows = x.elem_count() / inner;
    let x2 = x.reshape((rows, inner))?;
    let fast = rows <= MAX_ROWS
        && !x.track_op()
        && !weight.track_op()
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && x.device().is_cpu()
        && weight.is_contiguous();
    let y = if fast { x2.contiguous()?.apply_op2_no_bwd(weight, &DecodeLinear)? } else { x2.matmul(&weight.t()?)? };
    let mut out = dims;
    *out.last_mut().expect("rank ≥ 1") = weight.dim(0)?;
    y.reshape(out)
}

/// The names and shapes of every weight, in a fixed order (Hugging Face names).
pub fn weight_shapes(c: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let (d, f, hd) = (c.hidden_size, c.intermediate_size, c.head_dim());
    let kv = c.num_key_value_heads * hd;
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![c.vocab_size, d])];
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        out.extend([
            (format!("{p}.input_layernorm.weight"), vec![d]),
            (format!("{p}.self_attn.q_proj.weight"), vec![c.num_attention_heads * hd, d]),
            (format!("{p}.self_attn.k_proj.weight"), vec![kv, d]),
            (format!("{p}.self_attn.v_proj.weight"), vec![kv, d]),
            (format!("{p}.self_attn.o_proj.weight"), vec![d, c.num_attention_heads * hd]),
            (format!("{p}.post_attention_layernorm.weight"), vec![d]),
            (format!("{p}.mlp.gate_proj.weight"), vec![f, d]),
            (format!("{p}.mlp.up_proj.weight"), vec![f, d]),
            (format!("{p}.mlp.down_proj.weight"), vec![d, f]),
        ]);
    }
    out.push(("model.norm.weight".to_string(), vec![d]));
    if !c.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![c.vocab_size, d]));
    }
    out
}

impl Llama {
    /// Builds the model from named tensors (Hugging Face names and half-split RoPE
    /// layout); `get` returns the tensor for a name. Shapes are checked.
    pub fn from_tensors(
        config: LlamaConfig,
        dtype: DType,
        device: &Device,
        mut get: impl FnMut(&str) -> anyhow::Result<Tensor>,
    ) -> anyhow::Result<Self> {
        config.validate()?;
        let mut vars = std::collections::HashMap::new();
        for (name, shape) in weight_shapes(&config) {
            let t = get(&name)?;
            anyhow::ensure!(
                t.dims() == shape.as_slice(),
                "tensor {name} has shape {:?}, the configuration implies {shape:?}",
                t.dims()
            );
            vars.insert(name, Var::from_tensor(&t.to_dtype(dtype)?.to_device(device)?)?);
        }
        let mut take = |n: String| vars.remove(&n).expect("listed by weight_shapes");
        let blocks = (0..config.num_hidden_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                Block {
                    attn_norm: take(format!("{p}.input_layernorm.weight")),
                    wq: take(format!("{p}.self_attn.q_proj.weight")),
                    wk: take(format!("{p}.self_attn.k_proj.weight")),
                    wv: take(format!("{p}.self_attn.v_proj.weight")),
                    wo: take(format!("{p}.self_attn.o_proj.weight")),
                    ffn_norm: take(format!("{p}.post_attention_layernorm.weight")),
                    w_gate: take(format!("{p}.mlp.gate_proj.weight")),
                    w_up: take(format!("{p}.mlp.up_proj.weight")),
                    w_down: take(format!("{p}.mlp.down_proj.weight")),
                }
            })
            .collect();
        let embed = take("model.embed_tokens.weight".into());
        let norm = take("model.norm.weight".into());
        let lm_head = (!config.tie_word_embeddings).then(|| take("lm_head.weight".into()));
        let rope = rope_of(&config, dtype);
        Ok(Self { config, embed, blocks, norm, lm_head, rope, dtype, device: device.clone(), lora: None })
    }

    /// A randomly initialised model (normal, std 0.02; norms at 1), for tests.
    pub fn random(config: LlamaConfig, seed: u64, dtype: DType, device: &Device) -> anyhow::Result<Self> {
        use rand::SeedableRng;
        use rand_distr::{Distribution, Normal};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let normal = Normal::new(0.0, 0.02).expect("valid std");
        let shapes: std::collections::HashMap<_, _> = weight_shapes(&config).into_iter().collect();
        Self::from_tensors(config, dtype, device, |name| {
            let shape = &shapes[name];
            let n: usize = shape.iter().product();
            let v: Vec<f64> = if shape.len() == 1 {
                (0..n).map(|_| 1.0 + normal.sample(&mut rng)).collect()
            } else {
                (0..n).map(|_| normal.sample(&mut rng)).collect()
            };
            Ok(Tensor::from_vec(v, shape.as_slice(), &Device::Cpu)?)
        })
    }

    /// An independent copy with its own variables. (`clone()` shares them: training
    /// a clone trains the original too.)
    pub fn deep_copy(&self) -> anyhow::Result<Self> {
        Ok(self.converted(self.weight_dtype())?.compute_in(self.dtype))
    }

    /// An independent copy with its weights stored and computed in `dtype` (e.g.
    /// a bf16 frozen reference of an f32 model).
    pub fn converted(&self, dtype: DType) -> anyhow::Result<Self> {
        let vars: std::collections::HashMap<String, Var> = self.named_vars().into_iter().collect();
        Self::from_tensors(self.config.clone(), dtype, &self.device, |name| {
            Ok(vars[name].as_tensor().detach().copy()?)
        })
    }

    /// The same weights (shared variables), computed in `dtype`: f32 master weights
    /// with bf16 compute is mixed precision (the casts are differentiable, so
    /// gradients and the optimiser stay in the weights' dtype).
    pub fn compute_in(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self.rope = rope_of(&self.config, dtype);
        self
    }

    /// This model with `lora`'s adapters: they train, the base weights are frozen.
    pub fn with_lora(mut self, lora: Lora) -> Self {
        self.lora = Some(lora);
        self
    }

    /// The adapters, when any.
    pub fn lora(&self) -> Option<&Lora> {
        self.lora.as_ref()
    }

    /// The base model with the adapters off (sharing its weights: no copy). Under
    /// LoRA this is the reference.
    pub fn without_adapters(&self) -> Self {
        Self { lora: None, ..self.clone() }
    }

    /// What training updates: the adapters under LoRA, else every weight.
    pub fn trainable_vars(&self) -> Vec<(String, Var)> {
        match &self.lora {
            Some(lora) => lora.named_vars(),
            None => self.named_vars(),
        }
    }

    /// The base weights with the adapters merged in (`W + (α/r)·B A`): a plain
    /// model of the same shape, in the weights' dtype.
    pub fn merged(&self) -> anyhow::Result<Self> {
        let Some(lora) = &self.lora else { return self.converted(self.weight_dtype()) };
        let vars: std::collections::HashMap<String, Var> = self.named_vars().into_iter().collect();
        Self::from_tensors(self.config.clone(), self.weight_dtype(), &self.device, |name| {
            let w = vars[name].as_tensor().detach();
            lora.merged(name.trim_end_matches(".weight"), &w)
        })
    }

    /// The dtype the weights are stored in.
    pub fn weight_dtype(&self) -> DType {
        self.embed.dtype()
    }

    /// Architecture.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Every trainable variable with its Hugging Face name, in [`weight_shapes`] order.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embed.clone())];
        for (i, b) in self.blocks.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.extend([
                (format!("{p}.input_layernorm.weight"), b.attn_norm.clone()),
                (format!("{p}.self_attn.q_proj.weight"), b.wq.clone()),
                (format!("{p}.self_attn.k_proj.weight"), b.wk.clone()),
                (format!("{p}.self_attn.v_proj.weight"), b.wv.clone()),
                (format!("{p}.self_attn.o_proj.weight"), b.wo.clone()),
                (format!("{p}.post_attention_layernorm.weight"), b.ffn_norm.clone()),
                (format!("{p}.mlp.gate_proj.weight"), b.w_gate.clone()),
                (format!("{p}.mlp.up_proj.weight"), b.w_up.clone()),
                (format!("{p}.mlp.down_proj.weight"), b.w_down.clone()),
            ]);
        }
        out.push(("model.norm.weight".to_string(), self.norm.clone()));
        if let Some(h) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), h.clone()));
        }
        out
    }

    /// Runs the blocks over `ids: [B, T]` at `positions: [B, T]` with the additive
    /// attention `mask: [B, 1, T, T_past + T]`, appending to `cache` when given.
    /// Returns final-normed hidden states `[B, T, D]`.
    fn hidden(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
        mut cache: Option<&mut KvCache>,
        track: bool,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (b, t) = ids.dims2()?;
        let (h, kvh, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim());
        let rows = w(&self.embed, track && self.lora.is_none()).index_select(&ids.flatten_all()?, 0)?;
        let mut x = rows.to_dtype(self.dtype)?.reshape((b, t, c.hidden_size))?;
        if let Some(cache) = cache.as_deref_mut() {
            cache.layers.resize(self.blocks.len(), None);
        }
        let scale = 1.0 / (hd as f64).sqrt();
        let rotation = self.rope.at(positions, &self.device)?;
        for (li, blk) in self.blocks.iter().enumerate() {
            let xn = rms_norm(&x, &self.weight(&blk.attn_norm, track)?, c.rms_norm_eps)?;
            let heads = |wt: &Var, name: &str, n: usize| -> Result<Tensor> {
                let y = self.project((li, "self_attn", name), &xn, wt, track)?;
                y.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous()
            };
            let q = rotation.apply(&heads(&blk.wq, "q_proj", h)?)?;
            let mut k = rotation.apply(&heads(&blk.wk, "k_proj", kvh)?)?;
            let mut v = heads(&blk.wv, "v_proj", kvh)?;
            if let Some(cache) = cache.as_deref_mut() {
                if let Some((pk, pv)) = &cache.layers[li] {
                    k = Tensor::cat(&[pk, &k], 2)?;
                    v = Tensor::cat(&[pv, &v], 2)?;
                }
                cache.layers[li] = Some((k.clone(), v.clone()));
            }
            // Grouped-query attention: query heads are grouped n_rep to a KV head.
            let n_rep = h / kvh;
            let q = q.reshape((b, kvh, n_rep * t, hd))?;
            let ctx = attention(&q, &k, &v, mask, scale, self.accumulation_dtype())?.reshape((b, h, t, hd))?;
            let ctx = ctx.transpose(1, 2)?.reshape((b, t, h * hd))?;
            x = (x + self.project((li, "self_attn", "o_proj"), &ctx, &blk.wo, track)?)?;
            let xn = rms_norm(&x, &self.weight(&blk.ffn_norm, track)?, c.rms_norm_eps)?;
            let gate = self.project((li, "mlp", "gate_proj"), &xn, &blk.w_gate, track)?;
            let up = self.project((li, "mlp", "up_proj"), &xn, &blk.w_up, track)?;
            x = (x + self.project((li, "mlp", "down_proj"), &swiglu(&gate, &up)?, &blk.w_down, track)?)?;
        }
        rms_norm(&x, &self.weight(&self.norm, track)?, c.rms_norm_eps)
    }

    /// Output logits `[N, V]` of hidden rows `[N, D]`.
    fn head(&self, rows: &Tensor, track: bool) -> Result<Tensor> {
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let weight = self.weight(head, track)?;
        match self.lora.is_some() {
            true => frozen_linear(rows, &weight, |x| linear(x, &weight)),
            false => linear(rows, &weight),
        }
    }

    /// The projection `name` of block `layer`'s `kind` (`self_attn`, `mlp`) of `x`
    /// by its base weight `w`, plus its LoRA update
    /// when adapted. Under LoRA the base weight is frozen: no gradient is computed
    /// for it (`frozen_linear`).
    fn project(&self, (layer, kind, name): (usize, &str, &str), x: &Tensor, w: &Var, track: bool) -> Result<Tensor> {
        let weight = self.weight(w, track)?;
        let Some(lora) = &self.lora else { return linear(x, &weight) };
        let base = |x: &Tensor| linear(x, &weight);
        // the module's Hugging Face path, built only under LoRA (not on every decode step)
        let module = format!("model.layers.{layer}.{kind}.{name}");
        match lora.factors(&module, x.dtype(), track)? {
            Some((a, b)) => {
                let mask = if track { lora.dropout_mask(x)? } else { None };
                lora_linear(x, &weight, (&a, &b, lora.config().scaling()), mask, base)
            }
            None => frozen_linear(x, &weight, base),
        }
    }

    /// A weight in the compute dtype (a differentiable cast from f32 master weights
    /// under mixed precision; a no-op otherwise). Frozen (detached) under LoRA.
    fn weight(&self, v: &Var, track: bool) -> Result<Tensor> {
        w(v, track && self.lora.is_none()).to_dtype(self.dtype)
    }

    /// The dtype of norms, softmaxes and every output (log-probs, logits): f32
    /// when computing in a 16-bit dtype.
    pub fn accumulation_dtype(&self) -> DType {
        accumulation_dtype(self.dtype)
    }

    fn causal_mask(&self, b: usize, t: usize) -> Result<Tensor> {
        let v: Vec<f32> =
            (0..t).flat_map(|i| (0..t).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY })).collect();
        Tensor::from_vec(v, (1, 1, t, t), &self.device)?
            .to_dtype(self.accumulation_dtype())?
            .broadcast_as((b, 1, t, t))?
            .contiguous()
    }

    fn check_len(&self, t: usize) -> Result<()> {
        if t > self.rope.max_positions() {
            candle_core::bail!("sequence of {t} tokens exceeds the model's context of {}", self.rope.max_positions());
        }
        Ok(())
    }

    /// Training forward over right-padded `ids: [B, T]` (positions 0..T; causal
    /// mask only, since padding comes after every real token). Returns the hidden
    /// rows `[N, D]` at the flat positions `select: [N]` (`b·T + t`).
    fn selected_hidden(&self, ids: &Tensor, select: &Tensor, track: bool) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        self.check_len(t)?;
        let pos: Vec<u32> = (0..b).flat_map(|_| 0..t as u32).collect();
        let positions = Tensor::from_vec(pos, (b, t), &self.device)?;
        let hidden = self.hidden(ids, &positions, &self.causal_mask(b, t)?, None, track)?;
        hidden.reshape((b * t, self.config.hidden_size))?.index_select(select, 0)
    }

    /// Log-probabilities `[N]` of `targets: [N]` as next tokens at the flat
    /// positions `select: [N]` of `ids: [B, T]` (position `b·T + t` predicts the
    /// token after `ids[b, t]`). The head, log-softmax and gather run fused, a
    /// chunk of rows at a time (`fused_logprob`): `[N, V]` is never held.
    /// Differentiable w.r.t. every trained weight when `track`.
    pub fn token_logprobs(&self, ids: &Tensor, select: &Tensor, targets: &Tensor, track: bool) -> Result<Tensor> {
        let rows = self.selected_hidden(ids, select, track)?;
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        linear_logprob(&rows, &self.weight(head, track)?, targets, self.accumulation_dtype())
    }

    /// Full next-token log-distributions `[N, V]` at the flat positions `select`
    /// (what the token-wise KL needs). `track = false` for a frozen reference.
    pub fn next_token_logdist(&self, ids: &Tensor, select: &Tensor, track: bool) -> Result<Tensor> {
        self.logdist_of_hidden(&self.selected_hidden(ids, select, track)?, track)
    }

    /// The final-normed hidden rows `[N, D]` at the flat positions `select` of
    /// `ids: [B, T]`, without gradients: a frozen model's part of
    /// [`Self::next_token_logdist`] that can be kept and reused (`[N, D]` is far
    /// smaller than `[N, V]`).
    pub fn frozen_hidden_rows(&self, ids: &Tensor, select: &Tensor) -> Result<Tensor> {
        self.selected_hidden(ids, select, false)
    }

    /// Per-row token-wise `KL(self ‖ reference)` `[N]` at the flat positions
    /// `select` of `ids`, and this model's per-row entropy `[N]` (no gradient).
    /// `ref_rows` are the reference's hidden rows there ([`Self::frozen_hidden_rows`]);
    /// both heads, log-softmaxes and the KL run fused, a chunk of rows at a time
    /// (`fused_kl`): `[N, V]` is never held. Differentiable when `track`.
    pub fn kl_rows(
        &self,
        ids: &Tensor,
        select: &Tensor,
        reference: &Llama,
        ref_rows: &Tensor,
        track: bool,
    ) -> Result<(Tensor, Tensor)> {
        let rows = self.selected_hidden(ids, select, track)?;
        let head = self.weight(self.lm_head.as_ref().unwrap_or(&self.embed), track)?;
        let ref_head = reference.weight(reference.lm_head.as_ref().unwrap_or(&reference.embed), false)?;
        let r = Reference { rows: ref_rows, head: &ref_head };
        linear_kl(&rows, &head, &r, self.accumulation_dtype())
    }

    /// Next-token log-distributions `[N, V]` of hidden rows `[N, D]` (the output
    /// head and log-softmax); `next_token_logdist` = this ∘ the hidden rows.
    pub fn logdist_of_hidden(&self, rows: &Tensor, track: bool) -> Result<Tensor> {
        log_softmax(&self.head(rows, track)?.to_dtype(self.accumulation_dtype())?, D::Minus1)
    }

    /// Inference step with a KV cache on left-padded rows: `ids: [B, T]` are the
    /// next `T` tokens of every row, `pad: [B]` the number of padding tokens at the
    /// start of each row (masked out; positions count from the first real token).
    /// Returns last-position logits `[B, V]` in f32.
    pub fn forward_cached(&self, ids: &Tensor, pad: &[usize], cache: &mut KvCache) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let past = cache.len();
        self.check_len(past + t)?;
        let pos: Vec<u32> =
            pad.iter().flat_map(|&p| (past..past + t).map(move |a| a.saturating_sub(p) as u32)).collect();
        let pos = Tensor::from_vec(pos, (b, t), &self.device)?;
        // Key j is visible to query i (both absolute) when pad ≤ j ≤ i; a padding
        // query sees itself so its row stays finite (it never feeds a real token).
        let mut m = Vec::with_capacity(b * t * (past + t));
        for &p in pad {
            for i in past..past + t {
                for j in 0..past + t {
                    m.push(if (j >= p && j <= i) || j == i { 0f32 } else { f32::NEG_INFINITY });
                }
            }
        }
        let mask = Tensor::from_vec(m, (b, 1, t, past + t), &self.device)?.to_dtype(self.accumulation_dtype())?;
        let hidden = self.hidden(ids, &pos, &mask, Some(cache), false)?;
        let last = hidden.narrow(1, t - 1, 1)?.squeeze(1)?;
        self.head(&last, false)?.to_dtype(DType::F32)
    }

    /// Full logits `[B, T, V]` (f32) of unpadded `ids` without a cache, for tests
    /// and scoring.
    pub fn logits(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let select = Tensor::arange(0u32, (b * t) as u32, &self.device)?;
        let rows = self.selected_hidden(ids, &select, false)?;
        self.head(&rows, false)?.reshape((b, t, self.config.vocab_size))?.to_dtype(DType::F32)
    }
}
