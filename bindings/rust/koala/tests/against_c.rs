//! The safe wrapper against the raw C ABI (koala-sys) on the same inputs:
//! the numbers must be bit-identical, because the wrapper does no arithmetic.
//! Plus one KOALA-V step against ALGORITHM.md §3.3 and three KOALA++ steps
//! against §7.2-7.3, evaluated here in f64, and the 1.1 additions.
use std::os::raw::c_void;
use std::ptr;

use koala::{Config, DType, Memory, Method, Optimizer, Shard};
use koala_sys as sys;

const STEPS: usize = 3;

struct Inputs<T> {
    x: Vec<Vec<T>>,
    grads: Vec<Vec<Vec<T>>>, // [step][tensor][element]
    loss: Vec<f64>,
    loss_var: Vec<f64>,
}

fn inputs<T: Copy>(sizes: &[usize], cast: fn(f64) -> T) -> Inputs<T> {
    let x = sizes
        .iter()
        .enumerate()
        .map(|(t, &n)| (0..n).map(|i| cast((0.37 * (i + 1) as f64 + t as f64).sin())).collect())
        .collect();
    let grads = (0..STEPS)
        .map(|k| {
            sizes
                .iter()
                .enumerate()
                .map(|(t, &n)| {
                    (0..n).map(|i| cast(0.2 * (0.91 * (i + 1) as f64 + 0.3 * (k + t) as f64).cos())).collect()
                })
                .collect()
        })
        .collect();
    let loss = (0..STEPS).map(|k| 1.0 / (k + 1) as f64).collect();
    let loss_var = (0..STEPS).map(|k| 1.5 / ((k + 1) * (k + 1)) as f64).collect();
    Inputs { x, grads, loss, loss_var }
}

/// The reference: the same steps straight through the C ABI.
fn run_c<T: Copy>(method: Method, dtype: u32, data: &Inputs<T>) -> (Vec<Vec<T>>, sys::koala_info) {
    let mut x = data.x.clone();
    let sizes: Vec<usize> = x.iter().map(|t| t.len()).collect();
    unsafe {
        let mut cfg = std::mem::zeroed::<sys::koala_config>();
        let raw_method = match method {
            Method::Vanilla => sys::koala_method_KOALA_VANILLA,
            Method::Momentum => sys::koala_method_KOALA_MOMENTUM,
            Method::PlusPlus => sys::koala_method_KOALA_PLUSPLUS,
        };
        // what koala.h's koala_config_init macro expands to
        sys::koala_config_init_sized(&mut cfg, raw_method, std::mem::size_of::<sys::koala_config>());
        let mut opt: *mut sys::koala_optimizer = ptr::null_mut();
        let st = sys::koala_create(&cfg, sizes.len(), sizes.as_ptr(), dtype, sys::koala_memory_KOALA_HOST, &mut opt);
        assert_eq!(st, sys::koala_status_KOALA_OK);
        for k in 0..STEPS {
            let params: Vec<*mut c_void> = x.iter_mut().map(|t| t.as_mut_ptr() as *mut c_void).collect();
            let grads: Vec<*const c_void> = data.grads[k].iter().map(|g| g.as_ptr() as *const c_void).collect();
            assert_eq!(sys::koala_predict(opt, params.as_ptr(), ptr::null_mut()), 0);
            let st = sys::koala_update(opt, data.loss[k], data.loss_var[k], params.as_ptr(), grads.as_ptr(), ptr::null_mut());
            assert_eq!(st, 0);
        }
        let mut info = std::mem::zeroed::<sys::koala_info>();
        info.struct_size = std::mem::size_of::<sys::koala_info>();
        assert_eq!(sys::koala_get_info(opt, ptr::null_mut(), &mut info), 0);
        sys::koala_destroy(opt);
        (x, info)
    }
}

fn run_safe<T: koala::Element>(method: Method, data: &Inputs<T>) -> (Vec<Vec<T>>, koala::Info) {
    let mut x = data.x.clone();
    let sizes: Vec<usize> = x.iter().map(|t| t.len()).collect();
    let mut opt = Optimizer::host::<T>(&Config::new(method), &sizes).unwrap();
    for k in 0..STEPS {
        let mut params: Vec<&mut [T]> = x.iter_mut().map(|t| &mut t[..]).collect();
        opt.predict(&mut params).unwrap();
        let grads: Vec<&[T]> = data.grads[k].iter().map(|g| &g[..]).collect();
        opt.update(data.loss[k], data.loss_var[k], &mut params, &grads).unwrap();
    }
    let info = opt.info().unwrap();
    (x, info)
}

