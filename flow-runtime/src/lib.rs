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
//! - [`Event`]s and [`Observer`]s: every transition of a run.

mod ctx;
mod error;
mod event;
mod glue;
mod graph;
mod policy;
mod runtime;
mod workflow;

#[doc(hidden)]
pub mod __private;
mod checks;

pub use crate::ctx::{Ctx, StateView, Status, StepOutput};
pub use crate::error::{
    Attempt, CompensationFailure, Error, ErrorKind, Failure, GaveUp, StepError,
};
pub use crate::event::{Event, EventKind, Observer, RunId};
pub use crate::graph::{Edge, EdgeKind, Graph, Node, NodeId, NodeKind};
pub use crate::policy::{Backoff, Delays, Jitter, On, Retry, SplitMix64, StepPolicy};
pub use crate::runtime::{EventStream, Handle, Runtime};
pub use crate::workflow::{Flow, Workflow, WorkflowState};
