//! Signals: typed messages sent to a run from outside, which the run waits for by name.
//!
//! Each run has a mailbox, made on first use (a run that neither waits for a signal nor is sent
//! one never allocates it): one FIFO queue per signal name, so that a message sent before the
//! run waits is kept until it does. The value is boxed with its type's name, so that a message
//! of the wrong type is reported with both names.
//!
//! Waiting: [`Ctx::signal`] (the node of a `#[workflow]` body's
//! `flow::signal("approve").await`) or the free function [`signal`] (anywhere in a run, a step
//! function too). Sending: [`Handle::signal`](crate::Handle::signal) and, by run id,
//! [`Runtime::signal`](crate::Runtime::signal).

use core::any::Any;
use core::future::{Future, IntoFuture};
use core::marker::PhantomData;
use core::pin::Pin;
use core::time::Duration;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use tokio::sync::Notify;

use crate::ctx::{Ctx, Inner, Status, lock};
use crate::error::{Attempt, Failure, GaveUp, StepError};
use crate::event::{EventKind, RunId};
use crate::graph::NodeId;

/// Why a signal could not be sent or received.
///
/// ```
/// use flow_runtime::SignalError;
/// assert_eq!(SignalError::NotInARun.to_string(), "not inside a workflow run");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignalError {
    /// [`signal`] was awaited outside any workflow run (or on a task the run spawned, which
    /// does not belong to the run).
    NotInARun,
    /// The run is no longer running (it completed, failed, was cancelled, or is compensating):
    /// nobody will ever read the message.
    RunFinished,
    /// No live run of this runtime has this id (it never existed, it belongs to another
    /// runtime, it already ended, or it was started with [`Runtime::run`](crate::Runtime::run)
    /// on a runtime without [`register_runs`](crate::Runtime::register_runs)).
    NoSuchRun(RunId),
    /// No message arrived within the limit.
    TimedOut(Duration),
    /// The message carried a value of another type than the one waited for. The message is
    /// consumed.
    WrongType {
        /// The signal's name.
        name: &'static str,
        /// The type of the value sent ([`core::any::type_name`]).
        sent: &'static str,
        /// The type waited for.
        expected: &'static str,
    },
}

impl core::fmt::Display for SignalError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SignalError::NotInARun => f.write_str("not inside a workflow run"),
            SignalError::RunFinished => f.write_str("the run is no longer running"),
            SignalError::NoSuchRun(id) => write!(f, "no live run {id}"),
            SignalError::TimedOut(d) => write!(f, "no signal arrived within {d:?}"),
            SignalError::WrongType {
                name,
                sent,
                expected,
            } => write!(
                f,
                "signal `{name}` carried a `{sent}`, but the workflow waits for a `{expected}`"
            ),
        }
    }
}

impl std::error::Error for SignalError {}

/// A message in a mailbox: the boxed value and the name of its type.
pub(crate) struct Message {
    value: Box<dyn Any + Send>,
    type_name: &'static str,
}

impl Message {
    pub(crate) fn new<T: Send + 'static>(value: T) -> Self {
        Message {
            value: Box::new(value),
            type_name: core::any::type_name::<T>(),
        }
    }

    fn take<T: 'static>(self, name: &'static str) -> Result<T, SignalError> {
        let sent = self.type_name;
        self.value
            .downcast::<T>()
            .map(|b| *b)
            .map_err(|_| SignalError::WrongType {
                name,
                sent,
                expected: core::any::type_name::<T>(),
            })
    }
}

/// A run's mailbox: one FIFO queue per signal name.
#[derive(Default)]
pub(crate) struct Mailbox {
    queues: Mutex<HashMap<Box<str>, VecDeque<Message>>>,
    arrived: Notify,
}

impl Mailbox {
    fn push(&self, name: &str, message: Message) {
        let mut queues = lock(&self.queues);
        match queues.get_mut(name) {
            Some(q) => q.push_back(message),
            None => {
                queues.insert(name.into(), VecDeque::from([message]));
            }
        }
        drop(queues);
        // Every waiter looks again; the first to find a message for its name takes it.
        self.arrived.notify_waiters();
    }

