//! A registry of workflows by name: run one by name with a type-erased input, list what is
//! registered with its graph and fingerprint.
//!
//! Made for services that pick a workflow at run time (an HTTP route, a queue message naming
//! the procedure) and for durable runs: a stored run records its workflow's name and
//! fingerprint, and after a restart the registry gives the workflow back by that name (its
//! fingerprint tells whether the code still matches the stored run).

use core::any::{Any, TypeId};
use core::fmt::{Debug, Display};
use core::pin::Pin;
use core::task::{Context, Poll};
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::ctx::StateView;
use crate::dynamic::{ArcWorkflow, BoxFuture, DynWorkflow};
use crate::error::Error;
use crate::event::RunId;
use crate::graph::Graph;
use crate::runtime::{EventStream, Handle, Runtime};
use crate::signal::{Message, SignalError};
use crate::workflow::Workflow;

/// A type-erased value (a workflow's input or output) with the name of its type.
///
/// ```
/// use flow_runtime::registry::Payload;
/// let p = Payload::new(42u32);
/// assert_eq!(p.type_name(), "u32");
/// assert_eq!(p.downcast::<u32>().ok(), Some(42));
/// ```
pub struct Payload {
    value: Box<dyn Any + Send>,
    type_name: &'static str,
}

impl Payload {
    /// Boxes `value`, remembering its type's name.
    pub fn new<T: Send + 'static>(value: T) -> Self {
        Payload {
            value: Box::new(value),
            type_name: core::any::type_name::<T>(),
        }
    }

    /// The name of the value's type ([`core::any::type_name`]), or `"an unnamed type"` for a
    /// payload made from a `Box<dyn Any + Send>`.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }

    /// Whether the value is a `T`.
    ///
    /// ```
    /// assert!(flow_runtime::registry::Payload::new("x").is::<&str>());
    /// ```
    pub fn is<T: 'static>(&self) -> bool {
        (*self.value).type_id() == TypeId::of::<T>()
    }

    /// The value, if it is a `T`; the payload back otherwise.
    ///
    /// ```
    /// let p = flow_runtime::registry::Payload::new(1u8);
    /// let p = p.downcast::<String>().unwrap_err();
    /// assert_eq!(p.downcast::<u8>().ok(), Some(1));
    /// ```
    pub fn downcast<T: 'static>(self) -> Result<T, Payload> {
        let type_name = self.type_name;
        self.value
            .downcast::<T>()
            .map(|b| *b)
            .map_err(|value| Payload { value, type_name })
    }

    /// A reference to the value, if it is a `T`.
    ///
    /// ```
    /// let p = flow_runtime::registry::Payload::new(vec![1, 2]);
    /// assert_eq!(p.downcast_ref::<Vec<i32>>().map(Vec::len), Some(2));
    /// ```
    pub fn downcast_ref<T: 'static>(&self) -> Option<&T> {
        self.value.downcast_ref::<T>()
    }

    /// The boxed value.
    ///
    /// ```
    /// let any = flow_runtime::registry::Payload::new(3i64).into_any();
    /// assert_eq!(any.downcast_ref::<i64>(), Some(&3));
    /// ```
    pub fn into_any(self) -> Box<dyn Any + Send> {
        self.value
    }
}

impl From<Box<dyn Any + Send>> for Payload {
    /// A payload of a boxed value whose type's name is unknown (`"an unnamed type"`); prefer
    /// [`Payload::new`], which keeps the name for error messages.
    fn from(value: Box<dyn Any + Send>) -> Self {
        Payload {
            value,
            type_name: "an unnamed type",
        }
    }
}

impl Debug for Payload {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Payload<{}>", self.type_name)
    }
}

/// A workflow's error, type-erased: what a run started through a [`Registry`] fails with.
/// Displays and debugs as the original error.
///
/// ```
/// use flow_runtime::registry::AnyError;
/// let e = AnyError::new(String::from("disk full"));
/// assert_eq!(e.to_string(), "disk full");
/// assert_eq!(e.downcast_ref::<String>().map(String::as_str), Some("disk full"));
/// ```
pub struct AnyError {
    inner: Box<dyn ErrorValue>,
}

