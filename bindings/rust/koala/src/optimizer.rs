//! `Optimizer`: owns a `koala_optimizer` handle.
use std::os::raw::c_void;
use std::ptr::{self, NonNull};

use koala_sys as sys;

use crate::config::Config;
use crate::element::{DType, Element};
use crate::error::{check, Error};
use crate::info::Info;

/// `koala_memory`: where the parameters and gradients live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Memory {
    Host,
    /// CUDA device memory (only through the `unsafe` `*_raw` methods).
    Device,
}

impl Memory {
    fn raw(self) -> sys::koala_memory {
        match self {
            Memory::Host => sys::koala_memory_KOALA_HOST,
            Memory::Device => sys::koala_memory_KOALA_DEVICE,
        }
    }
}

/// A KOALA optimizer over a fixed list of tensors (layers).
///
/// Every training iteration is `predict` (before the forward pass) then
/// `update` (after the backward pass); see the crate documentation.
#[derive(Debug)]
pub struct Optimizer {
    handle: NonNull<sys::koala_optimizer>,
    sizes: Vec<usize>,
    dtype: DType,
    memory: Memory,
    /// tensors of the whole model (== sizes.len() unless sharded)
    n_global: usize,
}

/// How this process's tensors sit in the whole model, for
/// [`Optimizer::new_sharded`] (koala.h's `koala_shard` without the
/// callback: the Rust binding offers the two-phase update instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// Tensors of the whole model, the same on every process.
    pub n_global: usize,
    /// The global tensor (0-based) that local tensor i is a piece of; `None`
    /// means local tensor i is global tensor i.
    pub global_index: Option<Vec<usize>>,
    /// Elements of the whole model (KOALA-M's q_w normalisation).
    pub global_elements: u64,
}

// The C contract: an optimizer may be used from any thread, by one thread at
// a time. `&mut self` on every mutating call gives "one at a time"; the
// handle is not `Sync` because even `info` and `save_state` must not run
// concurrently with a step on another thread.
unsafe impl Send for Optimizer {}

impl Drop for Optimizer {
    fn drop(&mut self) {
        unsafe { sys::koala_destroy(self.handle.as_ptr()) }
    }
}

impl Optimizer {
    /// Creates an optimizer for tensors of `sizes` elements of `dtype` in `memory`.
    pub fn new(config: &Config, sizes: &[usize], dtype: DType, memory: Memory) -> Result<Optimizer, Error> {
        let mut out: *mut sys::koala_optimizer = ptr::null_mut();
        // an empty slice's pointer is dangling but non-NULL; the C side sees
        // n_tensors == 0 first and says so
        check(unsafe {
            sys::koala_create(config.as_raw(), sizes.len(), sizes.as_ptr(), dtype.raw(), memory.raw(), &mut out)
        })?;
        let handle = NonNull::new(out)
            .ok_or_else(|| Error::invalid("koala_create: returned OK without a handle".to_string()))?;
        Ok(Optimizer { handle, sizes: sizes.to_vec(), dtype, memory, n_global: sizes.len() })
    }

    /// An optimizer over this process's pieces (`sizes`) of a model whose
    /// elements are spread over several processes (koala_create_sharded,
    /// since 1.1). Each step is `predict`, then `update_begin` (this
    /// process's partial sums), an element-wise sum of the sums buffer over
    /// all processes (MPI_Allreduce, ...), then `update_end`.
    pub fn new_sharded(
        config: &Config,
        sizes: &[usize],
        shard: &Shard,
        dtype: DType,
        memory: Memory,
    ) -> Result<Optimizer, Error> {
        if let Some(index) = &shard.global_index {
            if index.len() != sizes.len() {
                return Err(Error::invalid(format!(
                    "Optimizer::new_sharded: shard.global_index has {} entries; there are {} local tensors",
                    index.len(),
                    sizes.len()
                )));
            }
        }
        let raw = sys::koala_shard {
            struct_size: std::mem::size_of::<sys::koala_shard>(),
            n_global: shard.n_global,
            global_index: shard.global_index.as_ref().map_or(ptr::null(), |v| v.as_ptr()),
            global_elements: shard.global_elements,
            allreduce: None,
            user: ptr::null_mut(),
        };
        let mut out: *mut sys::koala_optimizer = ptr::null_mut();
        check(unsafe {
            sys::koala_create_sharded(
                config.as_raw(),
                sizes.len(),
                if sizes.is_empty() { ptr::null() } else { sizes.as_ptr() },
                &raw,
                dtype.raw(),
                memory.raw(),
                &mut out,
            )
        })?;
        let handle = NonNull::new(out)
            .ok_or_else(|| Error::invalid("koala_create_sharded: returned OK without a handle".to_string()))?;
        Ok(Optimizer { handle, sizes: sizes.to_vec(), dtype, memory, n_global: shard.n_global })
    }

