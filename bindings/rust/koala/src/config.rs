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
}

impl Method {
    pub(crate) fn raw(self) -> sys::koala_method {
        match self {
            Method::Vanilla => sys::koala_method_KOALA_VANILLA,
            Method::Momentum => sys::koala_method_KOALA_MOMENTUM,
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
    /// The reference defaults for `method` (koala_config_init).
    pub fn new(method: Method) -> Config {
        let mut raw = std::mem::MaybeUninit::<sys::koala_config>::zeroed();
        unsafe {
            sys::koala_config_init(raw.as_mut_ptr(), method.raw());
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
        sigma
    );
    setter!(
        /// KOALA-V: process noise added by predict (default 1.0).
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

    /// The C struct, for calls through `koala-sys`.
    pub fn as_raw(&self) -> &sys::koala_config {
        &self.raw
    }
}
