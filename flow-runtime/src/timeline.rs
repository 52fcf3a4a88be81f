//! Timelines: record the events of runs with a [`Timeline`] observer and draw them afterwards,
//! as Chrome trace-event JSON (Perfetto, `chrome://tracing`) or as a Mermaid `gantt`.

use core::fmt::Write as _;
use core::time::Duration;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use crate::event::{Event, EventKind, Observer, RunId};

/// An [`Observer`] that keeps every event it sees, stamped on one clock, and exports them as
/// a timeline: [`to_chrome_trace`](Self::to_chrome_trace) and
/// [`to_mermaid_gantt`](Self::to_mermaid_gantt).
///
/// A `Timeline` is a cheap handle (clones share the same record): give one clone to the
/// runtime and keep the other to export after the run, finished or failed.
///
/// ```
/// use flow_runtime::{Runtime, Timeline};
/// let timeline = Timeline::new();
/// let runtime = Runtime::new().with_observer(timeline.clone());
/// // ... run workflows on `runtime`, then:
/// std::fs::write(std::env::temp_dir().join("run.json"), timeline.to_chrome_trace()).unwrap();
/// # let _ = runtime;
/// ```
///
/// Timestamps come from tokio's clock, so a test with a paused clock gets exact times. The
/// time of an event is its run's start (as seen by this timeline) plus the event's
/// [`at`](Event::at), so all the runs it records (nested runs too) share one time axis.
#[derive(Clone, Default)]
pub struct Timeline {
    inner: Arc<Mutex<Record>>,
}

#[derive(Default)]
struct Record {
    origin: Option<Instant>,
    run_start: HashMap<RunId, Duration>,
    events: Vec<(Duration, Event)>,
}

impl core::fmt::Debug for Timeline {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Timeline")
            .field("events", &self.lock().events.len())
            .finish()
    }
}

impl Observer for Timeline {
    fn on_event(&self, e: &Event) {
        let now = Instant::now();
        let mut r = self.lock();
        let origin = *r.origin.get_or_insert(now);
        let since = now.saturating_duration_since(origin);
        let start = *r
            .run_start
            .entry(e.run)
            .or_insert_with(|| since.saturating_sub(e.at));
        r.events.push((start + e.at, e.clone()));
    }
}

