//! The context of one run: the step engine (retry, timeout, panic capture), parallel and map
//! helpers, compensation bookkeeping, and the current state.
//!
//! Generated code drives a run by calling [`Ctx`] methods; users normally never touch it.

use core::cell::Cell;
use core::future::Future;
use core::panic::AssertUnwindSafe;
use core::pin::Pin;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use core::task::Poll;
use core::time::Duration;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use futures_util::FutureExt as _;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::context::{Frame, Framed, FramedUntil};
use crate::error::{Attempt, CompensationRecord, Error, ErrorKind, Failure, GaveUp, StepError};
use crate::event::{Disabled, Event, EventKind, Observers, RunId};
use crate::graph::{Graph, NodeId};
use crate::policy::{SplitMix64, StepPolicy};
use crate::saga::{Entry, Package};

#[cfg(feature = "durable")]
pub(crate) use crate::durable::Resume;

/// Without durable runs, a step never resumes (an uninhabited stand-in for `durable::Resume`).
#[cfg(not(feature = "durable"))]
pub(crate) enum Resume<'a> {
    #[allow(dead_code)]
    Never(core::convert::Infallible, core::marker::PhantomData<&'a ()>),
}

#[cfg(not(feature = "durable"))]
impl Resume<'_> {
    fn from(&self) -> Option<&(u32, crate::store::RetryState)> {
        match *self {
            Resume::Never(n, _) => match n {},
        }
    }
    fn remaining(&self, _: u64) -> Duration {
        match *self {
            Resume::Never(n, _) => match n {},
        }
    }
    async fn failed_attempt(&self, _: u32, _: Instant, _: String, _: &[u32], _: Duration) {
        match *self {
            Resume::Never(n, _) => match n {},
        }
    }
    fn attempt_started(&self, _: u32, _: Instant) {
        match *self {
            Resume::Never(n, _) => match n {},
        }
    }
}

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Nodes whose entry counters live inline in a run's context (no allocation).
const SMALL_GRAPH: usize = 16;

thread_local! {
    /// The index of the `map` item whose body is being polled on this thread (see
    /// [`Ctx::map`]); read when an event is built and when a child run records where it ran.
    static ITEM: Cell<Option<u32>> = const { Cell::new(None) };
}

/// The `map` item being polled on this thread, if any.
#[inline]
pub(crate) fn current_item() -> Option<u32> {
    ITEM.with(Cell::get)
}

/// Sets the current item for the scope of a poll, restoring the previous one after (also on
/// unwind), so that nested maps and child runs see their own.
pub(crate) struct ItemScope(Option<u32>);

impl ItemScope {
    #[inline]
    pub(crate) fn enter(item: Option<u32>) -> Self {
        ItemScope(ITEM.with(|c| c.replace(item)))
    }
}

impl Drop for ItemScope {
    #[inline]
    fn drop(&mut self) {
        ITEM.with(|c| c.set(self.0));
    }
}

pin_project_lite::pin_project! {
    /// A `map` item's future: polls the item's body with the item's index as the current
    /// item, and gives the index back with the output (so results keep the items' order).
    ///
    /// Written by hand rather than as `async move { (i, fut.await) }` inside an `async fn`:
    /// each of those layers stores the body's future twice (the moved argument and the
    /// awaited copy), and `FuturesUnordered` copies the whole item future into its task.
    struct Item<F> {
        #[pin]
        fut: F,
        index: usize,
    }
}

impl<F: Future> Future for Item<F> {
    type Output = (usize, F::Output);

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut core::task::Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let index = *this.index;
        let _scope = ItemScope::enter(Some(u32::try_from(index).unwrap_or(u32::MAX)));
        match this.fut.poll(cx) {
            Poll::Ready(out) => Poll::Ready((index, out)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Where a run is: running, or one of the terminal states.
///
/// ```
/// use flow_runtime::Status;
/// assert!(!Status::Running.is_terminal() && !Status::Compensating.is_terminal());
/// assert!(Status::Completed.is_terminal() && Status::Failed.is_terminal());
/// assert!(Status::Cancelled.is_terminal());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The run is executing (or was created and not yet polled).
    Running,
    /// A failed run's compensations are running.
    Compensating,
    /// The run completed.
    Completed,
    /// The run failed.
    Failed,
    /// The run was cancelled.
    Cancelled,
}

impl Status {
    fn from_u8(v: u8) -> Status {
        match v {
            0 => Status::Running,
            1 => Status::Compensating,
            2 => Status::Completed,
            3 => Status::Failed,
            _ => Status::Cancelled,
        }
    }

    /// Whether the run is over.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }
}

/// A snapshot of a run's state: the node it is at and its status.
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
/// use flow_runtime::{NodeId, Runtime, StateView, Status};
/// let mut handle = Runtime::new().spawn(Order, 3);
/// assert_eq!(handle.state().status, Status::Running); // started, not polled yet
/// let _ = (&mut handle).await; // `charge` fails
/// let view: StateView = handle.state();
/// assert_eq!((view.node, view.name, view.status), (NodeId::END, "end", Status::Failed));
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateView {
    /// The node most recently entered (the start node before the first step; the end node once
    /// the run is over).
    pub node: NodeId,
    /// That node's name.
    pub name: &'static str,
    /// Running, compensating, or terminal.
    pub status: Status,
}

impl core::fmt::Display for StateView {
    /// `wait_healthy (running)`.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let status = match self.status {
            Status::Running => "running",
            Status::Compensating => "compensating",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        };
        write!(f, "{} ({status})", self.name)
    }
}

/// A step error handed to a `#[workflow]` body: the earlier attempts, and the final attempt's
/// number and duration (its error went to the body).
type Surfaced<E> = (StepError<E>, u32, Option<Duration>);

