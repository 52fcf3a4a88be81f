//! Testing workflows (cargo feature `testing`): run a workflow with some steps' attempts
//! scripted (failed, timed out, panicked) on tokio's test clock, and assert on what happened.
//!
//! ```ignore
//! use flow::testing::{Harness, Outcome};
//!
//! #[tokio::test(start_paused = true)]
//! async fn a_slow_start_is_retried() {
//!     let run = Harness::new()
//!         // the first two attempts of `wait_healthy` fail, the third runs the real step
//!         .script("wait_healthy", [Outcome::Fail(Down), Outcome::Fail(Down)])
//!         .run(&Provision, (spec,))
//!         .await;
//!     assert!(run.result.is_ok());
//!     assert_eq!(run.attempts_of("wait_healthy"), 3);
//!     run.assert_path(["launch_nodes", "wait_healthy", "create_schema"]);
//! }
//! ```
//!
//! (`tests/testing.rs` in the repository runs examples like this one.)
//!
//! **The clock.** Run the test on tokio's paused clock, `#[tokio::test(start_paused = true)]`:
//! backoff delays and timeouts then take no real time, and durations can be asserted exactly
//! (`tokio::time::Instant::now()` before and after). The pitfall: a paused clock advances by
//! itself whenever every task is idle, so a step that really waits on I/O (a socket, a child
//! process) sees its timeout fire at once. Script such steps, or do not pause the clock.
//!
//! **Scripts** are keyed by the step's stable key ([`Node::key`](crate::Node::key): its name,
//! `name#2` for a second step of the same name). Each attempt of that step takes the next
//! outcome; once the script is used up, the real step runs. A scripted attempt does not poll
//! the real step (its future is dropped unpolled). Scripts apply to the run started by
//! [`Harness::run`], not to workflows that its steps run as child runs. A key that is not a
//! step of the workflow's graph is a panic (a typo would otherwise test nothing).
//!
//! A fake value ("this attempt returns `x`") is not an outcome: the step engine cannot check
//! a value's type at run time without requiring `'static` outputs of every step. Replace the
//! step itself instead (a closure in `flow!`, or a service trait the workflow is generic over).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Failure};
use crate::event::{Event, EventKind, RunId};
use crate::runtime::Runtime;
use crate::workflow::Workflow;

/// What one scripted attempt of a step does.
#[derive(Debug, Clone)]
pub enum Outcome<E> {
    /// Runs the real step.
    Succeed,
    /// Fails with this error (the workflow's error type), without running the step.
    Fail(E),
    /// Never completes: the step's per-attempt timeout fires (a step without one waits until
    /// the workflow's time limit, or forever).
    TimeOut,
    /// Panics with this message, without running the step.
    Panic(String),
}

/// The scripts of one run, consulted by the step engine by node key.
pub(crate) struct Script<E> {
    steps: Mutex<HashMap<String, VecDeque<Outcome<E>>>>,
}

impl<E> Script<E> {
    /// The next outcome scripted for step `key`, if any is left.
    pub(crate) fn next(&self, key: &str) -> Option<Outcome<E>> {
        crate::ctx::lock(&self.steps).get_mut(key)?.pop_front()
    }
}

/// What a scripted attempt does to the step engine: run the step, or this failure.
pub(crate) enum Scripted<E> {
    /// Fail the attempt.
    Fail(Failure<E>),
    /// Wait for the attempt's timeout.
    Hang,
}

impl<E> Outcome<E> {
    pub(crate) fn scripted(self) -> Option<Scripted<E>> {
        match self {
            Outcome::Succeed => None,
            Outcome::Fail(e) => Some(Scripted::Fail(Failure::Error(e))),
            Outcome::Panic(m) => Some(Scripted::Fail(Failure::Panicked(m))),
            Outcome::TimeOut => Some(Scripted::Hang),
        }
    }
}

/// Runs a workflow with scripted steps and records its events: see the [module](self).
pub struct Harness<E> {
    scripts: HashMap<String, VecDeque<Outcome<E>>>,
    runtime: Runtime,
}

impl<E> Default for Harness<E> {
    fn default() -> Self {
        Harness::new()
    }
}

