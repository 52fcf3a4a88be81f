//! The `tracing` integration (cargo feature `tracing`, on by default): [`TracingObserver`]
//! turns the events of runs into `tracing` spans and events.
//!
//! See `TracingObserver` for the spans, events and fields.

use std::sync::Arc;

use crate::event::Observer;

/// The observers every [`Runtime::new`](crate::Runtime::new) starts with: a
/// [`TracingObserver`] when the `tracing` feature is on and the current `tracing` subscriber
/// wants `flow`'s spans, none otherwise (then a run builds no events at all).
pub fn default_observers() -> Vec<Arc<dyn Observer>> {
    #[cfg(feature = "tracing")]
    {
        if TracingObserver::wanted() {
            return vec![Arc::new(TracingObserver::new())];
        }
    }
    Vec::new()
}

// The observer creates a run's or a step's span while the runtime emits the event that starts
// it, on the runtime's own thread; it leaves the span here and the runtime, right after
// emitting, takes it and enters it around what it polls. Nothing else uses the slot.
#[cfg(feature = "tracing")]
thread_local! {
    static HANDOFF: core::cell::RefCell<Option<tracing::Span>> = const { core::cell::RefCell::new(None) };
}

#[cfg(feature = "tracing")]
fn hand_off(span: tracing::Span) {
    HANDOFF.with(|h| *h.borrow_mut() = Some(span));
}

/// The span an observer created for the event just emitted on this thread, if any.
#[cfg(feature = "tracing")]
pub(crate) fn take_handoff() -> Option<tracing::Span> {
    HANDOFF.with(|h| h.borrow_mut().take())
}

/// Polls `fut` inside the span the tracing observer created for the event just emitted (a
/// disabled span, which costs a branch per poll, when there is none).
#[cfg(feature = "tracing")]
#[inline]
pub(crate) fn traced<F>(fut: F, observed: bool) -> tracing::instrument::Instrumented<F> {
    let span = if observed { take_handoff() } else { None };
    tracing::Instrument::instrument(fut, span.unwrap_or_else(tracing::Span::none))
}

/// Without the `tracing` feature: the future itself.
#[cfg(not(feature = "tracing"))]
#[inline]
pub(crate) fn traced<F>(fut: F, _observed: bool) -> F {
    fut
}

#[cfg(feature = "tracing")]
pub use imp::TracingObserver;

#[cfg(feature = "tracing")]
mod imp {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use tracing::field::Empty;
    use tracing::{Level, Span};

    use crate::event::{Event, EventKind, Observer, RunId};

    /// An [`Observer`] that reports runs to `tracing`: spans `workflow` > `step` and events for
    /// retries, timeouts, failures and compensations.
    ///
    /// Spans: one `workflow` span per run and, inside it, one `step` span per step execution
    /// (covering all its attempts), both with explicit parents, so they nest correctly whatever
    /// task is running; a workflow run inside another's step gets that step's span as parent.
    /// Retries, timeouts, failures, catches and compensations are `tracing` events inside them.
    ///
    /// Field names follow OpenTelemetry's conventions where one exists (`otel.name`,
    /// `otel.status_code`, `error.message`, the names `tracing-opentelemetry` maps onto the
    /// exported span) and are namespaced `flow.*` otherwise:
    ///
    /// | field | on | value |
    /// | --- | --- | --- |
    /// | `otel.name` | both spans | the workflow's name / the step's name (the exported span name) |
    /// | `otel.status_code` | both spans | `"OK"` or `"ERROR"`, recorded when the span ends |
    /// | `error.message` | spans and failure events | the failure, as text |
    /// | `flow.workflow` | both spans | the workflow's name |
    /// | `flow.run_id` | both spans | the run's id (a number) |
    /// | `flow.parent_run_id` | `workflow` | the run whose step started this one |
    /// | `flow.status` | `workflow` | `completed`, `failed` or `cancelled` |
    /// | `flow.step` | `step`, step events | the step's name |
    /// | `flow.node` | `step` | the step's node id in the static graph |
    /// | `flow.iteration` | `step` | which time the step was entered in the run (1 for the first) |
    /// | `flow.item` | `step` | the `map` item the step ran for, if any |
    /// | `flow.attempt` | `step`, attempt events | the attempt (1 for the first) |
    /// | `flow.failure` | failure events | `error`, `timeout` or `panic` |
    /// | `flow.retry_in_ms` | retry events | the delay before the next attempt, in ms |
    /// | `flow.progress`, `flow.message` | progress events | the fraction done (0 to 1) and the message a step reported |
    ///
    /// Everything is emitted with target `flow`: `RUST_LOG=flow=info` (or an `EnvFilter`
    /// directive) selects it.
    ///
    /// The runtime enters the `workflow` span while it polls the run and the `step` span while
    /// it polls each attempt, so `tracing` calls made inside a step are children of its span.
    /// Each step execution is keyed by (run, node, iteration, map item) (see [`Event`]): two
    /// `map` items running the same step at once get a span each, each closed by its own
    /// success or failure. A run's spans are freed at its final event (a run whose future was
    /// dropped mid-run emits `RunCancelled` when it is dropped, or once its undos are done).
    /// Fields `flow.iteration` and `flow.item` are recorded on `step` spans.
    /// Limit: `flow.failure` is read from the failure's text (`timed out after ..`,
    /// `panicked: ..`).
    ///
    /// ```
    /// use flow_runtime::{Runtime, TracingObserver};
    /// let runtime = Runtime::new().with_observer(TracingObserver::new());
    /// # let _ = runtime;
    /// ```
    #[derive(Default)]
    pub struct TracingObserver {
        runs: Mutex<HashMap<RunId, RunSpans>>,
    }

