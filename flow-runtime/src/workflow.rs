//! The [`Workflow`] trait, the state trait, and [`Flow`], the type `flow!` expands into.

use core::future::Future;
use core::marker::PhantomData;
use core::time::Duration;

use crate::ctx::{Ctx, StateView};
use crate::error::Error;
use crate::graph::{Graph, NodeId};
use crate::runtime::Runtime;

/// A state of a workflow's state machine: one per node of its graph.
///
/// The macros generate an enum per workflow that implements this trait: `#[workflow]` a plain
/// enum (its values live in the async function's locals), `flow!` a generic enum whose
/// variants carry the typed value on their incoming edge.
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
/// use flow_runtime::{Runtime, Workflow, WorkflowState};
/// let handle = Runtime::new().spawn(Order, 2);
/// // The run's state as the workflow's own state type, and its graph node.
/// let state: Option<<Order as Workflow>::State> = handle.typed_state();
/// assert_eq!(state.map(|s| s.node()), Some(handle.state().node));
/// handle.await.unwrap();
/// # }
/// ```
pub trait WorkflowState: Sized {
    /// The graph node this state stands for.
    fn node(&self) -> NodeId;

    /// The state for a snapshot of a run, when this state type carries no data.
    fn from_view(view: &StateView) -> Option<Self> {
        let _ = view;
        None
    }
}

/// A workflow: a typed state machine with a static graph.
///
/// Implemented by the types `#[workflow]` generates and by the value `flow!` returns. Run one
/// with [`Runtime::run`] (on the current task) or [`Runtime::spawn`] (on its own task, with a
/// [`Handle`](crate::Handle)).
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
/// use std::time::Duration;
/// use flow_runtime::{Runtime, Workflow};
/// /// Works with any workflow: a `#[workflow]` type, a `flow!`, a `BoxWorkflow`.
/// async fn run_logged<W: Workflow<Input = u32>>(w: &W, input: u32) -> bool {
///     let g = w.graph();
///     println!("{} ({} steps), limit {:?}", g.name, g.steps().count(), w.timeout());
///     Runtime::new().run(w, input).await.is_ok()
/// }
/// assert!(run_logged(&Order, 2).await);
/// assert_eq!((Order.timeout(), Order.compensate_on_drop()), (None, true));
/// assert_eq!(Order.compensation_timeout(), Duration::from_secs(300));
/// # }
/// ```
pub trait Workflow: Send + Sync {
    /// What a run takes.
    type Input: Send;
    /// What a successful run returns.
    type Output: Send;
    /// The error type every step's error converts into.
    type Error: core::fmt::Display + core::fmt::Debug + Send + 'static;
    /// The state enum.
    type State: WorkflowState;

    /// The static graph.
    fn graph(&self) -> &'static Graph;

    /// The limit on a whole run, if any.
    fn timeout(&self) -> Option<Duration> {
        None
    }

    /// The total time a run may spend compensating (undoing its completed steps, and the work
    /// of child runs it abandoned), however it ended: an undo still running when it is spent is
    /// stopped and reported as timed out
    /// ([`CompensationOutcome::TimedOut`](crate::error::CompensationOutcome::TimedOut)), so that a
    /// hung undo never holds a run forever. Each undo can also have its own timeout
    /// ([`Ctx::compensate_with`]). Defaults to
    /// [`DEFAULT_COMPENSATION_TIMEOUT`](crate::policy::DEFAULT_COMPENSATION_TIMEOUT) (five minutes).
    fn compensation_timeout(&self) -> Duration {
        crate::saga::DEFAULT_COMPENSATION_TIMEOUT
    }

    /// Whether dropping a run's future mid-run (a directly awaited `#[workflow]` call, or
    /// [`Runtime::run`]'s future, dropped by a `select!` or a handler whose client went away)
    /// still undoes its completed steps: on a task of its own spawned on the current tokio
    /// runtime (nothing runs them without one). `true` by default; see also
    /// [`Runtime::compensate_on_drop`]. A child run dropped mid-run always leaves its undos to
    /// its parent run, and a run dropped while it is already compensating always finishes.
    fn compensate_on_drop(&self) -> bool {
        true
    }