trait ErrorValue: Display + Debug + Send {
    fn as_any(&self) -> &dyn Any;
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
    fn type_name(&self) -> &'static str;
}

impl<E: Display + Debug + Send + 'static> ErrorValue for E {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }

    fn type_name(&self) -> &'static str {
        core::any::type_name::<E>()
    }
}

impl AnyError {
    /// Erases `error`'s type.
    pub fn new<E: Display + Debug + Send + 'static>(error: E) -> Self {
        AnyError {
            inner: Box::new(error),
        }
    }

    /// The name of the original error type.
    ///
    /// ```
    /// assert_eq!(flow_runtime::registry::AnyError::new(7u8).type_name(), "u8");
    /// ```
    pub fn type_name(&self) -> &'static str {
        // Through the box: `Box<dyn ErrorValue>` is an `ErrorValue` itself.
        (*self.inner).type_name()
    }

    /// The original error, if it is an `E`.
    pub fn downcast_ref<E: 'static>(&self) -> Option<&E> {
        (*self.inner).as_any().downcast_ref::<E>()
    }

    /// The original error by value, if it is an `E`; this error back otherwise.
    ///
    /// ```
    /// let e = flow_runtime::registry::AnyError::new(std::io::Error::other("gone"));
    /// assert_eq!(e.downcast::<std::io::Error>().unwrap().to_string(), "gone");
    /// ```
    pub fn downcast<E: 'static>(self) -> Result<E, AnyError> {
        if (*self.inner).as_any().is::<E>() {
            match ErrorValue::into_any(self.inner).downcast::<E>() {
                Ok(e) => Ok(*e),
                // Not reached: the type was just checked.
                Err(_) => unreachable!("checked type"),
            }
        } else {
            Err(self)
        }
    }
}

impl Display for AnyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        Display::fmt(&*self.inner, f)
    }
}

impl Debug for AnyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        Debug::fmt(&*self.inner, f)
    }
}

/// What went wrong with a [`Registry`]: registering, finding, starting or running a workflow.
///
/// ```
/// use flow_runtime::registry::RegistryError;
/// let e = RegistryError::WrongInput { workflow: "deploy".into(), expected: "u32", got: "&str" };
/// assert_eq!(e.to_string(), "workflow `deploy` takes a `u32`, but was given a `&str`");
/// ```
#[derive(Debug)]
pub enum RegistryError {
    /// [`Registry::register`]: a workflow of this name is already registered.
    Duplicate {
        /// The name.
        workflow: String,
    },
    /// No workflow of this name is registered.
    NoSuchWorkflow {
        /// The name asked for.
        workflow: String,
    },
    /// The input given is not of the workflow's input type; the run did not start.
    WrongInput {
        /// The workflow.
        workflow: String,
        /// Its input type.
        expected: &'static str,
        /// The type of the value given ([`Payload::type_name`]).
        got: &'static str,
    },
    /// The run failed: its error, with the workflow's error type erased.
    Failed(Error<AnyError>),
}

impl Display for RegistryError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RegistryError::Duplicate { workflow } => {
                write!(f, "a workflow named `{workflow}` is already registered")
            }
            RegistryError::NoSuchWorkflow { workflow } => {
                write!(f, "no workflow named `{workflow}` is registered")
            }
            RegistryError::WrongInput {
                workflow,
                expected,
                got,
            } => write!(
                f,
                "workflow `{workflow}` takes a `{expected}`, but was given a `{got}`"
            ),
            RegistryError::Failed(e) => Display::fmt(e, f),
        }
    }
}

impl std::error::Error for RegistryError {}