    fn pop(&self, name: &str) -> Option<Message> {
        let mut queues = lock(&self.queues);
        let q = queues.get_mut(name)?;
        let m = q.pop_front();
        if q.is_empty() {
            queues.remove(name);
        }
        m
    }

    /// The next message named `name`, waiting for it if none is queued.
    async fn recv(&self, name: &str) -> Message {
        loop {
            let notified = self.arrived.notified();
            let mut notified = core::pin::pin!(notified);
            // Registered before looking, so that a message pushed in between wakes it.
            notified.as_mut().enable();
            if let Some(m) = self.pop(name) {
                return m;
            }
            notified.await;
        }
    }
}

/// Where a run keeps its mailbox: empty until the run waits for a signal or is sent one.
pub(crate) type Slot = OnceLock<Box<Mailbox>>;

/// A run, type-erased, as signals see it (its context's shared part).
pub(crate) trait SignalHost: Send + Sync {
    /// The run's mailbox, made on first use.
    fn mailbox(&self) -> &Mailbox;
    /// Whether the run still runs its body (so that a message can still be read).
    fn receiving(self: Arc<Self>) -> bool;
    /// Emits a signal event at the run's current node (observed runs only).
    fn signal_event(self: Arc<Self>, kind: EventKind);
}

impl<E: Send + 'static> SignalHost for Inner<E> {
    fn mailbox(&self) -> &Mailbox {
        self.cold().signals.get_or_init(Box::default)
    }

    fn receiving(self: Arc<Self>) -> bool {
        Ctx { inner: self }.state().status == Status::Running
    }

    fn signal_event(self: Arc<Self>, kind: EventKind) {
        let ctx = Ctx { inner: self };
        if ctx.observed() {
            ctx.emit(ctx.state().node, kind);
        }
    }
}

/// Delivers a message to a run, unless it no longer runs its body.
pub(crate) fn deliver<E: Send + 'static>(
    ctx: &Ctx<E>,
    name: &str,
    message: Message,
) -> Result<(), SignalError> {
    if ctx.state().status != Status::Running {
        return Err(SignalError::RunFinished);
    }
    SignalHost::mailbox(&*ctx.inner).push(name, message);
    Ok(())
}

/// As [`deliver`], to a type-erased run.
pub(crate) fn deliver_to(
    host: Arc<dyn SignalHost>,
    name: &str,
    message: Message,
) -> Result<(), SignalError> {
    if !Arc::clone(&host).receiving() {
        return Err(SignalError::RunFinished);
    }
    host.mailbox().push(name, message);
    Ok(())
}

static NEXT_RUNTIME: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(1);

/// A new runtime's identity (its clones share it): what a run id is looked up under.
pub(crate) fn next_runtime_id() -> u64 {
    NEXT_RUNTIME.fetch_add(1, core::sync::atomic::Ordering::Relaxed)
}

impl<E> Ctx<E> {
    /// Waits for the signal `name` as node `node` of the workflow: enters the node (so
    /// [`state`](Self::state) shows the run waiting there), emits
    /// [`EventKind::SignalWaiting`], and resolves with the first message of that name, sent
    /// before or after (then [`EventKind::SignalReceived`]).
    ///
    /// No message within `timeout`: the step fails with [`Failure::TimedOut`]. A message whose
    /// value is not a `T`: the step fails with [`Failure::Signal`] holding
    /// [`SignalError::WrongType`]. Generated by `#[workflow]` for
    /// `flow::signal("name").timeout("1h").await`.
    ///
    /// ```
    /// # use flow_runtime::{NodeId, StepError};
    /// # use flow_runtime::__private::Ctx;
    /// # use core::time::Duration;
    /// async fn approval<E: Send + 'static>(ctx: &Ctx<E>) -> Result<bool, StepError<E>> {
    ///     ctx.signal::<bool>(NodeId(2), "approve", Some(Duration::from_secs(3600))).await
    /// }
    /// ```
    pub async fn signal<T: Send + 'static>(
        &self,
        node: NodeId,
        name: &'static str,
        timeout: Option<Duration>,
    ) -> Result<T, StepError<E>>
    where
        E: Send + 'static,
    {
        {
            // Events as a step's: entered, attempt 1 started, .., succeeded or failed (so that
            // timelines and progress show the wait as a step), with the signal's own between.
            let mut iteration = 0;
            let start = self.start_attempt(node, 1, true, false, &mut iteration);
            if self.observed() {
                self.emit(node, EventKind::SignalWaiting { name });
            }
            let mailbox = SignalHost::mailbox(&*self.inner);
            let received = match timeout {
                None => Ok(mailbox.recv(name).await),
                Some(limit) => tokio::time::timeout(limit, mailbox.recv(name))
                    .await
                    .map_err(|_| limit),
            };
            let failure = match received.map(|m| m.take::<T>(name)) {
                Ok(Ok(v)) => {
                    if self.observed() {
                        self.emit(node, EventKind::SignalReceived { name });
                    }
                    self.emit_success(node, 1, start, iteration);
                    return Ok(v);
                }
                Ok(Err(e)) => Failure::Signal(e),
                Err(limit) => Failure::TimedOut(limit),
            };
            if self.observed() {
                let error = (self.inner.describe)(&failure);
                self.emit(
                    node,
                    EventKind::AttemptFailed {
                        attempt: 1,
                        error: error.clone(),
                        retry_in: None,
                    },
                );
                self.emit(node, EventKind::StepFailed { attempts: 1, error });
            }
            Err(StepError::new(
                self.inner.graph.name_of(node),
                node,
                GaveUp::NotRetried,
                vec![Attempt {
                    number: 1,
                    elapsed: start.map(|s| s.elapsed()),
                    failure,
                }],
            ))
        }
    }
}