fn assert_same_info(a: &koala::Info, b: &sys::koala_info) {
    assert_eq!(a.steps, b.steps);
    assert_eq!(a.sigma.to_bits(), b.sigma.to_bits());
    assert_eq!(a.p00.to_bits(), b.p00.to_bits());
    assert_eq!(a.p01.to_bits(), b.p01.to_bits());
    assert_eq!(a.p11.to_bits(), b.p11.to_bits());
    assert_eq!(a.r.to_bits(), b.r.to_bits());
    assert_eq!(a.qw.to_bits(), b.qw.to_bits());
}

#[test]
fn momentum_f32_matches_the_c_abi_bit_for_bit() {
    let data = inputs::<f32>(&[7, 4, 3], |v| v as f32);
    let (c_x, c_info) = run_c(Method::Momentum, sys::koala_dtype_KOALA_FLOAT32, &data);
    let (x, info) = run_safe(Method::Momentum, &data);
    assert_eq!(x, c_x);
    assert_same_info(&info, &c_info);
    assert_eq!(info.steps, STEPS as u64);
    assert!(x[0].iter().zip(data.x[0].iter()).all(|(a, b)| a != b), "parameters did not move");
}

#[test]
fn plusplus_f32_matches_the_c_abi_bit_for_bit() {
    let data = inputs::<f32>(&[7, 4, 3], |v| v as f32);
    let (c_x, c_info) = run_c(Method::PlusPlus, sys::koala_dtype_KOALA_FLOAT32, &data);
    let (x, info) = run_safe(Method::PlusPlus, &data);
    assert_eq!(x, c_x);
    assert_same_info(&info, &c_info);
    assert_eq!(info.steps, STEPS as u64);
    assert!(x[2].iter().zip(data.x[2].iter()).all(|(a, b)| a != b), "parameters did not move");
}

#[test]
fn vanilla_f64_matches_the_c_abi_bit_for_bit() {
    let data = inputs::<f64>(&[5, 9], |v| v);
    let (c_x, c_info) = run_c(Method::Vanilla, sys::koala_dtype_KOALA_FLOAT64, &data);
    let (x, info) = run_safe(Method::Vanilla, &data);
    assert_eq!(x, c_x);
    assert_same_info(&info, &c_info);
    assert!(x[1].iter().zip(data.x[1].iter()).all(|(a, b)| a != b), "parameters did not move");
}

