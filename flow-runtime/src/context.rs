//! A step's view of its own execution: [`StepContext`].
//!
//! While the runtime polls one attempt of a step, a small `Copy` [`Frame`] (node, attempt,
//! entry number, attempt deadline) sits in a thread-local; [`StepContext::current`] builds the
//! context from it, the thread's current `map` item and the run whose body is being polled
//! (the thread-local every run sets around each poll of its body, see `runtime.rs`). Nothing
//! else is built, and no clock is read, unless a step asks: a plain step of an unobserved run
//! pays two writes of the thread-local around each poll.

use core::cell::Cell;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};
use std::sync::{Arc, OnceLock};

use tokio::time::Instant;

use crate::event::RunId;
use crate::graph::NodeId;
use crate::saga::OrphanSink;

/// Where the step being polled on this thread is: set only around the poll of a step's
/// attempt, cleared around each poll of a run's body (so a child run's own code, between its
/// steps, sees none). Four plain `u32`s (16 bytes, no padding, no `Option`: attempt 0 means
/// "no step"), so that setting and restoring it around a poll is one load and two stores.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Frame {
    node: u32,
    iteration: u32,
    /// 0: no step is being polled.
    attempt: u32,
    /// 1: the attempt has a per-attempt deadline, in [`DEADLINE`] (steps with policies only).
    timed: u32,
}

impl Frame {
    /// No step.
    pub(crate) const NONE: Frame = Frame {
        node: 0,
        iteration: 0,
        attempt: 0,
        timed: 0,
    };

    /// The frame of a plain step: attempt 1, no per-attempt deadline.
    #[inline]
    pub(crate) fn plain(node: NodeId, iteration: u32) -> Self {
        Frame {
            node: node.0,
            iteration,
            attempt: 1,
            timed: 0,
        }
    }

    /// The frame of attempt `attempt` (1 or more) of a step with policies.
    #[inline]
    pub(crate) fn attempt(node: NodeId, iteration: u32, attempt: u32, timed: bool) -> Self {
        Frame {
            node: node.0,
            iteration,
            attempt: attempt.max(1),
            timed: u32::from(timed),
        }
    }
}

thread_local! {
    static FRAME: Cell<Frame> = const { Cell::new(Frame::NONE) };
    /// The per-attempt deadline of the frame being polled, when it is `timed`.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Sets the current frame for the scope of a poll, restoring the previous one after (also on
/// unwind).
/// The step being polled on this thread, if any: its node. A child run started inside it
/// belongs to it (the run's current node may be a sibling's, entered after it).
#[inline]
pub(crate) fn polled_step() -> Option<NodeId> {
    let frame = FRAME.with(Cell::get);
    (frame.attempt != 0).then_some(NodeId(frame.node))
}

pub(crate) struct FrameScope(Frame);

impl FrameScope {
    #[inline]
    pub(crate) fn enter(frame: Frame) -> Self {
        FrameScope(FRAME.with(|c| c.replace(frame)))
    }
}

impl Drop for FrameScope {
    #[inline]
    fn drop(&mut self) {
        FRAME.with(|c| c.set(self.0));
    }
}

/// Sets the per-attempt deadline for the scope of a poll (steps with a timeout).
struct DeadlineScope(Option<Instant>);

impl DeadlineScope {
    fn enter(deadline: Option<Instant>) -> Self {
        DeadlineScope(DEADLINE.with(|c| c.replace(deadline)))
    }
}

impl Drop for DeadlineScope {
    fn drop(&mut self) {
        DEADLINE.with(|c| c.set(self.0));
    }
}

/// A step's attempt future, polled with its frame set (pinned by the caller, so that the
/// step's future is not moved into a wrapper).
pub(crate) struct Framed<'a, F> {
    pub(crate) fut: Pin<&'a mut F>,
    pub(crate) frame: Frame,
}

impl<F: Future> Future for Framed<'_, F> {
    type Output = F::Output;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _scope = FrameScope::enter(self.frame);
        self.fut.as_mut().poll(cx)
    }
}

/// As [`Framed`], for an attempt with a per-attempt deadline.
pub(crate) struct FramedUntil<'a, F> {
    pub(crate) fut: Pin<&'a mut F>,
    pub(crate) frame: Frame,
    pub(crate) deadline: Instant,
}

