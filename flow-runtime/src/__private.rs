//! Items the macros' generated code uses. Not part of the public API: no semver guarantees.

pub use crate::ctx::{Ctx, StepOutput};
#[cfg(feature = "durable")]
pub use crate::durable::DeclaredDurable;
pub use crate::policy::{CompensationPolicy, StepPolicy};
pub use crate::runtime::run_nested;
pub use crate::trace::default_observers;
pub use crate::workflow::{Durable, Ephemeral, FlowKind};
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

pub use crate::checks::*;
pub use crate::glue::{ChildOutcome, Exact};

/// Identity on a future whose error type is `E` (see [`Ctx::error_type`]).
#[inline]
pub fn typed<T, E, Fut>(_: core::marker::PhantomData<fn() -> E>, fut: Fut) -> Fut
where
    Fut: Future<Output = Result<T, E>>,
{
    fut
}

pub use futures_util::future::{join3, join4, join5, try_join3, try_join4, try_join5};

/// Applies a `branch` selector to the value on the incoming edge.
#[inline]
pub fn select<T, R>(value: &T, selector: impl FnOnce(&T) -> R) -> R {
    selector(value)
}

/// The output type of a step's future, as a zero-sized marker (see `Ctx::surface_as`).
#[inline]
pub fn output_of<F: Future>(_: &F) -> core::marker::PhantomData<F::Output> {
    core::marker::PhantomData
}

/// The output type of the futures `make` creates (a retried step).
#[inline]
pub fn output_of_make<M: FnMut() -> F, F: Future>(_: &M) -> core::marker::PhantomData<F::Output> {
    core::marker::PhantomData
}

/// Expands its input when this crate is built with durable runs (its `durable` feature), to
/// nothing otherwise. The facade wraps its items that need durable runs in it, so that they
/// follow this crate's features (which any dependent may turn on, the facade's own tests
/// included) rather than the facade's own `durable` feature.
#[cfg(feature = "durable")]
#[macro_export]
#[doc(hidden)]
macro_rules! __if_durable {
    ($($item:tt)*) => { $($item)* };
}

/// Expands its input when this crate is built with durable runs (its `durable` feature), to
/// nothing otherwise (here: it is not).
#[cfg(not(feature = "durable"))]
#[macro_export]
#[doc(hidden)]
macro_rules! __if_durable {
    ($($item:tt)*) => {};
}