/// Waits for the signal `name` carrying a `T`, in the run this is awaited in (a workflow body,
/// or a step function called by it).
///
/// Await it directly, or set a limit first with [`Signal::timeout`]. It resolves with the
/// first message of that name sent to the run (a message sent before the wait is kept); the
/// run's events show [`EventKind::SignalWaiting`] and [`EventKind::SignalReceived`] at the
/// node the run is at. Outside a run (or on a task spawned by one) it fails at once with
/// [`SignalError::NotInARun`]. In a workflow that runs inside another's step (a child run), it
/// waits in the child run's mailbox: send to the child's id.
///
/// ```
/// # async fn step() -> Result<u32, flow_runtime::SignalError> {
/// use core::time::Duration;
/// let budget: u32 = flow_runtime::signal("budget").timeout(Duration::from_secs(60)).await?;
/// # Ok(budget)
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // Outside a run:
/// assert_eq!(step().await, Err(flow_runtime::SignalError::NotInARun));
/// # }
/// ```
pub fn signal<T: Send + 'static>(name: &'static str) -> Signal<T> {
    Signal {
        name,
        timeout: None,
        _type: PhantomData,
    }
}

/// Waits for `duration`: in a `#[workflow]` body, `flow::sleep("10m").await` (a string
/// parsed at compile time, or a `Duration`) is a node of the graph named `sleep` (label it
/// with `#[label(cool_down)]`), shown in the run's state and events while it waits; in a
/// `#[workflow(durable)]` its wake-up time is recorded when the wait starts, so a resumed run
/// waits only what is left, and a worker may give the run back to its queue meanwhile (see
/// `flow::durable::WorkerOptions::park_after`). Anywhere else it is `tokio::time::sleep`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let before = tokio::time::Instant::now();
/// flow_runtime::sleep(core::time::Duration::from_secs(600)).await;
/// assert_eq!(before.elapsed().as_secs(), 600);
/// # }
/// ```
pub async fn sleep(duration: Duration) {
    tokio::time::sleep(duration).await;
}

impl<E> Ctx<E> {
    /// A `flow::sleep(duration)` of a `#[workflow]` body as node `node`: a step that waits.
    pub async fn sleep_step(&self, node: NodeId, duration: Duration) {
        let waited: Result<(), StepError<E>> = self
            .step(node, async move { tokio::time::sleep(duration).await })
            .await;
        // A plain wait cannot fail.
        let _ = waited;
    }
}

/// A wait for a signal, made by [`signal`]; await it.
///
/// ```
/// # async fn step() -> Result<(), flow_runtime::SignalError> {
/// let wait: flow_runtime::Signal<bool> = flow_runtime::signal("approve");
/// let approved = wait.await?;
/// # let _ = approved;
/// # Ok(())
/// # }
/// ```
#[must_use = "a signal is only waited for when awaited"]
pub struct Signal<T> {
    name: &'static str,
    timeout: Option<Duration>,
    _type: PhantomData<fn() -> T>,
}