impl<F: Future> Future for FramedUntil<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _scope = FrameScope::enter(self.frame);
        let _deadline = DeadlineScope::enter(Some(self.deadline));
        self.fut.as_mut().poll(cx)
    }
}

/// What a step reports with [`StepContext::report_progress`]: a fraction done, a message, or
/// both. Built from an `f64` (the fraction, `0.0..=1.0`), a string, or a `(f64, message)`
/// pair.
///
/// ```
/// use flow_runtime::Progress;
/// assert_eq!(Progress::from(0.5), Progress { fraction: Some(0.5), message: None });
/// assert_eq!(Progress::from("copying").message.as_deref(), Some("copying"));
/// let both = Progress::from((0.25, "chunk 1 of 4"));
/// assert_eq!((both.fraction, both.message.as_deref()), (Some(0.25), Some("chunk 1 of 4")));
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    /// How much of the step's work is done, from 0.0 to 1.0 (clamped; NaN is dropped).
    pub fraction: Option<f64>,
    /// What the step is doing.
    pub message: Option<String>,
}

impl From<f64> for Progress {
    fn from(fraction: f64) -> Self {
        Progress {
            fraction: Some(fraction),
            message: None,
        }
    }
}

impl From<&str> for Progress {
    fn from(message: &str) -> Self {
        Progress {
            fraction: None,
            message: Some(message.to_owned()),
        }
    }
}

impl From<String> for Progress {
    fn from(message: String) -> Self {
        Progress {
            fraction: None,
            message: Some(message),
        }
    }
}

impl<M: Into<String>> From<(f64, M)> for Progress {
    fn from((fraction, message): (f64, M)) -> Self {
        Progress {
            fraction: Some(fraction),
            message: Some(message.into()),
        }
    }
}

impl Progress {
    fn normalized(mut self) -> Self {
        self.fraction = self
            .fraction
            .filter(|f| !f.is_nan())
            .map(|f| f.clamp(0.0, 1.0));
        self
    }
}

/// What a running step can know about its own execution, and how it reports progress.
///
/// Inside a step (the step's own `async fn`, called by a workflow), [`step_context`] /
/// [`StepContext::current`] returns it; anywhere else (outside a run, in the workflow's own
/// code between steps, in a compensation, on another task the step spawned) it returns `None`.
/// A workflow run inside a step has its own steps, each with its own context.
///
/// ```
/// # async fn demo() -> Result<(), String> {
/// async fn upload(chunks: Vec<Vec<u8>>) -> Result<usize, String> {
///     let ctx = flow_runtime::step_context();
///     // An idempotency key for the remote side: the same for every attempt of this execution.
///     let key = ctx.as_ref().map(|c| c.idempotency_key());
///     for (i, _chunk) in chunks.iter().enumerate() {
///         if let Some(c) = &ctx {
///             c.report_progress((i as f64 / chunks.len() as f64, format!("chunk {i}")));
///         }
///     }
///     let _ = key;
///     Ok(chunks.len())
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct StepContext {
    frame: Frame,
    /// The attempt's own deadline (start + per-attempt timeout).
    deadline: Option<Instant>,
    item: Option<u32>,
    run: Arc<dyn OrphanSink>,
}

impl core::fmt::Debug for StepContext {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("StepContext")
            .field("run", &self.run_id())
            .field("key", &self.key())
            .field("iteration", &self.iteration())
            .field("item", &self.item)
            .field("attempt", &self.attempt())
            .finish()
    }
}