pub(crate) struct Inner<E> {
    pub(crate) run: RunId,
    parent: Option<RunId>,
    pub(crate) graph: &'static Graph,
    /// When the run started; read only for events, so taken only when the run has observers
    /// (which are fixed when the context is made).
    started: Option<Instant>,
    pub(crate) current: AtomicU32,
    status: AtomicU8,
    /// Whether events are built: the observers were active when the run was made, or the
    /// run's handle subscribed to its events since.
    observed: AtomicBool,
    pub(crate) observers: Observers,
    /// Observers removed from this run after panicking.
    disabled: Disabled,
    /// How many times each step was entered (every run: a step's context names its entry),
    /// and each group (observed runs): inline for the first [`SMALL_GRAPH`] nodes, the rest
    /// allocated on first use ([`Cold::iterations`]).
    iter_small: [AtomicU32; SMALL_GRAPH],
    pub(crate) cancel: Option<CancellationToken>,
    pub(crate) rng: SplitMix64,
    /// The root run's runtime had a fixed seed: every descendant's jitter is reproducible.
    pub(crate) seeded: bool,
    /// Formats a failure for events. Stored so that only constructing a context needs
    /// `E: Display`: a missing `Display` is then reported once, at the workflow's error type.
    pub(crate) describe: fn(&Failure<E>) -> String,
    /// The workflow's total time for compensating.
    pub(crate) compensation_timeout: Duration,
    /// The compensation stack: this run's registered undos and its completed children's.
    pub(crate) stack: Mutex<Vec<Entry<E>>>,
    /// Whether [`Cold::orphans`] may be non-empty (so that a run without children takes no
    /// lock).
    pub(crate) has_orphans: AtomicBool,
    /// Whether a completed child's stack was ever pushed on `stack` (so that a failed attempt
    /// of a run without children takes no lock to look for its children).
    pub(crate) has_children: AtomicBool,
    /// Whether [`Cold::surfaced`] may hold a step error.
    has_surfaced: AtomicBool,
    /// Whether [`Cold::abort`] was set: the run ends.
    aborted: AtomicBool,
    /// What most runs never use, allocated on first use: a run's context is allocated, filled
    /// and dropped once per run, so every field here would cost every run.
    cold: OnceLock<Box<Cold<E>>>,
}

/// The parts of a run's context that most runs never touch (see [`Inner::cold`]).
pub(crate) struct Cold<E> {
    /// Messages of observers that panicked.
    pub(crate) observer_panics: Mutex<Vec<String>>,
    /// Entry counters of the nodes past the first [`SMALL_GRAPH`].
    iterations: OnceLock<Box<[AtomicU32]>>,
    /// When the workflow's time limit ends, for runs that have one (set when the run starts).
    pub(crate) deadline: OnceLock<Instant>,
    /// When a step of this run last reported progress ([`StepContext::report_progress`]).
    pub(crate) heartbeat: Mutex<Option<Instant>>,
    /// Scripted step outcomes (`flow::testing`).
    #[cfg(feature = "testing")]
    pub(crate) script: OnceLock<Arc<crate::testing::Script<E>>>,
    /// Compensations of child runs dropped mid-run (abandoned work), adopted to run before
    /// the next attempt, after a failed group, or at the end of this run.
    pub(crate) orphans: Mutex<Vec<Package>>,
    /// Every compensation this run ran, in order.
    pub(crate) records: Mutex<Vec<CompensationRecord>>,
    /// `#[workflow]`: the earlier attempts of the step whose error was last handed to the body.
    surfaced: Mutex<Option<Surfaced<E>>>,
    /// `#[workflow]`: a step failure with no value of the error type, which ends the run.
    abort: Mutex<Option<StepError<E>>>,
    /// The run's signal mailbox, made on first use (`signal.rs`).
    pub(crate) signals: crate::signal::Slot,
    /// The run's record in a store, for durable runs (set before the run starts).
    #[cfg(feature = "durable")]
    pub(crate) journal: std::sync::OnceLock<Arc<crate::durable::Journal>>,
}

impl<E> Cold<E> {
    fn new() -> Self {
        Cold {
            observer_panics: Mutex::new(Vec::new()),
            iterations: OnceLock::new(),
            deadline: OnceLock::new(),
            heartbeat: Mutex::new(None),
            #[cfg(feature = "testing")]
            script: OnceLock::new(),
            orphans: Mutex::new(Vec::new()),
            records: Mutex::new(Vec::new()),
            surfaced: Mutex::new(None),
            abort: Mutex::new(None),
            signals: crate::signal::Slot::new(),
            #[cfg(feature = "durable")]
            journal: OnceLock::new(),
        }
    }
}

impl<E> Inner<E> {
    #[inline]
    pub(crate) fn is_observed(&self) -> bool {
        self.observed.load(Ordering::Relaxed)
    }

    /// The run's rarely used parts, made now if they were not yet.
    #[inline]
    pub(crate) fn cold(&self) -> &Cold<E> {
        match self.cold.get() {
            Some(cold) => cold,
            None => self.make_cold(),
        }
    }

    #[cold]
    #[inline(never)]
    fn make_cold(&self) -> &Cold<E> {
        self.cold.get_or_init(|| Box::new(Cold::new()))
    }

    /// The run's rarely used parts, if anything made them.
    #[inline]
    pub(crate) fn cold_if(&self) -> Option<&Cold<E>> {
        self.cold.get().map(|cold| &**cold)
    }

    /// How many times `node` was entered so far (0 for the start and end).
    pub(crate) fn iteration_of(&self, node: NodeId) -> u32 {
        let i = node.0 as usize;
        match self.iter_small.get(i) {
            Some(c) => c.load(Ordering::Relaxed),
            None => self
                .cold_if()
                .and_then(|cold| cold.iterations.get())
                .and_then(|c| c.get(i - SMALL_GRAPH))
                .map_or(0, |c| c.load(Ordering::Relaxed)),
        }
    }

    /// Which execution of `node` (in `map` item `item`) is the current one, as the saga tags
    /// what it registers there: a durable run's occurrence (the record's), else the node's
    /// entry count outside a `map` item (passes of a loop differ), else 0 (the item tells the
    /// executions of one `map` apart; the body's entry count is shared by its items, which run
    /// concurrently).
    pub(crate) fn execution(&self, node: NodeId, item: Option<u32>) -> u32 {
        #[cfg(feature = "durable")]
        if let Some(j) = self.cold_if().and_then(|c| c.journal.get()) {
            return j.last_occurrence(node, item);
        }
        if item.is_none() {
            self.iteration_of(node)
        } else {
            0
        }
    }

