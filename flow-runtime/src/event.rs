//! Events: every transition of a run, delivered to [`Observer`]s.

use core::time::Duration;
use std::sync::Arc;

use crate::graph::NodeId;

/// Identifies one run within this process.
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
/// use flow_runtime::{RunId, Runtime};
/// assert_eq!(RunId(7).to_string(), "run-7");
/// let handle = Runtime::new().spawn(Order, 2);
/// let id: RunId = handle.run_id();
/// assert_eq!(id.to_string(), format!("run-{}", id.0));
/// handle.await.unwrap();
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId(pub u64);

impl core::fmt::Display for RunId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "run-{}", self.0)
    }
}

/// One transition of a run.
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
/// use std::sync::{Arc, Mutex};
/// use flow_runtime::{Event, EventKind, NodeId, Runtime};
/// let events = Arc::new(Mutex::new(Vec::new()));
/// let sink = events.clone();
/// let runtime = Runtime::new().with_observer(move |e: &Event| sink.lock().unwrap().push(e.clone()));
/// runtime.run(&Order, 2).await.unwrap();
/// let events = events.lock().unwrap();
/// let first = &events[0];
/// assert_eq!((first.workflow, first.step, first.node), ("order", "start", NodeId::START));
/// assert_eq!((first.kind.clone(), first.parent), (EventKind::RunStarted, None));
/// assert!(events.iter().any(|e| e.step == "charge" && e.iteration == 1));
/// assert_eq!(events.last().unwrap().kind, EventKind::RunCompleted);
/// # }
/// ```
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
    /// The node's stable identity ([`Node::key`](crate::graph::Node::key)): unchanged by edits
    /// elsewhere in the workflow, unlike [`node`](Self::node).
    pub key: &'static str,
    /// Which time this node was entered in this run (1 for the first; a step in a loop or in a
    /// `map` body is entered once per iteration or item). Counted per node, in observed runs
    /// only; 0 for run-level events.
    pub iteration: u32,
    /// The index of the `map` item whose body this event happened in (the innermost map),
    /// `None` outside a map body. A child run's own events have none (its body is not the
    /// item's), except its `RunStarted`, which carries the item of the parent's step that
    /// started it.
    pub item: Option<u32>,
    /// Time since the run started (tokio's clock, so it follows a paused clock in tests).
    pub at: Duration,
    /// What happened.
    pub kind: EventKind,
}

/// What happened in an [`Event`].
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
/// use std::sync::{Arc, Mutex};
/// use flow_runtime::{Event, EventKind, Runtime};
/// let log = Arc::new(Mutex::new(Vec::new()));
/// let sink = log.clone();
/// let runtime = Runtime::new().with_observer(move |e: &Event| {
///     let line = match &e.kind {
///         EventKind::StepFailed { attempts, error } => format!("{} failed {attempts}x: {error}", e.step),
///         EventKind::CompensationSucceeded => format!("{} undone", e.step),
///         EventKind::RunFailed { .. } => "run failed".to_string(),
///         _ => return,
///     };
///     sink.lock().unwrap().push(line);
/// });
/// runtime.run(&Order, 3).await.unwrap_err();
/// assert_eq!(*log.lock().unwrap(), ["charge failed 3x: card declined for 3", "reserve undone", "run failed"]);
/// # }
/// ```
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
    /// A step reported progress ([`StepContext::report_progress`](crate::StepContext::report_progress)).
    Progress {
        /// The attempt that reported it.
        attempt: u32,
        /// How much is done, from 0.0 to 1.0, if the step said.
        fraction: Option<f64>,
        /// What the step is doing, if it said.
        message: Option<String>,
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
    /// The run waits for a signal (`Ctx::signal` at its node, or
    /// [`signal`](crate::signal()) at the node the run is at).
    SignalWaiting {
        /// The signal's name.
        name: &'static str,
    },
    /// The signal the run waited for arrived (with a value of the expected type).
    SignalReceived {
        /// The signal's name.
        name: &'static str,
    },
    /// The run completed.
    RunCompleted,
    /// The run failed.
    RunFailed {
        /// The error, as text.
        error: String,
    },
    /// The run was cancelled (through its handle, or its future was dropped mid-run).
    RunCancelled,
    /// An observer panicked: it was removed from this run (it receives none of its later
    /// events) and the run went on. Sent to the remaining observers.
    ObserverPanicked {
        /// The panic message.
        message: String,
    },
}

