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

mod context;
mod ctx;
mod error;
mod event;
mod glue;
mod graph;
mod policy;
#[cfg(feature = "progress")]
mod progress;
mod runtime;
mod saga;
#[cfg(feature = "testing")]
pub mod testing;
mod timeline;
mod trace;
mod workflow;

#[doc(hidden)]
pub mod __private;
mod checks;

pub use crate::context::{Progress, StepContext, step_context};
pub use crate::ctx::{Ctx, StateView, Status, StepOutput};
pub use crate::error::{
    Attempt, CompensationFailure, CompensationOutcome, CompensationRecord, Error, ErrorKind,
    Failure, GaveUp, KEPT_LAST_ATTEMPTS, NestedCompensationFailure, RunReport, StepError,
};
pub use crate::event::{Event, EventKind, Observer, RunId};
pub use crate::glue::CatchOn;
pub use crate::graph::{Edge, EdgeKind, Graph, Node, NodeId, NodeKind};
pub use crate::policy::{Backoff, Delays, Jitter, On, Retry, SplitMix64, StepPolicy};
#[cfg(feature = "progress")]
pub use crate::progress::ProgressObserver;
pub use crate::runtime::{EventStream, Handle, Runtime};
pub use crate::saga::{CompensationPolicy, DEFAULT_COMPENSATION_TIMEOUT};
pub use crate::timeline::{Slice, SliceKind, SliceOutcome, Timeline};
#[cfg(feature = "tracing")]
pub use crate::trace::TracingObserver;
pub use crate::trace::default_observers;
pub use crate::workflow::{Flow, Workflow, WorkflowState};