/// ALGORITHM.md §3.2-3.3 for one step, written out here in f64.
#[test]
fn one_vanilla_step_matches_the_formula() {
    let (sigma, q, lr, wd) = (0.5, 0.25, 0.7, 0.01);
    let (loss, loss_var) = (0.8, 0.9);
    let x0 = vec![vec![-0.4, -0.1, 0.2, 0.5], vec![0.25, -1.5, 0.75]];
    let g = vec![vec![-0.1, 0.2, -0.3, 0.4], vec![0.02, 0.5, -0.3]];

    let sig_hat = sigma + q;
    let r = 0.9 * 1.0 + 0.1 * loss_var;
    let mut expected = x0.clone();
    let mut min_ratio = f64::INFINITY;
    for t in 0..2 {
        let a: f64 = x0[t].iter().zip(&g[t]).map(|(x, g)| (g + wd * x) * (g + wd * x)).sum();
        let s = sig_hat * a + r;
        let l = loss + 0.5 * wd * x0[t].iter().map(|x| x * x).sum::<f64>();
        let c = lr * l * sig_hat / s;
        for (e, gi) in expected[t].iter_mut().zip(&g[t]) {
            *e -= c * gi;
        }
        min_ratio = min_ratio.min(r / s);
    }

    let cfg = Config::new(Method::Vanilla).sigma(sigma).q(q).lr(lr).weight_decay(wd);
    let mut opt = Optimizer::host::<f64>(&cfg, &[4, 3]).unwrap();
    let mut x = x0.clone();
    let (x_a, x_b) = x.split_at_mut(1);
    let mut params = [&mut x_a[0][..], &mut x_b[0][..]];
    opt.predict(&mut params).unwrap();
    assert!((opt.info().unwrap().sigma - sig_hat).abs() < 1e-15);
    opt.update(loss, loss_var, &mut params, &[&g[0][..], &g[1][..]]).unwrap();
    for t in 0..2 {
        for (got, want) in x[t].iter().zip(&expected[t]) {
            assert!((got - want).abs() <= 1e-14 * want.abs().max(1.0), "{} vs {}", got, want);
        }
    }
    let info = opt.info().unwrap();
    assert!((info.sigma - sig_hat * min_ratio).abs() <= 1e-13 * info.sigma);
    assert!((info.r - r).abs() <= 1e-15);
    assert_eq!(info.steps, 1);
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// ALGORITHM.md §7.2-7.3 for three steps of KOALA++, written out here in
/// f64: first visit (v_prev = sigma0 H, H_prev = H), then the recursion; w_k
/// is 0 in the step after a first visit (v is parallel to H_prev then), so
/// step 3 is the first where the symmetric term counts. Tensor 1 has no
/// gradient in step 1 (its first visit is step 2).
#[test]
fn three_plusplus_steps_match_the_formula() {
    let (sigma0, q, lr, wd) = (0.5, 0.3, 0.8, 0.02);
    let losses = [(0.8, 0.9), (0.6, 0.5), (0.7, 0.6)];
    let sizes = [4usize, 3];
    let mut x: Vec<Vec<f64>> = vec![vec![-0.4, -0.1, 0.2, 0.5], vec![0.25, -1.5, 0.75]];
    let mut e = x.clone();
    let grad = |k: usize, t: usize, i: usize| 0.1 * (1.3 * (i + 1) as f64 + 0.7 * (t + 1) as f64 + 2.1 * (k + 1) as f64).sin();
    let cfg = Config::new(Method::PlusPlus).sigma(sigma0).q(q).lr(lr).weight_decay(wd);
    let mut opt = Optimizer::host::<f64>(&cfg, &sizes).unwrap();

    let mut r = 1.0;
    let mut state: Vec<Option<(Vec<f64>, Vec<f64>, f64)>> = vec![None, None]; // (v, H, S)
    let mut w_term = 0.0f64;
    for k in 0..3 {
        let g: Vec<Vec<f64>> = (0..2).map(|t| (0..sizes[t]).map(|i| grad(k, t, i)).collect()).collect();
        let present = |t: usize| !(k == 0 && t == 1);
        {
            let (a, b) = x.split_at_mut(1);
            let mut params = [&mut a[0][..], &mut b[0][..]];
            opt.predict(&mut params).unwrap();
            let grads: Vec<Option<&[f64]>> = (0..2).map(|t| if present(t) { Some(&g[t][..]) } else { None }).collect();
            opt.update_partial(losses[k].0, losses[k].1, &mut params, &grads).unwrap();
        }
        r = 0.9 * r + 0.1 * losses[k].1;
        for t in 0..2 {
            if !present(t) {
                continue;
            }
            let h: Vec<f64> = g[t].iter().zip(&e[t]).map(|(g, x)| g + wd * x).collect();
            let big_l = losses[k].0 + 0.5 * wd * dot(&e[t], &e[t]);
            let (vp, hp, sp) = state[t].take().unwrap_or_else(|| {
                let v: Vec<f64> = h.iter().map(|h| sigma0 * h).collect();
                let s = dot(&h, &v) + q * dot(&h, &h) + r;
                (v, h.clone(), s)
            });
            let hh = dot(&h, &hp);
            let hp2 = dot(&hp, &hp);
            let alpha = hh / hp2;
            let vq: Vec<f64> = vp.iter().zip(&hp).map(|(v, h)| v + q * h).collect();
            let lambda = dot(&h, &vq) / sp;
            let w = (dot(&h, &vp) * hp2 - dot(&hp, &vp) * hh) / (hp2 * hp2);
            let v: Vec<f64> = (0..h.len())
                .map(|i| (alpha - lambda) * vp[i] + q * (h[i] - lambda * hp[i]) + w * hp[i])
                .collect();
            let s = dot(&h, &v) + q * dot(&h, &h) + r;
            for i in 0..h.len() {
                e[t][i] -= lr * big_l * (v[i] + q * h[i]) / s;
            }
            if k == 2 {
                w_term = w_term.max(w.abs() * hp2.sqrt() / dot(&v, &v).sqrt());
            }
            state[t] = Some((v, h, s));
        }
        for t in 0..2 {
            for (got, want) in x[t].iter().zip(&e[t]) {
                assert!((got - want).abs() <= 1e-13 * want.abs().max(1e-3), "step {} tensor {}: {} vs {}", k + 1, t, got, want);
            }
        }
        if k == 0 {
            assert_eq!(x[1], vec![0.25, -1.5, 0.75], "a tensor without gradient is left alone");
        }
    }
    assert!(w_term > 1e-3, "the w_k term did not contribute ({})", w_term);
    let info = opt.info().unwrap();
    assert_eq!(info.steps, 3);
    assert!((info.r - r).abs() <= 1e-15 * r);
}

#[test]
fn the_1_1_config_fields_are_honoured() {
    // Config::new uses the sized initialiser: a thread count reaches the library
    for &n in [1, 3].iter() {
        let opt = Optimizer::host::<f32>(&Config::new(Method::Vanilla).threads(n), &[8]).unwrap();
        let info = opt.info().unwrap();
        assert_eq!((info.threads, info.phase, info.lr), (n, 0, 1.0));
    }
    let err = Optimizer::host::<f32>(&Config::new(Method::Vanilla).threads(-1), &[8]).unwrap_err();
    assert!(err.message.contains("threads"), "{}", err.message);
    let c = Config::new(Method::PlusPlus);
    let raw = c.as_raw();
    assert_eq!(raw.struct_size, std::mem::size_of::<sys::koala_config>());
    assert_eq!((raw.sigma, raw.q, raw.alpha_r, raw.lr, raw.weight_decay), (1.0, 1.0, 0.9, 1.0, 0.0));
    assert!(raw.r.is_nan());
    assert_eq!((raw.threads, raw.stochastic_rounding, raw.seed, raw.asymmetric, raw.fused_predict), (0, 0, 0, 0, 0));
    let c = Config::new(Method::Momentum).asymmetric(true).fused_predict(true).seed(7).stochastic_rounding(true);
    assert_eq!((c.as_raw().asymmetric, c.as_raw().fused_predict, c.as_raw().seed, c.as_raw().stochastic_rounding), (1, 1, 7, 1));
}

/// KOALA-V's step of tensor i depends only on its own lr and weight decay
/// (ALGORITHM.md §3.3): per-tensor values must give each tensor the result
/// of a run whose config holds that tensor's value.
#[test]
fn per_tensor_lr_and_weight_decay() {
    let step = |cfg: Config, scale: Option<&[f64]>, wd: Option<&[f64]>| -> Vec<Vec<f64>> {
        let mut x = vec![vec![-0.4, -0.1, 0.2, 0.5], vec![0.25, -1.5, 0.75]];
        let g = vec![vec![-0.1, 0.2, -0.3, 0.4], vec![0.02, 0.5, -0.3]];
        let mut opt = Optimizer::host::<f64>(&cfg, &[4, 3]).unwrap();
        opt.set_tensor_lr(scale).unwrap();
        opt.set_tensor_weight_decay(wd).unwrap();
        let (a, b) = x.split_at_mut(1);
        let mut params = [&mut a[0][..], &mut b[0][..]];
        opt.predict(&mut params).unwrap();
        opt.update(0.8, 0.9, &mut params, &[&g[0][..], &g[1][..]]).unwrap();
        x
    };
    let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-15 * y.abs().max(1.0));
    let v = || Config::new(Method::Vanilla);
    let a = step(v(), Some(&[0.5, 0.25]), None);
    assert!(close(&a[0], &step(v().lr(0.5), None, None)[0]));
    assert!(close(&a[1], &step(v().lr(0.25), None, None)[1]));
    let a = step(v(), None, Some(&[0.05, 0.0]));
    assert!(close(&a[0], &step(v().weight_decay(0.05), None, None)[0]));
    assert!(close(&a[1], &step(v(), None, None)[1]));
    assert_ne!(a[0], step(v(), None, None)[0]);

    let mut opt = Optimizer::host::<f64>(&v(), &[4, 3]).unwrap();
    let err = opt.set_tensor_lr(Some(&[1.0])).unwrap_err();
    assert!(err.message.contains("scale has 1 values"), "{}", err.message);
    let err = opt.set_tensor_lr(Some(&[1.0, -2.0])).unwrap_err();
    assert!(err.message.contains("scale"), "{}", err.message);
    let err = opt.set_tensor_weight_decay(Some(&[1.0, f64::NAN])).unwrap_err();
    assert!(err.message.contains("weight_decay"), "{}", err.message);
}

