//! The element types an optimizer can work on.
use koala_sys as sys;

/// `koala_dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    Float32,
    Float64,
    /// bfloat16 (since 1.1; raw pointers only: Rust has no stable bf16 type)
    BFloat16,
    /// IEEE binary16 (since 1.1; raw pointers only)
    Float16,
}

impl DType {
    pub(crate) fn raw(self) -> sys::koala_dtype {
        match self {
            DType::Float32 => sys::koala_dtype_KOALA_FLOAT32,
            DType::Float64 => sys::koala_dtype_KOALA_FLOAT64,
            DType::BFloat16 => sys::koala_dtype_KOALA_BFLOAT16,
            DType::Float16 => sys::koala_dtype_KOALA_FLOAT16,
        }
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// `f32` or `f64`: the Rust types of host parameters and gradients.
pub trait Element: sealed::Sealed + Copy {
    const DTYPE: DType;
}

impl Element for f32 {
    const DTYPE: DType = DType::Float32;
}

impl Element for f64 {
    const DTYPE: DType = DType::Float64;
}