    /// See [`Ctx::emit_at`].
    #[cold]
    #[inline(never)]
    pub(crate) fn emit_at(&self, node: NodeId, kind: EventKind, now: Instant, iteration: u32) {
        let at = self
            .started
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
        let event = Event {
            run: self.run,
            parent: self.parent,
            workflow: self.graph.name,
            node,
            step: self.graph.name_of(node),
            key: self.graph.key_of(node),
            iteration,
            item: current_item(),
            at,
            kind,
        };
        let panics = self.observers.emit(&event, &self.disabled);
        if !panics.is_empty() {
            lock(&self.cold().observer_panics).extend(panics);
        }
    }
}

/// The context of one run, shared by the generated state machine and the run's handle.
///
/// Cloning is cheap (a reference count).
pub struct Ctx<E> {
    pub(crate) inner: Arc<Inner<E>>,
}

impl<E> Clone for Ctx<E> {
    fn clone(&self) -> Self {
        Ctx {
            inner: Arc::clone(&self.inner),
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means an observer or compensation panicked while holding it; the
    // data (a list) is still consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Extracts the message of a panic payload.
pub(crate) fn panic_message(payload: &(dyn core::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "<non-string panic payload>".to_owned()
    }
}

impl<E: core::fmt::Display> Ctx<E> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        run: RunId,
        parent: Option<RunId>,
        graph: &'static Graph,
        observers: Observers,
        cancel: Option<CancellationToken>,
        seed: u64,
        seeded: bool,
        compensation_timeout: Duration,
    ) -> Self {
        let observed = observers.active();
        Ctx {
            inner: Arc::new(Inner {
                run,
                parent,
                graph,
                // A spawned run may be subscribed to later: its clock starts now too.
                started: (observed || observers.lazy.is_some()).then(Instant::now),
                current: AtomicU32::new(NodeId::START.0),
                status: AtomicU8::new(0),
                observed: AtomicBool::new(observed),
                observers,
                disabled: Disabled::new(0),
                iter_small: [const { AtomicU32::new(0) }; SMALL_GRAPH],
                cancel,
                rng: SplitMix64::new(seed),
                seeded,
                describe: |f| f.to_string(),
                compensation_timeout,
                stack: Mutex::new(Vec::new()),
                has_orphans: AtomicBool::new(false),
                has_children: AtomicBool::new(false),
                has_surfaced: AtomicBool::new(false),
                aborted: AtomicBool::new(false),
                cold: OnceLock::new(),
            }),
        }
    }
}

impl<E> Ctx<E> {
    /// The run's id.
    pub fn run_id(&self) -> RunId {
        self.inner.run
    }

    /// The workflow's graph.
    pub fn graph(&self) -> &'static Graph {
        self.inner.graph
    }

    /// The current state.
    pub fn state(&self) -> StateView {
        let node = NodeId(self.inner.current.load(Ordering::Relaxed));
        StateView {
            node,
            name: self.inner.graph.name_of(node),
            status: Status::from_u8(self.inner.status.load(Ordering::Relaxed)),
        }
    }

    pub(crate) fn set_status(&self, s: Status) {
        let v = match s {
            Status::Running => 0,
            Status::Compensating => 1,
            Status::Completed => 2,
            Status::Failed => 3,
            Status::Cancelled => 4,
        };
        if s.is_terminal() {
            self.inner.current.store(NodeId::END.0, Ordering::Relaxed);
        }
        self.inner.status.store(v, Ordering::Relaxed);
    }

    pub(crate) fn cancel_token(&self) -> Option<&CancellationToken> {
        self.inner.cancel.as_ref()
    }

    /// Whether anyone is listening (events are only built when this is true).
    #[inline]
    pub fn observed(&self) -> bool {
        self.inner.observed.load(Ordering::Relaxed)
    }

