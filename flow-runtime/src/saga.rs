//! Compensation (the saga): the stack of undos, how they run (in reverse order, each under its
//! own timeout and retry rules, all within the workflow's compensation budget), and how they
//! outlive the run's future: handed to the parent run, or finished on a task of their own.
//!
//! The stack holds two kinds of entries:
//!
//! - this run's own undos, registered by [`Ctx::compensate`] / [`Ctx::compensate_with`];
//! - the stack of a **completed child run** (a workflow awaited inside one of this run's
//!   steps), pushed as one entry when the child succeeds, tagged with the node (and `map` item)
//!   of the step it ran in. When this run fails later, the entry runs at its position in the
//!   stack: the child's own undos, in reverse. When the step that ran the child registers an
//!   undo of its own, that undo is responsible for the child's effects: the child's entries
//!   with the step's tag, above the step's previous undo, are dropped; when that step fails,
//!   they are undone at once as abandoned work (below).
//!
//! How a child knows the step it ran in: when it starts (on the first poll of the step's future,
//! synchronously after the step recorded itself as the run's current node), it reads the
//! parent's current node and the thread's current `map` item; no per-step or per-poll cost.
//! This is exact for a child awaited directly by its step, in sequence, in `map` items and in
//! parallel branches (each branch records its node before its first poll). Limit: in a parallel
//! group, a step that awaits something else *before* starting its child may find the current
//! node moved to a sibling branch; its child is then tagged with that sibling (still undone
//! when the run fails, but a `compensate` on that sibling would take it over).
//!
//! Besides the stack, a run adopts **orphans**: the packaged stacks of child runs dropped
//! mid-run (an attempt that timed out, a sibling that failed, a `map` that failed). They are
//! undone as soon as the engine sees the abandoned work: after the failed attempt (before the
//! next one starts), after a failed `map`, before a `catch` recovery, before a `#[workflow]`
//! body sees a step's error, and at the latest when the run ends. Their records go in the
//! run's report even when the run succeeds.

use core::future::Future;
use core::panic::AssertUnwindSafe;
use core::pin::Pin;
use core::sync::atomic::Ordering;
use core::task::{Context, Poll};
use core::time::Duration;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt as _;
use tokio::time::Instant;

use crate::ctx::{BoxFuture, Ctx, Inner, Status, current_item, lock, panic_message};
use crate::error::{
    CompensationFailure, CompensationOutcome, CompensationRecord, Failure, StepError,
};
use crate::event::EventKind;
use crate::graph::NodeId;
use crate::policy::Retry;

/// One attempt of an undo: a new future per call.
pub(crate) type Job<E> = Box<dyn FnMut() -> BoxFuture<Result<(), E>> + Send>;

/// The compensations of a child run, packaged by the child (whose error type the parent does
/// not know): running it (with the deadline of the parent's compensation budget) undoes the
/// child's completed steps in reverse order and returns the records of what ran.
pub(crate) type Package = Box<dyn FnOnce(Instant) -> BoxFuture<Vec<CompensationRecord>> + Send>;

/// Where an entry was registered: the step's node, and the `map` item it ran in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tag {
    pub(crate) node: NodeId,
    pub(crate) item: Option<u32>,
    /// Which execution of the node ([`Inner::execution`](crate::ctx::Inner::execution)): a
    /// step's undo takes over, and its failure abandons, only the children of its own
    /// execution, not those of an earlier pass of a loop. In durable runs it also names the
    /// undo's record.
    pub(crate) occurrence: u32,
}

/// The execution of a completed child's entry that no step claims any more (see
/// [`Ctx::seal_map_items`]).
const SEALED: u32 = u32::MAX;

/// One entry of a run's compensation stack.
pub(crate) enum Entry<E> {
    /// An undo of one of this run's steps.
    Own {
        tag: Tag,
        job: Job<E>,
        timeout: Option<Duration>,
        retry: Vec<Retry<E>>,
    },
    /// A completed child run's stack.
    Child { tag: Tag, package: Package },
}

