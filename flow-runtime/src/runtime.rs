//! The executor: runs a workflow's state machine with cancellation, a time limit,
//! compensation and events, on the current task or on a task of its own.

use core::future::Future;
use core::pin::{Pin, pin};
use core::sync::atomic::{AtomicU64, Ordering};
use core::task::{Context, Poll};
use core::time::Duration;
use std::sync::Arc;

use futures_util::future::Either;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ctx::{Ctx, OrphanSink, StateView, Status};
use crate::error::{Error, ErrorKind};
use crate::event::{Event, EventKind, Observer, Observers, RunId};
use crate::graph::NodeId;
use crate::workflow::{Workflow, WorkflowState};

static NEXT_RUN: AtomicU64 = AtomicU64::new(1);

fn next_run_id() -> RunId {
    RunId(NEXT_RUN.fetch_add(1, Ordering::Relaxed))
}

/// A random jitter seed: the thread's generator, itself seeded from the OS's hash keys.
fn random_seed() -> u64 {
    fastrand::u64(..)
}

/// What a running workflow inherits from the run whose step started it.
#[derive(Clone)]
struct RunLink {
    run: RunId,
    observers: Observers,
    cancel: Option<CancellationToken>,
    seed: u64,
    /// The root run's runtime had a fixed seed: every descendant's jitter is reproducible.
    seeded: bool,
    /// Where a child run dropped mid-run leaves its compensations (the parent's context).
    sink: Arc<dyn OrphanSink>,
}

tokio::task_local! {
    static CURRENT: RunLink;
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
#[derive(Clone, Default)]
pub struct Runtime {
    /// Shared by every run of this runtime (one reference count per run, no allocation).
    observers: Observers,
    seed: Option<u64>,
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
    pub fn new() -> Self {
        Runtime {
            observers: Observers::from_vec(crate::trace::default_observers()),
            seed: None,
        }
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

    fn ctx<E: core::fmt::Display>(
        &self,
        workflow: &impl Workflow<Error = E>,
        extra: Option<Arc<dyn Observer>>,
        cancel: Option<CancellationToken>,
    ) -> Ctx<E> {
        let observers = match extra {
            None => self.observers.clone(),
            Some(extra) => {
                let mut all = self.observers.to_vec();
                all.push(extra);
                Observers::from_vec(all)
            }
        };
        Ctx::new(
            next_run_id(),
            None,
            workflow.graph(),
            observers,
            cancel,
            self.seed.unwrap_or_else(random_seed),
        )
    }

    /// Runs `workflow` to the end on the current task.
    ///
    /// Dropping the returned future drops the steps in flight without running compensations;
    /// use [`spawn`](Self::spawn) and [`Handle::cancel`] for a cancellation that compensates.
    pub async fn run<W: Workflow>(
        &self,
        workflow: &W,
        input: W::Input,
    ) -> Result<W::Output, Error<W::Error>> {
        let ctx = self.ctx(workflow, None, None);
        drive(workflow, ctx, input, self.seed.is_some(), None).await
    }

    /// Starts `workflow` on a new tokio task and returns its [`Handle`].
    pub fn spawn<W>(&self, workflow: W, input: W::Input) -> Handle<W>
    where
        W: Workflow + 'static,
        W::Input: 'static,
        W::Output: 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let sender: Arc<dyn Observer> = Arc::new(move |e: &Event| {
            // The receiver may be gone (the handle was dropped); the run goes on regardless.
            let _ = tx.send(e.clone());
        });
        let token = CancellationToken::new();
        let ctx = self.ctx(&workflow, Some(sender), Some(token.clone()));
        let view = ctx.clone();
        let view_run = ctx.run_id();
        let seeded = self.seed.is_some();
        let task = tokio::spawn(async move { drive(&workflow, ctx, input, seeded, None).await });
        Handle {
            ctx: view,
            token,
            task,
            events: EventStream {
                rx,
                run: view_run,
                done: false,
            },
        }
    }
}

/// Runs `workflow` as part of the run whose step is awaiting it, if any (inheriting its
/// observers and cancellation), or on its own with a default runtime.
///
/// This is what calling a `#[workflow]` function directly does.
pub async fn run_nested<W: Workflow>(
    workflow: &W,
    input: W::Input,
) -> Result<W::Output, Error<W::Error>> {
    match CURRENT.try_with(RunLink::clone) {
        Ok(link) => {
            let ctx = Ctx::new(
                next_run_id(),
                Some(link.run),
                workflow.graph(),
                link.observers,
                link.cancel.map(|t| t.child_token()),
                link.seed,
            );
            drive(workflow, ctx, input, link.seeded, Some(link.sink)).await
        }
        Err(_) => Runtime::new().run(workflow, input).await,
    }
}

enum Outcome<T, E> {
    Done(Result<T, Error<E>>),
    Aborted,
    Cancelled,
    TimedOut(Duration),
}

/// Runs the body of one run until it completes, fails, is cancelled or times out.
///
/// `seeded`: the run's jitter seed is fixed (a seeded runtime, or a child of such a run), so
/// the runs its steps start must draw their seeds from it.
async fn drive<W: Workflow>(
    workflow: &W,
    ctx: Ctx<W::Error>,
    input: W::Input,
    seeded: bool,
    parent: Option<Arc<dyn OrphanSink>>,
) -> Result<W::Output, Error<W::Error>> {
    let name = workflow.graph().name;
    // A child run dropped before its body ends (its parent was cancelled or timed out, or a
    // sibling branch failed) leaves its compensations to the parent, which runs them.
    let mut orphan_guard = OrphanGuard {
        armed: parent.map(|sink| (ctx.clone(), sink)),
    };
    ctx.emit(NodeId::START, EventKind::RunStarted);
    // What workflows called inside this run's steps inherit. When there is nothing to inherit
    // (no observers, no cancellation, a random seed) and no enclosing run's link to mask, a
    // child run started without the link is exactly a child started with it (its parent id
    // shows only in events, and nobody observes), so the task-local scope, whose cost is paid
    // on every poll, is skipped.
    // A run with a time limit needs the link too: when the limit drops its body, the child
    // runs in its steps must leave their compensations to it.
    let link = (ctx.observed()
        || ctx.cancel_token().is_some()
        || seeded
        || workflow.timeout().is_some()
        || CURRENT.try_with(|_| ()).is_ok())
    .then(|| RunLink {
        run: ctx.run_id(),
        observers: ctx.observers().clone(),
        cancel: ctx.cancel_token().cloned(),
        seed: ctx.seed_for_child(),
        seeded,
        sink: ctx.sink(),
    });
    let outcome = {
        // Scoped so that the body, and every step in flight, is dropped before compensating.
        // Pinned where it is built: moving it (into a helper's argument, say) would give the
        // run's future a second slot of the body's size.
        let observed = ctx.observed();
        let mut body = pin!(crate::trace::traced(
            match link {
                Some(link) => {
                    Either::Left(CURRENT.scope(link, workflow.execute(ctx.clone(), input)))
                }
                None => Either::Right(workflow.execute(ctx.clone(), input)),
            },
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
        let mut deadline = pin!(async move {
            match limit {
                Some(d) => {
                    tokio::time::sleep(d).await;
                    d
                }
                None => core::future::pending().await,
            }
        });
        core::future::poll_fn(|cx| {
            if cancelled.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Outcome::Cancelled);
            }
            if let Poll::Ready(r) = body.as_mut().poll(cx) {
                return Poll::Ready(Outcome::Done(r));
            }
            if ctx.aborted() {
                return Poll::Ready(Outcome::Aborted);
            }
            if let Poll::Ready(d) = deadline.as_mut().poll(cx) {
                return Poll::Ready(Outcome::TimedOut(d));
            }
            Poll::Pending
        })
        .await
    };
    // The body is over (and dropped): from here on this run undoes itself.
    orphan_guard.armed = None;
    // Child runs dropped mid-run (a failed sibling, a cancellation) are undone first: their
    // steps ran after every step of this run that completed.
    let mut nested_failures = Vec::new();
    for orphan in ctx.take_orphans().into_iter().rev() {
        nested_failures.extend(orphan().await);
    }
    let in_flight = match ctx.state().node {
        NodeId::START => None,
        node => Some(ctx.graph().name_of(node)),
    };
    let mut error = match outcome {
        Outcome::Done(Ok(v)) => {
            ctx.set_status(Status::Completed);
            ctx.emit(NodeId::END, EventKind::RunCompleted);
            return Ok(v);
        }
        Outcome::Done(Err(e)) => e,
        Outcome::Aborted => match ctx.take_abort() {
            Some(step_error) => Error::new(name, ErrorKind::Step(step_error)),
            None => Error::new(name, ErrorKind::Cancelled { step: in_flight }),
        },
        Outcome::Cancelled => Error::new(name, ErrorKind::Cancelled { step: in_flight }),
        Outcome::TimedOut(limit) => Error::new(
            name,
            ErrorKind::TimedOut {
                limit,
                step: in_flight,
            },
        ),
    };
    error.set_workflow(name);
    error.add_nested_compensation_failures(nested_failures);
    ctx.set_status(Status::Compensating);
    let failures = ctx.run_compensations().await;
    error.add_compensation_failures(failures);
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
    Err(error)
}

/// Armed while a child run's body is in flight: if the run is dropped then, its registered
/// compensations go to the parent run (see [`drive`]).
struct OrphanGuard<E: Send + 'static> {
    armed: Option<(Ctx<E>, Arc<dyn OrphanSink>)>,
}