    /// Turns events on (a spawned run's handle subscribed to them).
    pub(crate) fn set_observed(&self) {
        self.inner.observed.store(true, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn emit(&self, node: NodeId, kind: EventKind) {
        if self.observed() {
            let iteration = self.iteration_of(node);
            self.emit_at(node, kind, Instant::now(), iteration);
        }
    }

    /// How many times `node` was entered so far (0 for the start and end).
    pub(crate) fn iteration_of(&self, node: NodeId) -> u32 {
        self.inner.iteration_of(node)
    }

    /// Counts one more entry into `node` and returns its number (steps in every run, groups
    /// in observed runs; the counters of nodes past the first [`SMALL_GRAPH`] are allocated
    /// on first use).
    #[inline]
    fn next_iteration(&self, node: NodeId) -> u32 {
        match self.inner.iter_small.get(node.0 as usize) {
            // Not a read-modify-write: every entry into a node happens while the run's body
            // is polled, and one task polls it, one poll at a time.
            Some(c) => {
                let n = c.load(Ordering::Relaxed).wrapping_add(1);
                c.store(n, Ordering::Relaxed);
                n
            }
            None => self.next_iteration_big(node),
        }
    }

    #[cold]
    #[inline(never)]
    fn next_iteration_big(&self, node: NodeId) -> u32 {
        let counts = self.inner.cold().iterations.get_or_init(|| {
            (SMALL_GRAPH..self.inner.graph.nodes.len())
                .map(|_| AtomicU32::new(0))
                .collect()
        });
        counts
            .get((node.0 as usize).wrapping_sub(SMALL_GRAPH))
            .map_or(0, |c| c.fetch_add(1, Ordering::Relaxed).saturating_add(1))
    }

    /// Emits an event that happened at `now` (several events of one instant share one clock
    /// read). Only called when the run has observers.
    #[cold]
    #[inline(never)]
    fn emit_at(&self, node: NodeId, kind: EventKind, now: Instant, iteration: u32) {
        self.inner.emit_at(node, kind, now, iteration);
    }

    /// Enters a node: records it as the current state and emits [`EventKind::Entered`].
    #[inline]
    pub fn enter(&self, node: NodeId) {
        self.record_current(node);
        if self.observed() {
            let iteration = self.next_iteration(node);
            self.emit_at(node, EventKind::Entered, Instant::now(), iteration);
        }
    }

    /// The state part of [`enter`](Self::enter): the current node, and the end of the previous
    /// step's hand-off to a `#[workflow]` body.
    #[inline]
    fn record_current(&self, node: NodeId) {
        self.inner.current.store(node.0, Ordering::Relaxed);
        if self.inner.has_surfaced.load(Ordering::Relaxed) {
            self.clear_surfaced();
        }
    }

    #[cold]
    fn clear_surfaced(&self) {
        self.inner.has_surfaced.store(false, Ordering::Relaxed);
        if let Some(cold) = self.inner.cold_if() {
            *lock(&cold.surfaced) = None;
        }
    }

    /// `start_attempt` for a plain step (entered, attempt 1, timed only when observed): the
    /// start when observed, and the step's entry number.
    #[inline]
    fn start_plain(&self, node: NodeId) -> (Option<Instant>, u32) {
        self.record_current(node);
        let iteration = self.next_iteration(node);
        if self.observed() {
            (Some(self.start_observed(node, iteration)), iteration)
        } else {
            (None, iteration)
        }
    }

    #[cold]
    #[inline(never)]
    fn start_observed(&self, node: NodeId, iteration: u32) -> Instant {
        let start = Instant::now();
        self.emit_at(node, EventKind::Entered, start, iteration);
        self.emit_at(
            node,
            EventKind::AttemptStarted { attempt: 1 },
            start,
            iteration,
        );
        start
    }

    /// Enters a step's node (when `enter`) and starts its attempt `number`: records the step
    /// as the current state, emits its events, and reads the clock when someone needs the
    /// attempt's timing (`measure`, or an observer). One clock read serves the attempt's
    /// duration and both events. `iteration` is the step's entry number (observed runs): set
    /// when entering, read after.
    #[inline]
    pub(crate) fn start_attempt(
        &self,
        node: NodeId,
        number: u32,
        enter: bool,
        measure: bool,
        iteration: &mut u32,
    ) -> Option<Instant> {
        if enter {
            self.record_current(node);
            *iteration = self.next_iteration(node);
        }
        if self.observed() {
            let start = Instant::now();
            if enter {
                self.emit_at(node, EventKind::Entered, start, *iteration);
            }
            self.emit_at(
                node,
                EventKind::AttemptStarted { attempt: number },
                start,
                *iteration,
            );
            Some(start)
        } else if measure {
            Some(Instant::now())
        } else {
            None
        }
    }
}

/// Runs one attempt: the future, under the timeout if any, with panics caught; the step's
/// output is turned into `Result<_, E>` by [`StepOutput`]. `observed`: the attempt is polled
/// inside the span the tracing observer made for it (an unobserved run has none, and its
/// future is polled as it is).
async fn attempt<E, Fut>(
    fut: Fut,
    observed: bool,
    timeout: Option<Duration>,
    frame: Frame,
    deadline: Option<Instant>,
) -> Result<<Fut::Output as StepOutput<E>>::Ok, Failure<E>>
where
    Fut: Future,
    Fut::Output: StepOutput<E>,
{
    let outcome = match deadline {
        None if !observed => {
            let fut = core::pin::pin!(fut);
            AssertUnwindSafe(Framed { fut, frame }).catch_unwind().await
        }
        None => {
            let fut = core::pin::pin!(crate::trace::traced(fut, true));
            AssertUnwindSafe(Framed { fut, frame }).catch_unwind().await
        }
        Some(deadline) => {
            let fut = core::pin::pin!(crate::trace::traced(fut, observed));
            let guarded = AssertUnwindSafe(FramedUntil {
                fut,
                frame,
                deadline,
            })
            .catch_unwind();
            // `timeout` is `Some` whenever there is a deadline.
            match tokio::time::timeout_at(deadline, guarded).await {
                Ok(r) => r,
                Err(_) => return Err(Failure::TimedOut(timeout.unwrap_or_default())),
            }
        }
    };
    match outcome {
        Ok(out) => out.into_result(),
        Err(payload) => Err(Failure::Panicked(panic_message(&*payload))),
    }
}

/// What a step may return: `Result<T, E2>` whose error converts into the workflow's `E`, or
/// `()` (an infallible step such as a `sleep`).
#[diagnostic::on_unimplemented(
    message = "an awaited call in a workflow is a step, and a step returns `Result<T, E>` or `()`, but this one returns `{Self}`",
    label = "this call is a step",
    note = "to await something that is not a step, bind the future first: `let fut = ...; fut.await`"
)]
pub trait StepOutput<E> {
    /// The success value.
    type Ok;
    /// What a `#[workflow]` body sees: `Result<Ok, E>` for a fallible step, `()` for `()`.
    type Surfaced;
    /// The output as a result whose failure is the step's, in the workflow's error type
    /// (usually [`Failure::Error`]; a child workflow's timeout or panic keeps its kind).
    fn into_result(self) -> Result<Self::Ok, Failure<E>>;
    /// The result as the body sees it.
    fn surfaced(result: Result<Self::Ok, E>) -> Self::Surfaced;
}

impl<T, E, E2> StepOutput<E> for Result<T, E2>
where
    E: From<E2>,
{
    type Ok = T;
    type Surfaced = Result<T, E>;

    #[inline]
    fn into_result(self) -> Result<T, Failure<E>> {
        self.map_err(|e| Failure::Error(E::from(e)))
    }

    #[inline]
    fn surfaced(result: Result<T, E>) -> Result<T, E> {
        result
    }
}

impl<E> StepOutput<E> for () {
    type Ok = ();
    type Surfaced = ();

    #[inline]
    fn into_result(self) -> Result<(), Failure<E>> {
        Ok(())
    }

    #[inline]
    fn surfaced(_: Result<(), E>) {}
}

