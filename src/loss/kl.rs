//! The token-wise KL regulariser of SPO (section 3, Appendix B).

use candle_core::{Result, Tensor, D};

/// Token-wise KL estimate of `KL(π_θ ‖ π_ref)` on a batch of sequences sampled from
/// the policy (Appendix B):
///
/// `KL̂ = (1/B) · Σ_b Σ_t mask[b,t] · Σ_s π_θ(s|ctx_{b,t}) · (log π_θ(s|ctx_{b,t}) − log π_ref(s|ctx_{b,t}))`
///
/// i.e. the exact KL between the two next-token distributions at every masked
/// position, summed over the positions of a sequence, then **averaged over the B
/// sequences** (the paper writes a plain sum; the mean keeps β's meaning independent
/// of the sample batch size).
///
/// `policy_logprobs` and `ref_logprobs` are log-softmaxed next-token distributions,
/// shape `[B, T, V]`; `mask` is `[B, T]` with 1 at the response positions to count
/// and 0 at prompt and padding positions. The gradient flows through every
/// occurrence of `π_θ`; the reference is detached.
pub fn token_kl(policy_logprobs: &Tensor, ref_logprobs: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (b, t, _v) = policy_logprobs.dims3()?;
    if ref_logprobs.dims() != policy_logprobs.dims() || mask.dims() != [b, t] {
        candle_core::bail!(
            "token_kl: policy {:?}, reference {:?} and mask {:?} shapes disagree",
            policy_logprobs.dims(),
            ref_logprobs.dims(),
            mask.dims()
        );
    }
    let per_position = position_kl(policy_logprobs, ref_logprobs)?;
    let mask = mask.to_dtype(per_position.dtype())?;
    (per_position * mask)?.sum_all()? / b as f64
}

/// `Σ_s π_θ(s)·(log π_θ(s) − log π_ref(s))` along the last axis: the exact KL of each
/// next-token distribution. The reference is detached.
pub fn position_kl(policy_logprobs: &Tensor, ref_logprobs: &Tensor) -> Result<Tensor> {
    let diff = (policy_logprobs - ref_logprobs.detach())?;
    (policy_logprobs.exp()? * diff)?.sum(D::Minus1)
}

