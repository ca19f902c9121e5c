//! What an optimizer reports about itself (`koala_info`).
use koala_sys as sys;

/// The filter's current scalars and step counters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Info {
    /// Completed update calls.
    pub steps: u64,
    /// Device optimizers: updates skipped on the device (non-finite loss or gradient).
    pub skipped_steps: u64,
    /// KOALA-V: current sigma (P after update, P-hat after predict).
    pub sigma: f64,
    /// KOALA-M: current 2x2 covariance [[p00, p01], [p01, p11]].
    pub p00: f64,
    pub p01: f64,
    pub p11: f64,
    /// Current measurement noise R.
    pub r: f64,
    /// KOALA-M: current weight process noise q_w.
    pub qw: f64,
    /// The current target multiplier (since 1.1).
    pub lr: f64,
    /// Host optimizers: the CPU threads the passes run on (since 1.1).
    pub threads: i32,
    /// 0 = updated (predict next), 1 = predicted (update next), 2 =
    /// `update_begin` done (`update_end` next). Since 1.1.
    pub phase: i32,
}

impl From<sys::koala_info> for Info {
    fn from(i: sys::koala_info) -> Info {
        Info {
            steps: i.steps,
            skipped_steps: i.skipped_steps,
            sigma: i.sigma,
            p00: i.p00,
            p01: i.p01,
            p11: i.p11,
            r: i.r,
            qw: i.qw,
            lr: i.lr,
            threads: i.threads,
            phase: i.phase,
        }
    }
}
