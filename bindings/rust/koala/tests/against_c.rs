//! The safe wrapper against the raw C ABI (koala-sys) on the same inputs:
//! the numbers must be bit-identical, because the wrapper does no arithmetic.
//! Plus one KOALA-V step against ALGORITHM.md §3.3 evaluated here in f64.
use std::os::raw::c_void;
use std::ptr;

use koala::{Config, DType, Memory, Method, Optimizer};
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
        };
        sys::koala_config_init(&mut cfg, raw_method);
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
