//! The executor: runs a workflow's state machine with cancellation, a time limit,
//! compensation and events, on the current task or on a task of its own.

use core::cell::Cell;
use core::future::Future;
use core::panic::AssertUnwindSafe;
use core::pin::{Pin, pin};
use core::sync::atomic::{AtomicU64, Ordering};
use core::task::{Context, Poll};
use core::time::Duration;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::context::{Frame, FrameScope};
use crate::ctx::{BoxFuture, Ctx, ItemScope, StateView, Status, lock, panic_message};
use crate::error::{CompensationRecord, Error, ErrorKind, NestedCompensationFailure, RunReport};
use crate::event::{Event, EventKind, LazyChannel, Observer, Observers, RunId};
use crate::graph::NodeId;
use crate::saga::{Finisher, OrphanSink, Tag};
use crate::workflow::{Workflow, WorkflowState};

static NEXT_RUN: AtomicU64 = AtomicU64::new(1);

fn next_run_id() -> RunId {
    RunId(NEXT_RUN.fetch_add(1, Ordering::Relaxed))
}

/// A random jitter seed: the thread's generator, itself seeded from the OS's hash keys.
fn random_seed() -> u64 {
    fastrand::u64(..)
}

/// What a workflow run inside another run's step inherits from it.
pub(crate) struct ChildLink {
    pub(crate) run: RunId,
    pub(crate) observers: Observers,
    pub(crate) cancel: Option<CancellationToken>,
    /// The child's jitter seed, drawn from the parent's generator.
    pub(crate) seed: u64,
    /// The root run's runtime had a fixed seed: every descendant's jitter is reproducible.
    pub(crate) seeded: bool,
}

thread_local! {
    /// The run whose body is being polled on this thread: where a child run started in one of
    /// its steps finds what it inherits ([`OrphanSink::link`]) and leaves its compensations.
    /// One reference-counted pointer, moved in and out around each poll of a run's body (what
    /// a tokio task-local's scope does, without its `RefCell` and without a future layer), so
    /// it is set exactly while the body, and the steps it polls, run.
    static CURRENT: Cell<Option<Arc<dyn OrphanSink>>> = const { Cell::new(None) };
}

/// The run whose body is being polled on this thread, if any (see [`StepContext`](crate::StepContext)).
pub(crate) fn current_run() -> Option<Arc<dyn OrphanSink>> {
    CURRENT
        .try_with(|c| {
            let run = c.take();
            let copy = run.clone();
            c.set(run);
            copy
        })
        .ok()
        .flatten()
}

/// What is current while a run's body is polled: the run ([`CURRENT`]), no `map` item and no
/// step. Entered around each poll of the body; the previous values come back after it (also
/// on unwind), and the run's link goes back to `slot` for the next poll.
struct BodyScope<'a> {
    slot: &'a mut Option<Arc<dyn OrphanSink>>,
    run: Option<Arc<dyn OrphanSink>>,
    item: ItemScope,
    frame: FrameScope,
}

impl<'a> BodyScope<'a> {
    #[inline]
    fn enter(slot: &'a mut Option<Arc<dyn OrphanSink>>) -> Self {
        // `try_with`: after this thread's locals are destroyed, the body sees no run.
        let run = CURRENT.try_with(|c| c.replace(slot.take())).ok().flatten();
        BodyScope {
            slot,
            run,
            item: ItemScope::enter(None),
            frame: FrameScope::enter(Frame::NONE),
        }
    }
}

impl Drop for BodyScope<'_> {
    #[inline]
    fn drop(&mut self) {
        let _ = (&self.item, &self.frame);
        let run = self.run.take();
        if let Ok(link) = CURRENT.try_with(|c| c.replace(run)) {
            *self.slot = link;
        }
    }
}