/// One registered workflow, type-erased.
trait AnyWorkflow: Send + Sync {
    fn input_type(&self) -> TypeId;
    fn run_any<'a>(
        &'a self,
        runtime: &'a Runtime,
        input: Box<dyn Any + Send>,
    ) -> BoxFuture<'a, Result<Payload, Error<AnyError>>>;
    fn spawn_any(&self, runtime: &Runtime, input: Box<dyn Any + Send>) -> AnyHandle;
}

struct Typed<In, Out, E>(ArcWorkflow<In, Out, E>);

fn erase<Out: Send + 'static, E: Display + Debug + Send + 'static>(
    result: Result<Out, Error<E>>,
) -> Result<Payload, Error<AnyError>> {
    result
        .map(Payload::new)
        .map_err(|e| e.map_err(AnyError::new))
}

impl<In, Out, E> AnyWorkflow for Typed<In, Out, E>
where
    In: Send + 'static,
    Out: Send + 'static,
    E: Display + Debug + Send + 'static,
{
    fn input_type(&self) -> TypeId {
        TypeId::of::<In>()
    }

    fn run_any<'a>(
        &'a self,
        runtime: &'a Runtime,
        input: Box<dyn Any + Send>,
    ) -> BoxFuture<'a, Result<Payload, Error<AnyError>>> {
        Box::pin(async move {
            // Checked by the registry before.
            let input = *input.downcast::<In>().expect("input type checked");
            erase(DynWorkflow::run(&*self.0, runtime, input).await)
        })
    }

    fn spawn_any(&self, runtime: &Runtime, input: Box<dyn Any + Send>) -> AnyHandle {
        let input = *input.downcast::<In>().expect("input type checked");
        AnyHandle {
            inner: Box::new(runtime.spawn(Arc::clone(&self.0), input)),
        }
    }
}

/// A workflow in a [`Registry`]: its name, graph, fingerprint and types, and the workflow
/// itself, typed ([`workflow`](Self::workflow)) or not ([`Registry::run`]).
///
/// ```
/// # use flow_runtime::{Error, Graph, Registry, Workflow};
/// # use flow_runtime::__private::Ctx;
/// # use flow_runtime::dynamic::DynState;
/// # struct Double;
/// # static GRAPH: Graph = Graph { name: "double", nodes: &[], edges: &[], fingerprint: 9 };
/// # impl Workflow for Double {
/// #     type Input = u32; type Output = u32; type Error = String; type State = DynState;
/// #     fn graph(&self) -> &'static Graph { &GRAPH }
/// #     async fn execute(&self, _: Ctx<String>, x: u32) -> Result<u32, Error<String>> { Ok(2 * x) }
/// # }
/// let mut registry = Registry::new();
/// registry.register("double", Double).unwrap();
/// let entry = registry.get("double").unwrap();
/// assert_eq!((entry.name(), entry.fingerprint(), entry.input_type()), ("double", 9, "u32"));
/// assert!(entry.workflow::<u32, u32, String>().is_some());
/// ```
pub struct Registered {
    name: String,
    graph: &'static Graph,
    input: &'static str,
    output: &'static str,
    error: &'static str,
    erased: Arc<dyn AnyWorkflow>,
    /// The `ArcWorkflow<In, Out, E>`, for typed access.
    typed: Box<dyn Any + Send + Sync>,
}

impl Registered {
    /// The name it was registered under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its static graph.
    pub fn graph(&self) -> &'static Graph {
        self.graph
    }

    /// Its fingerprint (its graph's, computed at compile time): a stored run made by another
    /// version of the workflow has another one.
    pub fn fingerprint(&self) -> u64 {
        self.graph.fingerprint
    }

    /// The name of its input type.
    pub fn input_type(&self) -> &'static str {
        self.input
    }

    /// The name of its output type.
    pub fn output_type(&self) -> &'static str {
        self.output
    }

    /// The name of its error type.
    pub fn error_type(&self) -> &'static str {
        self.error
    }

    /// The workflow itself, if its types are `In`, `Out` and `E`.
    pub fn workflow<In, Out, E>(&self) -> Option<ArcWorkflow<In, Out, E>>
    where
        In: Send + 'static,
        Out: Send + 'static,
        E: Display + Debug + Send + 'static,
    {
        self.typed
            .downcast_ref::<ArcWorkflow<In, Out, E>>()
            .map(Arc::clone)
    }

    fn check(&self, input: &Payload) -> Result<(), RegistryError> {
        if (*input.value).type_id() == self.erased.input_type() {
            Ok(())
        } else {
            Err(RegistryError::WrongInput {
                workflow: self.name.clone(),
                expected: self.input,
                got: input.type_name,
            })
        }
    }
}

