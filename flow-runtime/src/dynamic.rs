//! Type-erased workflows: [`DynWorkflow`], [`BoxWorkflow`] and [`ArcWorkflow`], so that a
//! workflow whose type cannot be named (a `flow!`) can be kept in a struct field, a `static`
//! or a `Vec` of different workflows, and run.

use core::fmt::{Debug, Display};
use core::future::Future;
use core::time::Duration;
use std::sync::Arc;

/// What [`DynWorkflow::run`] and [`DynWorkflow::call`] return: a boxed `Send` future.
///
/// ```
/// use flow_runtime::dynamic::BoxFuture;
/// fn answer() -> BoxFuture<'static, u32> {
///     Box::pin(async { 42 })
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// assert_eq!(answer().await, 42);
/// # }
/// ```
pub use futures_util::future::BoxFuture;

use crate::ctx::{Ctx, StateView};
use crate::error::Error;
use crate::graph::{Graph, NodeId};
use crate::runtime::{Handle, Runtime};
use crate::workflow::{Workflow, WorkflowState};

/// The state of a type-erased workflow: the node the run is at (its own state enum is erased).
///
/// ```
/// use flow_runtime::{NodeId, WorkflowState};
/// use flow_runtime::dynamic::DynState;
/// assert_eq!(DynState(NodeId(3)).node(), NodeId(3));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DynState(pub NodeId);

impl WorkflowState for DynState {
    fn node(&self) -> NodeId {
        self.0
    }

    fn from_view(view: &StateView) -> Option<Self> {
        Some(DynState(view.node))
    }
}

/// A workflow as a trait object: what every [`Workflow`] (a `#[workflow]` type, a `flow!`, a
/// method's workflow value) is, once its input, output and error types are fixed and its own
/// type forgotten.
///
/// Implemented for every `W: Workflow + 'static` whose input and output are `'static`. Keep one
/// as a [`BoxWorkflow`] or an [`ArcWorkflow`]: both are [`Workflow`]s themselves (with
/// [`DynState`] as their state), so a [`Runtime`] runs and spawns them like any other, and its
/// graph is `Workflow::graph`, or [`graph`](#method.graph) on the trait object.
///
/// ```
/// use flow_runtime::{ArcWorkflow, BoxWorkflow, DynWorkflow, Runtime, Workflow};
/// # use flow_runtime::{Error, Graph, NodeId};
/// # use flow_runtime::__private::Ctx;
/// # struct Double;
/// # static GRAPH: Graph = Graph { name: "double", nodes: &[], edges: &[], fingerprint: 1 };
/// # impl Workflow for Double {
/// #     type Input = u32; type Output = u32; type Error = String; type State = flow_runtime::dynamic::DynState;
/// #     fn graph(&self) -> &'static Graph { &GRAPH }
/// #     async fn execute(&self, _: Ctx<String>, x: u32) -> Result<u32, Error<String>> { Ok(2 * x) }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // `Double` stands for any workflow: a `flow!`, a `#[workflow]` type.
/// let boxed: BoxWorkflow<u32, u32, String> = Box::new(Double);
/// let runtime = Runtime::new();
/// assert_eq!(boxed.run(&runtime, 21).await.unwrap(), 42);
/// assert_eq!(runtime.run(&boxed, 1).await.unwrap(), 2);
/// assert_eq!(boxed.graph().name, "double");
///
/// // Shared, it can be spawned (the handle's type names only the types).
/// let shared: ArcWorkflow<u32, u32, String> = boxed.into();
/// let handle = shared.clone().spawn(&runtime, 5);
/// assert_eq!(handle.await.unwrap(), 10);
/// # }
/// ```
pub trait DynWorkflow<In, Out, E>: Send + Sync
where
    In: Send + 'static,
    Out: Send + 'static,
    E: Display + Debug + Send + 'static,
{
    /// Runs the workflow to the end on the current task, with `runtime` (see
    /// [`Runtime::run`]).
    fn run<'a>(&'a self, runtime: &'a Runtime, input: In) -> BoxFuture<'a, Result<Out, Error<E>>>;

    /// Runs the workflow as a child of the run whose step awaits it (inheriting its observers,
    /// cancellation and compensation), or with a default runtime outside any run: what
    /// awaiting a `#[workflow]` function does.
    ///
    /// ```
    /// # use flow_runtime::{ArcWorkflow, Error};
    /// // A step function that runs a stored workflow as a child of the run calling it.
    /// async fn audit(w: ArcWorkflow<u32, u32, String>, n: u32) -> Result<u32, Error<String>> {
    ///     w.call(n).await
    /// }
    /// ```
    fn call(&self, input: In) -> BoxFuture<'_, Result<Out, Error<E>>>;

    /// Starts the workflow on a task of its own (see [`Runtime::spawn`]).
    fn spawn(self: Arc<Self>, runtime: &Runtime, input: In) -> Handle<ArcWorkflow<In, Out, E>>;

    /// [`Workflow::graph`].
    #[doc(hidden)]
    fn dyn_graph(&self) -> &'static Graph;

    /// [`Workflow::timeout`].
    #[doc(hidden)]
    fn dyn_timeout(&self) -> Option<Duration>;

    /// [`Workflow::compensation_timeout`].
    #[doc(hidden)]
    fn dyn_compensation_timeout(&self) -> Duration;

    /// [`Workflow::compensate_on_drop`].
    #[doc(hidden)]
    fn dyn_compensate_on_drop(&self) -> bool;

    /// [`Workflow::is_durable`].
    #[doc(hidden)]
    fn dyn_is_durable(&self) -> bool;

    /// [`Workflow::execute`], boxed.
    #[doc(hidden)]
    fn dyn_execute(&self, ctx: Ctx<E>, input: In) -> BoxFuture<'_, Result<Out, Error<E>>>;
}

