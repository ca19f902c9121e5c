//! Hyper-parameters: a builder over `koala_config`.
//!
//! `Config::new` starts from `koala_config_init` (the reference defaults);
//! each setter changes one field. Values are validated by the library when
//! an optimizer is created (`Optimizer::new` returns the error naming the
//! field), not here, so there is one set of rules.
use koala_sys as sys;

/// `koala_method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// KOALA-V: scalar covariance, no per-parameter state.
    Vanilla,
    /// KOALA-M: weights + velocities, 2x2 covariance, 8 bytes/parameter of state.
    Momentum,
    /// KOALA++ (since 1.1): the row vector v = H P per tensor, the symmetric
    /// variant of the official koalap.py; 8 bytes/parameter of state. Uses
    /// `sigma` (initial P0 = sigma I), `q`, `r`, `alpha_r`, `weight_decay`, `lr`.
    PlusPlus,
}

impl Method {
    pub(crate) fn raw(self) -> sys::koala_method {
        match self {
            Method::Vanilla => sys::koala_method_KOALA_VANILLA,
            Method::Momentum => sys::koala_method_KOALA_MOMENTUM,
            Method::PlusPlus => sys::koala_method_KOALA_PLUSPLUS,
        }
    }
}

/// A `koala_config` with builder-style setters.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    raw: sys::koala_config,
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub fn $name(mut self, value: f64) -> Config {
            self.raw.$name = value;
            self
        }
    };
}

impl Config {
    /// The reference defaults for `method`: `koala_config_init_sized` with
    /// this crate's `size_of::<koala_config>()` (what koala.h's
    /// `koala_config_init` macro does in C), so the 1.1 fields are set and
    /// honoured.
    pub fn new(method: Method) -> Config {
        let mut raw = std::mem::MaybeUninit::<sys::koala_config>::zeroed();
        unsafe {
            sys::koala_config_init_sized(raw.as_mut_ptr(), method.raw(), std::mem::size_of::<sys::koala_config>());
            Config { raw: raw.assume_init() }
        }
    }

    setter!(
        /// Target multiplier eta >= 0 (default 1.0): each step tries to remove lr*loss.
        lr
    );
    setter!(
        /// Weight decay omega >= 0 (default 0).
        weight_decay
    );
    setter!(
        /// Smoothing of the online R estimate, in [0, 1) (default 0.9).
        alpha_r
    );
    setter!(
        /// KOALA-V: initial covariance (default 1.0; the reference train.py uses 0.1).
        /// KOALA++: initial P0 = sigma I (default 1.0).
        sigma
    );
    setter!(
        /// KOALA-V: process noise added by predict (default 1.0). KOALA++: process noise Q (default 1.0).
        q
    );
    setter!(
        /// KOALA-M: initial P[0][0] (default 0.1).
        sw
    );
    setter!(
        /// KOALA-M: initial P[0][1] (default 0).
        sc
    );
    setter!(
        /// KOALA-M: initial P[1][1] (default 0.1).
        sv
    );
    setter!(
        /// KOALA-M: velocity decay in [0, 1) (default 0.9).
        a
    );
    setter!(
        /// KOALA-M: initial weight process noise (default 0.01, adapted online).
        qw
    );
    setter!(
        /// KOALA-M: velocity process noise (default 0.01).
        qv
    );

    /// A fixed measurement noise R >= 0 instead of the online estimate.
    pub fn fixed_r(mut self, r: f64) -> Config {
        self.raw.r = r;
        self
    }

    /// The online R estimate (the default): R <- alpha_r*R + (1-alpha_r)*loss_var.
    pub fn online_r(mut self) -> Config {
        self.raw.r = f64::NAN;
        self
    }

    // ---- since 1.1 ------------------------------------------------------

    /// Host optimizers: CPU threads for this optimizer's passes; 0 (the
    /// default) = `KOALA_NUM_THREADS` if set, else the CPUs this process may
    /// run on. Idle workers sleep; results do not depend on the count.
    pub fn threads(mut self, threads: i32) -> Config {
        self.raw.threads = threads;
        self
    }

    /// bfloat16/float16 parameters: round updated parameters stochastically
    /// (reproducibly from `seed`) instead of to nearest-even.
    pub fn stochastic_rounding(mut self, on: bool) -> Config {
        self.raw.stochastic_rounding = on as i32;
        self
    }

    /// The seed of the stochastic rounding (default 0).
    pub fn seed(mut self, seed: u64) -> Config {
        self.raw.seed = seed;
        self
    }

    /// KOALA++: the asymmetric variant (w_k = 0) instead of the symmetric default.
    pub fn asymmetric(mut self, on: bool) -> Config {
        self.raw.asymmetric = on as i32;
        self
    }

    /// KOALA-M: the update also applies the next prediction (36 instead of
    /// 52 bytes per float32 parameter and step); `Optimizer::posterior`
    /// then gives the posterior weights. Same trajectory.
    pub fn fused_predict(mut self, on: bool) -> Config {
        self.raw.fused_predict = on as i32;
        self
    }

    /// The C struct, for calls through `koala-sys`. (`caller_state` has no
    /// setter here: caller-owned state is for engines that manage memory
    /// themselves, through `koala-sys`.)
    pub fn as_raw(&self) -> &sys::koala_config {
        &self.raw
    }
}