impl<E> core::fmt::Debug for Harness<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Harness")
            .field("scripted", &self.scripts.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl<E> Harness<E> {
    /// A harness with no scripts and no observers, with jitter seeded (reproducible delays).
    pub fn new() -> Self {
        Harness {
            scripts: HashMap::new(),
            runtime: Runtime::default().with_seed(0),
        }
    }

    /// Scripts the attempts of step `key`, in order; after them the real step runs.
    #[must_use]
    pub fn script(mut self, key: &str, outcomes: impl IntoIterator<Item = Outcome<E>>) -> Self {
        self.scripts
            .entry(key.to_owned())
            .or_default()
            .extend(outcomes);
        self
    }

    /// Runs on this runtime (its observers see the run too) instead of a default one.
    #[must_use]
    pub fn with_runtime(mut self, runtime: Runtime) -> Self {
        self.runtime = runtime;
        self
    }

    /// Runs `workflow` with the scripts, to the end; returns its result and its events.
    ///
    /// # Panics
    ///
    /// When a scripted key is not a step of the workflow's graph.
    pub async fn run<W>(self, workflow: &W, input: W::Input) -> TestRun<W::Output, E>
    where
        W: Workflow<Error = E>,
    {
        let graph = workflow.graph();
        let keys: Vec<&str> = graph.steps().map(|(_, n)| n.key).collect();
        for key in self.scripts.keys() {
            assert!(
                keys.contains(&key.as_str()),
                "flow::testing: `{key}` is not a step of workflow `{}` (its steps: {})",
                graph.name,
                keys.join(", ")
            );
        }
        let events: Arc<Mutex<Vec<Event>>> = Arc::default();
        let log = Arc::clone(&events);
        let runtime = self
            .runtime
            .with_observer(move |e: &Event| crate::ctx::lock(&log).push(e.clone()));
        let script = Arc::new(Script {
            steps: Mutex::new(self.scripts),
        });
        let result = runtime.run_scripted(workflow, input, script).await;
        let events = core::mem::take(&mut *crate::ctx::lock(&events));
        TestRun { result, events }
    }
}

/// A finished test run: its result and every event (the run's, and its child runs').
#[derive(Debug)]
pub struct TestRun<T, E> {
    /// What the run returned.
    pub result: Result<T, Error<E>>,
    /// Every event, in order.
    pub events: Vec<Event>,
}

impl<T, E> TestRun<T, E> {
    /// The run's id (the run [`Harness::run`] started, not its children).
    pub fn run_id(&self) -> Option<RunId> {
        self.events
            .iter()
            .find(|e| e.parent.is_none() && e.kind == EventKind::RunStarted)
            .map(|e| e.run)
    }

    fn own(&self) -> impl Iterator<Item = &Event> {
        let run = self.run_id();
        self.events.iter().filter(move |e| Some(e.run) == run)
    }

    /// The keys of the steps the run entered, in order (a step entered twice, in a loop or
    /// for two `map` items, twice). Groups (parallel, map, branch) are left out.
    pub fn entered(&self) -> Vec<&'static str> {
        self.own()
            .filter(|e| e.kind == EventKind::AttemptStarted { attempt: 1 })
            .map(|e| e.key)
            .collect()
    }

    /// How many attempts of step `key` started, over all its executions.
    pub fn attempts_of(&self, key: &str) -> u32 {
        let n = self
            .own()
            .filter(|e| e.key == key && matches!(e.kind, EventKind::AttemptStarted { .. }))
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// The run's transitions as short lines, `key: what` (`wait_healthy: attempt 2 failed:
    /// busy; retrying in 200ms`), without timings: for snapshot-style assertions.
    pub fn transitions(&self) -> Vec<String> {
        self.own()
            .map(|e| {
                let line = e.to_string();
                let what = line.split_once(": ").map_or(line.as_str(), |(_, w)| w);
                format!("{}: {what}", e.key)
            })
            .collect()
    }

    /// Asserts that the run entered exactly these steps, in this order (see
    /// [`entered`](Self::entered)).
    ///
    /// # Panics
    ///
    /// When it did not, with both paths and the transitions.
    #[track_caller]
    pub fn assert_path<const N: usize>(&self, path: [&str; N]) {
        let entered = self.entered();
        assert!(
            entered == path,
            "the run took {entered:?}, not {path:?}; transitions:\n{}",
            self.transitions().join("\n")
        );
    }
}