/// [`token_kl`] on already-selected response positions: `policy_logprobs` and
/// `ref_logprobs` are `[N, V]` rows from some of the `num_sequences` sampled
/// sequences; returns their summed KL divided by `num_sequences`. Chunks of one
/// sample batch therefore add up to the same value as one [`token_kl`] call.
pub fn token_kl_rows(policy_logprobs: &Tensor, ref_logprobs: &Tensor, num_sequences: usize) -> Result<Tensor> {
    position_kl(policy_logprobs, ref_logprobs)?.sum_all()? / num_sequences as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn log_softmax(x: &Tensor) -> Tensor {
        let m = x.max_keepdim(D::Minus1).unwrap();
        let s = x.broadcast_sub(&m).unwrap();
        let lse = s.exp().unwrap().sum_keepdim(D::Minus1).unwrap().log().unwrap();
        s.broadcast_sub(&lse).unwrap()
    }

    fn random(shape: (usize, usize, usize), seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n = shape.0 * shape.1 * shape.2;
        let v: Vec<f64> = (0..n).map(|_| rng.gen_range(-3.0..3.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn mask() -> Tensor {
        Tensor::new(&[[0f64, 1., 1., 1.], [0., 0., 1., 0.], [1., 1., 1., 1.]], &Device::Cpu).unwrap()
    }

    #[test]
    fn zero_for_identical_distributions() {
        let p = log_softmax(&random((3, 4, 7), 1));
        let kl = token_kl(&p, &p, &mask()).unwrap().to_scalar::<f64>().unwrap();
        assert!(kl.abs() < 1e-12);
    }

    #[test]
    fn non_negative_and_equal_to_a_brute_force_loop() {
        for seed in 0..5 {
            let p = log_softmax(&random((3, 4, 7), 10 + seed));
            let q = log_softmax(&random((3, 4, 7), 20 + seed));
            let kl = token_kl(&p, &q, &mask()).unwrap().to_scalar::<f64>().unwrap();
            let (pv, qv) = (p.to_vec3::<f64>().unwrap(), q.to_vec3::<f64>().unwrap());
            let m = mask().to_vec2::<f64>().unwrap();
            let mut brute = 0.0;
            for b in 0..3 {
                for t in 0..4 {
                    if m[b][t] == 0.0 {
                        continue;
                    }
                    for s in 0..7 {
                        let (lp, lq) = (pv[b][t][s], qv[b][t][s]);
                        brute += lp.exp() * (lp - lq);
                    }
                }
            }
            brute /= 3.0;
            assert!(kl > 0.0);
            assert!((kl - brute).abs() < 1e-12, "{kl} vs {brute}");
        }
    }

    #[test]
    fn gradient_matches_finite_differences_and_skips_the_reference() {
        let logits = random((3, 4, 5), 3);
        let q = log_softmax(&random((3, 4, 5), 4));
        let f = |x: &Tensor| token_kl(&log_softmax(x), &q, &mask()).unwrap().to_scalar::<f64>().unwrap();
        let v = Var::from_tensor(&logits).unwrap();
        let q_var = Var::from_tensor(&q).unwrap();
        let kl = token_kl(&log_softmax(v.as_tensor()), q_var.as_tensor(), &mask()).unwrap();
        let g = kl.backward().unwrap();
        assert!(g.get(q_var.as_tensor()).is_none(), "the reference must get no gradient");
        let grad = g.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let base = logits.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let h = 1e-6;
        for i in [0, 7, 23, 41, 59] {
            let (mut up, mut dn) = (base.clone(), base.clone());
            up[i] += h;
            dn[i] -= h;
            let tu = Tensor::from_vec(up, (3, 4, 5), &Device::Cpu).unwrap();
            let td = Tensor::from_vec(dn, (3, 4, 5), &Device::Cpu).unwrap();
            let fd = (f(&tu) - f(&td)) / (2.0 * h);
            assert!((fd - grad[i]).abs() < 1e-8, "index {i}: {fd} vs {}", grad[i]);
        }
        // positions 0..4 of sequence 0 are masked out at t = 0: zero gradient there
        assert!(grad[..5].iter().all(|&x| x == 0.0));
    }

    #[test]
    fn row_chunks_add_up_to_the_masked_batch_value() {
        let p = log_softmax(&random((3, 4, 7), 5));
        let q = log_softmax(&random((3, 4, 7), 6));
        let whole = token_kl(&p, &q, &mask()).unwrap().to_scalar::<f64>().unwrap();
        // the masked positions of mask(): (0,1..3), (1,2), (2,0..3)
        let rows = |b: usize, t: &[usize]| -> (Tensor, Tensor) {
            let idx = Tensor::new(t.iter().map(|&x| x as u32).collect::<Vec<_>>(), &Device::Cpu).unwrap();
            (p.get(b).unwrap().index_select(&idx, 0).unwrap(), q.get(b).unwrap().index_select(&idx, 0).unwrap())
        };
        let mut total = 0.0;
        for (b, t) in [(0, vec![1, 2, 3]), (1, vec![2]), (2, vec![0, 1, 2, 3])] {
            let (pp, qq) = rows(b, &t);
            total += token_kl_rows(&pp, &qq, 3).unwrap().to_scalar::<f64>().unwrap();
        }
        assert!((total - whole).abs() < 1e-12);
    }

    #[test]
    fn f32_and_shape_errors() {
        let p = log_softmax(&random((3, 4, 7), 1)).to_dtype(DType::F32).unwrap();
        let q = log_softmax(&random((3, 4, 7), 2)).to_dtype(DType::F32).unwrap();
        let m = mask().to_dtype(DType::F32).unwrap();
        assert!(token_kl(&p, &q, &m).unwrap().to_scalar::<f32>().unwrap() > 0.0);
        let short = q.narrow(1, 0, 3).unwrap();
        assert!(token_kl(&p, &short, &m).is_err());
    }
}