impl core::fmt::Display for Event {
    /// One line: time since the run started, the node, and what happened.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let secs = self.at.as_secs_f64();
        write!(f, "[{secs:>8.3}s] {} {}", self.workflow, self.step)?;
        if self.iteration > 1 {
            write!(f, "#{}", self.iteration)?;
        }
        if let Some(i) = self.item {
            write!(f, "[{i}]")?;
        }
        f.write_str(": ")?;
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
            EventKind::Progress {
                fraction, message, ..
            } => {
                f.write_str("progress")?;
                if let Some(p) = fraction {
                    write!(f, " {:.0}%", p * 100.0)?;
                }
                if let Some(m) = message {
                    write!(f, ": {m}")?;
                }
                Ok(())
            }
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
            EventKind::SignalWaiting { name } => write!(f, "waiting for signal `{name}`"),
            EventKind::SignalReceived { name } => write!(f, "signal `{name}` received"),
            EventKind::RunCompleted => f.write_str("run completed"),
            EventKind::RunFailed { error } => write!(f, "run failed: {error}"),
            EventKind::RunCancelled => f.write_str("run cancelled"),
            EventKind::ObserverPanicked { message } => {
                write!(f, "an observer panicked and was removed: {message}")
            }
        }
    }
}

/// Receives the events of runs.
///
/// Called synchronously on the task that runs the workflow: keep it quick, or hand the event
/// to a channel. Any `Fn(&Event) + Send + Sync + 'static` is an observer.
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
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::sync::Arc;
/// use flow_runtime::{Event, EventKind, Observer, Runtime};
///
/// /// Counts failed attempts.
/// #[derive(Default)]
/// struct Failures(AtomicU32);
/// impl Observer for Failures {
///     fn on_event(&self, event: &Event) {
///         if let EventKind::AttemptFailed { .. } = event.kind {
///             self.0.fetch_add(1, Ordering::Relaxed);
///         }
///     }
/// }
/// let failures = Arc::new(Failures::default());
/// let shared = failures.clone();
/// let runtime = Runtime::new().with_observer(move |e: &Event| shared.on_event(e));
/// runtime.run(&Order, 3).await.unwrap_err();
/// assert_eq!(failures.0.load(Ordering::Relaxed), 3);
/// # }
/// ```
pub trait Observer: Send + Sync + 'static {
    /// Called for each event, in the order the run produces them.
    fn on_event(&self, event: &Event);
}

impl<F: Fn(&Event) + Send + Sync + 'static> Observer for F {
    fn on_event(&self, event: &Event) {
        self(event)
    }
}

/// Where [`Handle::events`](crate::Handle::events) receives a spawned run's events: off (no
/// event is built for it) until someone subscribes; closed when the run has ended.
#[derive(Default)]
pub(crate) struct LazyChannel {
    tx: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedSender<Event>>>,
    on: core::sync::atomic::AtomicBool,
    closed: core::sync::atomic::AtomicBool,
}

impl LazyChannel {
    #[inline]
    pub(crate) fn subscribed(&self) -> bool {
        self.on.load(core::sync::atomic::Ordering::Relaxed)
    }

    /// Subscribes: the receiver gets every event sent from now on (none once the run ended:
    /// its stream ends at once).
    pub(crate) fn subscribe(&self) -> tokio::sync::mpsc::UnboundedReceiver<Event> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut slot = crate::ctx::lock(&self.tx);
        if !self.closed.load(core::sync::atomic::Ordering::Acquire) {
            *slot = Some(tx);
            self.on.store(true, core::sync::atomic::Ordering::Relaxed);
        }
        rx
    }

    /// The run is over: the stream ends after what was sent.
    pub(crate) fn close(&self) {
        let mut slot = crate::ctx::lock(&self.tx);
        self.closed
            .store(true, core::sync::atomic::Ordering::Release);
        *slot = None;
    }

    fn send(&self, event: &Event) {
        if self.subscribed()
            && let Some(tx) = crate::ctx::lock(&self.tx).as_ref()
        {
            // The receiver may be gone (the handle was dropped); the run goes on regardless.
            let _ = tx.send(event.clone());
        }
    }
}