    /// A host-memory optimizer over `T` (`f32` or `f64`) tensors.
    pub fn host<T: Element>(config: &Config, sizes: &[usize]) -> Result<Optimizer, Error> {
        Optimizer::new(config, sizes, T::DTYPE, Memory::Host)
    }

    /// Element counts of the tensors, as given at creation.
    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn memory(&self) -> Memory {
        self.memory
    }

    /// The raw handle, for calls through `koala-sys`. Still owned by `self`.
    pub fn as_raw(&mut self) -> *mut sys::koala_optimizer {
        self.handle.as_ptr()
    }

    // ---- host memory ---------------------------------------------------

    fn check_host<T: Element>(&self, what: &str) -> Result<(), Error> {
        if self.memory != Memory::Host {
            return Err(Error::invalid(format!(
                "{}: this optimizer works on device memory; use the unsafe *_raw methods",
                what
            )));
        }
        if T::DTYPE != self.dtype {
            return Err(Error::invalid(format!(
                "{}: slices of {:?} given to an optimizer created for {:?}",
                what,
                T::DTYPE,
                self.dtype
            )));
        }
        Ok(())
    }

    fn check_lengths(&self, what: &str, name: &str, lengths: &[Option<usize>]) -> Result<(), Error> {
        if lengths.len() != self.sizes.len() {
            return Err(Error::invalid(format!(
                "{}: {} has {} tensors; the optimizer was created for {}",
                what,
                name,
                lengths.len(),
                self.sizes.len()
            )));
        }
        for (i, (len, size)) in lengths.iter().zip(self.sizes.iter()).enumerate() {
            if let Some(len) = len {
                if len != size {
                    return Err(Error::invalid(format!(
                        "{}: {}[{}] has {} elements; the layout says {}",
                        what, name, i, len, size
                    )));
                }
            }
        }
        Ok(())
    }

    /// The time update, before the forward pass. KOALA-M moves `params` to
    /// the prediction x + v here; KOALA-V does not touch them.
    pub fn predict<T: Element>(&mut self, params: &mut [&mut [T]]) -> Result<(), Error> {
        let what = "Optimizer::predict";
        self.check_host::<T>(what)?;
        let lengths: Vec<Option<usize>> = params.iter().map(|p| Some(p.len())).collect();
        self.check_lengths(what, "params", &lengths)?;
        let ptrs: Vec<*mut c_void> = params.iter_mut().map(|p| p.as_mut_ptr() as *mut c_void).collect();
        check(unsafe { sys::koala_predict(self.handle.as_ptr(), ptrs.as_ptr(), ptr::null_mut()) })
    }

    /// The measurement update, after the backward pass: `loss` is the mean
    /// minibatch loss, `loss_var` the mean of the squared per-sample losses,
    /// `grads[i]` the gradient of `loss` with respect to `params[i]`.
    pub fn update<T: Element>(
        &mut self,
        loss: f64,
        loss_var: f64,
        params: &mut [&mut [T]],
        grads: &[&[T]],
    ) -> Result<(), Error> {
        let grads: Vec<Option<&[T]>> = grads.iter().map(|g| Some(*g)).collect();
        self.update_partial(loss, loss_var, params, &grads)
    }