    impl TracingObserver {
        /// How many runs have open spans (for leak checks).
        #[doc(hidden)]
        pub fn open_runs(&self) -> usize {
            self.runs.lock().unwrap_or_else(|p| p.into_inner()).len()
        }

        /// The step executions with an open span: (node, iteration, map item), oldest first.
        #[doc(hidden)]
        pub fn open_steps(&self) -> Vec<(u32, u32, Option<u32>)> {
            let runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
            runs.values()
                .flat_map(|r| r.steps.iter().map(|s| (s.node, s.iteration, s.item)))
                .collect()
        }
    }

    impl core::fmt::Debug for TracingObserver {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.debug_struct("TracingObserver").finish_non_exhaustive()
        }
    }

    struct RunSpans {
        span: Span,
        /// The step executions in flight, oldest first.
        steps: Vec<StepSpan>,
    }

    struct StepSpan {
        /// The step execution: node, iteration and map item (see [`Event`]).
        node: u32,
        iteration: u32,
        item: Option<u32>,
        span: Span,
        attempt: u32,
        /// Between a failed attempt and the next one (in its backoff delay).
        waiting: bool,
    }

    /// `error`, `timeout` or `panic`, from the failure's text (`Failure`'s `Display`).
    fn failure_kind(error: &str) -> &'static str {
        if error.starts_with("timed out after ") {
            "timeout"
        } else if error.starts_with("panicked: ") {
            "panic"
        } else {
            "error"
        }
    }

    impl TracingObserver {
        /// A new observer; it keeps the spans of the runs in flight.
        pub fn new() -> Self {
            TracingObserver::default()
        }

        /// Whether the current `tracing` subscriber is interested in `flow`'s spans (false
        /// when no subscriber is set, or when its filter excludes target `flow`).
        pub fn wanted() -> bool {
            tracing::enabled!(target: "flow", Level::INFO)
        }

        fn on(&self, e: &Event) {
            let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
            if let EventKind::RunStarted = e.kind {
                let parent = e.parent.and_then(|p| runs.get(&p)).map(|r| {
                    // The step that runs the child: the newest step span of the parent in
                    // the same map item (a child's start event carries its parent's item).
                    r.steps
                        .iter()
                        .rev()
                        .find(|s| s.item == e.item)
                        .map_or(&r.span, |s| &s.span)
                        .id()
                });
                let span = tracing::info_span!(
                    target: "flow",
                    parent: parent.flatten(),
                    "workflow",
                    otel.name = e.workflow,
                    flow.workflow = e.workflow,
                    flow.run_id = e.run.0,
                    flow.parent_run_id = e.parent.map(|p| p.0),
                    flow.status = Empty,
                    otel.status_code = Empty,
                    error.message = Empty,
                );
                super::hand_off(span.clone());
                runs.insert(
                    e.run,
                    RunSpans {
                        span,
                        steps: Vec::new(),
                    },
                );
                return;
            }
            let Some(run) = runs.get_mut(&e.run) else {
                return;
            };
            let node = e.node.0;
            let this =
                |s: &StepSpan| s.node == node && s.iteration == e.iteration && s.item == e.item;
            match &e.kind {
                EventKind::RunStarted
                | EventKind::Entered
                | EventKind::SignalWaiting { .. }
                | EventKind::SignalReceived { .. } => {}
                EventKind::AttemptStarted { attempt: 1 } => {
                    let span = tracing::info_span!(
                        target: "flow",
                        parent: &run.span,
                        "step",
                        otel.name = e.step,
                        flow.workflow = e.workflow,
                        flow.run_id = e.run.0,
                        flow.step = e.step,
                        flow.node = node,
                        flow.iteration = e.iteration,
                        flow.item = e.item,
                        flow.attempt = 1u32,
                        otel.status_code = Empty,
                        error.message = Empty,
                    );
                    super::hand_off(span.clone());
                    run.steps.push(StepSpan {
                        node,
                        iteration: e.iteration,
                        item: e.item,
                        span,
                        attempt: 1,
                        waiting: false,
                    });
                }
                EventKind::AttemptStarted { attempt } => {
                    if let Some(s) = run.steps.iter_mut().find(|s| this(s) && s.waiting) {
                        super::hand_off(s.span.clone());
                        s.waiting = false;
                        s.attempt = *attempt;
                        s.span.record("flow.attempt", *attempt);
                        tracing::event!(
                            target: "flow",
                            parent: &s.span,
                            Level::INFO,
                            flow.step = e.step,
                            flow.attempt = *attempt,
                            "retry: attempt {attempt} started"
                        );
                    }
                }
                EventKind::AttemptFailed {
                    attempt,
                    error,
                    retry_in: Some(delay),
                } => {
                    if let Some(s) = run
                        .steps
                        .iter_mut()
                        .find(|s| this(s) && s.attempt == *attempt && !s.waiting)
                    {
                        s.waiting = true;
                        let kind = failure_kind(error);
                        let what = if kind == "timeout" {
                            "timed out"
                        } else {
                            "failed"
                        };
                        tracing::event!(
                            target: "flow",
                            parent: &s.span,
                            Level::WARN,
                            flow.step = e.step,
                            flow.attempt = *attempt,
                            flow.failure = kind,
                            flow.retry_in_ms = delay.as_secs_f64() * 1000.0,
                            error.message = %error,
                            "attempt {attempt} {what}; retrying in {delay:?}"
                        );
                    }
                }
                EventKind::AttemptFailed { retry_in: None, .. } => {
                    // The step fails for good: `StepFailed` follows at once and reports it.
                }
                EventKind::StepSucceeded { attempt, .. } => {
                    if let Some(i) = run
                        .steps
                        .iter()
                        .position(|s| this(s) && s.attempt == *attempt && !s.waiting)
                    {
                        let s = run.steps.remove(i);
                        s.span.record("otel.status_code", "OK");
                    }
                }
                EventKind::StepFailed { attempts, error } => {
                    if let Some(i) = run
                        .steps
                        .iter()
                        .position(|s| this(s) && s.attempt == *attempts)
                    {
                        let s = run.steps.remove(i);
                        s.span.record("otel.status_code", "ERROR");
                        s.span.record("error.message", error.as_str());
                        tracing::event!(
                            target: "flow",
                            parent: &s.span,
                            Level::ERROR,
                            flow.step = e.step,
                            flow.attempt = *attempts,
                            flow.failure = failure_kind(error),
                            error.message = %error,
                            "step failed after {attempts} attempt(s)"
                        );
                    }
                }
                EventKind::Progress {
                    attempt,
                    fraction,
                    message,
                } => {
                    if let Some(s) = run.steps.iter().find(|s| this(s)) {
                        tracing::event!(
                            target: "flow",
                            parent: &s.span,
                            Level::INFO,
                            flow.step = e.step,
                            flow.attempt = *attempt,
                            flow.progress = *fraction,
                            flow.message = message.as_deref(),
                            "progress"
                        );
                    }
                }
                EventKind::Caught { error } => {
                    tracing::event!(
                        target: "flow",
                        parent: &run.span,
                        Level::WARN,
                        flow.step = e.step,
                        error.message = %error,
                        "failure of {} caught: recovering",
                        e.step
                    );
                }
                EventKind::CompensationStarted => {
                    tracing::event!(
                        target: "flow",
                        parent: &run.span,
                        Level::INFO,
                        flow.step = e.step,
                        "compensating {}",
                        e.step
                    );
                }
                EventKind::CompensationSucceeded => {
                    tracing::event!(
                        target: "flow",
                        parent: &run.span,
                        Level::INFO,
                        flow.step = e.step,
                        "compensated {}",
                        e.step
                    );
                }
                EventKind::CompensationFailed { error } => {
                    tracing::event!(
                        target: "flow",
                        parent: &run.span,
                        Level::ERROR,
                        flow.step = e.step,
                        error.message = %error,
                        "compensation of {} failed",
                        e.step
                    );
                }
                EventKind::RunCompleted => {
                    if let Some(run) = runs.remove(&e.run) {
                        finish(run, "completed", None);
                    }
                }
                EventKind::RunFailed { error } => {
                    if let Some(run) = runs.remove(&e.run) {
                        tracing::event!(
                            target: "flow",
                            parent: &run.span,
                            Level::ERROR,
                            error.message = %error,
                            "run failed"
                        );
                        finish(run, "failed", Some(error));
                    }
                }
                EventKind::ObserverPanicked { message } => {
                    tracing::event!(
                        target: "flow",
                        parent: &run.span,
                        Level::ERROR,
                        error.message = %message,
                        "an observer panicked and was removed from the run"
                    );
                }
                EventKind::RunCancelled => {
                    if let Some(run) = runs.remove(&e.run) {
                        tracing::event!(target: "flow", parent: &run.span, Level::WARN, "run cancelled");
                        finish(run, "cancelled", Some("cancelled"));
                    }
                }
            }
        }
    }

    /// Ends a run's span (and the spans of steps still open: dropped when the run ended).
    fn finish(run: RunSpans, status: &str, error: Option<&str>) {
        for s in run.steps {
            s.span.record("otel.status_code", "ERROR");
            s.span.record(
                "error.message",
                "dropped: the run ended while it was in flight",
            );
        }
        run.span.record("flow.status", status);
        match error {
            None => run.span.record("otel.status_code", "OK"),
            Some(e) => {
                run.span.record("error.message", e);
                run.span.record("otel.status_code", "ERROR")
            }
        };
    }

    impl Observer for TracingObserver {
        fn on_event(&self, event: &Event) {
            self.on(event);
        }
    }
}