/// Runs workflows: holds the observers and the jitter seed that its runs use.
///
/// ```
/// # async fn demo() {
/// use flow_runtime::{Runtime, Event};
/// let runtime = Runtime::new().with_observer(|e: &Event| println!("{:?}", e.kind));
/// # let _ = runtime;
/// # }
/// ```
#[derive(Clone)]
pub struct Runtime {
    /// Shared by every run of this runtime (one reference count per run, no allocation).
    observers: Observers,
    seed: Option<u64>,
    compensate_on_drop: Option<bool>,
    /// This runtime's identity, shared by its clones: the runs it lists for
    /// [`Runtime::signal`] are looked up under it (`signal.rs`).
    pub(crate) id: u64,
    /// Whether [`run`](Self::run) and [`run_report`](Self::run_report) list their runs too
    /// (spawned runs always are).
    pub(crate) register_runs: bool,
    /// Where durable runs are recorded, and the durable runs this runtime has in flight.
    #[cfg(feature = "durable")]
    pub(crate) durable: Option<crate::durable::Durability>,
}

impl Default for Runtime {
    /// A runtime with no observers and a random jitter seed.
    fn default() -> Self {
        Runtime {
            observers: Observers::default(),
            seed: None,
            compensate_on_drop: None,
            id: crate::signal::next_runtime_id(),
            register_runs: false,
            #[cfg(feature = "durable")]
            durable: None,
        }
    }
}

impl core::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Runtime")
            .field("observers", &self.observers.len())
            .field("seed", &self.seed)
            .finish()
    }
}

impl Runtime {
    /// A runtime with a random jitter seed and the default observers (none, unless tracing is on).
    ///
    /// With the `tracing` feature (on by default) and a `tracing` subscriber interested in the
    /// `flow` target, the runtime starts with a [`TracingObserver`](crate::TracingObserver).
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
    /// use flow_runtime::Runtime;
    /// let runtime = Runtime::new().with_seed(42).compensate_on_drop(true);
    /// assert_eq!(runtime.run(&Order, 2).await.unwrap(), 20);
    /// let report = runtime.run_report(&Order, 3).await;
    /// assert!(report.result.is_err() && report.compensations[0].succeeded());
    /// let handle = runtime.spawn(Order, 4);
    /// assert_eq!(handle.await.unwrap(), 40);
    /// # }
    /// ```
    pub fn new() -> Self {
        Runtime {
            observers: Observers::from_vec(crate::trace::default_observers()),
            ..Runtime::default()
        }
    }

    /// Whether a run of this runtime whose future is dropped mid-run undoes its completed
    /// steps on a task of its own (see [`Workflow::compensate_on_drop`], which must agree:
    /// both default to `true`). `false` opts out for every run of this runtime.
    pub fn compensate_on_drop(mut self, yes: bool) -> Self {
        self.compensate_on_drop = Some(yes);
        self
    }

    pub(crate) fn on_drop<W: Workflow>(&self, workflow: &W) -> bool {
        self.compensate_on_drop.unwrap_or(true) && workflow.compensate_on_drop()
    }

    /// Adds an observer that receives every event of every run.
    pub fn with_observer(mut self, observer: impl Observer) -> Self {
        let mut all = self.observers.to_vec();
        all.push(Arc::new(observer));
        self.observers = Observers::from_vec(all);
        self
    }

