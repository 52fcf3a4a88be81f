#![doc = include_str!("../README.md")]

/// # Examples
///
/// ```
/// use flow::prelude::*;
///
/// async fn parse(s: String) -> Result<u32, String> { s.trim().parse().map_err(|e| format!("{e}")) }
/// async fn double(n: u32) -> Result<u32, String> { Ok(n * 2) }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let pipeline = flow! { parse -> double [retry(max_attempts = 2)] };
/// assert_eq!(pipeline.run(" 21 ".to_owned()).await.unwrap(), 42);
/// assert_eq!(pipeline.graph().steps().count(), 2);
/// # }
/// ```
#[doc(inline)]
pub use flow_macros::flow;
/// # Examples
///
/// ```
/// use flow::prelude::*;
///
/// async fn fetch(id: u32) -> Result<String, String> { Ok(format!("record {id}")) }
/// async fn store(record: String) -> Result<usize, String> { Ok(record.len()) }
///
/// #[workflow]
/// async fn import(id: u32) -> Result<usize, String> {
///     #[retry(max_attempts = 3, backoff = exponential("100ms", 2.0))]
///     let record = fetch(id).await?;
///     if record.is_empty() {
///         return Ok(0);
///     }
///     store(record).await
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// assert_eq!(import(7).await.unwrap(), 8);                     // awaited directly
/// assert_eq!(Runtime::new().run(&Import, (7,)).await.unwrap(), 8); // or through a runtime
/// // The early return is an exit edge of the graph (an `if` with no step draws no node).
/// let g = Import::GRAPH;
/// assert!(g.edges.iter().any(|e| e.kind == flow::graph::EdgeKind::Exit && e.label == "return"));
/// # }
/// ```
#[doc(inline)]
pub use flow_macros::workflow;
#[doc(inline)]
pub use flow_runtime::*;

/// The items most programs need: the macros, the runtime, the workflow trait, events and the
/// error kinds. Nothing here shadows a common name: the run's error type is `flow::Error`
/// (name it with its path, or import it under a name of your own).
pub mod prelude {
    pub use crate::{flow, join, map, settle, workflow};
    pub use flow_runtime::{ErrorKind, Event, EventKind, Runtime, StepError, Workflow};
}