impl Debug for Registered {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Registered")
            .field("name", &self.name)
            .field("fingerprint", &format_args!("{:016x}", self.fingerprint()))
            .field("input", &self.input)
            .field("output", &self.output)
            .finish()
    }
}

/// Workflows by name, of any types: register them once (at start-up, or in a `static`), then
/// run one by name with a type-erased input ([`Payload`]) checked at run time.
///
/// Names are unique. Workflows are listed in name order.
///
/// ```
/// use flow_runtime::{Registry, Runtime};
/// use flow_runtime::registry::Payload;
/// # use flow_runtime::{Error, Graph, Workflow};
/// # use flow_runtime::__private::Ctx;
/// # use flow_runtime::dynamic::DynState;
/// # struct Double;
/// # static GRAPH: Graph = Graph { name: "double", nodes: &[], edges: &[], fingerprint: 9 };
/// # impl Workflow for Double {
/// #     type Input = u32; type Output = u32; type Error = String; type State = DynState;
/// #     fn graph(&self) -> &'static Graph { &GRAPH }
/// #     async fn execute(&self, _: Ctx<String>, x: u32) -> Result<u32, Error<String>> { Ok(2 * x) }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let mut registry = Registry::new();
/// registry.register("double", Double).unwrap(); // any workflow: a `flow!`, a `#[workflow]` type
/// assert!(registry.register("double", Double).is_err());
///
/// let out = registry.run(&Runtime::new(), "double", Payload::new(21u32)).await.unwrap();
/// assert_eq!(out.downcast::<u32>().ok(), Some(42));
///
/// let wrong = registry.run(&Runtime::new(), "double", Payload::new("21")).await.unwrap_err();
/// assert_eq!(wrong.to_string(), "workflow `double` takes a `u32`, but was given a `&str`");
///
/// for (name, graph, fingerprint) in registry.graphs() {
///     println!("{name} {fingerprint:016x}\n{}", graph.to_mermaid());
/// }
/// # }
/// ```
#[derive(Default)]
pub struct Registry {
    workflows: BTreeMap<String, Registered>,
    /// Durable workflows by graph name: how a stored run of each is resumed.
    #[cfg(feature = "durable")]
    pub(crate) durable: BTreeMap<String, Arc<dyn crate::durable::Resumer>>,
}

impl Debug for Registry {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.workflows.values()).finish()
    }
}

impl Registry {
    /// An empty registry.
    ///
    /// ```
    /// assert_eq!(flow_runtime::Registry::new().names().count(), 0);
    /// ```
    pub fn new() -> Self {
        Registry::default()
    }

