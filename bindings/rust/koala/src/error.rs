//! Statuses of the C ABI as a Rust error carrying the library's message.
use std::ffi::CStr;
use std::fmt;

use koala_sys as sys;

/// A `koala_status` other than `KOALA_OK`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    InvalidArgument,
    OutOfMemory,
    NotFinite,
    Unsupported,
    Cuda,
    BadState,
    /// The all-reduce callback of a sharded optimizer failed (since 1.1).
    Communication,
    /// A status this crate does not know (a newer library).
    Other(u32),
}

impl Status {
    fn from_raw(s: sys::koala_status) -> Status {
        match s {
            sys::koala_status_KOALA_ERROR_INVALID_ARGUMENT => Status::InvalidArgument,
            sys::koala_status_KOALA_ERROR_OUT_OF_MEMORY => Status::OutOfMemory,
            sys::koala_status_KOALA_ERROR_NOT_FINITE => Status::NotFinite,
            sys::koala_status_KOALA_ERROR_UNSUPPORTED => Status::Unsupported,
            sys::koala_status_KOALA_ERROR_CUDA => Status::Cuda,
            sys::koala_status_KOALA_ERROR_BAD_STATE => Status::BadState,
            sys::koala_status_KOALA_ERROR_COMMUNICATION => Status::Communication,
            other => Status::Other(other),
        }
    }

    /// The C value of this status.
    pub fn raw(self) -> u32 {
        match self {
            Status::InvalidArgument => sys::koala_status_KOALA_ERROR_INVALID_ARGUMENT,
            Status::OutOfMemory => sys::koala_status_KOALA_ERROR_OUT_OF_MEMORY,
            Status::NotFinite => sys::koala_status_KOALA_ERROR_NOT_FINITE,
            Status::Unsupported => sys::koala_status_KOALA_ERROR_UNSUPPORTED,
            Status::Cuda => sys::koala_status_KOALA_ERROR_CUDA,
            Status::BadState => sys::koala_status_KOALA_ERROR_BAD_STATE,
            Status::Communication => sys::koala_status_KOALA_ERROR_COMMUNICATION,
            Status::Other(s) => s,
        }
    }

    /// The library's static description ("KOALA_ERROR_NOT_FINITE: ...").
    pub fn description(self) -> String {
        c_string(unsafe { sys::koala_status_string(self.raw()) })
    }
}

/// A failed call: the status and the message naming the argument and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub status: Status,
    pub message: String,
}

impl Error {
    /// An error raised by this crate before calling the library (a slice of
    /// the wrong length, say), phrased like the library's own messages.
    pub(crate) fn invalid(message: String) -> Error {
        Error { status: Status::InvalidArgument, message }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.status, self.message)
    }
}

impl std::error::Error for Error {}

fn c_string(p: *const std::os::raw::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Ok for KOALA_OK; otherwise the status with this thread's last message
/// (read at once, before any other libkoala call can replace it).
pub(crate) fn check(s: sys::koala_status) -> Result<(), Error> {
    if s == sys::koala_status_KOALA_OK {
        return Ok(());
    }
    Err(Error { status: Status::from_raw(s), message: c_string(unsafe { sys::koala_last_error() }) })
}
