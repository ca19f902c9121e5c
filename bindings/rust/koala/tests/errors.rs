//! Error paths: the status, a message naming the argument, nothing changed.
use koala::{Config, Method, Optimizer, Status};

#[test]
fn bad_config_names_the_field() {
    let err = Optimizer::host::<f32>(&Config::new(Method::Vanilla).alpha_r(1.5), &[4]).unwrap_err();
    assert_eq!(err.status, Status::InvalidArgument);
    assert!(err.message.contains("alpha_r"), "{}", err.message);
    assert!(Status::InvalidArgument.description().starts_with("KOALA_ERROR_INVALID_ARGUMENT"));
    assert!(err.to_string().contains("alpha_r"));
}

#[test]
fn empty_layout_is_rejected() {
    let err = Optimizer::host::<f32>(&Config::new(Method::Momentum), &[]).unwrap_err();
    assert_eq!(err.status, Status::InvalidArgument);
    assert!(err.message.contains("n_tensors"), "{}", err.message);
}

#[test]
fn wrong_lengths_and_dtype_are_caught_before_the_call() {
    let mut opt = Optimizer::host::<f32>(&Config::new(Method::Momentum), &[3, 2]).unwrap();
    let mut a = vec![1.0f32; 3];
    let mut b = vec![1.0f32; 5];
    let err = opt.predict(&mut [&mut a[..], &mut b[..]]).unwrap_err();
    assert_eq!(err.status, Status::InvalidArgument);
    assert!(err.message.contains("params[1] has 5 elements"), "{}", err.message);
    assert_eq!(a, vec![1.0f32; 3]); // nothing moved

    let err = opt.predict(&mut [&mut a[..]]).unwrap_err();
    assert!(err.message.contains("1 tensors"), "{}", err.message);

    let mut d = vec![1.0f64; 3];
    let mut e = vec![1.0f64; 2];
    let err = opt.predict(&mut [&mut d[..], &mut e[..]]).unwrap_err();
    assert!(err.message.contains("Float64"), "{}", err.message);

    // the optimizer is still usable: the failed calls changed nothing
    let mut b = vec![1.0f32; 2];
    opt.predict(&mut [&mut a[..], &mut b[..]]).unwrap();
}

#[test]
fn out_of_order_and_non_finite_steps() {
    let mut opt = Optimizer::host::<f64>(&Config::new(Method::Vanilla), &[2]).unwrap();
    let mut x = vec![1.0, 2.0];
    let g = vec![0.5, 0.5];
    let err = opt.update(1.0, 1.0, &mut [&mut x[..]], &[&g[..]]).unwrap_err();
    assert_eq!(err.status, Status::BadState);
    assert!(err.message.contains("predict"), "{}", err.message);

    opt.predict(&mut [&mut x[..]]).unwrap();
    let before = opt.info().unwrap();
    let err = opt.update(f64::NAN, 1.0, &mut [&mut x[..]], &[&g[..]]).unwrap_err();
    assert_eq!(err.status, Status::NotFinite);
    assert_eq!(x, vec![1.0, 2.0]);
    assert_eq!(opt.info().unwrap(), before);
    let bad_grad = vec![f64::INFINITY, 0.0];
    let err = opt.update(1.0, 1.0, &mut [&mut x[..]], &[&bad_grad[..]]).unwrap_err();
    assert_eq!(err.status, Status::NotFinite);
    // still predicted: a retry with a good minibatch works
    opt.update_partial(1.0, 1.0, &mut [&mut x[..]], &[Some(&g[..])]).unwrap();
    assert_eq!(opt.info().unwrap().steps, 1);
}

#[test]
fn set_lr_rejects_negative_values() {
    let mut opt = Optimizer::host::<f32>(&Config::new(Method::Vanilla), &[1]).unwrap();
    let err = opt.set_lr(-1.0).unwrap_err();
    assert_eq!(err.status, Status::InvalidArgument);
    assert!(err.message.contains("lr"), "{}", err.message);
    opt.set_lr(0.5).unwrap();
}

#[test]
fn corrupt_and_mismatched_checkpoints_are_bad_state() {
    let mut opt = Optimizer::host::<f32>(&Config::new(Method::Momentum), &[4]).unwrap();
    let mut bytes = opt.save_state().unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    assert_eq!(opt.load_state(&bytes).unwrap_err().status, Status::BadState);
    let truncated = opt.save_state().unwrap();
    assert_eq!(opt.load_state(&truncated[..truncated.len() - 1]).unwrap_err().status, Status::BadState);
    let other = Optimizer::host::<f32>(&Config::new(Method::Momentum), &[5]).unwrap().save_state().unwrap();
    assert_eq!(opt.load_state(&other).unwrap_err().status, Status::BadState);
}

#[test]
fn device_memory_without_a_gpu_is_unsupported() {
    if koala::device_probe().is_ok() {
        eprintln!("a GPU is usable here; the no-GPU error path is not exercised");
        return;
    }
    let err = Optimizer::new(&Config::new(Method::Vanilla), &[4], koala::DType::Float32, koala::Memory::Device)
        .unwrap_err();
    assert!(matches!(err.status, Status::Unsupported | Status::Cuda), "{:?}", err);
    assert!(!err.message.is_empty());
}

#[test]
fn version_matches_the_header() {
    assert_eq!(koala::version(), koala_sys::KOALA_VERSION_NUMBER);
}

/// koala-sys directly: a sharded optimizer whose all-reduce callback fails
/// returns KOALA_ERROR_COMMUNICATION (Status::Communication) and changes
/// nothing.
#[test]
fn a_failing_allreduce_is_a_communication_error() {
    use koala_sys as sys;
    use std::os::raw::{c_int, c_void};
    unsafe extern "C" fn fails(buf: *mut f64, count: usize, _stream: *mut c_void, user: *mut c_void) -> c_int {
        *(user as *mut usize) = count;
        *buf = f64::NAN; // scribbles on the buffer: the library must not use it
        1
    }
    let mut seen_count = 0usize;
    let cfg = Config::new(Method::PlusPlus);
    let shard = sys::koala_shard {
        struct_size: std::mem::size_of::<sys::koala_shard>(),
        n_global: 1,
        global_index: std::ptr::null(),
        global_elements: 3,
        allreduce: Some(fails),
        user: &mut seen_count as *mut usize as *mut c_void,
    };
    let mut x = [1.0f32, 2.0, 3.0];
    let g = [0.5f32, -0.5, 0.25];
    unsafe {
        let mut opt: *mut sys::koala_optimizer = std::ptr::null_mut();
        let st = sys::koala_create_sharded(
            cfg.as_raw(),
            1,
            [3usize].as_ptr(),
            &shard,
            sys::koala_dtype_KOALA_FLOAT32,
            sys::koala_memory_KOALA_HOST,
            &mut opt,
        );
        assert_eq!(st, sys::koala_status_KOALA_OK);
        let params = [x.as_mut_ptr() as *mut c_void];
        let grads = [g.as_ptr() as *const c_void];
        assert_eq!(sys::koala_predict(opt, params.as_ptr(), std::ptr::null_mut()), 0);
        let st = sys::koala_update(opt, 1.0, 1.0, params.as_ptr(), grads.as_ptr(), std::ptr::null_mut());
        assert_eq!(st, Status::Communication.raw());
        let mut n = 0usize;
        assert_eq!(sys::koala_sums_size(opt, &mut n), 0);
        assert_eq!(seen_count, n);
        sys::koala_destroy(opt);
    }
    assert_eq!(x, [1.0f32, 2.0, 3.0]);
}