/// The default of [`Workflow::compensation_timeout`](crate::Workflow::compensation_timeout):
/// five minutes. Undoing is usually a few API calls (delete, release, revert); five minutes
/// leaves room for their retries with backoff and for slow control planes, while still
/// bounding how long a cancelled or failed run can hang on an undo that never returns.
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
///
/// use std::time::Duration;
/// use flow_runtime::policy::DEFAULT_COMPENSATION_TIMEOUT;
/// assert_eq!(DEFAULT_COMPENSATION_TIMEOUT, Duration::from_secs(5 * 60));
/// // A workflow that does not say otherwise may spend that long undoing.
/// assert_eq!(Order.compensation_timeout(), DEFAULT_COMPENSATION_TIMEOUT);
/// ```
pub const DEFAULT_COMPENSATION_TIMEOUT: Duration = Duration::from_secs(300);

/// The policies of one compensation (see [`Ctx::compensate_with`]).
///
/// - `timeout`: limit on each attempt of the undo; a timed-out attempt is a failed attempt.
/// - `retry`: retry rules with exactly a step's semantics ([`Retry`]: `max_attempts` counts
///   every attempt, backoff, jitter, `max_elapsed`, `when`), matched in order.
///
/// Every attempt and every delay also stays within the workflow's total compensation budget
/// ([`Workflow::compensation_timeout`](crate::Workflow::compensation_timeout)): an undo still
/// running when the budget is spent is stopped and reported as
/// [`CompensationOutcome::TimedOut`], and a retry that would start after it is not made.
///
/// ```
/// use std::time::Duration;
/// use flow_runtime::policy::{CompensationPolicy, Retry};
/// // The policy of `#[compensate(release, timeout = "10s", retry(max_attempts = 3))]`:
/// let retry = [Retry::<String>::new(3)];
/// let policy = CompensationPolicy { timeout: Some(Duration::from_secs(10)), retry: &retry };
/// assert_eq!(policy.retry[0].max_attempts(), 3);
/// let once = CompensationPolicy::<String>::none();
/// assert!(once.timeout.is_none() && once.retry.is_empty());
/// ```
pub struct CompensationPolicy<'a, E> {
    /// Limit on each attempt of the undo.
    pub timeout: Option<Duration>,
    /// Retry rules, tried in order against each failure. Empty: one attempt.
    pub retry: &'a [Retry<E>],
}

impl<E> Clone for CompensationPolicy<'_, E> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<E> Copy for CompensationPolicy<'_, E> {}

impl<E> core::fmt::Debug for CompensationPolicy<'_, E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CompensationPolicy")
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .finish()
    }
}

impl<E> CompensationPolicy<'_, E> {
    /// One attempt, limited only by the workflow's compensation budget.
    pub const fn none() -> Self {
        CompensationPolicy {
            timeout: None,
            retry: &[],
        }
    }
}

/// Where a child run leaves its compensations: the parent run's context, type-erased.
/// (It is also the run as signals see it: the current run's link reaches the mailbox.)
pub(crate) trait OrphanSink: crate::signal::SignalHost {
    /// A child dropped mid-run (or while compensating): its remaining undos, to run soon.
    fn adopt(&self, orphan: Package);
    /// A child that completed: its stack joins this run's, tagged with where it ran.
    fn adopt_completed(&self, tag: Tag, package: Package);
    /// Records of compensations a completed child ran (its abandoned work).
    fn absorb(&self, records: Vec<CompensationRecord>);
    /// Where a child starting now on this thread runs: the current node and `map` item.
    fn tag(&self) -> Tag;
    /// What a child starting now inherits.
    fn link(&self) -> crate::runtime::ChildLink;
    /// The run's id (for [`StepContext`](crate::StepContext)).
    fn run_id(&self) -> crate::event::RunId;
    /// The run's graph.
    fn graph(&self) -> &'static crate::graph::Graph;
    /// The idempotency key of the latest execution of `node` in `item`, for a durable run.
    fn durable_key(&self, node: NodeId, item: Option<u32>) -> Option<String>;
    /// For a durable run: the journal of a durable child workflow (`graph`) that attempt
    /// `attempt` of the latest execution of `node` in `item` runs.
    #[cfg(feature = "durable")]
    fn durable_child(
        &self,
        node: NodeId,
        item: Option<u32>,
        attempt: u32,
        graph: &'static crate::graph::Graph,
    ) -> Option<Arc<crate::durable::Journal>>;
    /// When the run's time limit ends, if it has one.
    fn run_deadline(&self) -> Option<Instant>;
    /// A step of this run reports progress: a heartbeat, and an event when observed.
    fn progress(
        &self,
        node: NodeId,
        iteration: u32,
        item: Option<u32>,
        attempt: u32,
        progress: crate::context::Progress,
    );
}