impl Timeline {
    /// An empty timeline.
    ///
    /// ```
    /// # use flow_runtime::{Error, Graph, NodeId, Workflow};
    /// # use flow_runtime::__private::{Ctx, StepPolicy};
    /// # use flow_runtime::dynamic::DynState;
    /// # use flow_runtime::graph::{Node, NodeKind};
    /// # const fn node(name: &'static str, kind: NodeKind) -> Node {
    /// #     Node { name, key: name, fingerprint: 0, kind, policy: "", parent: None }
    /// # }
    /// # static GRAPH: Graph = Graph { name: "order", fingerprint: 1, edges: &[], nodes: &[
    /// #     node("start", NodeKind::Start), node("end", NodeKind::End),
    /// #     node("reserve", NodeKind::Step), node("charge", NodeKind::Step)] };
    /// # /// `reserve` (undone if `charge` fails; the undo of 7 fails), then `charge` (3 attempts,
    /// # /// declined for odd numbers).
    /// # struct Order;
    /// # impl Workflow for Order {
    /// #     type Input = u32; type Output = u32; type Error = String; type State = DynState;
    /// #     fn graph(&self) -> &'static Graph { &GRAPH }
    /// #     async fn execute(&self, ctx: Ctx<String>, n: u32) -> Result<u32, Error<String>> {
    /// #         let r = ctx.step(NodeId(2), async move { Ok::<u32, String>(n) }).await;
    /// #         let id = ctx.compensate(NodeId(2), r, |id: u32| async move {
    /// #             if id == 7 { Err(format!("cannot release {id}")) } else { Ok(()) }
    /// #         })?;
    /// #         let retry = [flow_runtime::policy::Retry::new(3)];
    /// #         let policy = StepPolicy { retry: &retry, timeout: None };
    /// #         Ok(ctx.step_with(NodeId(3), policy, || async move {
    /// #             if id % 2 == 1 { Err(format!("card declined for {id}")) } else { Ok(id * 10) }
    /// #         }).await?)
    /// #     }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use flow_runtime::{Runtime, Timeline};
    /// let timeline = Timeline::new();
    /// let runtime = Runtime::new().with_observer(timeline.clone());
    /// runtime.run(&Order, 3).await.unwrap_err();
    /// assert!(!timeline.events().is_empty());
    /// assert!(timeline.to_chrome_trace().starts_with(r#"{"traceEvents""#));
    /// assert!(timeline.to_mermaid_gantt().starts_with("gantt"));
    /// timeline.clear();
    /// assert!(timeline.slices().is_empty());
    /// # }
    /// ```
    pub fn new() -> Self {
        Timeline::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The recorded events, each with its time since the timeline's first event.
    pub fn events(&self) -> Vec<(Duration, Event)> {
        self.lock().events.clone()
    }

    /// Forgets every recorded event.
    pub fn clear(&self) {
        *self.lock() = Record::default();
    }

    /// The recorded runs as slices: one per run, per step execution, per attempt and backoff
    /// of a retried step, and per compensation; sorted by start (ties in the order they
    /// began).
    pub fn slices(&self) -> Vec<Slice> {
        build_slices(&self.lock().events)
    }

    /// The timeline as Chrome trace-event JSON (`{"traceEvents": [..]}`), which Perfetto
    /// (ui.perfetto.dev) and `chrome://tracing` open.
    ///
    /// Every slice is a `B`/`E` pair (`ts` in microseconds, `pid` 1). Slices are laid on
    /// tracks (`tid`) so that each track holds properly nested slices: a run's sequential
    /// steps sit under the run on one track, and steps running at the same time (parallel
    /// branches, map items) get a track each. A retried step holds one slice per attempt and
    /// per backoff delay. Caught failures are instant (`i`) events. Events are sorted by
    /// `ts`.
    pub fn to_chrome_trace(&self) -> String {
        chrome_trace(&self.slices(), &self.lock().events)
    }

    /// The timeline as a Mermaid `gantt` chart: a section per run, a bar per step execution
    /// (per attempt for retried steps; failed ones marked `crit`) and per compensation.
    pub fn to_mermaid_gantt(&self) -> String {
        gantt(&self.slices())
    }
}

/// What a [`Slice`] of a [`Timeline`] is.
///
/// ```
/// # use flow_runtime::{Error, Graph, NodeId, Workflow};
/// # use flow_runtime::__private::{Ctx, StepPolicy};
/// # use flow_runtime::dynamic::DynState;
/// # use flow_runtime::graph::{Node, NodeKind};
/// # const fn node(name: &'static str, kind: NodeKind) -> Node {
/// #     Node { name, key: name, fingerprint: 0, kind, policy: "", parent: None }
/// # }
/// # static GRAPH: Graph = Graph { name: "order", fingerprint: 1, edges: &[], nodes: &[
/// #     node("start", NodeKind::Start), node("end", NodeKind::End),
/// #     node("reserve", NodeKind::Step), node("charge", NodeKind::Step)] };
/// # /// `reserve` (undone if `charge` fails; the undo of 7 fails), then `charge` (3 attempts,
/// # /// declined for odd numbers).
/// # struct Order;
/// # impl Workflow for Order {
/// #     type Input = u32; type Output = u32; type Error = String; type State = DynState;
/// #     fn graph(&self) -> &'static Graph { &GRAPH }
/// #     async fn execute(&self, ctx: Ctx<String>, n: u32) -> Result<u32, Error<String>> {
/// #         let r = ctx.step(NodeId(2), async move { Ok::<u32, String>(n) }).await;
/// #         let id = ctx.compensate(NodeId(2), r, |id: u32| async move {
/// #             if id == 7 { Err(format!("cannot release {id}")) } else { Ok(()) }
/// #         })?;
/// #         let retry = [flow_runtime::policy::Retry::new(3)];
/// #         let policy = StepPolicy { retry: &retry, timeout: None };
/// #         Ok(ctx.step_with(NodeId(3), policy, || async move {
/// #             if id % 2 == 1 { Err(format!("card declined for {id}")) } else { Ok(id * 10) }
/// #         }).await?)
/// #     }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use flow_runtime::{Runtime, Timeline};
/// use flow_runtime::timeline::SliceKind;
/// let timeline = Timeline::new();
/// Runtime::new().with_observer(timeline.clone()).run(&Order, 3).await.unwrap_err();
/// let kinds: Vec<SliceKind> = timeline.slices().iter().map(|s| s.kind).collect();
/// assert_eq!(kinds[0], SliceKind::Run);
/// assert!(kinds.contains(&SliceKind::Attempt) && kinds.contains(&SliceKind::Compensation));
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SliceKind {
    /// A whole run.
    Run,
    /// A step, from its first attempt's start to its success or final failure.
    Step,
    /// One attempt of a step that ran more than one.
    Attempt,
    /// The delay between two attempts.
    Backoff,
    /// A compensation.
    Compensation,
}

/// How a [`Slice`] ended.
///
/// ```
/// # use flow_runtime::{Error, Graph, NodeId, Workflow};
/// # use flow_runtime::__private::{Ctx, StepPolicy};
/// # use flow_runtime::dynamic::DynState;
/// # use flow_runtime::graph::{Node, NodeKind};
/// # const fn node(name: &'static str, kind: NodeKind) -> Node {
/// #     Node { name, key: name, fingerprint: 0, kind, policy: "", parent: None }
/// # }
/// # static GRAPH: Graph = Graph { name: "order", fingerprint: 1, edges: &[], nodes: &[
/// #     node("start", NodeKind::Start), node("end", NodeKind::End),
/// #     node("reserve", NodeKind::Step), node("charge", NodeKind::Step)] };
/// # /// `reserve` (undone if `charge` fails; the undo of 7 fails), then `charge` (3 attempts,
/// # /// declined for odd numbers).
/// # struct Order;
/// # impl Workflow for Order {
/// #     type Input = u32; type Output = u32; type Error = String; type State = DynState;
/// #     fn graph(&self) -> &'static Graph { &GRAPH }
/// #     async fn execute(&self, ctx: Ctx<String>, n: u32) -> Result<u32, Error<String>> {
/// #         let r = ctx.step(NodeId(2), async move { Ok::<u32, String>(n) }).await;
/// #         let id = ctx.compensate(NodeId(2), r, |id: u32| async move {
/// #             if id == 7 { Err(format!("cannot release {id}")) } else { Ok(()) }
/// #         })?;
/// #         let retry = [flow_runtime::policy::Retry::new(3)];
/// #         let policy = StepPolicy { retry: &retry, timeout: None };
/// #         Ok(ctx.step_with(NodeId(3), policy, || async move {
/// #             if id % 2 == 1 { Err(format!("card declined for {id}")) } else { Ok(id * 10) }
/// #         }).await?)
/// #     }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use flow_runtime::{Runtime, Timeline};
/// use flow_runtime::timeline::{SliceKind, SliceOutcome};
/// let timeline = Timeline::new();
/// Runtime::new().with_observer(timeline.clone()).run(&Order, 3).await.unwrap_err();
/// let slices = timeline.slices();
/// let charge = slices.iter().find(|s| s.kind == SliceKind::Step && s.name == "charge").unwrap();
/// assert_eq!(charge.outcome, SliceOutcome::Failed("card declined for 3".into()));
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SliceOutcome {
    /// It succeeded (a backoff always does).
    Ok,
    /// It failed, with this message.
    Failed(String),
    /// The run was cancelled.
    Cancelled,
    /// It was still in flight when its run ended (dropped) or when the timeline was exported.
    Unfinished,
}

/// One interval of a [`Timeline`].
///
/// ```
/// # use flow_runtime::{Error, Graph, NodeId, Workflow};
/// # use flow_runtime::__private::{Ctx, StepPolicy};
/// # use flow_runtime::dynamic::DynState;
/// # use flow_runtime::graph::{Node, NodeKind};
/// # const fn node(name: &'static str, kind: NodeKind) -> Node {
/// #     Node { name, key: name, fingerprint: 0, kind, policy: "", parent: None }
/// # }
/// # static GRAPH: Graph = Graph { name: "order", fingerprint: 1, edges: &[], nodes: &[
/// #     node("start", NodeKind::Start), node("end", NodeKind::End),
/// #     node("reserve", NodeKind::Step), node("charge", NodeKind::Step)] };
/// # /// `reserve` (undone if `charge` fails; the undo of 7 fails), then `charge` (3 attempts,
/// # /// declined for odd numbers).
/// # struct Order;
/// # impl Workflow for Order {
/// #     type Input = u32; type Output = u32; type Error = String; type State = DynState;
/// #     fn graph(&self) -> &'static Graph { &GRAPH }
/// #     async fn execute(&self, ctx: Ctx<String>, n: u32) -> Result<u32, Error<String>> {
/// #         let r = ctx.step(NodeId(2), async move { Ok::<u32, String>(n) }).await;
/// #         let id = ctx.compensate(NodeId(2), r, |id: u32| async move {
/// #             if id == 7 { Err(format!("cannot release {id}")) } else { Ok(()) }
/// #         })?;
/// #         let retry = [flow_runtime::policy::Retry::new(3)];
/// #         let policy = StepPolicy { retry: &retry, timeout: None };
/// #         Ok(ctx.step_with(NodeId(3), policy, || async move {
/// #             if id % 2 == 1 { Err(format!("card declined for {id}")) } else { Ok(id * 10) }
/// #         }).await?)
/// #     }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use flow_runtime::{Runtime, Timeline};
/// use flow_runtime::timeline::SliceKind;
/// let timeline = Timeline::new();
/// Runtime::new().with_observer(timeline.clone()).run(&Order, 3).await.unwrap_err();
/// let slices = timeline.slices();
/// let second = slices.iter().find(|s| s.kind == SliceKind::Attempt && s.attempt == 2).unwrap();
/// assert_eq!((second.workflow, second.name, second.label()), ("order", "charge", "charge #2".into()));
/// assert!(second.start <= second.end && second.parent.is_none());
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slice {
    /// What it is.
    pub kind: SliceKind,
    /// The run.
    pub run: RunId,
    /// The run whose step started this run, if any.
    pub parent: Option<RunId>,
    /// The workflow's name.
    pub workflow: &'static str,
    /// The step's name (the workflow's name for a run).
    pub name: &'static str,
    /// The attempt, for attempts and steps (for a step: its last attempt).
    pub attempt: u32,
    /// Start, since the timeline's first event.
    pub start: Duration,
    /// End, since the timeline's first event.
    pub end: Duration,
    /// How it ended.
    pub outcome: SliceOutcome,
}

impl Slice {
    fn new(kind: SliceKind, e: &Event, name: &'static str, attempt: u32, start: Duration) -> Slice {
        Slice {
            kind,
            run: e.run,
            parent: e.parent,
            workflow: e.workflow,
            name,
            attempt,
            start,
            end: start,
            outcome: SliceOutcome::Unfinished,
        }
    }