impl<T> core::fmt::Debug for Signal<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Signal")
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl<T> Signal<T> {
    /// Gives up after `limit`, with [`SignalError::TimedOut`].
    ///
    /// ```
    /// # async fn f() {
    /// let answer = flow_runtime::signal::<String>("answer")
    ///     .timeout(core::time::Duration::from_secs(5))
    ///     .await;
    /// # let _ = answer;
    /// # }
    /// ```
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }
}

impl<T: Send + 'static> IntoFuture for Signal<T> {
    type Output = Result<T, SignalError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<T, SignalError>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        let host = crate::runtime::current_host();
        let Signal { name, timeout, .. } = self;
        Box::pin(async move {
            let Some(host) = host else {
                return Err(SignalError::NotInARun);
            };
            Arc::clone(&host).signal_event(EventKind::SignalWaiting { name });
            let mailbox = host.mailbox();
            let message = match timeout {
                None => mailbox.recv(name).await,
                Some(limit) => tokio::time::timeout(limit, mailbox.recv(name))
                    .await
                    .map_err(|_| SignalError::TimedOut(limit))?,
            };
            let value = message.take::<T>(name)?;
            Arc::clone(&host).signal_event(EventKind::SignalReceived { name });
            Ok(value)
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The runs a runtime can find by id.

/// One registered run: the runtime that started it, and its context (weak: the directory
/// never keeps a run alive).
struct Registered {
    runtime: u64,
    host: Weak<dyn SignalHost>,
}

const SHARDS: usize = 16;

/// Every registered live run of the process, by run id (ids are unique in a process), sharded
/// so that runs starting on several threads rarely wait for one another.
static DIRECTORY: [Mutex<Option<HashMap<u64, Registered>>>; SHARDS] =
    [const { Mutex::new(None) }; SHARDS];

fn shard(run: RunId) -> &'static Mutex<Option<HashMap<u64, Registered>>> {
    &DIRECTORY[(run.0 as usize) % SHARDS]
}

/// A run's entry in the directory, removed when dropped (the run ended, or its future was
/// dropped).
pub(crate) struct Listing(RunId);

impl Drop for Listing {
    fn drop(&mut self) {
        if let Some(map) = lock(shard(self.0)).as_mut() {
            map.remove(&self.0.0);
        }
    }
}

/// Lists a run of runtime `runtime` so that [`find`] can reach it until the listing drops.
pub(crate) fn list<E: Send + 'static>(runtime: u64, ctx: &Ctx<E>) -> Listing {
    let run = ctx.run_id();
    let host: Weak<dyn SignalHost> = Arc::downgrade(&ctx.inner) as Weak<dyn SignalHost>;
    lock(shard(run))
        .get_or_insert_with(HashMap::new)
        .insert(run.0, Registered { runtime, host });
    Listing(run)
}

/// The live run `run` of runtime `runtime`.
pub(crate) fn find(runtime: u64, run: RunId) -> Option<Arc<dyn SignalHost>> {
    let guard = lock(shard(run));
    let entry = guard.as_ref()?.get(&run.0)?;
    if entry.runtime != runtime {
        return None;
    }
    entry.host.upgrade()
}

impl crate::runtime::Runtime {
    /// Lists every run this runtime starts with [`run`](Self::run) and
    /// [`run_report`](Self::run_report) too, so that [`signal`](Self::signal) finds them by id
    /// (spawned runs are always listed).
    ///
    /// Listing costs a short lock on one of 16 shards of a process-wide table when a run starts
    /// and when it ends (no cost per step); runs of a runtime without it, and workflows awaited
    /// directly or inside another run's steps, are never listed.
    ///
    /// ```
    /// let runtime = flow_runtime::Runtime::new().register_runs();
    /// # let _ = runtime;
    /// ```
    #[must_use]
    pub fn register_runs(mut self) -> Self {
        self.register_runs = true;
        self
    }

