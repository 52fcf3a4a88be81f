//! Events: every transition of a run, delivered to [`Observer`]s.

use core::time::Duration;
use std::sync::Arc;

use crate::graph::NodeId;

/// Identifies one run within this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId(pub u64);

impl core::fmt::Display for RunId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "run-{}", self.0)
    }
}

/// One transition of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// The run.
    pub run: RunId,
    /// The run that started this one, when a workflow runs inside another's step.
    pub parent: Option<RunId>,
    /// The workflow's name.
    pub workflow: &'static str,
    /// The node of the graph this event is about (the start node for run-level events).
    pub node: NodeId,
    /// The node's name (the step's name, or `"start"` for run-level events).
    pub step: &'static str,
    /// Time since the run started (tokio's clock, so it follows a paused clock in tests).
    pub at: Duration,
    /// What happened.
    pub kind: EventKind,
}

/// What happened in an [`Event`].
#[derive(Clone, Debug, PartialEq)]
pub enum EventKind {
    /// The run started.
    RunStarted,
    /// The run entered a node: a step, or a parallel, map or branch group.
    Entered,
    /// An attempt of a step started.
    AttemptStarted {
        /// 1 for the first attempt.
        attempt: u32,
    },
    /// An attempt failed.
    AttemptFailed {
        /// The attempt that failed.
        attempt: u32,
        /// The failure, as text.
        error: String,
        /// When a retry follows: the delay before it.
        retry_in: Option<Duration>,
    },
    /// The step succeeded.
    StepSucceeded {
        /// The attempt that succeeded.
        attempt: u32,
        /// How long that attempt ran.
        elapsed: Duration,
    },
    /// The step failed for good.
    StepFailed {
        /// How many attempts ran.
        attempts: u32,
        /// The final failure, as text.
        error: String,
    },
    /// A step failure was caught and routed to a recovery step.
    Caught {
        /// The failure, as text.
        error: String,
    },
    /// A completed step's compensation started (the run is being undone).
    CompensationStarted,
    /// A compensation succeeded.
    CompensationSucceeded,
    /// A compensation failed.
    CompensationFailed {
        /// The failure, as text.
        error: String,
    },
    /// The run completed.
    RunCompleted,
    /// The run failed.
    RunFailed {
        /// The error, as text.
        error: String,
    },
    /// The run was cancelled.
    RunCancelled,
}

impl core::fmt::Display for Event {
    /// One line: time since the run started, the node, and what happened.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let secs = self.at.as_secs_f64();
        write!(f, "[{secs:>8.3}s] {} {}: ", self.workflow, self.step)?;
        match &self.kind {
            EventKind::RunStarted => f.write_str("run started"),
            EventKind::Entered => f.write_str("entered"),
            EventKind::AttemptStarted { attempt } => write!(f, "attempt {attempt} started"),
            EventKind::AttemptFailed {
                attempt,
                error,
                retry_in: Some(d),
            } => write!(f, "attempt {attempt} failed: {error}; retrying in {d:?}"),
            EventKind::AttemptFailed {
                attempt,
                error,
                retry_in: None,
            } => write!(f, "attempt {attempt} failed: {error}"),
            EventKind::StepSucceeded { attempt, elapsed } => {
                write!(f, "succeeded on attempt {attempt} in {elapsed:?}")
            }
            EventKind::StepFailed { attempts, error } => {
                write!(f, "failed after {attempts} attempt(s): {error}")
            }
            EventKind::Caught { error } => write!(f, "failure caught, recovering: {error}"),
            EventKind::CompensationStarted => f.write_str("compensating"),
            EventKind::CompensationSucceeded => f.write_str("compensated"),
            EventKind::CompensationFailed { error } => write!(f, "compensation failed: {error}"),
            EventKind::RunCompleted => f.write_str("run completed"),
            EventKind::RunFailed { error } => write!(f, "run failed: {error}"),
            EventKind::RunCancelled => f.write_str("run cancelled"),
        }
    }
}

/// Receives the events of runs.
///
/// Called synchronously on the task that runs the workflow: keep it quick, or hand the event
/// to a channel. Any `Fn(&Event) + Send + Sync + 'static` is an observer.
pub trait Observer: Send + Sync + 'static {
    /// Called for each event, in the order the run produces them.
    fn on_event(&self, event: &Event);
}

impl<F: Fn(&Event) + Send + Sync + 'static> Observer for F {
    fn on_event(&self, event: &Event) {
        self(event)
    }
}

/// The observers of a run. Empty by default, in which case no event is even built.
#[derive(Clone, Default)]
pub(crate) struct Observers(pub(crate) Option<Arc<[Arc<dyn Observer>]>>);

impl Observers {
    pub(crate) fn from_vec(v: Vec<Arc<dyn Observer>>) -> Self {
        if v.is_empty() {
            Observers(None)
        } else {
            Observers(Some(v.into()))
        }
    }

    #[inline]
    pub(crate) fn active(&self) -> bool {
        self.0.is_some()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.as_deref().map_or(0, <[_]>::len)
    }

    pub(crate) fn to_vec(&self) -> Vec<Arc<dyn Observer>> {
        self.0.as_deref().map_or_else(Vec::new, <[_]>::to_vec)
    }

    pub(crate) fn emit(&self, event: &Event) {
        if let Some(list) = &self.0 {
            for o in list.iter() {
                o.on_event(event);
            }
        }
    }
}