    /// The label used in the exports: `wait_up`, `wait_up #2`, `backoff`, `undo launch`.
    pub fn label(&self) -> String {
        match self.kind {
            SliceKind::Run => format!("{} {}", self.workflow, self.run),
            SliceKind::Step => self.name.to_owned(),
            SliceKind::Attempt => format!("{} #{}", self.name, self.attempt),
            SliceKind::Backoff => format!("backoff before {} #{}", self.name, self.attempt + 1),
            SliceKind::Compensation => format!("compensate {}", self.name),
        }
    }
}

struct OpenStep {
    /// The step execution: node, iteration and map item (see [`Event`]).
    node: u32,
    iteration: u32,
    item: Option<u32>,
    step: usize,
    attempt: Option<usize>,
    backoff: Option<usize>,
    attempts: Vec<usize>,
    number: u32,
}

fn build_slices(events: &[(Duration, Event)]) -> Vec<Slice> {
    let mut out: Vec<Slice> = Vec::new();
    let mut runs: HashMap<RunId, usize> = HashMap::new();
    let mut open: HashMap<RunId, Vec<OpenStep>> = HashMap::new();
    let mut comps: HashMap<(RunId, u32), usize> = HashMap::new();
    let last = events.last().map_or(Duration::ZERO, |(t, _)| *t);
    for (t, e) in events {
        let t = *t;
        let node = e.node.0;
        let steps = open.entry(e.run).or_default();
        let this = |s: &OpenStep| s.node == node && s.iteration == e.iteration && s.item == e.item;
        match &e.kind {
            EventKind::RunStarted => {
                runs.insert(e.run, out.len());
                out.push(Slice::new(SliceKind::Run, e, e.workflow, 0, t));
            }
            EventKind::Entered
            | EventKind::ObserverPanicked { .. }
            | EventKind::SignalWaiting { .. }
            | EventKind::SignalReceived { .. }
            | EventKind::Progress { .. } => {}
            EventKind::AttemptStarted { attempt: 1 } => {
                let step = out.len();
                out.push(Slice::new(SliceKind::Step, e, e.step, 1, t));
                out.push(Slice::new(SliceKind::Attempt, e, e.step, 1, t));
                steps.push(OpenStep {
                    node,
                    iteration: e.iteration,
                    item: e.item,
                    step,
                    attempt: Some(step + 1),
                    backoff: None,
                    attempts: vec![step + 1],
                    number: 1,
                });
            }
            EventKind::AttemptStarted { attempt } => {
                if let Some(s) = steps.iter_mut().find(|s| this(s) && s.backoff.is_some()) {
                    if let Some(b) = s.backoff.take() {
                        out[b].end = t;
                        out[b].outcome = SliceOutcome::Ok;
                    }
                    s.number = *attempt;
                    s.attempt = Some(out.len());
                    s.attempts.push(out.len());
                    out[s.step].attempt = *attempt;
                    out.push(Slice::new(SliceKind::Attempt, e, e.step, *attempt, t));
                }
            }
            EventKind::AttemptFailed {
                attempt,
                error,
                retry_in,
            } => {
                if let Some(s) = steps
                    .iter_mut()
                    .find(|s| this(s) && s.number == *attempt && s.attempt.is_some())
                {
                    if let Some(a) = s.attempt.take() {
                        out[a].end = t;
                        out[a].outcome = SliceOutcome::Failed(error.clone());
                    }
                    if retry_in.is_some() {
                        s.backoff = Some(out.len());
                        out.push(Slice::new(SliceKind::Backoff, e, e.step, *attempt, t));
                    }
                }
            }
            EventKind::StepSucceeded { attempt, .. } => {
                if let Some(i) = steps
                    .iter()
                    .position(|s| this(s) && s.number == *attempt && s.attempt.is_some())
                {
                    let s = steps.remove(i);
                    for ix in s.attempt.into_iter().chain([s.step]) {
                        out[ix].end = t;
                        out[ix].outcome = SliceOutcome::Ok;
                    }
                    drop_single_attempt(&mut out, &s);
                }
            }
            EventKind::StepFailed { attempts, error } => {
                if let Some(i) = steps.iter().position(|s| this(s) && s.number == *attempts) {
                    let s = steps.remove(i);
                    for ix in s.attempt.into_iter().chain([s.step]) {
                        out[ix].end = t;
                        out[ix].outcome = SliceOutcome::Failed(error.clone());
                    }
                    drop_single_attempt(&mut out, &s);
                }
            }
            EventKind::Caught { .. } => {}
            EventKind::CompensationStarted => {
                comps.insert((e.run, node), out.len());
                out.push(Slice::new(SliceKind::Compensation, e, e.step, 0, t));
            }
            EventKind::CompensationSucceeded | EventKind::CompensationFailed { .. } => {
                if let Some(ix) = comps.remove(&(e.run, node)) {
                    out[ix].end = t;
                    out[ix].outcome = match &e.kind {
                        EventKind::CompensationFailed { error } => {
                            SliceOutcome::Failed(error.clone())
                        }
                        _ => SliceOutcome::Ok,
                    };
                }
            }
            EventKind::RunCompleted | EventKind::RunFailed { .. } | EventKind::RunCancelled => {
                // Steps still open were dropped when the run ended.
                for s in steps.drain(..) {
                    for ix in s.attempt.into_iter().chain(s.backoff).chain([s.step]) {
                        out[ix].end = t;
                    }
                    drop_single_attempt(&mut out, &s);
                }
                if let Some(&ix) = runs.get(&e.run) {
                    out[ix].end = t;
                    out[ix].outcome = match &e.kind {
                        EventKind::RunFailed { error } => SliceOutcome::Failed(error.clone()),
                        EventKind::RunCancelled => SliceOutcome::Cancelled,
                        _ => SliceOutcome::Ok,
                    };
                }
            }
        }
    }
    // Whatever is still open ends at the last event.
    for s in open.values().flatten() {
        for ix in s.attempt.into_iter().chain(s.backoff).chain([s.step]) {
            out[ix].end = last;
        }
        drop_single_attempt(&mut out, s);
    }
    for &ix in runs.values().chain(comps.values()) {
        if out[ix].outcome == SliceOutcome::Unfinished {
            out[ix].end = last;
        }
    }
    // Single attempts were marked by an empty name: the step's slice says it all.
    out.retain(|s| !s.name.is_empty());
    // Stable: slices starting at the same time keep the order they began in (a run before
    // its first step, a step before its first attempt).
    out.sort_by_key(|s| s.start);
    out
}

/// A step that ran one attempt needs no attempt slice (it would repeat the step's).
fn drop_single_attempt(out: &mut [Slice], s: &OpenStep) {
    if let [only] = s.attempts[..] {
        out[only].name = "";
    }
}

/// Whether `s` may be drawn inside `outer` (on the same track): a step or compensation inside
/// its run, an attempt or backoff inside its step, a nested run inside a step of its parent.
fn nests(outer: &Slice, s: &Slice) -> bool {
    match s.kind {
        SliceKind::Step | SliceKind::Compensation => {
            outer.kind == SliceKind::Run && outer.run == s.run
        }
        SliceKind::Attempt | SliceKind::Backoff => {
            outer.kind == SliceKind::Step && outer.run == s.run && outer.name == s.name
        }
        SliceKind::Run => {
            matches!(outer.kind, SliceKind::Step | SliceKind::Attempt)
                && s.parent == Some(outer.run)
        }
    }
}

fn micros(d: Duration) -> u128 {
    d.as_micros()
}

/// Appends `s` as a JSON string literal.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

struct TraceEvent {
    ts: u128,
    json: String,
}

fn chrome_trace(slices: &[Slice], events: &[(Duration, Event)]) -> String {
    // Lay the slices on tracks: a slice goes on the lowest track whose innermost open slice
    // contains it (or that is free), attempts and backoffs preferably on their step's track.
    let mut stacks: Vec<Vec<(usize, Duration)>> = Vec::new();
    let mut out: Vec<TraceEvent> = Vec::new();
    let mut run_track: HashMap<RunId, usize> = HashMap::new();
    let mut step_track: HashMap<(RunId, &str), usize> = HashMap::new();
    let end_event = |s: &Slice, tid: usize| TraceEvent {
        ts: micros(s.end),
        json: format!(
            "{{\"ph\":\"E\",\"pid\":1,\"tid\":{tid},\"ts\":{}}}",
            micros(s.end)
        ),
    };
    for (ix, s) in slices.iter().enumerate() {
        let fits = |stack: &mut Vec<(usize, Duration)>, out: &mut Vec<TraceEvent>, tid: usize| {
            while let Some(&(top, end)) = stack.last() {
                if end <= s.start && top != ix {
                    out.push(end_event(&slices[top], tid));
                    stack.pop();
                } else {
                    break;
                }
            }
            stack
                .last()
                .is_none_or(|&(top, end)| end >= s.end && nests(&slices[top], s))
        };
        let preferred = match s.kind {
            SliceKind::Attempt | SliceKind::Backoff => step_track.get(&(s.run, s.name)).copied(),
            _ => None,
        };
        let mut chosen = preferred.filter(|&t| fits(&mut stacks[t], &mut out, t + 1));
        if chosen.is_none() {
            chosen = stacks
                .iter_mut()
                .enumerate()
                .find_map(|(t, stack)| fits(stack, &mut out, t + 1).then_some(t));
        }
        let t = chosen.unwrap_or_else(|| {
            stacks.push(Vec::new());
            stacks.len() - 1
        });
        if s.kind == SliceKind::Step {
            step_track.insert((s.run, s.name), t);
        }
        if s.kind == SliceKind::Run {
            run_track.insert(s.run, t);
        }
        stacks[t].push((ix, s.end));
        let mut json = String::from("{\"ph\":\"B\",\"pid\":1,\"tid\":");
        let _ = write!(json, "{},\"ts\":{},\"name\":", t + 1, micros(s.start));
        json_str(&mut json, &s.label());
        json.push_str(",\"cat\":");
        json_str(
            &mut json,
            match s.kind {
                SliceKind::Run => "workflow",
                SliceKind::Step => "step",
                SliceKind::Attempt => "attempt",
                SliceKind::Backoff => "backoff",
                SliceKind::Compensation => "compensation",
            },
        );
        let _ = write!(json, ",\"args\":{{\"run\":{}", s.run.0);
        json.push_str(",\"workflow\":");
        json_str(&mut json, s.workflow);
        if s.kind != SliceKind::Run {
            json.push_str(",\"step\":");
            json_str(&mut json, s.name);
        }
        if matches!(s.kind, SliceKind::Step | SliceKind::Attempt) {
            let _ = write!(json, ",\"attempt\":{}", s.attempt);
        }
        json.push_str(",\"outcome\":");
        match &s.outcome {
            SliceOutcome::Ok => json_str(&mut json, "ok"),
            SliceOutcome::Cancelled => json_str(&mut json, "cancelled"),
            SliceOutcome::Unfinished => json_str(&mut json, "unfinished"),
            SliceOutcome::Failed(e) => {
                json_str(&mut json, "failed");
                json.push_str(",\"error\":");
                json_str(&mut json, e);
            }
        }
        json.push_str("}}");
        out.push(TraceEvent {
            ts: micros(s.start),
            json,
        });
    }
    for (t, stack) in stacks.iter_mut().enumerate() {
        while let Some((top, _)) = stack.pop() {
            out.push(end_event(&slices[top], t + 1));
        }
    }
    // Caught failures: instant events on their run's track.
    for (at, e) in events {
        if let EventKind::Caught { error } = &e.kind {
            let tid = run_track.get(&e.run).map_or(1, |t| t + 1);
            let mut json = String::from("{\"ph\":\"i\",\"s\":\"t\",\"pid\":1,\"tid\":");
            let _ = write!(json, "{tid},\"ts\":{},\"name\":", micros(*at));
            json_str(&mut json, &format!("caught: {}", e.step));
            json.push_str(",\"args\":{\"error\":");
            json_str(&mut json, error);
            json.push_str("}}");
            out.push(TraceEvent {
                ts: micros(*at),
                json,
            });
        }
    }
    // A stable sort keeps each track's begin/end order among equal timestamps.
    out.sort_by_key(|e| e.ts);
    let mut s = String::from("{\"traceEvents\":[\n");
    s.push_str(
        "{\"ph\":\"M\",\"pid\":1,\"tid\":0,\"name\":\"process_name\",\"args\":{\"name\":\"flow\"}}",
    );
    for t in 0..stacks.len() {
        let _ = write!(
            s,
            ",\n{{\"ph\":\"M\",\"pid\":1,\"tid\":{},\"name\":\"thread_name\",\"args\":{{\"name\":\"track {}\"}}}}",
            t + 1,
            t + 1
        );
    }
    for e in &out {
        s.push_str(",\n");
        s.push_str(&e.json);
    }
    s.push_str("\n],\"displayTimeUnit\":\"ms\"}\n");
    s
}

/// Text that Mermaid's gantt syntax can hold in a task name (no `:`, `;` or `#`).
fn gantt_text(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            ':' | ';' | '#' => ' ',
            '\n' => ' ',
            c => c,
        })
        .collect()
}