    /// `update` where some tensors may have no gradient this step (`None`:
    /// the tensor is left alone, like `p.grad is None` in PyTorch).
    pub fn update_partial<T: Element>(
        &mut self,
        loss: f64,
        loss_var: f64,
        params: &mut [&mut [T]],
        grads: &[Option<&[T]>],
    ) -> Result<(), Error> {
        let what = "Optimizer::update";
        self.check_host::<T>(what)?;
        let lengths: Vec<Option<usize>> = params.iter().map(|p| Some(p.len())).collect();
        self.check_lengths(what, "params", &lengths)?;
        let lengths: Vec<Option<usize>> = grads.iter().map(|g| g.map(|g| g.len())).collect();
        self.check_lengths(what, "grads", &lengths)?;
        let param_ptrs: Vec<*mut c_void> = params.iter_mut().map(|p| p.as_mut_ptr() as *mut c_void).collect();
        let grad_ptrs: Vec<*const c_void> = grads
            .iter()
            .map(|g| match g {
                Some(g) => g.as_ptr() as *const c_void,
                None => ptr::null(),
            })
            .collect();
        check(unsafe {
            sys::koala_update(
                self.handle.as_ptr(),
                loss,
                loss_var,
                param_ptrs.as_ptr(),
                grad_ptrs.as_ptr(),
                ptr::null_mut(),
            )
        })
    }

    // ---- two-phase update (since 1.1) --------------------------------------

    /// The length of the partial-sums buffer of `update_begin` / `update_end`.
    pub fn sums_size(&self) -> Result<usize, Error> {
        let mut n = 0usize;
        check(unsafe { sys::koala_sums_size(self.handle.as_ptr(), &mut n) })?;
        Ok(n)
    }

    fn host_pointers<T: Element>(
        &self,
        what: &str,
        params: &mut [&mut [T]],
        grads: &[Option<&[T]>],
    ) -> Result<(Vec<*mut c_void>, Vec<*const c_void>), Error> {
        self.check_host::<T>(what)?;
        let lengths: Vec<Option<usize>> = params.iter().map(|p| Some(p.len())).collect();
        self.check_lengths(what, "params", &lengths)?;
        let lengths: Vec<Option<usize>> = grads.iter().map(|g| g.map(|g| g.len())).collect();
        self.check_lengths(what, "grads", &lengths)?;
        let param_ptrs = params.iter_mut().map(|p| p.as_mut_ptr() as *mut c_void).collect();
        let grad_ptrs = grads
            .iter()
            .map(|g| match g {
                Some(g) => g.as_ptr() as *const c_void,
                None => ptr::null(),
            })
            .collect();
        Ok((param_ptrs, grad_ptrs))
    }

    fn check_sums(&self, what: &str, len: usize) -> Result<(), Error> {
        let n = self.sums_size()?;
        if len != n {
            return Err(Error::invalid(format!("{}: sums has {} elements; sums_size() is {}", what, len, n)));
        }
        Ok(())
    }

    /// Phase 1: writes this process's partial sums into `sums`
    /// (`sums_size()` elements). Changes nothing but the phase.
    pub fn update_begin<T: Element>(
        &mut self,
        params: &mut [&mut [T]],
        grads: &[Option<&[T]>],
        sums: &mut [f64],
    ) -> Result<(), Error> {
        let what = "Optimizer::update_begin";
        let (p, g) = self.host_pointers(what, params, grads)?;
        self.check_sums(what, sums.len())?;
        check(unsafe {
            sys::koala_update_begin(self.handle.as_ptr(), p.as_ptr(), g.as_ptr(), sums.as_mut_ptr(), ptr::null_mut())
        })
    }