/// A boxed type-erased workflow: keep a `flow!` in a struct field or a `Vec`. It is a
/// [`Workflow`]: run it with [`Runtime::run`] or [`DynWorkflow::run`]; turn it into an
/// [`ArcWorkflow`] (`.into()`) to spawn it.
///
/// ```
/// use flow_runtime::{BoxWorkflow, Runtime};
/// struct Service {
///     onboard: BoxWorkflow<String, u64, std::io::Error>,
/// }
/// impl Service {
///     async fn handle(&self, user: String) -> Result<u64, flow_runtime::Error<std::io::Error>> {
///         self.onboard.run(&Runtime::new(), user).await
///     }
/// }
/// ```
pub type BoxWorkflow<In, Out, E> = Box<dyn DynWorkflow<In, Out, E>>;

/// A shared type-erased workflow: cloned cheaply, kept in a `static` (`LazyLock`), spawned
/// with [`DynWorkflow::spawn`] or [`Runtime::spawn`]. It is a [`Workflow`].
///
/// ```
/// use std::sync::LazyLock;
/// use flow_runtime::ArcWorkflow;
/// # use flow_runtime::{Error, Graph, Workflow};
/// # use flow_runtime::__private::Ctx;
/// # use flow_runtime::dynamic::DynState;
/// # struct Noop;
/// # static GRAPH: Graph = Graph { name: "noop", nodes: &[], edges: &[], fingerprint: 1 };
/// # impl Workflow for Noop {
/// #     type Input = (); type Output = (); type Error = String; type State = DynState;
/// #     fn graph(&self) -> &'static Graph { &GRAPH }
/// #     async fn execute(&self, _: Ctx<String>, _: ()) -> Result<(), Error<String>> { Ok(()) }
/// # }
/// static NOOP: LazyLock<ArcWorkflow<(), (), String>> = LazyLock::new(|| std::sync::Arc::new(Noop));
/// assert_eq!(NOOP.graph().name, "noop");
/// ```
pub type ArcWorkflow<In, Out, E> = Arc<dyn DynWorkflow<In, Out, E>>;