    /// Whether the workflow's steps were generated to commit their outcomes to a store
    /// (`#[workflow(durable)]`, `flow! { durable; .. }`). A durable workflow awaited inside a
    /// durable run's step runs as part of that run's record: its steps are recorded under the
    /// step that runs it, and a resumed run does not run them again.
    #[doc(hidden)]
    fn is_durable(&self) -> bool {
        false
    }

    /// Runs the state machine from its start state. Called by the runtime, which adds
    /// cancellation, the time limit, compensation and the run's events around it.
    #[doc(hidden)]
    fn execute(
        &self,
        ctx: Ctx<Self::Error>,
        input: Self::Input,
    ) -> impl Future<Output = Result<Self::Output, Error<Self::Error>>> + Send;
}

/// A workflow composed by `flow!`: a state enum `S` and a driver that runs it to the end.
///
/// The type parameters are inferred from the steps; a flow is usually held in a `let` and run
/// with [`Flow::run`]. `D` says whether its steps were generated to commit their outcomes to
/// a store: `flow! { name = "..", durable; .. }` makes a flow that implements
/// `flow::durable::DurableWorkflow` (feature `durable`).
///
/// ```
/// # use flow_runtime::{Error, Graph, NodeId, WorkflowState};
/// # use flow_runtime::__private::Ctx;
/// # use flow_runtime::graph::{Node, NodeKind};
/// # const fn node(name: &'static str, kind: NodeKind) -> Node {
/// #     Node { name, key: name, fingerprint: 0, kind, policy: "", parent: None }
/// # }
/// # static GRAPH: Graph = Graph { name: "doubler", fingerprint: 1, edges: &[], nodes: &[
/// #     node("start", NodeKind::Start), node("end", NodeKind::End), node("double", NodeKind::Step)] };
/// # enum St { Start(u32) }
/// # impl WorkflowState for St { fn node(&self) -> NodeId { NodeId::START } }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// use flow_runtime::Workflow;
/// // What `flow! { name = "doubler"; double }` returns:
/// # let f = flow_runtime::Flow::new(&GRAPH, St::Start, None, |ctx: Ctx<String>, s: St| async move {
/// #     let St::Start(x) = s;
/// #     Ok::<u32, Error<String>>(ctx.step(NodeId(2), async move { Ok::<u32, String>(2 * x) }).await?)
/// # });
/// assert_eq!(f.graph().name, "doubler");
/// assert_eq!(f.run(21).await.unwrap(), 42);
/// let f = f.with_compensation_timeout(Duration::from_secs(10)).with_compensate_on_drop(false);
/// assert_eq!((f.compensation_timeout(), f.compensate_on_drop()), (Duration::from_secs(10), false));
/// # }
/// ```
pub struct Flow<In, Out, E, S, F, D = Ephemeral> {
    graph: &'static Graph,
    start: fn(In) -> S,
    driver: F,
    timeout: Option<Duration>,
    compensation_timeout: Duration,
    compensate_on_drop: bool,
    _types: PhantomData<fn(In) -> (Out, E)>,
    _kind: PhantomData<fn() -> D>,
}

/// Whether a [`Flow`]'s kind is durable.
#[doc(hidden)]
pub trait FlowKind {
    /// `true` for [`Durable`].
    const DURABLE: bool;
}

impl FlowKind for Ephemeral {
    const DURABLE: bool = false;
}

impl FlowKind for Durable {
    const DURABLE: bool = true;
}

/// The kind of a [`Flow`] whose runs are not recorded: a `flow!` without `durable`.
#[derive(Debug, Clone, Copy)]
pub struct Ephemeral;

/// The kind of a [`Flow`] written `flow! { name = "..", durable; .. }`: its steps commit their
/// outcomes when a run has a store, so it implements
/// [`DurableWorkflow`](crate::durable::DurableWorkflow) (with the `durable` feature).
#[derive(Debug, Clone, Copy)]
pub struct Durable;

impl<In, Out, E, S, F: Clone, D> Clone for Flow<In, Out, E, S, F, D> {
    fn clone(&self) -> Self {
        Flow {
            graph: self.graph,
            start: self.start,
            driver: self.driver.clone(),
            timeout: self.timeout,
            compensation_timeout: self.compensation_timeout,
            compensate_on_drop: self.compensate_on_drop,
            _types: PhantomData,
            _kind: PhantomData,
        }
    }
}