    #[inline]
    pub(crate) fn listing<E: Send + 'static>(&self, ctx: &Ctx<E>) -> Option<Listing> {
        if self.register_runs {
            Some(list(self.id, ctx))
        } else {
            None
        }
    }

    /// Sends the signal `name` carrying `value` to the live run `run` of this runtime (or of
    /// one of its clones).
    ///
    /// The runs found are those started with [`spawn`](Self::spawn) (and, on a runtime with
    /// [`register_runs`](Self::register_runs), with [`run`](Self::run)) that have not ended:
    /// a run leaves the table when it ends. The message is queued if the run does not wait for
    /// it yet. Errors: [`SignalError::NoSuchRun`] (no such live run of this runtime),
    /// [`SignalError::RunFinished`] (it is compensating, or ended a moment ago).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use flow_runtime::{Runtime, RunId, SignalError};
    /// let runtime = Runtime::new();
    /// assert_eq!(
    ///     runtime.signal(RunId(u64::MAX), "approve", true),
    ///     Err(SignalError::NoSuchRun(RunId(u64::MAX)))
    /// );
    /// # }
    /// ```
    pub fn signal<T: Send + 'static>(
        &self,
        run: RunId,
        name: &str,
        value: T,
    ) -> Result<(), SignalError> {
        match find(self.id, run) {
            Some(host) => deliver_to(host, name, Message::new(value)),
            None => Err(SignalError::NoSuchRun(run)),
        }
    }
}

impl<W: crate::workflow::Workflow> crate::runtime::Handle<W> {
    /// Sends the signal `name` carrying `value` to this run.
    ///
    /// The run receives it where it waits for that name ([`signal`](crate::signal()), or a
    /// `#[workflow]` body's `flow::signal(..)`); if it does not wait yet, the message is
    /// queued (one FIFO queue per name). [`SignalError::RunFinished`] once the run no longer
    /// runs its body (completed, failed, cancelled, or compensating). A value of another type
    /// than the one waited for fails the wait ([`SignalError::WrongType`]).
    ///
    /// ```
    /// # use flow_runtime::{Handle, SignalError, Workflow};
    /// fn approve<W: Workflow>(handle: &Handle<W>) -> Result<(), SignalError> {
    ///     handle.signal("approve", true)
    /// }
    /// ```
    pub fn signal<T: Send + 'static>(&self, name: &str, value: T) -> Result<(), SignalError> {
        deliver(&self.ctx, name, Message::new(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Edge, EdgeKind, Graph, Node, NodeKind};
    use crate::runtime::Runtime;
    use crate::workflow::Flow;

    static GRAPH: Graph = Graph {
        name: "plain",
        nodes: &[
            Node {
                name: "start",
                key: "start",
                fingerprint: 0,
                kind: NodeKind::Start,
                policy: "",
                parent: None,
            },
            Node {
                name: "end",
                key: "end",
                fingerprint: 0,
                kind: NodeKind::End,
                policy: "",
                parent: None,
            },
        ],
        edges: &[Edge {
            from: 0,
            to: 1,
            kind: EdgeKind::Sequence,
            label: "",
        }],
        fingerprint: 0,
    };

    struct Start(u32);
    impl crate::workflow::WorkflowState for Start {
        fn node(&self) -> NodeId {
            NodeId::START
        }
    }

    /// A run that uses no signal never makes its mailbox, spawned or not.
    #[tokio::test]
    async fn an_unused_mailbox_is_never_made() {
        let plain = Flow::new(
            &GRAPH,
            Start,
            None,
            |ctx: Ctx<String>, s: Start| async move {
                assert!(ctx.inner.cold_if().and_then(|c| c.signals.get()).is_none());
                Ok::<u32, crate::error::Error<String>>(s.0)
            },
        );
        assert_eq!(Runtime::default().run(&plain, 3).await.unwrap(), 3);
        let mut h = Runtime::default().spawn(plain, 4);
        assert_eq!((&mut h).await.unwrap(), 4);
        assert!(
            h.ctx
                .inner
                .cold_if()
                .and_then(|c| c.signals.get())
                .is_none()
        );
        // A message refused (the run is over) does not make it either.
        assert_eq!(h.signal("x", 1u8), Err(SignalError::RunFinished));
        assert!(
            h.ctx
                .inner
                .cold_if()
                .and_then(|c| c.signals.get())
                .is_none()
        );
    }
}
