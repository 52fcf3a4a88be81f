//! The runtime of [`flow`](https://docs.rs/flow): it executes the typed state machines that
//! `#[workflow]` and `flow!` generate.
//!
//! Most users depend on the `flow` crate, which re-exports this one with the macros. The
//! pieces:
//!
//! - [`Workflow`]: what a workflow is (input, output, error, state enum, static [`Graph`]).
//! - [`Runtime`]: runs workflows, on the current task ([`Runtime::run`]) or spawned with a
//!   [`Handle`] ([`Runtime::spawn`]) that shows the current state, streams events and cancels.
//! - Policies ([`Retry`], [`Backoff`], [`Jitter`], [`StepPolicy`]) with exact semantics,
//!   documented on each type.
//! - Errors ([`Error`], [`StepError`], [`Failure`]) that say which step failed and why.
//! - [`Event`]s and [`Observer`]s: every transition of a run. Built-in observers:
//!   `TracingObserver` (feature `tracing`, on by default: spans `workflow` > `step`),
//!   [`Timeline`] (Chrome trace JSON and Mermaid `gantt` of recorded runs) and
//!   `ProgressObserver` (feature `progress`: live progress in the terminal).

mod ctx;
mod dynamic;
mod error;
mod event;
mod glue;
mod graph;
mod policy;
#[cfg(feature = "progress")]
mod progress;
mod registry;
mod runtime;
mod saga;
mod signal;
mod timeline;
mod trace;
mod workflow;

#[doc(hidden)]
pub mod __private;
/// The compile-time checks behind the macros' error messages. Public so that those messages
/// can name them briefly (`the trait `RetryInput<Nodes, wait_healthy>` is not implemented
/// for `Fail<Nodes>``: rustc shortens a path only when the item is visible); not meant to be
/// used directly.
pub mod checks;

pub use crate::ctx::{Ctx, StateView, Status, StepOutput};
pub use crate::dynamic::{ArcWorkflow, BoxFuture, BoxWorkflow, DynState, DynWorkflow};
pub use crate::error::{
    Attempt, CompensationFailure, CompensationOutcome, CompensationRecord, Error, ErrorKind,
    Failure, GaveUp, KEPT_LAST_ATTEMPTS, NestedCompensationFailure, RunReport, StepError,
};
pub use crate::event::{Event, EventKind, Observer, RunId};
pub use crate::graph::{Edge, EdgeKind, Graph, Node, NodeId, NodeKind};
pub use crate::policy::{Backoff, Delays, Jitter, On, Retry, SplitMix64, StepPolicy};
#[cfg(feature = "progress")]
pub use crate::progress::ProgressObserver;
pub use crate::registry::{AnyError, AnyHandle, Payload, Registered, Registry, RegistryError};
pub use crate::runtime::{EventStream, Handle, Runtime};
pub use crate::saga::{CompensationPolicy, DEFAULT_COMPENSATION_TIMEOUT};
pub use crate::signal::{Signal, SignalError, signal};
pub use crate::timeline::{Slice, SliceKind, SliceOutcome, Timeline};
#[cfg(feature = "tracing")]
pub use crate::trace::TracingObserver;
pub use crate::trace::default_observers;
pub use crate::workflow::{Flow, Workflow, WorkflowState};