/// Items the macros' expansion uses. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use flow_macros::flow_inner;
    pub use flow_runtime::__private::*;

    /// The types a [`FnWorkflow`] is about, as a zero-sized marker.
    type Types<In, Out, E, S> = core::marker::PhantomData<fn(In) -> (Out, E, S)>;

    /// The workflow of a `#[workflow]` method: its graph, its time limit, and a function that
    /// runs the body with the receiver it captured.
    pub struct FnWorkflow<In, Out, E, S, F, D = flow_runtime::__private::Ephemeral> {
        graph: &'static flow_runtime::Graph,
        timeout: Option<core::time::Duration>,
        compensation_timeout: core::time::Duration,
        compensate_on_drop: bool,
        body: F,
        _types: Types<In, Out, E, S>,
        _kind: core::marker::PhantomData<fn() -> D>,
    }

    impl<In, Out, E, S, F: Clone, D> Clone for FnWorkflow<In, Out, E, S, F, D> {
        fn clone(&self) -> Self {
            FnWorkflow {
                graph: self.graph,
                timeout: self.timeout,
                compensation_timeout: self.compensation_timeout,
                compensate_on_drop: self.compensate_on_drop,
                body: self.body.clone(),
                _types: core::marker::PhantomData,
                _kind: core::marker::PhantomData,
            }
        }
    }

    // Durable methods follow the runtime's `durable` feature (see `__if_durable`).
    flow_runtime::__if_durable! {
        impl<In, Out, E, S, F> FnWorkflow<In, Out, E, S, F> {
            /// `#[workflow(durable)]` on a method that owns its receiver: the same workflow,
            /// whose runs can be durable (its steps were generated to commit their outcomes).
            pub fn durable(self) -> FnWorkflow<In, Out, E, S, F, flow_runtime::__private::Durable>
            where
                In: flow_runtime::durable::Stored,
                Out: flow_runtime::durable::Stored,
                E: flow_runtime::durable::Stored,
            {
                FnWorkflow {
                    graph: self.graph,
                    timeout: self.timeout,
                    compensation_timeout: self.compensation_timeout,
                    compensate_on_drop: self.compensate_on_drop,
                    body: self.body,
                    _types: core::marker::PhantomData,
                    _kind: core::marker::PhantomData,
                }
            }
        }

        impl<In, Out, E, S, F> flow_runtime::durable::DeclaredDurable
            for FnWorkflow<In, Out, E, S, F, flow_runtime::__private::Durable>
        {
        }
    }

    impl<In, Out, E, S, F> FnWorkflow<In, Out, E, S, F> {
        /// Used by `#[workflow]` on methods.
        pub const fn new(
            graph: &'static flow_runtime::Graph,
            timeout: Option<core::time::Duration>,
            body: F,
        ) -> Self {
            FnWorkflow {
                graph,
                timeout,
                compensation_timeout: flow_runtime::policy::DEFAULT_COMPENSATION_TIMEOUT,
                compensate_on_drop: true,
                body,
                _types: core::marker::PhantomData,
                _kind: core::marker::PhantomData,
            }
        }
    }

    impl<In, Out, E, S, F, D> FnWorkflow<In, Out, E, S, F, D> {
        /// `#[workflow(compensation_timeout = ..)]`.
        #[must_use]
        pub const fn with_compensation_timeout(mut self, limit: core::time::Duration) -> Self {
            self.compensation_timeout = limit;
            self
        }

        /// `#[workflow(compensate_on_drop = ..)]`.
        #[must_use]
        pub const fn with_compensate_on_drop(mut self, on: bool) -> Self {
            self.compensate_on_drop = on;
            self
        }
    }

    impl<In, Out, E, S, F, D, Fut> flow_runtime::Workflow for FnWorkflow<In, Out, E, S, F, D>
    where
        In: Send,
        Out: Send,
        E: core::fmt::Display + core::fmt::Debug + Send + 'static,
        S: flow_runtime::WorkflowState,
        F: Fn(flow_runtime::__private::Ctx<E>, In) -> Fut + Send + Sync,
        Fut: core::future::Future<Output = Result<Out, E>> + Send,
        D: flow_runtime::__private::FlowKind,
    {
        type Input = In;
        type Output = Out;
        type Error = E;
        type State = S;

        fn graph(&self) -> &'static flow_runtime::Graph {
            self.graph
        }

        fn timeout(&self) -> Option<core::time::Duration> {
            self.timeout
        }

        fn compensation_timeout(&self) -> core::time::Duration {
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
            ctx: flow_runtime::__private::Ctx<E>,
            input: In,
        ) -> impl core::future::Future<Output = Result<Out, flow_runtime::Error<E>>> + Send
        {
            let body = (self.body)(ctx.clone(), input);
            async move { ctx.finish(body.await) }
        }
    }

    /// `flow::map!` outside a `#[workflow]` body: runs `body` on every item, at most `limit`
    /// at a time (`0`: no limit), results in input order, the first error ends it.
    pub async fn map_plain<I, F, Fut, T, E>(items: I, limit: usize, body: F) -> Result<Vec<T>, E>
    where
        I: IntoIterator,
        F: FnMut(I::Item) -> Fut,
        Fut: core::future::Future<Output = Result<T, E>>,
    {
        use futures_util::{StreamExt as _, TryStreamExt as _};
        let limit = if limit == 0 { usize::MAX } else { limit };
        futures_util::stream::iter(items)
            .map(body)
            .buffered(limit)
            .try_collect()
            .await
    }
}

/// Runs 2 to 5 fallible futures concurrently; the first error cancels the others (fail fast).
///
/// Inside a `#[workflow]` body, `flow::join!(a(x), b(y)).await?` makes each call a step of a
/// parallel group. Elsewhere it is a plain fail-fast join: it evaluates to a future of
/// `Result<(A, B, ..), E>`.
///
/// ```
/// async fn price(item: u32) -> Result<u32, String> { Ok(item * 10) }
/// async fn stock(item: u32) -> Result<u32, String> { Ok(item + 1) }
///
/// #[flow::workflow]
/// async fn quote(item: u32) -> Result<u32, String> {
///     // `price` and `stock` run as two steps of one parallel group.
///     let (p, s) = flow::join!(price(item), stock(item)).await?;
///     Ok(p * s)
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// assert_eq!(quote(2).await.unwrap(), 20 * 3);
/// // Outside a workflow: a plain fail-fast join.
/// assert_eq!(flow::join!(price(1), stock(1)).await, Ok((10, 2)));
/// # }
/// ```
#[macro_export]
macro_rules! join {
    ($a:expr, $b:expr $(,)?) => {
        $crate::__private::try_join($a, $b)
    };
    ($a:expr, $b:expr, $c:expr $(,)?) => {
        $crate::__private::try_join3($a, $b, $c)
    };
    ($a:expr, $b:expr, $c:expr, $d:expr $(,)?) => {
        $crate::__private::try_join4($a, $b, $c, $d)
    };
    ($a:expr, $b:expr, $c:expr, $d:expr, $e:expr $(,)?) => {
        $crate::__private::try_join5($a, $b, $c, $d, $e)
    };
}