/// The context of the step being polled on this thread, if any: see [`StepContext`].
///
/// ```
/// # use flow_runtime::{Error, Graph, NodeId, Workflow};
/// # use flow_runtime::__private::{Ctx, StepPolicy};
/// # use flow_runtime::dynamic::DynState;
/// # use flow_runtime::graph::{Node, NodeKind};
/// # const fn node(name: &'static str, kind: NodeKind) -> Node {
/// #     Node { name, key: name, fingerprint: 0, kind, policy: "", parent: None }
/// # }
/// # static GRAPH: Graph = Graph { name: "backup", fingerprint: 1, edges: &[], nodes: &[
/// #     node("start", NodeKind::Start), node("end", NodeKind::End), node("upload", NodeKind::Step)] };
/// # /// A workflow whose one step, `upload`, is retried once.
/// # struct Backup;
/// # impl Workflow for Backup {
/// #     type Input = u32; type Output = String; type Error = String; type State = DynState;
/// #     fn graph(&self) -> &'static Graph { &GRAPH }
/// #     async fn execute(&self, ctx: Ctx<String>, n: u32) -> Result<String, Error<String>> {
/// #         let retry = [flow_runtime::policy::Retry::new(2)];
/// #         let policy = StepPolicy { retry: &retry, timeout: None };
/// #         Ok(ctx.step_with(NodeId(2), policy, || upload(n)).await?)
/// #     }
/// # }
///
/// /// The `upload` step of the `Backup` workflow: fails its first attempt.
/// async fn upload(n: u32) -> Result<String, String> {
///     let ctx = flow_runtime::step_context().expect("called as a step");
///     assert_eq!((ctx.workflow(), ctx.step(), ctx.key()), ("backup", "upload", "upload"));
///     match ctx.attempt() {
///         1 => Err("connection reset".into()),
///         _ => Ok(format!("{n} chunks, attempt {}", ctx.attempt())),
///     }
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let out = flow_runtime::Runtime::new().run(&Backup, 3).await.unwrap();
/// assert_eq!(out, "3 chunks, attempt 2");
/// assert!(flow_runtime::step_context().is_none()); // not in a step
/// # }
/// ```
pub fn step_context() -> Option<StepContext> {
    StepContext::current()
}

impl StepContext {
    /// The context of the step being polled on this thread, if any.
    ///
    /// ```
    /// # use flow_runtime::{Error, Graph, NodeId, Workflow};
    /// # use flow_runtime::__private::{Ctx, StepPolicy};
    /// # use flow_runtime::dynamic::DynState;
    /// # use flow_runtime::graph::{Node, NodeKind};
    /// # const fn node(name: &'static str, kind: NodeKind) -> Node {
    /// #     Node { name, key: name, fingerprint: 0, kind, policy: "", parent: None }
    /// # }
    /// # static GRAPH: Graph = Graph { name: "backup", fingerprint: 1, edges: &[], nodes: &[
    /// #     node("start", NodeKind::Start), node("end", NodeKind::End), node("upload", NodeKind::Step)] };
    /// # /// A workflow whose one step, `upload`, is retried once.
    /// # struct Backup;
    /// # impl Workflow for Backup {
    /// #     type Input = u32; type Output = String; type Error = String; type State = DynState;
    /// #     fn graph(&self) -> &'static Graph { &GRAPH }
    /// #     async fn execute(&self, ctx: Ctx<String>, n: u32) -> Result<String, Error<String>> {
    /// #         let retry = [flow_runtime::policy::Retry::new(2)];
    /// #         let policy = StepPolicy { retry: &retry, timeout: None };
    /// #         Ok(ctx.step_with(NodeId(2), policy, || upload(n)).await?)
    /// #     }
    /// # }
    ///
    /// use flow_runtime::StepContext;
    /// async fn upload(n: u32) -> Result<String, String> {
    ///     let ctx = StepContext::current().unwrap();
    ///     assert_eq!((ctx.node(), ctx.iteration(), ctx.item()), (NodeId(2), 1, None));
    ///     assert!(ctx.deadline().is_none()); // no timeout applies
    ///     ctx.report_progress((1.0, "done"));
    ///     // The same key for both attempts of this execution.
    ///     let key = ctx.idempotency_key();
    ///     assert!(key.starts_with("flow:") && key.ends_with(&format!(":{}:upload#1", ctx.run_id().0)));
    ///     if ctx.attempt() == 1 { Err("retry me".into()) } else { Ok(key) }
    /// }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let handle = flow_runtime::Runtime::new().spawn(Backup, 1);
    /// assert!(handle.last_heartbeat().is_none());
    /// assert!(handle.await.unwrap().contains("upload#1"));
    /// # }
    /// ```
    pub fn current() -> Option<StepContext> {
        let frame = FRAME.with(Cell::get);
        if frame.attempt == 0 {
            return None;
        }
        let run = crate::runtime::current_run()?;
        let deadline = if frame.timed == 1 {
            DEADLINE.with(Cell::get)
        } else {
            None
        };
        Some(StepContext {
            frame,
            deadline,
            item: crate::ctx::current_item(),
            run,
        })
    }