impl<In, Out, E, S, F, Fut> Flow<In, Out, E, S, F>
where
    F: Fn(Ctx<E>, S) -> Fut,
    Fut: Future<Output = Result<Out, Error<E>>>,
{
    /// Used by `flow!`.
    #[doc(hidden)]
    pub const fn new(
        graph: &'static Graph,
        start: fn(In) -> S,
        timeout: Option<Duration>,
        driver: F,
    ) -> Self {
        Flow {
            graph,
            start,
            driver,
            timeout,
            compensation_timeout: crate::saga::DEFAULT_COMPENSATION_TIMEOUT,
            compensate_on_drop: true,
            _types: PhantomData,
            _kind: PhantomData,
        }
    }
}

impl<In, Out, E, S, F> Flow<In, Out, E, S, F> {
    /// Used by `flow! { durable; .. }`: the same flow, whose runs can be durable (its steps
    /// were generated to commit their outcomes).
    #[cfg(feature = "durable")]
    #[doc(hidden)]
    pub fn durable(self) -> Flow<In, Out, E, S, F, Durable> {
        Flow {
            graph: self.graph,
            start: self.start,
            driver: self.driver,
            timeout: self.timeout,
            compensation_timeout: self.compensation_timeout,
            compensate_on_drop: self.compensate_on_drop,
            _types: PhantomData,
            _kind: PhantomData,
        }
    }
}

#[cfg(feature = "durable")]
impl<In, Out, E, S, F> Flow<In, Out, E, S, F, Durable> {
    /// Used by `flow! { durable; .. }`: probes of the flow's input, output and error types,
    /// checked (with a message naming each) where `durable` is written.
    #[doc(hidden)]
    pub fn stored_values(
        &self,
    ) -> (
        crate::checks::FlowValue<In>,
        crate::checks::FlowValue<Out>,
        crate::checks::FlowValue<E>,
    ) {
        Default::default()
    }
}

impl<In, Out, E, S, F, D> Flow<In, Out, E, S, F, D> {
    /// The total time a run may spend compensating (`flow! { compensation_timeout = "10m"; .. }`);
    /// see [`Workflow::compensation_timeout`].
    #[must_use]
    pub const fn with_compensation_timeout(mut self, limit: Duration) -> Self {
        self.compensation_timeout = limit;
        self
    }

    /// Whether a run dropped mid-run still undoes its completed steps
    /// (`flow! { compensate_on_drop = false; .. }`); see [`Workflow::compensate_on_drop`].
    #[must_use]
    pub const fn with_compensate_on_drop(mut self, on: bool) -> Self {
        self.compensate_on_drop = on;
        self
    }
}

impl<In, Out, E, S, F, D> Flow<In, Out, E, S, F, D> {
    /// The flow's static graph.
    pub fn graph(&self) -> &'static Graph {
        self.graph
    }
}

impl<In, Out, E, S, F, D, Fut> Flow<In, Out, E, S, F, D>
where
    Self: Workflow<Input = In, Output = Out, Error = E>,
    F: Fn(Ctx<E>, S) -> Fut,
{
    /// Runs the flow on the current task with a default [`Runtime`] (no observers).
    pub async fn run(&self, input: In) -> Result<Out, Error<E>> {
        Runtime::new().run(self, input).await
    }
}

impl<In, Out, E, S, F, D, Fut> Workflow for Flow<In, Out, E, S, F, D>
where
    In: Send,
    Out: Send,
    E: core::fmt::Display + core::fmt::Debug + Send + 'static,
    S: WorkflowState + Send,
    F: Fn(Ctx<E>, S) -> Fut + Send + Sync,
    Fut: Future<Output = Result<Out, Error<E>>> + Send,
    D: FlowKind,
{
    type Input = In;
    type Output = Out;
    type Error = E;
    type State = S;

    fn graph(&self) -> &'static Graph {
        self.graph
    }

    fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    fn compensation_timeout(&self) -> Duration {
        self.compensation_timeout
    }

    fn compensate_on_drop(&self) -> bool {
        self.compensate_on_drop
    }

    fn is_durable(&self) -> bool {
        D::DURABLE
    }

    fn execute(
        &self,
        ctx: Ctx<E>,
        input: In,
    ) -> impl Future<Output = Result<Out, Error<E>>> + Send {
        (self.driver)(ctx, (self.start)(input))
    }
}