fn gantt(slices: &[Slice]) -> String {
    let mut out =
        String::from("gantt\n    title flow timeline\n    dateFormat x\n    axisFormat %M:%S.%L\n");
    let mut runs: Vec<&Slice> = slices.iter().filter(|s| s.kind == SliceKind::Run).collect();
    runs.sort_by_key(|s| (s.start, s.run));
    let retried = |s: &Slice| {
        slices.iter().any(|a| {
            a.kind == SliceKind::Attempt && a.run == s.run && a.start == s.start && a.name == s.name
        })
    };
    let mut n = 0;
    for run in runs {
        let _ = writeln!(out, "    section {}", gantt_text(&run.label()));
        for s in slices.iter().filter(|s| s.run == run.run) {
            let show = match s.kind {
                SliceKind::Run | SliceKind::Backoff => false,
                SliceKind::Step => !retried(s),
                SliceKind::Attempt | SliceKind::Compensation => true,
            };
            if !show {
                continue;
            }
            let tag = match s.outcome {
                SliceOutcome::Ok => "done, ",
                SliceOutcome::Failed(_) => "crit, ",
                SliceOutcome::Cancelled | SliceOutcome::Unfinished => "active, ",
            };
            let start = s.start.as_millis();
            let end = s.end.as_millis().max(start + 1);
            let label = if s.kind == SliceKind::Attempt {
                format!("{} attempt {}", s.name, s.attempt)
            } else {
                s.label()
            };
            let _ = writeln!(out, "    {} :{tag}s{n}, {start}, {end}", gantt_text(&label));
            n += 1;
        }
    }
    out
}