impl<E: Send + 'static> OrphanSink for Inner<E> {
    fn adopt(&self, orphan: Package) {
        adopt_into(&self.cold().orphans, &self.has_orphans, orphan);
    }

    fn adopt_completed(&self, tag: Tag, package: Package) {
        lock(&self.stack).push(Entry::Child { tag, package });
        self.has_children.store(true, Ordering::Release);
    }

    fn absorb(&self, records: Vec<CompensationRecord>) {
        if !records.is_empty() {
            lock(&self.cold().records).extend(records);
        }
    }

    fn durable_key(&self, node: NodeId, item: Option<u32>) -> Option<String> {
        #[cfg(feature = "durable")]
        {
            self.cold_if()
                .and_then(|c| c.journal.get())
                .map(|j| j.idempotency_key(node, item))
        }
        #[cfg(not(feature = "durable"))]
        {
            let _ = (node, item);
            None
        }
    }

    #[cfg(feature = "durable")]
    fn durable_child(
        &self,
        node: NodeId,
        item: Option<u32>,
        attempt: u32,
        graph: &'static crate::graph::Graph,
    ) -> Option<Arc<crate::durable::Journal>> {
        self.cold_if()
            .and_then(|c| c.journal.get())
            .map(|j| Arc::new(j.child(node, item, attempt, graph)))
    }

    fn tag(&self) -> Tag {
        // The step polling the child (a sibling in a group may have been entered since it
        // started, and be the run's current node).
        let node = crate::context::polled_step()
            .unwrap_or_else(|| NodeId(self.current.load(Ordering::Relaxed)));
        let item = current_item();
        Tag {
            node,
            item,
            occurrence: self.execution(node, item),
        }
    }

    fn link(&self) -> crate::runtime::ChildLink {
        crate::runtime::ChildLink {
            run: self.run,
            observers: self.observers.clone(),
            cancel: self.cancel.clone(),
            seed: self.rng.next_u64(),
            seeded: self.seeded,
        }
    }

    fn run_id(&self) -> crate::event::RunId {
        self.run
    }

    fn graph(&self) -> &'static crate::graph::Graph {
        self.graph
    }

    fn run_deadline(&self) -> Option<Instant> {
        self.cold_if().and_then(|cold| cold.deadline.get().copied())
    }

    fn progress(
        &self,
        node: NodeId,
        iteration: u32,
        item: Option<u32>,
        attempt: u32,
        progress: crate::context::Progress,
    ) {
        let now = Instant::now();
        *lock(&self.cold().heartbeat) = Some(now);
        if self.is_observed() {
            let _item = crate::ctx::ItemScope::enter(item);
            self.emit_at(
                node,
                EventKind::Progress {
                    attempt,
                    fraction: progress.fraction,
                    message: progress.message,
                },
                now,
                iteration,
            );
        }
    }
}

fn adopt_into(
    orphans: &Mutex<Vec<Package>>,
    flag: &core::sync::atomic::AtomicBool,
    orphan: Package,
) {
    lock(orphans).push(orphan);
    flag.store(true, Ordering::Release);
}

/// `now + d`, saturating far in the future.
pub(crate) fn deadline_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(30 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

/// Removes, from the top of `stack` down to the previous undo registered with the same tag,
/// the completed children's entries with `tag`: the step that ran them registers (or failed)
/// now.
fn claim_children<E>(stack: &mut Vec<Entry<E>>, tag: Tag) -> Vec<Package> {
    let mut claimed = Vec::new();
    let mut i = stack.len();
    while i > 0 {
        i -= 1;
        match &stack[i] {
            Entry::Own { tag: t, .. } if *t == tag => break,
            Entry::Child { tag: t, .. } if *t == tag => {
                if let Entry::Child { package, .. } = stack.remove(i) {
                    claimed.push(package);
                }
            }
            _ => {}
        }
    }
    claimed.reverse();
    claimed
}

/// Undoes abandoned work: on drop, the undos not finished go back to the run's orphans (to be
/// finished by the run, or by whoever finishes a dropped run).
struct Rescue<'a> {
    fut: Option<BoxFuture<Vec<CompensationRecord>>>,
    orphans: &'a Mutex<Vec<Package>>,
    flag: &'a core::sync::atomic::AtomicBool,
}

