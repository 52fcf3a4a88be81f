//! Items the macros' generated code uses. Not part of the public API: no semver guarantees.

pub use crate::ctx::Ctx;
pub use crate::runtime::run_nested;
pub use futures_util::future::{join, try_join};

use core::future::Future;

/// Splits a `#[workflow]` function's declared return type into its `Ok` and `Err` types,
/// whatever alias the user wrote (`Result<T, E>`, `io::Result<T>`, `anyhow::Result<T>`).
#[diagnostic::on_unimplemented(
    message = "a `#[workflow]` function must return a `Result<T, E>`, but this returns `{Self}`",
    label = "not a `Result`",
    note = "a workflow can fail; its steps' errors convert into `E` with `From`"
)]
pub trait IsResult {
    /// The success type.
    type Ok;
    /// The error type.
    type Err;
}

impl<T, E> IsResult for Result<T, E> {
    type Ok = T;
    type Err = E;
}

/// A fresh copy of a retried step's argument for one attempt.
#[inline]
pub fn retry_arg<T: Clone>(arg: &T) -> T {
    arg.clone()
}

/// Pins the type of a `flow!` step's future to the flow's error type when no error type was
/// declared: identity on the future, but fixes `E`.
#[inline]
pub fn same_error<T, E, Fut: Future<Output = Result<T, E>>>(fut: Fut) -> Fut {
    fut
}