impl<E> Ctx<E> {
    /// Runs a step without policies: one attempt, panics caught.
    ///
    /// The step's error converts into the workflow's error type through `From`.
    pub async fn step<Fut>(
        &self,
        node: NodeId,
        fut: Fut,
    ) -> Result<<Fut::Output as StepOutput<E>>::Ok, StepError<E>>
    where
        Fut: Future,
        Fut::Output: StepOutput<E>,
    {
        // A plain step of an unobserved run is not timed: see `Attempt::elapsed`. The attempt
        // is awaited here rather than through `attempt` (no timeout to apply): one future
        // layer fewer on the path every plain step takes.
        // The start time and the step's iteration, only in observed runs: one `None` to carry
        // across the await otherwise.
        let (start, iteration) = self.start_plain(node);
        // Tests only. A scripted run is always observed (the harness records its events), so
        // an unobserved run does not even look. A scripted attempt never polls the step; a
        // scripted timeout of a step without one never ends.
        #[cfg(feature = "testing")]
        if start.is_some()
            && let Some(scripted) = self.scripted_now(node)
        {
            drop(fut);
            let failure = match scripted {
                crate::testing::Scripted::Fail(failure) => failure,
                crate::testing::Scripted::Hang => core::future::pending().await,
            };
            return Err(self.fail(
                node,
                GaveUp::NotRetried,
                Vec::new(),
                1,
                start,
                failure,
                iteration,
            ));
        }
        // Polled with the step's context at hand (`StepContext::current`).
        let frame = Frame::plain(node, iteration);
        // An unobserved run (`start` is `None`) polls the step's future as it is: no tracing
        // span to enter around each poll, none to drop after.
        let outcome = if start.is_none() {
            let fut = core::pin::pin!(fut);
            AssertUnwindSafe(Framed { fut, frame }).catch_unwind().await
        } else {
            let fut = core::pin::pin!(crate::trace::traced(fut, true));
            AssertUnwindSafe(Framed { fut, frame }).catch_unwind().await
        };
        let failure = match outcome {
            Ok(out) => match out.into_result() {
                Ok(v) => {
                    if start.is_some() {
                        self.emit_success(node, 1, start, iteration);
                    }
                    return Ok(v);
                }
                Err(failure) => failure,
            },
            Err(payload) => Failure::Panicked(panic_message(&*payload)),
        };
        Err(self.fail(
            node,
            GaveUp::NotRetried,
            Vec::new(),
            1,
            start,
            failure,
            iteration,
        ))
    }

    /// Runs a step under its policies. `make` creates the future of one attempt; it is called
    /// once per attempt.
    pub async fn step_with<Fut, M>(
        &self,
        node: NodeId,
        policy: StepPolicy<'_, E>,
        make: M,
    ) -> Result<<Fut::Output as StepOutput<E>>::Ok, StepError<E>>
    where
        M: FnMut() -> Fut,
        Fut: Future,
        Fut::Output: StepOutput<E>,
    {
        self.step_with_resume(node, policy, make, None).await
    }

    /// [`step_with`](Self::step_with) for a step whose policies are retry rules only (no
    /// per-attempt timeout), outside durable workflows: the same attempts, events, retries and
    /// errors. What it leaves out (a timer per attempt, a resumed step's state) keeps its
    /// future, which every run of the workflow holds and moves, about half the size.
    pub async fn step_retry<Fut, M>(
        &self,
        node: NodeId,
        rules: &[crate::policy::Retry<E>],
        mut make: M,
    ) -> Result<<Fut::Output as StepOutput<E>>::Ok, StepError<E>>
    where
        M: FnMut() -> Fut,
        Fut: Future,
        Fut::Output: StepOutput<E>,
    {
        // One counter per rule, set up only once a retry is considered.
        let mut counters: Option<RetryCounters> = None;
        let mut attempts: Vec<Attempt<E>> = Vec::new();
        let mut number: u32 = 0;
        let mut first_start = None;
        let mut iteration = 0;
        loop {
            number = number.saturating_add(1);
            // As in `step_with_resume`: every attempt is timed and records the current state.
            if number > 1 {
                self.record_current(node);
            }
            let start = self
                .start_attempt(node, number, number == 1, true, &mut iteration)
                .unwrap_or_else(Instant::now);
            let first_start = *first_start.get_or_insert(start);
            let frame = Frame::attempt(node, iteration, number, false);
            let observed = self.observed();
            // `flow::testing` (observed runs only): a scripted attempt never polls the step; a
            // scripted timeout of a step without one never ends.
            #[cfg(feature = "testing")]
            let scripted = match observed.then(|| self.scripted_now(node)).flatten() {
                Some(crate::testing::Scripted::Fail(failure)) => Some(failure),
                Some(crate::testing::Scripted::Hang) => core::future::pending().await,
                None => None,
            };
            #[cfg(not(feature = "testing"))]
            let scripted: Option<Failure<E>> = None;
            let outcome = match scripted {
                Some(failure) => Err(failure),
                None => {
                    // Polled here rather than through `attempt` (no timeout to apply): one
                    // future layer fewer.
                    let caught = if observed {
                        let fut = core::pin::pin!(crate::trace::traced(make(), true));
                        AssertUnwindSafe(Framed { fut, frame }).catch_unwind().await
                    } else {
                        let fut = core::pin::pin!(make());
                        AssertUnwindSafe(Framed { fut, frame }).catch_unwind().await
                    };
                    match caught {
                        Ok(out) => out.into_result(),
                        Err(payload) => Err(Failure::Panicked(panic_message(&*payload))),
                    }
                }
            };
            let failure = match outcome {
                Ok(v) => {
                    self.emit_success(node, number, Some(start), iteration);
                    return Ok(v);
                }
                Err(f) => f,
            };
            // The failed attempt's child runs are undone before the next attempt (see
            // `step_with_resume`).
            self.abandon_children(node);
            if self.has_orphans() {
                self.undo_abandoned().await;
            }
            let delay = match self.retry_after(rules, &mut counters, &failure, first_start) {
                Ok(delay) => delay,
                Err(gave_up) => {
                    return Err(self.fail(
                        node,
                        gave_up,
                        attempts,
                        number,
                        Some(start),
                        failure,
                        iteration,
                    ));
                }
            };
            if self.observed() {
                self.emit_at(
                    node,
                    EventKind::AttemptFailed {
                        attempt: number,
                        error: (self.inner.describe)(&failure),
                        retry_in: Some(delay),
                    },
                    Instant::now(),
                    iteration,
                );
            }
            keep_attempt(
                &mut attempts,
                Attempt {
                    number,
                    elapsed: Some(start.elapsed()),
                    failure,
                },
            );
            if delay.is_zero() {
                // No timer, but a yield once the task's budget is spent (see
                // `step_with_resume`).
                tokio::task::coop::consume_budget().await;
            } else {
                tokio::time::sleep(delay).await;
            }
        }
    }