impl<W> DynWorkflow<W::Input, W::Output, W::Error> for W
where
    W: Workflow + 'static,
    W::Input: 'static,
    W::Output: 'static,
{
    fn run<'a>(
        &'a self,
        runtime: &'a Runtime,
        input: W::Input,
    ) -> BoxFuture<'a, Result<W::Output, Error<W::Error>>> {
        Box::pin(runtime.run(self, input))
    }

    fn call(&self, input: W::Input) -> BoxFuture<'_, Result<W::Output, Error<W::Error>>> {
        Box::pin(crate::runtime::run_nested(self, input))
    }

    fn spawn(
        self: Arc<Self>,
        runtime: &Runtime,
        input: W::Input,
    ) -> Handle<ArcWorkflow<W::Input, W::Output, W::Error>> {
        runtime.spawn(self as ArcWorkflow<W::Input, W::Output, W::Error>, input)
    }

    fn dyn_graph(&self) -> &'static Graph {
        Workflow::graph(self)
    }

    fn dyn_timeout(&self) -> Option<Duration> {
        Workflow::timeout(self)
    }

    fn dyn_compensation_timeout(&self) -> Duration {
        Workflow::compensation_timeout(self)
    }

    fn dyn_compensate_on_drop(&self) -> bool {
        Workflow::compensate_on_drop(self)
    }

    fn dyn_is_durable(&self) -> bool {
        Workflow::is_durable(self)
    }

    fn dyn_execute(
        &self,
        ctx: Ctx<W::Error>,
        input: W::Input,
    ) -> BoxFuture<'_, Result<W::Output, Error<W::Error>>> {
        Box::pin(self.execute(ctx, input))
    }
}

impl<'a, In, Out, E> dyn DynWorkflow<In, Out, E> + 'a
where
    In: Send + 'static,
    Out: Send + 'static,
    E: Display + Debug + Send + 'static,
{
    /// The workflow's static graph.
    ///
    /// ```
    /// # fn show(w: &dyn flow_runtime::DynWorkflow<u32, u32, String>) {
    /// println!("{}", w.graph().to_mermaid());
    /// # }
    /// ```
    pub fn graph(&self) -> &'static Graph {
        self.dyn_graph()
    }

    /// The workflow's name (its graph's).
    ///
    /// ```
    /// # fn show(w: &dyn flow_runtime::DynWorkflow<u32, u32, String>) {
    /// println!("{}", w.name());
    /// # }
    /// ```
    pub fn name(&self) -> &'static str {
        self.dyn_graph().name
    }

    /// The workflow's fingerprint (its graph's, computed at compile time).
    ///
    /// ```
    /// # fn show(w: &dyn flow_runtime::DynWorkflow<u32, u32, String>) {
    /// println!("{:016x}", w.fingerprint());
    /// # }
    /// ```
    pub fn fingerprint(&self) -> u64 {
        self.dyn_graph().fingerprint
    }
}

macro_rules! erased_workflow {
    ($ptr:ident) => {
        // For any lifetime of the trait object (not only `'static`): a run's future is then
        // `Send` wherever it is awaited (auto-trait checks forget lifetimes).
        impl<'a, In, Out, E> Workflow for $ptr<dyn DynWorkflow<In, Out, E> + 'a>
        where
            In: Send + 'static,
            Out: Send + 'static,
            E: Display + Debug + Send + 'static,
        {
            type Input = In;
            type Output = Out;
            type Error = E;
            type State = DynState;

            fn graph(&self) -> &'static Graph {
                (**self).dyn_graph()
            }

            fn timeout(&self) -> Option<Duration> {
                (**self).dyn_timeout()
            }

            fn compensation_timeout(&self) -> Duration {
                (**self).dyn_compensation_timeout()
            }

            fn compensate_on_drop(&self) -> bool {
                (**self).dyn_compensate_on_drop()
            }

            fn is_durable(&self) -> bool {
                (**self).dyn_is_durable()
            }

            fn execute(
                &self,
                ctx: Ctx<E>,
                input: In,
            ) -> impl Future<Output = Result<Out, Error<E>>> + Send {
                (**self).dyn_execute(ctx, input)
            }
        }
    };
}

erased_workflow!(Box);
erased_workflow!(Arc);