    /// Seeds the jitter generator: every run of this runtime draws the same jitter sequence.
    /// Meant for tests.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    pub(crate) fn ctx<E: core::fmt::Display>(
        &self,
        workflow: &impl Workflow<Error = E>,
        lazy: Option<Arc<LazyChannel>>,
        cancel: Option<CancellationToken>,
    ) -> Ctx<E> {
        let mut observers = self.observers.clone();
        observers.lazy = lazy;
        Ctx::new(
            next_run_id(),
            None,
            workflow.graph(),
            observers,
            cancel,
            self.seed.unwrap_or_else(random_seed),
            self.seed.is_some(),
            workflow.compensation_timeout(),
        )
    }

    /// Runs `workflow` to the end on the current task.
    ///
    /// Dropping the returned future mid-run drops the steps in flight and undoes the completed
    /// ones on a task of its own (unless [`compensate_on_drop`](Self::compensate_on_drop) or
    /// [`Workflow::compensate_on_drop`] say otherwise); dropped while compensating, it finishes
    /// the compensations there too. [`spawn`](Self::spawn) and [`Handle::cancel`] give a
    /// cancellation whose result can be awaited.
    pub async fn run<W: Workflow>(
        &self,
        workflow: &W,
        input: W::Input,
    ) -> Result<W::Output, Error<W::Error>> {
        let ctx = self.ctx(workflow, None, None);
        let on_drop = self.on_drop(workflow);
        let _listed = self.listing(&ctx);
        drive(workflow, ctx, input, None, on_drop).await
    }

    /// As [`run`](Self::run), and returns the run's whole [`RunReport`]: its result, every
    /// compensation it ran (also when it succeeded: the undoing of abandoned attempts and of
    /// child runs dropped mid-run) and the observers that panicked.
    pub async fn run_report<W: Workflow>(
        &self,
        workflow: &W,
        input: W::Input,
    ) -> RunReport<W::Output, W::Error> {
        let ctx = self.ctx(workflow, None, None);
        let on_drop = self.on_drop(workflow);
        let _listed = self.listing(&ctx);
        let result = drive(workflow, ctx.clone(), input, None, on_drop).await;
        report_of(&ctx, result)
    }

    /// `flow::testing`: [`run`](Self::run) with scripted step outcomes.
    #[cfg(feature = "testing")]
    pub(crate) async fn run_scripted<W: Workflow>(
        &self,
        workflow: &W,
        input: W::Input,
        script: Arc<crate::testing::Script<W::Error>>,
    ) -> Result<W::Output, Error<W::Error>> {
        let ctx = self.ctx(workflow, None, None);
        let _ = ctx.inner.cold().script.set(script);
        let on_drop = self.on_drop(workflow);
        drive(workflow, ctx, input, None, on_drop).await
    }

    /// Starts `workflow` on a new tokio task and returns its [`Handle`].
    ///
    /// No event is built for the handle until [`Handle::events`] is first called: the stream
    /// then carries the events from that moment on. Use
    /// [`spawn_with_events`](Self::spawn_with_events) to receive every event from the start.
    pub fn spawn<W>(&self, workflow: W, input: W::Input) -> Handle<W>
    where
        W: Workflow + 'static,
        W::Input: 'static,
        W::Output: 'static,
    {
        self.spawn_inner(workflow, input, false)
    }

    /// As [`spawn`](Self::spawn), subscribed to the run's events before it starts:
    /// [`Handle::events`] carries every event of the run, however late it is read.
    pub fn spawn_with_events<W>(&self, workflow: W, input: W::Input) -> Handle<W>
    where
        W: Workflow + 'static,
        W::Input: 'static,
        W::Output: 'static,
    {
        self.spawn_inner(workflow, input, true)
    }

    fn spawn_inner<W>(&self, workflow: W, input: W::Input, subscribe: bool) -> Handle<W>
    where
        W: Workflow + 'static,
        W::Input: 'static,
        W::Output: 'static,
    {
        let on_drop = self.on_drop(&workflow);
        self.spawn_with(
            workflow,
            input,
            subscribe,
            |_| {},
            move |workflow, ctx, input| async move {
                drive(&workflow, ctx, input, None, on_drop).await
            },
        )
    }

    /// Spawns a run: `prepare` sees its context before it starts, `run` drives it.
    pub(crate) fn spawn_with<W, F, Fut>(
        &self,
        workflow: W,
        input: W::Input,
        subscribe: bool,
        prepare: impl FnOnce(&Ctx<W::Error>),
        run: F,
    ) -> Handle<W>
    where
        W: Workflow + 'static,
        W::Input: 'static,
        W::Output: 'static,
        F: FnOnce(W, Ctx<W::Error>, W::Input) -> Fut + Send + 'static,
        Fut: Future<Output = Result<W::Output, Error<W::Error>>> + Send + 'static,
    {
        let lazy = Arc::new(LazyChannel::default());
        let rx = subscribe.then(|| lazy.subscribe());
        let token = CancellationToken::new();
        let ctx = self.ctx(&workflow, Some(Arc::clone(&lazy)), Some(token.clone()));
        prepare(&ctx);
        let view = ctx.clone();
        let run_id = ctx.run_id();
        let closing = Arc::clone(&lazy);
        // Listed for `Runtime::signal` until the run ends (or its task is dropped).
        let listed = crate::signal::list(self.id, &ctx);
        let task = tokio::spawn(async move {
            let _listed = listed;
            let result = run(workflow, ctx, input).await;
            closing.close();
            result
        });
        let run = run_id;
        Handle {
            ctx: view,
            token,
            task,
            lazy,
            events: rx.map(|rx| EventStream {
                rx,
                run,
                done: false,
            }),
        }
    }
}

