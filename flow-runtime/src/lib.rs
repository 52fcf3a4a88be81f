//! The runtime of [`flow`](https://docs.rs/flow): it executes the typed state machines that
//! `#[workflow]` and `flow!` generate.
//!
//! Most users depend on the `flow` crate, which re-exports this one with the macros. The
//! pieces:
//!
//! - [`Workflow`]: what a workflow is (input, output, error, state enum, static [`Graph`]).
//! - [`Runtime`]: runs workflows, on the current task ([`Runtime::run`]) or spawned with a
//!   [`Handle`] ([`Runtime::spawn`]) that shows the current state, streams events and cancels.
//! - Policies ([`policy::Retry`], [`policy::Backoff`], [`policy::Jitter`]) with exact
//!   semantics, documented on each type.
//! - Errors ([`Error`], [`StepError`], [`Failure`], and the details in [`error`]) that say
//!   which step failed and why.
//! - Signals ([`signal`], [`Handle::signal`]), type-erased workflows ([`DynWorkflow`]) and a
//!   [`Registry`] of workflows by name.
//! - [`Event`]s and [`Observer`]s: every transition of a run. Built-in observers:
//!   `TracingObserver` (feature `tracing`, on by default: spans `workflow` > `step`),
//!   [`Timeline`] (Chrome trace JSON and Mermaid `gantt` of recorded runs) and
//!   `ProgressObserver` (feature `progress`: live progress in the terminal).

mod context;
mod ctx;
#[cfg(feature = "durable")]
pub mod durable;
pub mod dynamic;
pub mod error;
mod event;
mod glue;
pub mod graph;
pub mod policy;
#[cfg(feature = "progress")]
mod progress;
pub mod registry;
mod runtime;
mod saga;
mod signal;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod timeline;
mod trace;
mod workflow;

#[doc(hidden)]
pub mod __private;
/// The compile-time checks behind the macros' error messages. Public so that those messages
/// can name them briefly (``the trait `RetryInput<Nodes, wait_healthy>` is not implemented
/// for `Unmet<Nodes>` ``: rustc shortens a path only when the item is visible); not meant to
/// be used directly.
pub mod checks;

// The root holds what programs name; the details live in the modules above (`error`,
// `graph`, `policy`, `timeline`, `registry`, `dynamic`), and the generated code's plumbing in
// the hidden `__private`.
pub use crate::context::{Progress, StepContext, step_context};
pub use crate::ctx::{StateView, Status};
pub use crate::dynamic::{ArcWorkflow, BoxWorkflow, DynWorkflow};
pub use crate::error::{Error, ErrorKind, Failure, RunReport, StepError};
pub use crate::event::{Event, EventKind, Observer, RunId};
pub use crate::graph::{Graph, NodeId};
#[cfg(feature = "progress")]
pub use crate::progress::ProgressObserver;
pub use crate::registry::Registry;
pub use crate::runtime::{EventStream, Handle, Runtime};
pub use crate::signal::{Signal, SignalError, signal, sleep};
pub use crate::timeline::Timeline;
#[cfg(feature = "tracing")]
pub use crate::trace::TracingObserver;
pub use crate::workflow::{Flow, Workflow, WorkflowState};