/// A fused KOALA-M keeps the next prediction in the parameters; its
/// posterior equals the parameters of the unfused run after each update.
#[test]
fn posterior_of_a_fused_momentum_optimizer() {
    let data = inputs::<f32>(&[7, 4], |v| v as f32);
    let mut x = data.x.clone();
    let mut y = data.x.clone();
    let mut post = data.x.clone();
    let mut plain = Optimizer::host::<f32>(&Config::new(Method::Momentum), &[7, 4]).unwrap();
    let mut fused = Optimizer::host::<f32>(&Config::new(Method::Momentum).fused_predict(true), &[7, 4]).unwrap();
    for k in 0..STEPS {
        let grads: Vec<&[f32]> = data.grads[k].iter().map(|g| &g[..]).collect();
        let mut px: Vec<&mut [f32]> = x.iter_mut().map(|t| &mut t[..]).collect();
        plain.predict(&mut px).unwrap();
        let xs: Vec<&[f32]> = px.iter().map(|t| &t[..]).collect();
        let mut po: Vec<&mut [f32]> = post.iter_mut().map(|t| &mut t[..]).collect();
        assert_eq!(plain.posterior(&xs, &mut po).unwrap_err().status, koala::Status::BadState);
        plain.update(data.loss[k], data.loss_var[k], &mut px, &grads).unwrap();
        let mut py: Vec<&mut [f32]> = y.iter_mut().map(|t| &mut t[..]).collect();
        fused.predict(&mut py).unwrap();
        fused.update(data.loss[k], data.loss_var[k], &mut py, &grads).unwrap();
        let ys: Vec<&[f32]> = y.iter().map(|t| &t[..]).collect();
        let mut po: Vec<&mut [f32]> = post.iter_mut().map(|t| &mut t[..]).collect();
        fused.posterior(&ys, &mut po).unwrap();
        for t in 0..2 {
            for (p, want) in post[t].iter().zip(&x[t]) {
                assert!((p - want).abs() <= 1e-6 * want.abs().max(1.0), "step {}: {} vs {}", k, p, want);
            }
        }
    }
    assert_ne!(y, x, "the fused parameters hold the prediction, not the posterior");
}