/// The link of the run whose body is being polled on this thread, as signals see it.
pub(crate) fn current_host() -> Option<Arc<dyn crate::signal::SignalHost>> {
    current_run().map(|link| link as Arc<dyn crate::signal::SignalHost>)
}

fn report_of<T, E>(ctx: &Ctx<E>, result: Result<T, Error<E>>) -> RunReport<T, E> {
    RunReport {
        result,
        compensations: ctx.take_records(),
        observer_panics: ctx
            .inner
            .cold_if()
            .map(|cold| lock(&cold.observer_panics).clone())
            .unwrap_or_default(),
    }
}

/// The failed compensations of child runs, among a run's records.
fn nested_failures(records: &[CompensationRecord], run: RunId) -> Vec<NestedCompensationFailure> {
    records
        .iter()
        .filter(|r| r.run != run && !r.succeeded())
        .map(|r| NestedCompensationFailure {
            workflow: r.workflow,
            step: r.step,
            message: match &r.outcome {
                crate::error::CompensationOutcome::Failed(f) => f.to_string(),
                crate::error::CompensationOutcome::TimedOut(d) => format!("timed out after {d:?}"),
                crate::error::CompensationOutcome::Succeeded => String::new(),
            },
        })
        .collect()
}

/// Runs `workflow` as part of the run whose step is awaiting it, if any (inheriting its
/// observers and cancellation), or on its own with a default runtime.
///
/// This is what calling a `#[workflow]` function directly does.
pub async fn run_nested<W: Workflow>(
    workflow: &W,
    input: W::Input,
) -> Result<W::Output, Error<W::Error>> {
    match current_run() {
        Some(sink) => {
            // Where this child runs in its parent: read now, on the first poll, while the
            // parent's step that awaits it is the current one.
            let tag = sink.tag();
            let link = sink.link();
            let ctx = Ctx::new(
                next_run_id(),
                Some(link.run),
                workflow.graph(),
                link.observers,
                link.cancel.map(|t| t.child_token()),
                link.seed,
                link.seeded,
                workflow.compensation_timeout(),
            );
            // A durable child workflow in a durable run's step: its steps are recorded in
            // that run, under the step (and attempt) that runs it.
            #[cfg(feature = "durable")]
            if workflow.is_durable()
                && let Some(step) = crate::context::StepContext::current()
                && let Some(journal) =
                    sink.durable_child(step.node(), step.item(), step.attempt(), workflow.graph())
            {
                let _ = ctx.inner.cold().journal.set(journal);
            }
            drive(workflow, ctx, input, Some((sink, tag)), true).await
        }
        None => Runtime::new().run(workflow, input).await,
    }
}

enum Outcome<T, E> {
    Done(Result<T, Error<E>>),
    Aborted,
    Cancelled,
    TimedOut(Duration),
    Panicked(String),
}