    /// Phase 2: finishes the update from `sums` summed over all processes,
    /// exactly as `update_partial` would have.
    pub fn update_end<T: Element>(
        &mut self,
        loss: f64,
        loss_var: f64,
        params: &mut [&mut [T]],
        grads: &[Option<&[T]>],
        sums: &[f64],
    ) -> Result<(), Error> {
        let what = "Optimizer::update_end";
        let (p, g) = self.host_pointers(what, params, grads)?;
        self.check_sums(what, sums.len())?;
        check(unsafe {
            sys::koala_update_end(
                self.handle.as_ptr(),
                loss,
                loss_var,
                p.as_ptr(),
                g.as_ptr(),
                sums.as_ptr(),
                ptr::null_mut(),
            )
        })
    }

    // ---- per-tensor hyper-parameters, posterior (since 1.1) --------------

    fn per_tensor(&self, what: &str, name: &str, values: Option<&[f64]>) -> Result<*const f64, Error> {
        match values {
            None => Ok(ptr::null()),
            Some(v) if v.len() == self.n_global => Ok(v.as_ptr()),
            Some(v) => Err(Error::invalid(format!(
                "{}: {} has {} values; the model has {} tensors",
                what,
                name,
                v.len(),
                self.n_global
            ))),
        }
    }

    /// Per-tensor lr multipliers: tensor i steps with `lr * scale[i]` (one
    /// finite value >= 0 per global tensor); `None` restores 1 everywhere.
    pub fn set_tensor_lr(&mut self, scale: Option<&[f64]>) -> Result<(), Error> {
        let p = self.per_tensor("Optimizer::set_tensor_lr", "scale", scale)?;
        check(unsafe { sys::koala_set_tensor_lr(self.handle.as_ptr(), p, ptr::null_mut()) })
    }

    /// Per-tensor weight decay (one finite value >= 0 per global tensor);
    /// `None` restores the config's `weight_decay` everywhere.
    pub fn set_tensor_weight_decay(&mut self, weight_decay: Option<&[f64]>) -> Result<(), Error> {
        let p = self.per_tensor("Optimizer::set_tensor_weight_decay", "weight_decay", weight_decay)?;
        check(unsafe { sys::koala_set_tensor_weight_decay(self.handle.as_ptr(), p, ptr::null_mut()) })
    }

    /// The posterior weights of the last update into `out`: with
    /// `Config::fused_predict` the parameters already hold the next
    /// prediction, and this takes it off again (to rounding); otherwise a
    /// copy of `params`. Not between `predict` and `update` of KOALA-M.
    pub fn posterior<T: Element>(&self, params: &[&[T]], out: &mut [&mut [T]]) -> Result<(), Error> {
        let what = "Optimizer::posterior";
        self.check_host::<T>(what)?;
        let lengths: Vec<Option<usize>> = params.iter().map(|p| Some(p.len())).collect();
        self.check_lengths(what, "params", &lengths)?;
        let lengths: Vec<Option<usize>> = out.iter().map(|p| Some(p.len())).collect();
        self.check_lengths(what, "out", &lengths)?;
        // the library only reads params (koala.h types them `void *const *`)
        let p: Vec<*mut c_void> = params.iter().map(|p| p.as_ptr() as *mut c_void).collect();
        let o: Vec<*mut c_void> = out.iter_mut().map(|p| p.as_mut_ptr() as *mut c_void).collect();
        check(unsafe { sys::koala_posterior(self.handle.as_ptr(), p.as_ptr(), o.as_ptr(), ptr::null_mut()) })
    }

    // ---- raw pointers (device memory, or host memory you manage) --------

    fn check_count(&self, what: &str, name: &str, n: usize) -> Result<(), Error> {
        self.check_lengths(what, name, &vec![None; n])
    }

    /// `koala_predict` on raw pointers (one per tensor).
    ///
    /// # Safety
    /// Each `params[i]` must point to `sizes()[i]` writable elements of the
    /// optimizer's dtype in its memory kind; `stream` must be a valid
    /// `cudaStream_t` (or NULL) for device optimizers and NULL for host ones.
    pub unsafe fn predict_raw(&mut self, params: &[*mut c_void], stream: *mut c_void) -> Result<(), Error> {
        self.check_count("Optimizer::predict_raw", "params", params.len())?;
        check(sys::koala_predict(self.handle.as_ptr(), params.as_ptr(), stream))
    }