/// Two "processes" in one: A holds tensor 0 and the first 3 elements of
/// tensor 1, B the last element of tensor 1 and tensor 2. The two-phase
/// update with the sums added here (the all-reduce) equals the unsharded run.
#[test]
fn two_phase_sharded_equals_unsharded() {
    for &method in [Method::PlusPlus, Method::Momentum, Method::Vanilla].iter() {
        let data = inputs::<f64>(&[6, 4, 5], |v| v);
        let cfg = Config::new(method).weight_decay(1e-2);
        let mut whole = data.x.clone();
        let mut opt = Optimizer::host::<f64>(&cfg, &[6, 4, 5]).unwrap();
        let mut a = vec![data.x[0].clone(), data.x[1][..3].to_vec()];
        let mut b = vec![data.x[1][3..].to_vec(), data.x[2].clone()];
        let shard = |index: Vec<usize>| Shard { n_global: 3, global_index: Some(index), global_elements: 15 };
        let mut opt_a = Optimizer::new_sharded(&cfg, &[6, 3], &shard(vec![0, 1]), DType::Float64, Memory::Host).unwrap();
        let mut opt_b = Optimizer::new_sharded(&cfg, &[1, 5], &shard(vec![1, 2]), DType::Float64, Memory::Host).unwrap();
        let n = opt_a.sums_size().unwrap();
        assert_eq!(n, opt_b.sums_size().unwrap());
        let (mut sa, mut sb) = (vec![0.0; n], vec![0.0; n]);
        for k in 0..STEPS {
            let g = &data.grads[k];
            let mut pw: Vec<&mut [f64]> = whole.iter_mut().map(|t| &mut t[..]).collect();
            opt.predict(&mut pw).unwrap();
            opt.update(data.loss[k], data.loss_var[k], &mut pw, &[&g[0][..], &g[1][..], &g[2][..]]).unwrap();
            let ga = [Some(&g[0][..]), Some(&g[1][..3])];
            let gb = [Some(&g[1][3..]), Some(&g[2][..])];
            let mut pa: Vec<&mut [f64]> = a.iter_mut().map(|t| &mut t[..]).collect();
            let mut pb: Vec<&mut [f64]> = b.iter_mut().map(|t| &mut t[..]).collect();
            opt_a.predict(&mut pa).unwrap();
            opt_b.predict(&mut pb).unwrap();
            opt_a.update_begin(&mut pa, &ga, &mut sa).unwrap();
            opt_b.update_begin(&mut pb, &gb, &mut sb).unwrap();
            assert_eq!(opt_a.info().unwrap().phase, 2);
            for (x, y) in sa.iter_mut().zip(&sb) {
                *x += y;
            }
            opt_a.update_end(data.loss[k], data.loss_var[k], &mut pa, &ga, &sa).unwrap();
            opt_b.update_end(data.loss[k], data.loss_var[k], &mut pb, &gb, &sa).unwrap();
        }
        let joined = [a[0].clone(), [a[1].clone(), b[0].clone()].concat(), b[1].clone()];
        for t in 0..3 {
            for (got, want) in joined[t].iter().zip(&whole[t]) {
                assert!((got - want).abs() <= 1e-12 * want.abs().max(1.0), "{:?}: {} vs {}", method, got, want);
            }
        }
        assert_ne!(whole, data.x);
        let mut pa: Vec<&mut [f64]> = a.iter_mut().map(|t| &mut t[..]).collect();
        let err = opt_a.update_begin::<f64>(&mut pa, &[None, None], &mut sa[..1]).unwrap_err();
        assert!(err.message.contains("sums has 1 elements"), "{}", err.message);
        let bad = Optimizer::new_sharded(&cfg, &[6], &shard(vec![0, 1]), DType::Float64, Memory::Host).unwrap_err();
        assert!(bad.message.contains("global_index"), "{}", bad.message);
    }
}