/// Runs the body of one run until it completes, fails, is cancelled, times out or panics,
/// then undoes what must be undone.
///
/// `parent`: the parent run's context
/// and where in it this run runs. `on_drop`: a top-level run dropped mid-run compensates on a
/// task of its own.
pub(crate) async fn drive<W: Workflow>(
    workflow: &W,
    ctx: Ctx<W::Error>,
    input: W::Input,
    parent: Option<(Arc<dyn OrphanSink>, Tag)>,
    on_drop: bool,
) -> Result<W::Output, Error<W::Error>> {
    let name = workflow.graph().name;
    let sink = parent.as_ref().map(|(s, _)| Arc::clone(s));
    // Armed while the body is in flight: if this future is dropped then (its parent was
    // cancelled or timed out, a sibling branch failed, or its caller went away), the completed
    // steps are undone by the parent run, or on a task of their own.
    let mut guard = RunGuard {
        ctx: &ctx,
        parent: sink.as_ref(),
        on_drop,
        armed: true,
    };
    ctx.emit(NodeId::START, EventKind::RunStarted);
    // What workflows called inside this run's steps inherit, and where they leave their
    // compensations: always set (moved into a thread-local around each poll of the body, not
    // per step; one pointer), so that a child run's undos reach this run however it was
    // started.
    let mut link = Some(ctx.sink());
    let outcome = {
        // Scoped so that the body, and every step in flight, is dropped before compensating.
        // Pinned where it is built: moving it (into a helper's argument, say) would give the
        // run's future a second slot of the body's size.
        let observed = ctx.observed();
        let mut body = pin!(crate::trace::traced(
            workflow.execute(ctx.clone(), input),
            observed,
        ));
        let cancel = ctx.cancel_token().cloned();
        let mut cancelled = pin!(async move {
            match cancel {
                Some(token) => token.cancelled_owned().await,
                None => core::future::pending().await,
            }
        });
        let limit = workflow.timeout();
        // The run's deadline, which steps can read (`StepContext::deadline`): a clock read
        // only for runs that have a limit.
        let ends = limit.map(crate::saga::deadline_after);
        if let Some(at) = ends {
            let _ = ctx.inner.cold().deadline.set(at);
        }
        let mut deadline = pin!(async move {
            match (limit, ends) {
                (Some(d), Some(at)) => {
                    tokio::time::sleep_until(at).await;
                    d
                }
                _ => core::future::pending().await,
            }
        });
        core::future::poll_fn(|cx| {
            // A durable run resumed by a new process rebuilds its compensation stack by
            // replaying its recorded steps: a cancellation waits until that replay is over
            // (no step runs meanwhile), so that the undos are all there to run.
            let cancel = cancelled.as_mut().poll(cx).is_ready();
            if cancel && !defer_cancel(&ctx) {
                return Poll::Ready(Outcome::Cancelled);
            }
            // A panic anywhere in the body's own code (between steps, in a selector or a
            // predicate) ends the run; the body is not polled again. The body runs outside any
            // enclosing `map` item.
            let polled = {
                let _scope = BodyScope::enter(&mut link);
                std::panic::catch_unwind(AssertUnwindSafe(|| body.as_mut().poll(cx)))
            };
            match polled {
                Ok(Poll::Ready(r)) => return Poll::Ready(Outcome::Done(r)),
                Ok(Poll::Pending) => {}
                Err(payload) => return Poll::Ready(Outcome::Panicked(panic_message(&*payload))),
            }
            if ctx.aborted() {
                return Poll::Ready(Outcome::Aborted);
            }
            if cancel && !defer_cancel(&ctx) {
                return Poll::Ready(Outcome::Cancelled);
            }
            if let Poll::Ready(d) = deadline.as_mut().poll(cx) {
                return Poll::Ready(Outcome::TimedOut(d));
            }
            Poll::Pending
        })
        .await
    };
    // The body is over (and dropped): from here on this run undoes itself.
    guard.armed = false;
    // The step the run was at, named only when the run ends in a way that reports it (read
    // before anything below moves the run's state).
    let in_flight = || match ctx.state().node {
        NodeId::START => None,
        node => Some(ctx.graph().name_of(node)),
    };
    let mut error = match outcome {
        Outcome::Done(Ok(v)) => {
            // Work abandoned inside the run and not undone yet (a failed branch whose error
            // was handled, say) is undone now.
            if ctx.has_orphans() {
                let deadline = ctx.compensation_deadline();
                let rest = ctx.clone();
                let fut: BoxFuture<()> = Box::pin(async move { rest.run_orphans(deadline).await });
                let _ = Finisher {
                    fut: Some(fut),
                    ctx: ctx.clone(),
                    target: sink.clone(),
                }
                .await;
            }
            // A completed child's undos join its parent's stack, so that a later failure of
            // the parent undoes the child too.
            if let Some((sink, tag)) = &parent {
                sink.absorb(ctx.take_records());
                if let Some(package) = ctx.package(false) {
                    sink.adopt_completed(*tag, package);
                }
            }
            ctx.set_status(Status::Completed);
            ctx.emit(NodeId::END, EventKind::RunCompleted);
            return Ok(v);
        }
        Outcome::Done(Err(e)) => e,
        // A durable run whose store failed, or whose code cannot follow its record, stops
        // here: nothing is undone and nothing more is recorded, so that a later process (or
        // a build that matches the record) resumes it.
        Outcome::Aborted => {
            // A durable run whose store failed, or whose code cannot follow its record, stops
            // here: nothing is undone and nothing more is recorded, so that a later process
            // (or a build that matches the record) resumes it.
            // A durable child workflow leaves the fault in the run's journal (shared), where
            // its parent's step finds it and stops the parent in turn.
            #[cfg(feature = "durable")]
            if let Some(fault) = ctx.journal().and_then(|j| {
                if j.is_child() {
                    j.peek_fault()
                } else {
                    j.take_fault()
                }
            }) {
                ctx.set_status(Status::Failed);
                let error = Error::new(name, ErrorKind::Durable(Box::new(fault)));
                if ctx.observed() {
                    ctx.emit(
                        NodeId::END,
                        EventKind::RunFailed {
                            error: error.to_string(),
                        },
                    );
                }
                return Err(error);
            }
            match ctx.take_abort() {
                Some(step_error) => Error::new(name, ErrorKind::Step(step_error)),
                None => Error::new(name, ErrorKind::Cancelled { step: in_flight() }),
            }
        }
        Outcome::Cancelled => Error::new(name, ErrorKind::Cancelled { step: in_flight() }),
        Outcome::TimedOut(limit) => Error::new(
            name,
            ErrorKind::TimedOut {
                limit,
                step: in_flight(),
            },
        ),
        Outcome::Panicked(message) => Error::new(
            name,
            ErrorKind::Panicked {
                step: in_flight(),
                message,
            },
        ),
    };
    let step = in_flight();
    error.set_workflow(name);
    ctx.set_status(Status::Compensating);
    // Compensating is a future of its own ('static): dropped before it ends (this run's parent
    // was cancelled, or its caller went away), what is left is finished by the parent run or
    // on a task of its own. Cancellation and the run's time limit no longer apply.
    let deadline = ctx.compensation_deadline();
    let tail_ctx = ctx.clone();
    let tail: BoxFuture<Error<W::Error>> = Box::pin(async move {
        let ctx = tail_ctx;
        #[cfg(feature = "durable")]
        if let Some(j) = ctx.journal() {
            j.compensating().await;
        }
        // Child runs dropped mid-run (a failed sibling, a cancellation) are undone first:
        // their steps ran after every step of this run that completed.
        ctx.run_orphans(deadline).await;
        let failures = ctx.run_stack(deadline).await;
        error.add_compensation_failures(failures);
        let records = ctx.records();
        error.add_nested_compensation_failures(nested_failures(&records, ctx.run_id()));
        error.set_compensations(records);
        if error.is_cancelled() {
            ctx.set_status(Status::Cancelled);
            ctx.emit(NodeId::END, EventKind::RunCancelled);
        } else {
            ctx.set_status(Status::Failed);
            if ctx.observed() {
                ctx.emit(
                    NodeId::END,
                    EventKind::RunFailed {
                        error: error.to_string(),
                    },
                );
            }
        }
        error
    });
    let finished = Finisher {
        fut: Some(tail),
        ctx: ctx.clone(),
        target: sink.clone(),
    }
    .await;
    match finished {
        Some(error) => Err(error),
        // Not reached: a finisher yields its future's output the first time it is ready.
        None => Err(Error::new(name, ErrorKind::Cancelled { step })),
    }
}