    /// Registers `workflow` under `name`; [`RegistryError::Duplicate`] if the name is taken.
    ///
    /// ```
    /// # use flow_runtime::{Error, Graph, Registry, Workflow};
    /// # use flow_runtime::__private::Ctx;
    /// # use flow_runtime::dynamic::DynState;
    /// # struct Noop;
    /// # static GRAPH: Graph = Graph { name: "noop", nodes: &[], edges: &[], fingerprint: 1 };
    /// # impl Workflow for Noop {
    /// #     type Input = (); type Output = (); type Error = String; type State = DynState;
    /// #     fn graph(&self) -> &'static Graph { &GRAPH }
    /// #     async fn execute(&self, _: Ctx<String>, _: ()) -> Result<(), Error<String>> { Ok(()) }
    /// # }
    /// let mut registry = Registry::new();
    /// registry.register("noop", Noop).unwrap();
    /// assert_eq!(registry.names().collect::<Vec<_>>(), ["noop"]);
    /// ```
    pub fn register<W>(&mut self, name: impl Into<String>, workflow: W) -> Result<(), RegistryError>
    where
        W: Workflow + 'static,
        W::Input: 'static,
        W::Output: 'static,
    {
        let name = name.into();
        if self.workflows.contains_key(&name) {
            return Err(RegistryError::Duplicate { workflow: name });
        }
        let graph = workflow.graph();
        let shared: ArcWorkflow<W::Input, W::Output, W::Error> = Arc::new(workflow);
        let entry = Registered {
            name: name.clone(),
            graph,
            input: core::any::type_name::<W::Input>(),
            output: core::any::type_name::<W::Output>(),
            error: core::any::type_name::<W::Error>(),
            erased: Arc::new(Typed(Arc::clone(&shared))),
            typed: Box::new(shared),
        };
        self.workflows.insert(name, entry);
        Ok(())
    }

    /// The workflow registered under `name`.
    ///
    /// ```
    /// assert!(flow_runtime::Registry::new().get("deploy").is_none());
    /// ```
    pub fn get(&self, name: &str) -> Option<&Registered> {
        self.workflows.get(name)
    }

    /// The registered names, in order.
    ///
    /// ```
    /// assert!(flow_runtime::Registry::new().names().next().is_none());
    /// ```
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.workflows.keys().map(String::as_str)
    }

    /// Each registered workflow's name, graph and fingerprint, in name order (for tooling:
    /// drawing every workflow of a service, checking stored runs against the code).
    ///
    /// ```
    /// for (name, graph, fingerprint) in flow_runtime::Registry::new().graphs() {
    ///     println!("{name}: {} nodes, {fingerprint:016x}", graph.nodes.len());
    /// }
    /// ```
    pub fn graphs(&self) -> impl Iterator<Item = (&str, &'static Graph, u64)> {
        self.workflows
            .values()
            .map(|r| (r.name.as_str(), r.graph, r.fingerprint()))
    }

    fn lookup(&self, name: &str, input: &Payload) -> Result<&Registered, RegistryError> {
        let entry = self
            .workflows
            .get(name)
            .ok_or_else(|| RegistryError::NoSuchWorkflow {
                workflow: name.to_owned(),
            })?;
        entry.check(input)?;
        Ok(entry)
    }

    /// Runs the workflow `name` with `input` on the current task, with `runtime`, and returns
    /// its output, type-erased.
    ///
    /// Before it starts: [`RegistryError::NoSuchWorkflow`], or [`RegistryError::WrongInput`]
    /// when `input` is not of the workflow's input type. A run that fails gives
    /// [`RegistryError::Failed`] with its error.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use flow_runtime::{Registry, Runtime};
    /// use flow_runtime::registry::{Payload, RegistryError};
    /// let registry = Registry::new();
    /// let e = registry.run(&Runtime::new(), "deploy", Payload::new(1u32)).await.unwrap_err();
    /// assert!(matches!(e, RegistryError::NoSuchWorkflow { .. }));
    /// # }
    /// ```
    pub async fn run(
        &self,
        runtime: &Runtime,
        name: &str,
        input: Payload,
    ) -> Result<Payload, RegistryError> {
        let entry = self.lookup(name, &input)?;
        entry
            .erased
            .run_any(runtime, input.value)
            .await
            .map_err(RegistryError::Failed)
    }

    /// Starts the workflow `name` with `input` on a task of its own, with `runtime`; errors as
    /// for [`run`](Self::run), before the run starts.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use flow_runtime::{Registry, Runtime};
    /// use flow_runtime::registry::Payload;
    /// assert!(Registry::new().spawn(&Runtime::new(), "deploy", Payload::new(())).is_err());
    /// # }
    /// ```
    pub fn spawn(
        &self,
        runtime: &Runtime,
        name: &str,
        input: Payload,
    ) -> Result<AnyHandle, RegistryError> {
        let entry = self.lookup(name, &input)?;
        Ok(entry.erased.spawn_any(runtime, input.value))
    }
}