impl<E: Send + 'static> Drop for OrphanGuard<E> {
    fn drop(&mut self) {
        if let Some((ctx, sink)) = self.armed.take()
            && let Some(orphan) = ctx.orphan()
        {
            sink.adopt(orphan);
        }
    }
}

/// A run started with [`Runtime::spawn`]: its state, its events, cancellation, and its result
/// (await the handle).
///
/// Dropping the handle does not stop the run.
pub struct Handle<W: Workflow> {
    ctx: Ctx<W::Error>,
    token: CancellationToken,
    task: JoinHandle<Result<W::Output, Error<W::Error>>>,
    events: EventStream,
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

    /// Cancels the run: the steps in flight are dropped, the compensations of completed steps
    /// run, and the run ends with [`ErrorKind::Cancelled`].
    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// The run's events, from its start (none is missed, however late this is read).
    pub fn events(&mut self) -> &mut EventStream {
        &mut self.events
    }
}

impl<W: Workflow> Future for Handle<W> {
    type Output = Result<W::Output, Error<W::Error>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.task).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(r)) => Poll::Ready(r),
            Poll::Ready(Err(join)) => {
                if join.is_panic() {
                    // A panic outside any step (steps' panics are caught): propagate it.
                    std::panic::resume_unwind(join.into_panic())
                }
                let step = match self.ctx.state().node {
                    NodeId::START => None,
                    node => Some(self.ctx.graph().name_of(node)),
                };
                Poll::Ready(Err(Error::new(
                    self.ctx.graph().name,
                    ErrorKind::Cancelled { step },
                )))
            }
        }
    }
}

/// The events of one spawned run, in order.
///
/// Events of workflows that run inside this run's steps come too (their
/// [`parent`](Event::parent) is set). The stream ends after this run's final event.
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