    /// After a failed attempt of a step with retry `rules`: the delay before the next attempt,
    /// or why the step gives up. Counts the attempt against the first rule that matches
    /// `failure` (`counters`, one per rule, made at the first retry considered).
    #[inline]
    fn retry_after(
        &self,
        rules: &[crate::policy::Retry<E>],
        counters: &mut Option<RetryCounters>,
        failure: &Failure<E>,
        first_start: Instant,
    ) -> Result<Duration, GaveUp> {
        let Some(rule_ix) = rules.iter().position(|r| r.matches(failure)) else {
            return Err(GaveUp::NotRetried);
        };
        let rule = &rules[rule_ix];
        let counts = counters
            .get_or_insert_with(|| RetryCounters::new(rules.len()))
            .as_mut_slice();
        counts[rule_ix] = counts[rule_ix].saturating_add(1);
        let n = counts[rule_ix];
        if n >= rule.max_attempts() {
            return Err(GaveUp::RetriesExhausted);
        }
        let delay = rule
            .jitter()
            .apply(rule.backoff().delay(n), &self.inner.rng);
        if let Some(budget) = rule.max_elapsed() {
            let resume_at = Instant::now()
                .saturating_duration_since(first_start)
                .saturating_add(delay);
            if resume_at > budget {
                return Err(GaveUp::BudgetExhausted);
            }
        }
        Ok(delay)
    }

    /// [`step_with`](Self::step_with), for a durable step: `resume` records each failed
    /// attempt that will be retried, and gives the attempts and retry state an earlier
    /// process left.
    pub(crate) async fn step_with_resume<Fut, M>(
        &self,
        node: NodeId,
        policy: StepPolicy<'_, E>,
        mut make: M,
        resume: Option<Resume<'_>>,
    ) -> Result<<Fut::Output as StepOutput<E>>::Ok, StepError<E>>
    where
        M: FnMut() -> Fut,
        Fut: Future,
        Fut::Output: StepOutput<E>,
    {
        // One counter per rule, set up only once a retry is considered.
        let mut counters: Option<RetryCounters> = None;
        let mut attempts: Vec<Attempt<E>> = Vec::new();
        let mut number: u32 = 0;
        let mut first_start = None;
        let mut iteration = 0;
        if let Some((done, retry)) = resume.as_ref().and_then(|r| r.from()) {
            // Resumed: the attempts counted so far, and what is left of the pending backoff.
            number = *done;
            if !retry.counters.is_empty() {
                let resumed = counters.insert(RetryCounters::new(policy.retry.len()));
                for (c, s) in resumed.as_mut_slice().iter_mut().zip(&retry.counters) {
                    *c = *s;
                }
            }
            if let (Some(r), Some(wake)) = (&resume, retry.wake_at_ms) {
                let left = r.remaining(wake);
                if !left.is_zero() {
                    tokio::time::sleep(left).await;
                }
            }
        }
        loop {
            number = number.saturating_add(1);
            // Policies need the clock (budgets, timings), so a policied step is always timed.
            // Every attempt records the step as the current state: in a parallel group another
            // branch may have moved it while this one waited.
            if number > 1 {
                self.record_current(node);
            }
            let start = self
                .start_attempt(node, number, number == 1, true, &mut iteration)
                .unwrap_or_else(Instant::now);
            let first_start = *first_start.get_or_insert(start);
            if let Some(r) = &resume {
                r.attempt_started(number, start);
            }
            let deadline = policy.timeout.and_then(|t| start.checked_add(t));
            let frame = Frame::attempt(node, iteration, number, deadline.is_some());
            #[cfg(feature = "testing")]
            let scripted = if self.observed() {
                self.scripted(node, policy.timeout).await
            } else {
                None
            };
            #[cfg(not(feature = "testing"))]
            let scripted: Option<Failure<E>> = None;
            let outcome = match scripted {
                Some(failure) => Err(failure),
                None => attempt(make(), self.observed(), policy.timeout, frame, deadline).await,
            };
            let failure = match outcome {
                Ok(v) => {
                    self.emit_success(node, number, Some(start), iteration);
                    return Ok(v);
                }
                Err(f) => f,
            };
            // The failed attempt's future is dropped: child runs it abandoned left their
            // compensations here, and those it completed are abandoned too. Undo them before
            // anything else (the next attempt).
            self.abandon_children(node);
            if self.has_orphans() {
                self.undo_abandoned().await;
            }
            let delay = match self.retry_after(policy.retry, &mut counters, &failure, first_start) {
                Ok(delay) => delay,
                Err(gave_up) => {
                    return Err(self.fail(
                        node,
                        gave_up,
                        attempts,
                        number,
                        Some(start),
                        failure,
                        iteration,
                    ));
                }
            };
            if self.observed() {
                self.emit_at(
                    node,
                    EventKind::AttemptFailed {
                        attempt: number,
                        error: (self.inner.describe)(&failure),
                        retry_in: Some(delay),
                    },
                    Instant::now(),
                    iteration,
                );
            }
            if let Some(r) = &resume {
                let counts = counters.as_ref().map_or(&[][..], RetryCounters::as_slice);
                r.failed_attempt(
                    number,
                    start,
                    (self.inner.describe)(&failure),
                    counts,
                    delay,
                )
                .await;
            }
            keep_attempt(
                &mut attempts,
                Attempt {
                    number,
                    elapsed: Some(start.elapsed()),
                    failure,
                },
            );
            if delay.is_zero() {
                // No timer (tokio rounds even a zero sleep up to a millisecond tick), but a
                // yield once the task's cooperative budget is spent, so that a step failing
                // at once many times does not starve the other tasks of its thread.
                tokio::task::coop::consume_budget().await;
            } else {
                tokio::time::sleep(delay).await;
            }
        }
    }

    /// `flow::testing`: what is scripted for this attempt of `node`, if anything. Inlined as
    /// far as the check that the run has its rarely used parts (a scripted run has them: they
    /// hold the script), which an observed run without a script mostly does not.
    #[cfg(feature = "testing")]
    #[inline]
    fn scripted_now(&self, node: NodeId) -> Option<crate::testing::Scripted<E>> {
        let cold = self.inner.cold_if()?;
        self.scripted_in(cold, node)
    }