/// Runs a step once per item of an iterator, concurrently, with an optional limit:
/// `flow::map!(nodes, |node| probe(node), concurrency = 4).await?`.
///
/// Inside a `#[workflow]` body this is a map node of the graph: the closure calls one step
/// (which may carry its own `#[retry(..)]`, `#[timeout(..)]`: `|n| #[retry(max_attempts = 3)]
/// probe(n)`), every call is an execution of that step, results come in input order, and the
/// first failure cancels the calls in flight (with `tolerate = K`, up to K items may fail and
/// each result is a `Result<T, flow::StepError<E>>`). `concurrency` may be any `usize`
/// expression; `0` or none means no limit. Elsewhere it is a plain ordered, bounded,
/// fail-fast concurrent map that evaluates to a future of `Result<Vec<T>, E>`.
///
/// ```
/// async fn square(x: u32) -> Result<u32, String> { Ok(x * x) }
///
/// #[flow::workflow]
/// async fn sum_of_squares(xs: Vec<u32>) -> Result<u32, String> {
///     // A map node: one `square` step per item, at most 2 at a time.
///     let squares = flow::map!(xs, |x| square(x), concurrency = 2).await?;
///     Ok(squares.iter().sum())
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// assert_eq!(sum_of_squares(vec![1, 2, 3]).await.unwrap(), 14);
/// // Outside a workflow: a plain ordered, bounded concurrent map.
/// let squares = flow::map!(vec![1, 2, 3], |x| square(x), concurrency = 2).await;
/// assert_eq!(squares, Ok(vec![1, 4, 9]));
/// # }
/// ```
#[macro_export]
macro_rules! map {
    ($items:expr, $body:expr $(,)?) => {
        $crate::__private::map_plain($items, 0, $body)
    };
    ($items:expr, $body:expr, concurrency = $limit:expr $(,)?) => {
        $crate::__private::map_plain($items, $limit, $body)
    };
}

/// Runs 2 to 5 fallible futures concurrently to the end and returns every result (settle).
///
/// Inside a `#[workflow]` body each call is a step, and each result is
/// `Result<T, flow::StepError<E>>`. Elsewhere it evaluates to a future of the tuple of
/// results.
///
/// ```
/// async fn primary(n: u32) -> Result<u32, String> { Err(format!("primary down ({n})")) }
/// async fn replica(n: u32) -> Result<u32, String> { Ok(n) }
///
/// #[flow::workflow]
/// async fn read(n: u32) -> Result<u32, String> {
///     // Both steps run to the end; each result says how its step went.
///     let (a, b) = flow::settle!(primary(n), replica(n)).await;
///     assert_eq!(a.as_ref().err().map(|e| e.step()), Some("primary"));
///     Ok(a.unwrap_or(0) + b.unwrap_or(0))
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// assert_eq!(read(7).await.unwrap(), 7);
/// let (a, b) = flow::settle!(primary(1), replica(1)).await;
/// assert_eq!((a.is_err(), b), (true, Ok(1)));
/// # }
/// ```
#[macro_export]
macro_rules! settle {
    ($a:expr, $b:expr $(,)?) => {
        $crate::__private::join($a, $b)
    };
    ($a:expr, $b:expr, $c:expr $(,)?) => {
        $crate::__private::join3($a, $b, $c)
    };
    ($a:expr, $b:expr, $c:expr, $d:expr $(,)?) => {
        $crate::__private::join4($a, $b, $c, $d)
    };
    ($a:expr, $b:expr, $c:expr, $d:expr, $e:expr $(,)?) => {
        $crate::__private::join5($a, $b, $c, $d, $e)
    };
}