    /// The attempt running now: 1 for the first, 2 for the first retry, ...
    pub fn attempt(&self) -> u32 {
        self.frame.attempt
    }

    /// The run.
    pub fn run_id(&self) -> RunId {
        self.run.run_id()
    }

    /// The workflow's name.
    pub fn workflow(&self) -> &'static str {
        self.run.graph().name
    }

    /// The step's node in the workflow's graph (fixed for one build; see [`key`](Self::key)
    /// for an identity that survives edits).
    pub fn node(&self) -> NodeId {
        NodeId(self.frame.node)
    }

    /// The step's name.
    pub fn step(&self) -> &'static str {
        self.run.graph().name_of(self.node())
    }

    /// The step's stable identity ([`Node::key`](crate::graph::Node::key)): its name, `name#2` for a
    /// second step of the same name; unchanged by edits elsewhere in the workflow.
    pub fn key(&self) -> &'static str {
        self.run.graph().key_of(self.node())
    }

    /// Which time this step was entered in this run: 1 for the first, one more for each loop
    /// iteration (as [`Event::iteration`](crate::Event::iteration)). Inside a `map`, every
    /// item's execution is an entry too, counted in the order the items start.
    pub fn iteration(&self) -> u32 {
        self.frame.iteration
    }

    /// The index of the `map` item this step runs for (the innermost map), if any.
    pub fn item(&self) -> Option<u32> {
        self.item
    }

    /// A key naming this execution of the step, for the remote side to deduplicate on:
    /// `flow:<process>:<run>:<key>#<iteration>` plus `[<item>]` inside a `map`.
    ///
    /// It is the same for every attempt of one execution (a retry of a call that may have
    /// reached the other side before failing sends the same key), and differs between
    /// executions: another step, another loop iteration, another `map` item, another run.
    /// `<process>` is random per process, so two processes never share keys.
    ///
    /// In a durable run (`flow::durable`) the key is `flow:<run id>:<key>@<occurrence>`
    /// plus `[<item>]` inside a `map`: the stored run's id and the step's stable identity
    /// (its node key, the how-many-th execution of that node in the run, the map item's
    /// index), so it is the same after a restart: the step in flight when a process died
    /// gets the same key when the run resumes.
    pub fn idempotency_key(&self) -> String {
        if let Some(key) = self.run.durable_key(self.node(), self.item) {
            return key;
        }
        let mut key = format!(
            "flow:{:016x}:{}:{}#{}",
            process_nonce(),
            self.run_id().0,
            self.key(),
            self.frame.iteration
        );
        if let Some(item) = self.item {
            key.push_str(&format!("[{item}]"));
        }
        key
    }

    /// When this attempt must be done: the end of its per-attempt timeout or of the
    /// workflow's time limit, whichever is earlier; `None` when neither applies. On tokio's
    /// clock (a paused clock in tests).
    pub fn deadline(&self) -> Option<Instant> {
        match (self.deadline, self.run.run_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Reports progress: observers receive an
    /// [`EventKind::Progress`](crate::EventKind::Progress) event for this step (the progress
    /// observer shows it on the step's line, the tracing observer as a `tracing` event), and
    /// the run's last heartbeat ([`Handle::last_heartbeat`](crate::Handle::last_heartbeat))
    /// becomes now. Accepts a fraction (`0.5`), a message (`"copying"`) or both (`(0.5,
    /// "copying")`). Cheap when nobody observes the run: one clock read.
    pub fn report_progress(&self, progress: impl Into<Progress>) {
        let progress = progress.into().normalized();
        self.run.progress(
            self.node(),
            self.frame.iteration,
            self.item,
            self.frame.attempt,
            progress,
        );
    }
}

/// Random per process: keeps idempotency keys of two processes apart.
fn process_nonce() -> u64 {
    static NONCE: OnceLock<u64> = OnceLock::new();
    *NONCE.get_or_init(|| fastrand::u64(..))
}