/// Whether a cancellation of this run waits: a durable run still replaying its record.
#[inline]
fn defer_cancel<E>(ctx: &Ctx<E>) -> bool {
    #[cfg(feature = "durable")]
    {
        ctx.journal().is_some_and(|j| j.defer_cancel())
    }
    #[cfg(not(feature = "durable"))]
    {
        let _ = ctx;
        false
    }
}

/// Armed while a run's body is in flight: if the run's future is dropped then, its registered
/// compensations (and the orphans it adopted) go to the parent run, or to a task of their own
/// (`on_drop`), and the run ends as cancelled (its final event is emitted when they are done,
/// or at once when there is nothing to undo).
struct RunGuard<'a, E: Send + 'static> {
    ctx: &'a Ctx<E>,
    parent: Option<&'a Arc<dyn OrphanSink>>,
    on_drop: bool,
    armed: bool,
}

impl<E: Send + 'static> Drop for RunGuard<'_, E> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let ctx = self.ctx;
        let rt = tokio::runtime::Handle::try_current().ok();
        let package = match (&self.parent, &rt) {
            (Some(_), _) => ctx.package(true),
            (None, Some(_)) if self.on_drop => ctx.package(true),
            _ => None,
        };
        match (package, &self.parent, rt) {
            (Some(package), Some(sink), _) => sink.adopt(package),
            (Some(package), None, Some(rt)) => {
                let deadline = ctx.compensation_deadline();
                drop(rt.spawn(package(deadline)));
            }
            _ => {
                ctx.set_status(Status::Cancelled);
                ctx.emit(NodeId::END, EventKind::RunCancelled);
            }
        }
    }
}