    /// `koala_update` on raw pointers; a NULL `grads[i]` skips tensor i.
    ///
    /// # Safety
    /// As `predict_raw`; each non-NULL `grads[i]` must point to `sizes()[i]`
    /// readable elements.
    pub unsafe fn update_raw(
        &mut self,
        loss: f64,
        loss_var: f64,
        params: &[*mut c_void],
        grads: &[*const c_void],
        stream: *mut c_void,
    ) -> Result<(), Error> {
        self.check_count("Optimizer::update_raw", "params", params.len())?;
        self.check_count("Optimizer::update_raw", "grads", grads.len())?;
        check(sys::koala_update(self.handle.as_ptr(), loss, loss_var, params.as_ptr(), grads.as_ptr(), stream))
    }

    /// `koala_update_ptr`: `loss` and `loss_var` are read from memory of the
    /// optimizer's kind (device memory for a device optimizer, so the step
    /// needs no host synchronisation), each one scalar of `loss_dtype`.
    ///
    /// # Safety
    /// As `update_raw`; `loss` and `loss_var` must point to one readable
    /// scalar of `loss_dtype` each.
    pub unsafe fn update_ptr_raw(
        &mut self,
        loss: *const c_void,
        loss_var: *const c_void,
        loss_dtype: DType,
        params: &[*mut c_void],
        grads: &[*const c_void],
        stream: *mut c_void,
    ) -> Result<(), Error> {
        self.check_count("Optimizer::update_ptr_raw", "params", params.len())?;
        self.check_count("Optimizer::update_ptr_raw", "grads", grads.len())?;
        check(sys::koala_update_ptr(
            self.handle.as_ptr(),
            loss,
            loss_var,
            loss_dtype.raw(),
            params.as_ptr(),
            grads.as_ptr(),
            stream,
        ))
    }

    // ---- inspection, control, checkpoint ----------------------------------

    /// The filter's scalars and counters (device optimizers: waits for the
    /// default stream).
    pub fn info(&self) -> Result<Info, Error> {
        let mut raw = std::mem::MaybeUninit::<sys::koala_info>::zeroed();
        unsafe {
            (*raw.as_mut_ptr()).struct_size = std::mem::size_of::<sys::koala_info>();
            check(sys::koala_get_info(self.handle.as_ptr(), ptr::null_mut(), raw.as_mut_ptr()))?;
            Ok(Info::from(raw.assume_init()))
        }
    }

    /// Sets the target multiplier for the following updates (finite, >= 0).
    pub fn set_lr(&mut self, lr: f64) -> Result<(), Error> {
        check(unsafe { sys::koala_set_lr(self.handle.as_ptr(), lr) })
    }

    /// The checkpoint: a versioned, checksummed byte string (config included).
    pub fn save_state(&self) -> Result<Vec<u8>, Error> {
        let mut size = 0usize;
        check(unsafe { sys::koala_state_size(self.handle.as_ptr(), &mut size) })?;
        let mut buf = vec![0u8; size];
        check(unsafe {
            sys::koala_state_save(self.handle.as_ptr(), buf.as_mut_ptr() as *mut c_void, size, ptr::null_mut())
        })?;
        Ok(buf)
    }

    /// Restores a checkpoint from `save_state` of an optimizer with the same
    /// method, dtype and sizes; the run then continues bit for bit. A corrupt
    /// or mismatched buffer is `Status::BadState` and changes nothing.
    pub fn load_state(&mut self, bytes: &[u8]) -> Result<(), Error> {
        check(unsafe {
            sys::koala_state_load(
                self.handle.as_ptr(),
                bytes.as_ptr() as *const c_void,
                bytes.len(),
                ptr::null_mut(),
            )
        })
    }
}
