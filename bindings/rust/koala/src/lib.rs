//! Safe Rust interface to libkoala, the KOALA Kalman-filter optimizer.
//!
//! ```no_run
//! use koala::{Config, Method, Optimizer};
//! let mut w = vec![0.0f32; 10];
//! let mut b = vec![0.0f32; 1];
//! let mut opt = Optimizer::host::<f32>(&Config::new(Method::Vanilla), &[w.len(), b.len()])?;
//! for _step in 0..100 {
//!     opt.predict(&mut [&mut w[..], &mut b[..]])?;
//!     // forward: per-sample losses l_j; backward of their mean into gw, gb
//!     let (loss, loss_var, gw, gb) = (0.5, 0.3, vec![0.1f32; 10], vec![0.0f32; 1]);
//!     opt.update(loss, loss_var, &mut [&mut w[..], &mut b[..]], &[&gw[..], &gb[..]])?;
//! }
//! # Ok::<(), koala::Error>(())
//! ```
//!
//! The crate is a thin layer: every number is computed by the C++ core
//! behind the C ABI (`koala-sys`). What it adds is ownership (`Optimizer`
//! frees its handle on drop; it is `Send` but not `Sync`, as the C contract
//! says one optimizer is used by one thread at a time), length and dtype
//! checks of host slices against the layout given at creation, and
//! `Result<_, Error>` carrying the status and the library's message.
//!
//! Device (CUDA) memory goes through the `unsafe` `*_raw` methods, which take
//! raw pointers and a stream.
//!
//! Since libkoala 1.1: `Method::PlusPlus` (KOALA++), the config fields
//! `threads`, `stochastic_rounding`, `seed`, `asymmetric`, `fused_predict`,
//! per-tensor lr multipliers and weight decay, `posterior`, and sharded
//! optimizers (`Optimizer::new_sharded`) with the two-phase update
//! (`update_begin`, an all-reduce of the sums buffer by the caller,
//! `update_end`).
//!
//! Threads: one optimizer is used by one thread at a time (`&mut self`;
//! `Optimizer` is `Send`, not `Sync`); distinct optimizers may run on
//! distinct threads at once. A host optimizer runs its passes on
//! `Config::threads` CPU threads of the library's own pool (0: the
//! `KOALA_NUM_THREADS` environment variable, else every CPU the process may
//! use); the workers sleep between calls.
//!
//! ```compile_fail,E0277
//! // An optimizer may move to another thread but not be shared between threads.
//! fn shared<T: Sync>() {}
//! shared::<koala::Optimizer>();
//! ```

mod config;
mod element;
mod error;
mod info;
mod optimizer;

pub use config::{Config, Method};
pub use element::{DType, Element};
pub use error::{Error, Status};
pub use info::Info;
pub use optimizer::{Memory, Optimizer, Shard};

/// The libkoala version that was linked: MAJOR*10000 + MINOR*100 + PATCH.
pub fn version() -> u32 {
    unsafe { koala_sys::koala_version() }
}

/// Ok when device optimizers can be created here (the CUDA plugin loads and
/// a GPU is visible); otherwise the error says why.
pub fn device_probe() -> Result<(), Error> {
    error::check(unsafe { koala_sys::koala_device_probe() })
}