/// A run started with [`Runtime::spawn`]: its state, its events, cancellation, and its result
/// (await the handle).
///
/// Dropping the handle does not stop the run.
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
/// use flow_runtime::{Runtime, Status, WorkflowState};
/// let mut handle = Runtime::new().spawn_with_events(Order, 2);
/// let mut steps = Vec::new();
/// while let Some(event) = handle.events().next().await {
///     steps.push(event.step);
/// }
/// assert!(steps.contains(&"reserve") && steps.contains(&"charge"));
/// assert_eq!(handle.state().status, Status::Completed);
/// assert_eq!(handle.typed_state().map(|s| s.node()), Some(handle.state().node));
/// assert_eq!(handle.last_heartbeat(), None); // no step reported progress
/// assert_eq!(handle.await.unwrap(), 20);
///
/// let handle = Runtime::new().spawn(Order, 4);
/// handle.cancel();
/// assert!(handle.report().await.result.unwrap_err().is_cancelled());
/// # }
/// ```
pub struct Handle<W: Workflow> {
    pub(crate) ctx: Ctx<W::Error>,
    pub(crate) token: CancellationToken,
    pub(crate) task: JoinHandle<Result<W::Output, Error<W::Error>>>,
    lazy: Arc<LazyChannel>,
    events: Option<EventStream>,
}

impl<W: Workflow> Handle<W> {
    /// The run's id.
    pub fn run_id(&self) -> RunId {
        self.ctx.run_id()
    }

    /// The current state: the node most recently entered, and the run's status.
    pub fn state(&self) -> StateView {
        self.ctx.state()
    }

    /// The current state as the workflow's own state type, when that type carries no data
    /// (`#[workflow]` state enums).
    pub fn typed_state(&self) -> Option<W::State> {
        W::State::from_view(&self.ctx.state())
    }