/// The observers of a run. Empty by default, in which case no event is even built.
#[derive(Clone, Default)]
pub(crate) struct Observers {
    pub(crate) list: Option<Arc<[Arc<dyn Observer>]>>,
    /// A spawned run's event channel, which counts as an observer once subscribed.
    pub(crate) lazy: Option<Arc<LazyChannel>>,
}

/// Observers removed from one run after panicking: bit `i` stands for observer `i` (observers
/// past the 64th cannot be removed and are simply shielded).
pub(crate) type Disabled = core::sync::atomic::AtomicU64;

impl Observers {
    pub(crate) fn from_vec(v: Vec<Arc<dyn Observer>>) -> Self {
        if v.is_empty() {
            Observers {
                list: None,
                lazy: None,
            }
        } else {
            Observers {
                list: Some(v.into()),
                lazy: None,
            }
        }
    }

    /// Whether anyone listens now.
    #[inline]
    pub(crate) fn active(&self) -> bool {
        self.list.is_some() || self.lazy.as_ref().is_some_and(|l| l.subscribed())
    }

    pub(crate) fn len(&self) -> usize {
        self.list.as_deref().map_or(0, <[_]>::len)
    }

    pub(crate) fn to_vec(&self) -> Vec<Arc<dyn Observer>> {
        self.list.as_deref().map_or_else(Vec::new, <[_]>::to_vec)
    }

    /// Delivers `event` to every observer not disabled; an observer that panics is disabled
    /// (for this run), its panic message returned, and the others told with
    /// [`EventKind::ObserverPanicked`]. One unwind guard per event, whatever the number of
    /// observers.
    #[inline]
    pub(crate) fn emit(&self, event: &Event, disabled: &Disabled) -> Vec<String> {
        let mut panics = Vec::new();
        if let Some(list) = &self.list {
            let mut from = 0;
            while from < list.len() {
                match deliver(list, from, event, disabled) {
                    Ok(()) => break,
                    Err((i, message)) => {
                        self.observer_panicked(list, i, event, disabled, &message);
                        panics.push(message);
                        from = i + 1;
                    }
                }
            }
        }
        if let Some(lazy) = &self.lazy {
            lazy.send(event);
            for message in &panics {
                let mut note = event.clone();
                note.kind = EventKind::ObserverPanicked {
                    message: message.clone(),
                };
                lazy.send(&note);
            }
        }
        panics
    }

    /// Observer `i` panicked: disables it and tells the others.
    #[cold]
    fn observer_panicked(
        &self,
        list: &[Arc<dyn Observer>],
        i: usize,
        event: &Event,
        disabled: &Disabled,
        message: &str,
    ) {
        use core::sync::atomic::Ordering;
        disabled.fetch_or(bit(i), Ordering::Relaxed);
        let mut note = event.clone();
        note.kind = EventKind::ObserverPanicked {
            message: message.to_owned(),
        };
        let mut from = 0;
        // An observer that panics on the note is disabled too (its panic is not reported again).
        while from < list.len() {
            match deliver(list, from, &note, disabled) {
                Ok(()) => break,
                Err((j, _)) => {
                    disabled.fetch_or(bit(j), Ordering::Relaxed);
                    from = j + 1;
                }
            }
        }
    }
}

fn bit(i: usize) -> u64 {
    if i < 64 { 1u64 << i } else { 0 }
}

/// Calls the enabled observers from `from` on; the index and message of the first that panics.
fn deliver(
    list: &[Arc<dyn Observer>],
    from: usize,
    event: &Event,
    disabled: &Disabled,
) -> Result<(), (usize, String)> {
    let off = disabled.load(core::sync::atomic::Ordering::Relaxed);
    let mut at = from;
    let run = std::panic::AssertUnwindSafe(|| {
        while at < list.len() {
            if off & bit(at) == 0 {
                list[at].on_event(event);
            }
            at += 1;
        }
    });
    std::panic::catch_unwind(run).map_err(|payload| (at, crate::ctx::panic_message(&*payload)))
}