impl Future for Rescue<'_> {
    type Output = Vec<CompensationRecord>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(fut) = this.fut.as_mut() else {
            return Poll::Ready(Vec::new());
        };
        let out = fut.as_mut().poll(cx);
        if out.is_ready() {
            this.fut = None;
        }
        out
    }
}

impl Drop for Rescue<'_> {
    fn drop(&mut self) {
        if let Some(fut) = self.fut.take() {
            adopt_into(self.orphans, self.flag, Box::new(move |_| fut));
        }
    }
}

/// Drives a run's final compensation; if dropped first, hands what is left to the parent run
/// (`target`), or to a task of its own on the current tokio runtime.
pub(crate) struct Finisher<E: Send + 'static, T: Send + 'static> {
    pub(crate) fut: Option<BoxFuture<T>>,
    pub(crate) ctx: Ctx<E>,
    pub(crate) target: Option<Arc<dyn OrphanSink>>,
}

impl<E: Send + 'static, T: Send + 'static> Future for Finisher<E, T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let this = self.get_mut();
        let Some(fut) = this.fut.as_mut() else {
            return Poll::Ready(None);
        };
        match fut.as_mut().poll(cx) {
            Poll::Ready(v) => {
                this.fut = None;
                Poll::Ready(Some(v))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<E: Send + 'static, T: Send + 'static> Drop for Finisher<E, T> {
    fn drop(&mut self) {
        if let Some(fut) = self.fut.take() {
            let ctx = self.ctx.clone();
            let rest = async move {
                let _ = fut.await;
                ctx.take_records()
            };
            hand_off(self.target.as_ref(), Box::pin(rest));
        }
    }
}

/// Gives `rest` to the parent run, or spawns it on the current tokio runtime (without one,
/// nothing can run it: it is dropped).
pub(crate) fn hand_off(
    target: Option<&Arc<dyn OrphanSink>>,
    rest: BoxFuture<Vec<CompensationRecord>>,
) {
    match target {
        Some(sink) => sink.adopt(Box::new(move |_| rest)),
        None => {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                drop(rt.spawn(rest));
            }
        }
    }
}

impl<E> Ctx<E> {
    /// The orphans adopted from child runs, in the order they were left.
    pub(crate) fn take_orphans(&self) -> Vec<Package> {
        // A plain load first: the common case (no child left anything) takes no locked
        // instruction.
        if !self.inner.has_orphans.load(Ordering::Acquire) {
            return Vec::new();
        }
        self.inner.has_orphans.store(false, Ordering::Relaxed);
        core::mem::take(&mut *lock(&self.inner.cold().orphans))
    }

    /// The step at `node` (in the current `map` item) failed: the child runs it completed are
    /// abandoned work, to be undone before the run goes on (their entries leave the stack for
    /// the orphans). Only on a failure path; a plain load when no child ever completed.
    #[inline]
    pub(crate) fn abandon_children(&self, node: NodeId) {
        // A plain load first (inlined where a step fails): a run that never adopted a
        // completed child takes no lock, nor a call.
        if self.inner.has_children.load(Ordering::Acquire) {
            self.claim_abandoned(node);
        }
    }

    /// [`abandon_children`](Self::abandon_children) in a run that adopted a completed child.
    #[cold]
    #[inline(never)]
    fn claim_abandoned(&self, node: NodeId) {
        let claimed = {
            let mut stack = lock(&self.inner.stack);
            if stack.is_empty() {
                return;
            }
            let item = current_item();
            claim_children(
                &mut stack,
                Tag {
                    node,
                    item,
                    occurrence: self.inner.execution(node, item),
                },
            )
        };
        for package in claimed {
            adopt_into(&self.inner.cold().orphans, &self.inner.has_orphans, package);
        }
    }

    /// A `map` starts at `node`: the completed children of earlier `map` items (an earlier
    /// pass of a loop around this `map`, or another `map`) can no longer be claimed by a step
    /// of the items to come, which reuse the same item indices (a `map` item's execution is
    /// 0, see [`Inner::execution`](crate::ctx::Inner::execution)). Durable runs number each
    /// (node, item) execution already. A plain load when no child ever completed.
    #[inline]
    pub(crate) fn seal_map_items(&self) {
        if self.inner.has_children.load(Ordering::Acquire) {
            self.seal_items();
        }
    }

    #[cold]
    #[inline(never)]
    fn seal_items(&self) {
        #[cfg(feature = "durable")]
        if self.journal().is_some() {
            return;
        }
        for entry in lock(&self.inner.stack).iter_mut() {
            if let Entry::Child { tag, .. } = entry
                && tag.item.is_some()
            {
                tag.occurrence = SEALED;
            }
        }
    }

    /// Whether abandoned work waits to be undone.
    #[inline]
    pub(crate) fn has_orphans(&self) -> bool {
        self.inner.has_orphans.load(Ordering::Acquire)
    }

    /// Undoes the work of child runs abandoned so far (newest first), now; a plain load when
    /// there is none. Safe to drop: what is left goes back to the orphans.
    pub(crate) async fn undo_abandoned(&self) {
        if !self.has_orphans() {
            return;
        }
        let deadline = deadline_after(self.inner.compensation_timeout);
        let orphans = self.take_orphans();
        let fut: BoxFuture<Vec<CompensationRecord>> = Box::pin(async move {
            let mut records = Vec::new();
            for orphan in orphans.into_iter().rev() {
                records.extend(orphan(deadline).await);
            }
            records
        });
        let records = Rescue {
            fut: Some(fut),
            orphans: &self.inner.cold().orphans,
            flag: &self.inner.has_orphans,
        }
        .await;
        lock(&self.inner.cold().records).extend(records);
    }

    /// Runs the orphans (newest first) with `deadline`, recording what ran.
    pub(crate) async fn run_orphans(&self, deadline: Instant) {
        for orphan in self.take_orphans().into_iter().rev() {
            let records = orphan(deadline).await;
            lock(&self.inner.cold().records).extend(records);
        }
    }

    /// Takes the records of the compensations run so far.
    pub(crate) fn take_records(&self) -> Vec<CompensationRecord> {
        match self.inner.cold_if() {
            Some(cold) => core::mem::take(&mut *lock(&cold.records)),
            None => Vec::new(),
        }
    }

    /// A copy of the records of the compensations run so far.
    pub(crate) fn records(&self) -> Vec<CompensationRecord> {
        match self.inner.cold_if() {
            Some(cold) => lock(&cold.records).clone(),
            None => Vec::new(),
        }
    }

    /// The deadline of a compensation starting now.
    pub(crate) fn compensation_deadline(&self) -> Instant {
        deadline_after(self.inner.compensation_timeout)
    }
}

impl<E: Send + 'static> Ctx<E> {
    /// Registers the compensation of a step that just succeeded: `undo` gets a clone of the
    /// step's output and runs, in reverse order of registration, if the run fails, is
    /// cancelled or is dropped later. One attempt, within the workflow's compensation budget;
    /// see [`compensate_with`](Self::compensate_with) for a timeout and retries.
    ///
    /// Completed child runs of this step (workflows awaited inside it) are this undo's
    /// responsibility: their own compensations are dropped. When the step failed (`result` is
    /// an error), they are undone as abandoned work, before the run goes on.
    pub fn compensate<T, E2, Fut, U>(
        &self,
        node: NodeId,
        result: Result<T, StepError<E>>,
        undo: U,
    ) -> Result<T, StepError<E>>
    where
        T: Clone + Send + 'static,
        U: FnOnce(T) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E2>> + Send + 'static,
        E: From<E2>,
    {
        self.register(node, result, Vec::new(), None, move |v: &T| {
            let mut once = Some((undo, v.clone()));
            Box::new(move || -> BoxFuture<Result<(), E>> {
                match once.take() {
                    Some((undo, v)) => Box::pin(async move { undo(v).await.map_err(E::from) }),
                    // Without retry rules the job is called once.
                    None => Box::pin(core::future::pending()),
                }
            })
        })
    }

    /// As [`compensate`](Self::compensate), with a per-attempt timeout and retry rules for
    /// the undo ([`CompensationPolicy`]); `undo` is called once per attempt, with a clone of
    /// the step's output.
    pub fn compensate_with<T, E2, Fut, U>(
        &self,
        node: NodeId,
        result: Result<T, StepError<E>>,
        undo: U,
        policy: CompensationPolicy<'_, E>,
    ) -> Result<T, StepError<E>>
    where
        T: Clone + Send + 'static,
        U: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E2>> + Send + 'static,
        E: From<E2>,
    {
        let retry = policy.retry.to_vec();
        self.register(node, result, retry, policy.timeout, move |v: &T| {
            let v = v.clone();
            let undo = Arc::new(undo);
            Box::new(move || -> BoxFuture<Result<(), E>> {
                let undo = Arc::clone(&undo);
                let v = v.clone();
                Box::pin(async move { undo(v).await.map_err(E::from) })
            })
        })
    }

    fn register<T>(
        &self,
        node: NodeId,
        result: Result<T, StepError<E>>,
        retry: Vec<Retry<E>>,
        timeout: Option<Duration>,
        job: impl FnOnce(&T) -> Job<E>,
    ) -> Result<T, StepError<E>> {
        let item = current_item();
        let tag = Tag {
            node,
            item,
            occurrence: self.inner.execution(node, item),
        };
        let mut stack = lock(&self.inner.stack);
        let claimed = claim_children(&mut stack, tag);
        match &result {
            Ok(v) => {
                // The step's own undo covers its children.
                drop(claimed);
                stack.push(Entry::Own {
                    tag,
                    job: job(v),
                    timeout,
                    retry,
                });
            }
            Err(_) => {
                drop(stack);
                for package in claimed {
                    adopt_into(&self.inner.cold().orphans, &self.inner.has_orphans, package);
                }
            }
        }
        result
    }

    /// This run's context as the place where its child runs leave their compensations.
    pub(crate) fn sink(&self) -> Arc<dyn OrphanSink> {
        Arc::clone(&self.inner) as Arc<dyn OrphanSink>
    }

    /// Packages what this run has to undo (its orphans, then its stack) for its parent or for
    /// a task of its own: `None` when there is nothing to undo. `dropped`: the run's future
    /// was dropped mid-run; the package then ends the run (status and final event).
    pub(crate) fn package(&self, dropped: bool) -> Option<Package> {
        let has_stack = !lock(&self.inner.stack).is_empty();
        if !has_stack && !self.has_orphans() {
            return None;
        }
        let ctx = self.clone();
        Some(Box::new(move |deadline| {
            Box::pin(async move {
                if dropped {
                    ctx.set_status(Status::Compensating);
                }
                ctx.run_orphans(deadline).await;
                let _ = ctx.run_stack(deadline).await;
                if dropped {
                    ctx.set_status(Status::Cancelled);
                    ctx.emit(NodeId::END, EventKind::RunCancelled);
                }
                ctx.take_records()
            })
        }))
    }

    /// Runs the compensation stack in reverse order (own undos and completed children's),
    /// recording each; returns the failures of this run's own undos.
    pub(crate) async fn run_stack(&self, deadline: Instant) -> Vec<CompensationFailure<E>> {
        let entries = core::mem::take(&mut *lock(&self.inner.stack));
        let mut failures = Vec::new();
        for entry in entries.into_iter().rev() {
            match entry {
                Entry::Child { package, .. } => {
                    let records = package(deadline).await;
                    lock(&self.inner.cold().records).extend(records);
                }
                Entry::Own {
                    tag,
                    mut job,
                    timeout,
                    retry,
                } => {
                    let node = tag.node;
                    // A durable run resumed while compensating: an undo that ran before the
                    // restart is not run again.
                    #[cfg(feature = "durable")]
                    let undo_key = self
                        .journal()
                        .map(|j| j.undo_key(node, tag.occurrence, tag.item));
                    #[cfg(feature = "durable")]
                    if let (Some(j), Some(key)) = (self.journal(), &undo_key)
                        && j.undo_done(key)
                    {
                        let graph = self.inner.graph;
                        lock(&self.inner.cold().records).push(CompensationRecord {
                            workflow: graph.name,
                            run: self.inner.run,
                            node,
                            step: graph.name_of(node),
                            key: graph.key_of(node),
                            attempts: 0,
                            outcome: CompensationOutcome::Succeeded,
                        });
                        continue;
                    }
                    {
                        let _item = crate::ctx::ItemScope::enter(tag.item);
                        self.emit(node, EventKind::CompensationStarted);
                    }
                    let (attempts, outcome) =
                        self.run_undo(&mut job, timeout, &retry, deadline).await;
                    #[cfg(feature = "durable")]
                    if let (Some(j), Some(key)) = (self.journal(), undo_key) {
                        let message = outcome.as_ref().err().map(|f| (self.inner.describe)(f));
                        j.commit_undo(key, attempts, message).await;
                    }
                    let _item = crate::ctx::ItemScope::enter(tag.item);
                    let recorded = match &outcome {
                        Ok(()) => {
                            self.emit(node, EventKind::CompensationSucceeded);
                            CompensationOutcome::Succeeded
                        }
                        Err(failure) => {
                            if self.observed() {
                                self.emit(
                                    node,
                                    EventKind::CompensationFailed {
                                        error: (self.inner.describe)(failure),
                                    },
                                );
                            }
                            match failure {
                                Failure::TimedOut(d) => CompensationOutcome::TimedOut(*d),
                                Failure::Panicked(m) => {
                                    CompensationOutcome::Failed(Failure::Panicked(m.clone()))
                                }
                                Failure::Signal(e) => {
                                    CompensationOutcome::Failed(Failure::Signal(e.clone()))
                                }
                                Failure::Error(_) => {
                                    CompensationOutcome::Failed(Failure::Error((self
                                        .inner
                                        .describe)(
                                        failure
                                    )))
                                }
                            }
                        }
                    };
                    let graph = self.inner.graph;
                    lock(&self.inner.cold().records).push(CompensationRecord {
                        workflow: graph.name,
                        run: self.inner.run,
                        node,
                        step: graph.name_of(node),
                        key: graph.key_of(node),
                        attempts,
                        outcome: recorded,
                    });
                    if let Err(failure) = outcome {
                        failures.push(CompensationFailure {
                            step: graph.name_of(node),
                            failure,
                        });
                    }
                }
            }
        }
        failures
    }

    /// Runs one undo under its timeout and retry rules, within `deadline`: how many attempts
    /// ran, and how the last ended.
    async fn run_undo(
        &self,
        job: &mut Job<E>,
        timeout: Option<Duration>,
        retry: &[Retry<E>],
        deadline: Instant,
    ) -> (u32, Result<(), Failure<E>>) {
        let budget = self.inner.compensation_timeout;
        let first = Instant::now();
        let mut counters: Vec<u32> = Vec::new();
        let mut number: u32 = 0;
        loop {
            number = number.saturating_add(1);
            let now = Instant::now();
            let (limit_at, limit) = match timeout.and_then(|t| now.checked_add(t).map(|at| (at, t)))
            {
                Some((at, t)) if at < deadline => (at, t),
                _ => (deadline, budget),
            };
            let failure = match std::panic::catch_unwind(AssertUnwindSafe(&mut *job)) {
                Err(payload) => Failure::Panicked(panic_message(&*payload)),
                Ok(attempt) => {
                    // An undo is not a step: no step context, even when a child run undoes
                    // itself while its parent's step is polled.
                    let fut = core::pin::pin!(attempt);
                    let attempt = AssertUnwindSafe(crate::context::Framed {
                        fut,
                        frame: crate::context::Frame::NONE,
                    })
                    .catch_unwind();
                    match tokio::time::timeout_at(limit_at, attempt).await {
                        Ok(Ok(Ok(()))) => return (number, Ok(())),
                        Ok(Ok(Err(e))) => Failure::Error(e),
                        Ok(Err(payload)) => Failure::Panicked(panic_message(&*payload)),
                        Err(_) => Failure::TimedOut(limit),
                    }
                }
            };
            if Instant::now() >= deadline {
                return (number, Err(failure));
            }
            // A panicking `when` predicate counts as "no rule matches".
            let matched = std::panic::catch_unwind(AssertUnwindSafe(|| {
                retry.iter().position(|r| r.matches(&failure))
            }))
            .ok()
            .flatten();
            let Some(ix) = matched else {
                return (number, Err(failure));
            };
            if counters.is_empty() {
                counters = vec![0; retry.len()];
            }
            counters[ix] = counters[ix].saturating_add(1);
            let rule = &retry[ix];
            if counters[ix] >= rule.max_attempts() {
                return (number, Err(failure));
            }
            let delay = rule
                .jitter()
                .apply(rule.backoff().delay(counters[ix]), &self.inner.rng);
            let resume = Instant::now().checked_add(delay);
            if resume.is_none_or(|at| at >= deadline) {
                return (number, Err(failure));
            }
            if let Some(b) = rule.max_elapsed()
                && first.elapsed().saturating_add(delay) > b
            {
                return (number, Err(failure));
            }
            if delay.is_zero() {
                tokio::task::coop::consume_budget().await;
            } else {
                tokio::time::sleep(delay).await;
            }
        }
    }
}