    /// When a step of this run last reported progress
    /// ([`StepContext::report_progress`](crate::StepContext::report_progress)), if one did: a
    /// heartbeat, to tell a slow step from a stuck one. On tokio's clock.
    pub fn last_heartbeat(&self) -> Option<tokio::time::Instant> {
        self.ctx
            .inner
            .cold_if()
            .and_then(|cold| *lock(&cold.heartbeat))
    }

    /// Cancels the run: the steps in flight are dropped, the compensations of completed steps
    /// run, and the run ends with [`ErrorKind::Cancelled`].
    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// The run's events. The first call subscribes: the stream carries the events from then
    /// on (and those of child runs started from then on), and ends after the run's final
    /// event (at once if the run is over). A run spawned with
    /// [`Runtime::spawn_with_events`] is subscribed from its start: none is missed. Until
    /// someone subscribes, no event is built for the handle.
    pub fn events(&mut self) -> &mut EventStream {
        let run = self.ctx.run_id();
        let (lazy, ctx) = (&self.lazy, &self.ctx);
        self.events.get_or_insert_with(|| {
            let rx = lazy.subscribe();
            ctx.set_observed();
            EventStream {
                rx,
                run,
                done: false,
            }
        })
    }

    /// Awaits the run and returns its whole [`RunReport`] (see [`Runtime::run_report`]).
    pub async fn report(self) -> RunReport<W::Output, W::Error> {
        let ctx = self.ctx.clone();
        let result = self.await;
        report_of(&ctx, result)
    }
}

impl<W: Workflow> Future for Handle<W> {
    type Output = Result<W::Output, Error<W::Error>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.task).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(r)) => Poll::Ready(r),
            Poll::Ready(Err(join)) => {
                let step = match self.ctx.state().node {
                    NodeId::START | NodeId::END => None,
                    node => Some(self.ctx.graph().name_of(node)),
                };
                let kind = if join.is_panic() {
                    // Not expected (the run catches its panics), but never resumed here.
                    ErrorKind::Panicked {
                        step,
                        message: panic_message(&*join.into_panic()),
                    }
                } else {
                    ErrorKind::Cancelled { step }
                };
                Poll::Ready(Err(Error::new(self.ctx.graph().name, kind)))
            }
        }
    }
}

/// The events of one spawned run, in order.
///
/// Events of workflows that run inside this run's steps come too (their
/// [`parent`](Event::parent) is set). The stream ends after this run's final event.
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
/// use flow_runtime::{EventKind, Runtime};
/// let mut handle = Runtime::new().spawn_with_events(Order, 2);
/// assert_eq!(handle.events().next().await.unwrap().kind, EventKind::RunStarted);
/// let _ = (&mut handle).await;
/// // The run is over: the rest of its events are ready now.
/// let mut last = None;
/// while let Some(event) = handle.events().try_next() {
///     last = Some(event.kind);
/// }
/// assert_eq!(last, Some(EventKind::RunCompleted));
/// # }
/// ```
#[derive(Debug)]
pub struct EventStream {
    rx: mpsc::UnboundedReceiver<Event>,
    run: RunId,
    done: bool,
}

impl EventStream {
    /// The next event; `None` once the run's final event was read.
    pub async fn next(&mut self) -> Option<Event> {
        core::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    /// The next event if one is ready now.
    pub fn try_next(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        let e = self.rx.try_recv().ok()?;
        self.observe(&e);
        Some(e)
    }

    fn observe(&mut self, e: &Event) {
        if e.run == self.run
            && matches!(
                e.kind,
                EventKind::RunCompleted | EventKind::RunFailed { .. } | EventKind::RunCancelled
            )
        {
            self.done = true;
        }
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(e)) => {
                self.observe(&e);
                Poll::Ready(Some(e))
            }
            other => other,
        }
    }
}

impl futures_util::Stream for EventStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.poll_event(cx)
    }
}