    #[cfg(feature = "testing")]
    #[cold]
    #[inline(never)]
    fn scripted_in(&self, cold: &Cold<E>, node: NodeId) -> Option<crate::testing::Scripted<E>> {
        let script = cold.script.get()?;
        script.next(self.inner.graph.key_of(node))?.scripted()
    }

    /// `flow::testing`: the failure scripted for this attempt of `node`, if any (a scripted
    /// timeout waits for the attempt's `timeout`, or forever).
    #[cfg(feature = "testing")]
    #[cold]
    async fn scripted(&self, node: NodeId, timeout: Option<Duration>) -> Option<Failure<E>> {
        match self.scripted_now(node)? {
            crate::testing::Scripted::Fail(failure) => Some(failure),
            crate::testing::Scripted::Hang => match timeout {
                Some(limit) => {
                    tokio::time::sleep(limit).await;
                    Some(Failure::TimedOut(limit))
                }
                None => core::future::pending().await,
            },
        }
    }

    #[inline]
    pub(crate) fn emit_success(
        &self,
        node: NodeId,
        attempt: u32,
        start: Option<Instant>,
        iteration: u32,
    ) {
        // Observed runs always time their attempts (`start_attempt`).
        if let (true, Some(start)) = (self.observed(), start) {
            let now = Instant::now();
            self.emit_at(
                node,
                EventKind::StepSucceeded {
                    attempt,
                    elapsed: now.saturating_duration_since(start),
                },
                now,
                iteration,
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn fail(
        &self,
        node: NodeId,
        gave_up: GaveUp,
        mut attempts: Vec<Attempt<E>>,
        number: u32,
        start: Option<Instant>,
        failure: Failure<E>,
        iteration: u32,
    ) -> StepError<E> {
        if self.observed() {
            let error = (self.inner.describe)(&failure);
            let now = Instant::now();
            self.emit_at(
                node,
                EventKind::AttemptFailed {
                    attempt: number,
                    error: error.clone(),
                    retry_in: None,
                },
                now,
                iteration,
            );
            self.emit_at(
                node,
                EventKind::StepFailed {
                    attempts: number,
                    error,
                },
                now,
                iteration,
            );
        }
        keep_attempt(
            &mut attempts,
            Attempt {
                number,
                elapsed: start.map(|s| s.elapsed()),
                failure,
            },
        );
        // Child runs the failed step completed are abandoned work (undone before the run goes
        // on, or when it ends).
        self.abandon_children(node);
        StepError::new(self.inner.graph.name_of(node), node, gave_up, attempts)
    }

    /// Routes a failed step to a recovery step when `catches` accepts the failure.
    ///
    /// `recover` receives the step error and produces the recovery step's future, run as node
    /// `recovery` without policies. A failure `catches` rejects passes through unchanged.
    pub async fn catch<T, Fut>(
        &self,
        result: Result<T, StepError<E>>,
        catches: impl FnOnce(&StepError<E>) -> bool,
        recovery: NodeId,
        recover: impl FnOnce(StepError<E>) -> Fut,
    ) -> Result<T, StepError<E>>
    where
        Fut: Future,
        Fut::Output: StepOutput<E, Ok = T>,
    {
        match result {
            Err(e) if catches(&e) => {
                if self.has_orphans() {
                    self.undo_abandoned().await;
                }
                if self.observed() {
                    self.emit(
                        e.node(),
                        EventKind::Caught {
                            error: e.message(self.inner.describe),
                        },
                    );
                }
                self.step(recovery, recover(e)).await
            }
            other => other,
        }
    }

    /// Runs `items` through `body` with at most `concurrency` bodies in flight (`0`: no
    /// limit). Results keep the order of the items. The first failure cancels the bodies in
    /// flight (they are dropped) and is returned.
    pub async fn map<I, T, Fut, F>(
        &self,
        node: NodeId,
        items: I,
        concurrency: usize,
        mut body: F,
    ) -> Result<Vec<T>, StepError<E>>
    where
        I: IntoIterator,
        F: FnMut(I::Item) -> Fut,
        Fut: Future<Output = Result<T, StepError<E>>>,
    {
        self.enter(node);
        self.seal_map_items();
        let limit = if concurrency == 0 {
            usize::MAX
        } else {
            concurrency
        };
        // `size_hint` is not trusted (an iterator may claim any size): no preallocation.
        let mut items = items.into_iter().enumerate();
        let mut results: Vec<Option<T>> = Vec::new();
        let mut in_flight = FuturesUnordered::new();
        loop {
            while in_flight.len() < limit {
                let Some((i, item)) = items.next() else { break };
                results.push(None);
                in_flight.push(Item {
                    fut: body(item),
                    index: i,
                });
            }
            match in_flight.next().await {
                Some((i, Ok(v))) => results[i] = Some(v),
                Some((_, Err(e))) => {
                    // The bodies in flight are dropped: undo what their child runs did.
                    drop(in_flight);
                    if self.has_orphans() {
                        self.undo_abandoned().await;
                    }
                    return Err(e);
                }
                None => break,
            }
        }
        // Every slot was filled: each pushed index completed with `Ok`.
        Ok(results.into_iter().flatten().collect())
    }

    /// As [`map`](Self::map), but up to `tolerate` items may fail: their slots hold the step
    /// error. One failure more than that cancels the rest and fails the map.
    pub async fn map_tolerant<I, T, Fut, F>(
        &self,
        node: NodeId,
        items: I,
        concurrency: usize,
        tolerate: usize,
        mut body: F,
    ) -> Result<Vec<Result<T, StepError<E>>>, StepError<E>>
    where
        I: IntoIterator,
        F: FnMut(I::Item) -> Fut,
        Fut: Future<Output = Result<T, StepError<E>>>,
    {
        self.enter(node);
        self.seal_map_items();
        let limit = if concurrency == 0 {
            usize::MAX
        } else {
            concurrency
        };
        let mut items = items.into_iter().enumerate();
        let mut results: Vec<Option<Result<T, StepError<E>>>> = Vec::new();
        let mut failures = 0usize;
        let mut in_flight = FuturesUnordered::new();
        loop {
            while in_flight.len() < limit {
                let Some((i, item)) = items.next() else { break };
                results.push(None);
                in_flight.push(Item {
                    fut: body(item),
                    index: i,
                });
            }
            match in_flight.next().await {
                Some((i, Ok(v))) => results[i] = Some(Ok(v)),
                Some((i, Err(e))) => {
                    failures += 1;
                    if failures > tolerate {
                        drop(in_flight);
                        if self.has_orphans() {
                            self.undo_abandoned().await;
                        }
                        return Err(e);
                    }
                    results[i] = Some(Err(e));
                }
                None => break,
            }
        }
        Ok(results.into_iter().flatten().collect())
    }
}

impl<E> Ctx<E> {
    /// `#[workflow]`: hands a step's outcome to the workflow body.
    ///
    /// The step's own error goes back to the body as `Err` (the body may handle it; the earlier
    /// attempts are kept so the run's error can list them). A timeout or panic has no value of
    /// the error type: it ends the run, and this future never completes.
    pub async fn surface<T>(&self, result: Result<T, StepError<E>>) -> Result<T, E> {
        match result {
            Ok(v) => Ok(v),
            Err(mut step_error) => {
                // Work the failed step abandoned (child runs of its dropped attempts, or of a
                // failed group's dropped branches) is undone before the body goes on.
                if self.has_orphans() {
                    self.undo_abandoned().await;
                }
                match step_error.pop_attempt() {
                    Some(Attempt {
                        number,
                        elapsed,
                        failure: Failure::Error(e),
                    }) => {
                        *lock(&self.inner.cold().surfaced) = Some((step_error, number, elapsed));
                        self.inner.has_surfaced.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                    Some(last) => step_error.push_attempt(last),
                    None => {}
                }
                *lock(&self.inner.cold().abort) = Some(step_error);
                self.inner.aborted.store(true, Ordering::Release);
                core::future::pending().await
            }
        }
    }

    /// `#[workflow]`: as [`surface`](Self::surface), shaped as the step's own output: a
    /// `()` step gives `()`. `output` names the step's output type.
    pub async fn surface_as<O: StepOutput<E>>(
        &self,
        result: Result<O::Ok, StepError<E>>,
        output: core::marker::PhantomData<O>,
    ) -> O::Surfaced {
        let _ = output;
        O::surfaced(self.surface(result).await)
    }

    /// `#[workflow]`: a step's success, shaped as the step's own output, without going
    /// through [`surface_as`](Self::surface_as)'s future (the common path stays synchronous).
    #[inline]
    pub fn surface_ok<O: StepOutput<E>>(
        &self,
        value: O::Ok,
        output: core::marker::PhantomData<O>,
    ) -> O::Surfaced {
        let _ = output;
        O::surfaced(Ok(value))
    }

    #[inline]
    pub(crate) fn aborted(&self) -> bool {
        self.inner.aborted.load(Ordering::Acquire)
    }

    pub(crate) fn take_abort(&self) -> Option<StepError<E>> {
        self.inner
            .cold_if()
            .and_then(|cold| lock(&cold.abort).take())
    }

    /// Ends the run at its next poll, with no step error (a durable run whose journal says
    /// why).
    #[cfg(feature = "durable")]
    pub(crate) fn abort_run(&self) {
        self.inner.aborted.store(true, Ordering::Release);
    }

    /// `#[workflow]`: turns the body's result into the run's result, attributing an error the
    /// body returned to the step it came from when that step's failure was the last thing the
    /// body saw.
    pub fn finish<T>(&self, result: Result<T, E>) -> Result<T, Error<E>> {
        result.map_err(|e| {
            let surfaced = if self.inner.has_surfaced.load(Ordering::Relaxed) {
                self.inner
                    .cold_if()
                    .and_then(|cold| lock(&cold.surfaced).take())
            } else {
                None
            };
            match surfaced {
                Some((mut step_error, number, elapsed)) => {
                    step_error.push_attempt(Attempt {
                        number,
                        elapsed,
                        failure: Failure::Error(e),
                    });
                    Error::new(self.inner.graph.name, ErrorKind::Step(step_error))
                }
                None => Error::new(self.inner.graph.name, ErrorKind::Workflow(e)),
            }
        })
    }
}

/// The rules of a step with more retry rules than this keep their counters on the heap.
const INLINE_RULES: usize = 4;

/// One retry counter per rule of a step: inline for up to [`INLINE_RULES`] rules (the retry
/// path allocates nothing for them), on the heap beyond.
enum RetryCounters {
    Inline {
        len: usize,
        counts: [u32; INLINE_RULES],
    },
    Heap(Vec<u32>),
}

impl RetryCounters {
    /// `rules` counters at zero.
    #[inline]
    fn new(rules: usize) -> Self {
        if rules <= INLINE_RULES {
            RetryCounters::Inline {
                len: rules,
                counts: [0; INLINE_RULES],
            }
        } else {
            RetryCounters::Heap(vec![0; rules])
        }
    }

    #[inline]
    fn as_slice(&self) -> &[u32] {
        match self {
            RetryCounters::Inline { len, counts } => &counts[..*len],
            RetryCounters::Heap(counts) => counts,
        }
    }

    #[inline]
    fn as_mut_slice(&mut self) -> &mut [u32] {
        match self {
            RetryCounters::Inline { len, counts } => &mut counts[..*len],
            RetryCounters::Heap(counts) => counts,
        }
    }
}

/// Keeps the first attempt and the last [`KEPT_LAST_ATTEMPTS`](crate::error::KEPT_LAST_ATTEMPTS)
/// of a step that retries many times (the ones between are counted by their numbers only).
#[inline]
fn keep_attempt<E>(attempts: &mut Vec<Attempt<E>>, attempt: Attempt<E>) {
    if attempts.capacity() == 0 {
        // Most steps that retry fail once or twice: room for two, allocated once.
        *attempts = Vec::with_capacity(2);
    } else if attempts.len() > crate::error::KEPT_LAST_ATTEMPTS {
        attempts.remove(1);
    }
    attempts.push(attempt);
}