/// A run started by [`Registry::spawn`]: a [`Handle`] whose output and error are type-erased.
/// Await it for the result.
///
/// ```
/// # use flow_runtime::{Error, Graph, Workflow};
/// # use flow_runtime::__private::Ctx;
/// # use flow_runtime::dynamic::DynState;
/// # struct Double;
/// # static GRAPH: Graph = Graph { name: "double", nodes: &[], edges: &[], fingerprint: 9 };
/// # impl Workflow for Double {
/// #     type Input = u32; type Output = u32; type Error = String; type State = DynState;
/// #     fn graph(&self) -> &'static Graph { &GRAPH }
/// #     async fn execute(&self, _: Ctx<String>, x: u32) -> Result<u32, Error<String>> { Ok(2 * x) }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use flow_runtime::{Registry, Runtime};
/// use flow_runtime::registry::Payload;
/// let mut registry = Registry::new();
/// registry.register("double", Double).unwrap();
/// let handle = registry.spawn(&Runtime::new(), "double", Payload::new(4u32)).unwrap();
/// println!("{} is at {}", handle.run_id(), handle.state());
/// assert_eq!(handle.await.unwrap().downcast::<u32>().ok(), Some(8));
/// # }
/// ```
pub struct AnyHandle {
    inner: Box<dyn ErasedHandle>,
}

trait ErasedHandle: Send {
    fn run_id(&self) -> RunId;
    fn state(&self) -> StateView;
    fn cancel(&self);
    fn events(&mut self) -> &mut EventStream;
    fn deliver(&self, name: &str, message: Message) -> Result<(), SignalError>;
    fn poll_result(&mut self, cx: &mut Context<'_>) -> Poll<Result<Payload, Error<AnyError>>>;
}

impl<In, Out, E> ErasedHandle for Handle<ArcWorkflow<In, Out, E>>
where
    In: Send + 'static,
    Out: Send + 'static,
    E: Display + Debug + Send + 'static,
{
    fn run_id(&self) -> RunId {
        Handle::run_id(self)
    }

    fn state(&self) -> StateView {
        Handle::state(self)
    }

    fn cancel(&self) {
        Handle::cancel(self);
    }

    fn events(&mut self) -> &mut EventStream {
        Handle::events(self)
    }

    fn deliver(&self, name: &str, message: Message) -> Result<(), SignalError> {
        crate::signal::deliver(&self.ctx, name, message)
    }

    fn poll_result(&mut self, cx: &mut Context<'_>) -> Poll<Result<Payload, Error<AnyError>>> {
        Pin::new(self).poll(cx).map(erase)
    }
}

impl AnyHandle {
    /// The run's id.
    pub fn run_id(&self) -> RunId {
        self.inner.run_id()
    }

    /// The current state (see [`Handle::state`]).
    pub fn state(&self) -> StateView {
        self.inner.state()
    }

    /// Cancels the run (see [`Handle::cancel`]).
    pub fn cancel(&self) {
        self.inner.cancel();
    }

    /// The run's events (see [`Handle::events`]).
    pub fn events(&mut self) -> &mut EventStream {
        self.inner.events()
    }

    /// Sends the signal `name` carrying `value` to the run (see [`Handle::signal`]).
    pub fn signal<T: Send + 'static>(&self, name: &str, value: T) -> Result<(), SignalError> {
        self.inner.deliver(name, Message::new(value))
    }
}

impl Debug for AnyHandle {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AnyHandle")
            .field("run", &self.run_id())
            .field("state", &self.state())
            .finish()
    }
}

impl core::future::Future for AnyHandle {
    type Output = Result<Payload, Error<AnyError>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.poll_result(cx)
    }
}