#[test]
fn checkpoint_round_trip_continues_bit_for_bit() {
    let data = inputs::<f32>(&[6, 2], |v| v as f32);
    let mut x = data.x.clone();
    let mut opt = Optimizer::host::<f32>(&Config::new(Method::Momentum).weight_decay(5e-4), &[6, 2]).unwrap();
    let step = |opt: &mut Optimizer, x: &mut Vec<Vec<f32>>, k: usize| {
        let mut params: Vec<&mut [f32]> = x.iter_mut().map(|t| &mut t[..]).collect();
        opt.predict(&mut params).unwrap();
        let grads: Vec<&[f32]> = data.grads[k].iter().map(|g| &g[..]).collect();
        opt.update(data.loss[k], data.loss_var[k], &mut params, &grads).unwrap();
    };
    step(&mut opt, &mut x, 0);
    let saved = opt.save_state().unwrap();
    let x_saved = x.clone();
    step(&mut opt, &mut x, 1);
    let x_after = x.clone();
    let info_after = opt.info().unwrap();

    // load into a fresh optimizer: the config travels with the checkpoint
    let mut fresh = Optimizer::host::<f32>(&Config::new(Method::Momentum), &[6, 2]).unwrap();
    fresh.load_state(&saved).unwrap();
    let mut y = x_saved;
    step(&mut fresh, &mut y, 1);
    assert_eq!(y, x_after);
    assert_eq!(fresh.info().unwrap(), info_after);
}

#[test]
fn optimizer_moves_to_another_thread() {
    let mut opt = Optimizer::host::<f64>(&Config::new(Method::Vanilla), &[3]).unwrap();
    let handle = std::thread::spawn(move || {
        let mut x = vec![1.0, 2.0, 3.0];
        opt.predict(&mut [&mut x[..]]).unwrap();
        opt.update(1.0, 1.0, &mut [&mut x[..]], &[&[0.5, 0.5, 0.5][..]]).unwrap();
        opt.info().unwrap().steps
    });
    assert_eq!(handle.join().unwrap(), 1);
}

#[test]
fn raw_pointer_methods_work_on_host_memory() {
    let mut opt = Optimizer::new(&Config::new(Method::Vanilla), &[2], DType::Float32, Memory::Host).unwrap();
    let mut x = [1.0f32, -1.0];
    let g = [0.5f32, 0.25];
    let (loss, loss_var) = (0.5f64, 0.5f64);
    unsafe {
        opt.predict_raw(&[x.as_mut_ptr() as *mut c_void], ptr::null_mut()).unwrap();
        opt.update_ptr_raw(
            &loss as *const f64 as *const c_void,
            &loss_var as *const f64 as *const c_void,
            DType::Float64,
            &[x.as_mut_ptr() as *mut c_void],
            &[g.as_ptr() as *const c_void],
            ptr::null_mut(),
        )
        .unwrap();
    }
    assert_eq!(opt.info().unwrap().steps, 1);
    assert!(x[0] < 1.0 && x[1] < -1.0);
}
