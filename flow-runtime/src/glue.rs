//! [`Ctx`] methods that exist for the macros' generated code rather than for the step engine:
//! type-inference anchors and the one-attempt timeout path.

use core::future::Future;
use core::marker::PhantomData;
use core::time::Duration;

use crate::ctx::{Ctx, StepOutput};
use crate::error::{Error, ErrorKind, Failure, StepError};
use crate::graph::NodeId;
use crate::policy::StepPolicy;

impl<E> Ctx<E> {
    /// Runs a step with a per-attempt timeout and no retries: one attempt, which may move its
    /// arguments (no `Clone` needed, unlike [`step_with`](Ctx::step_with)).
    pub async fn step_timeout<Fut>(
        &self,
        node: NodeId,
        timeout: Duration,
        fut: Fut,
    ) -> Result<<Fut::Output as StepOutput<E>>::Ok, StepError<E>>
    where
        Fut: Future,
        Fut::Output: StepOutput<E>,
    {
        let mut once = Some(fut);
        let policy = StepPolicy {
            retry: &[],
            timeout: Some(timeout),
        };
        // With no retry rule the engine calls `make` exactly once, so the `None` arm (which
        // would wait forever) is never reached.
        self.step_with(node, policy, || {
            let fut = once.take();
            async move {
                match fut {
                    Some(f) => f.await,
                    None => core::future::pending().await,
                }
            }
        })
        .await
    }
}

impl<E> Ctx<E> {
    /// Identity on a step's future whose error type must be the workflow's own: lets `flow!`
    /// infer its error type from the steps when none is declared.
    #[inline]
    pub fn exact<Fut>(&self, fut: Fut) -> Fut
    where
        Fut: Future,
        Fut::Output: Exact<E>,
    {
        fut
    }

    /// The context by reference, whether it is held by value or by reference: generated code
    /// calls it to share one context among concurrent branches.
    #[inline]
    pub fn by_ref(&self) -> &Self {
        self
    }

    /// A zero-sized token of the workflow's error type, for `'static` closures (compensations)
    /// that must name it without holding the context.
    #[inline]
    pub fn error_type(&self) -> PhantomData<fn() -> E> {
        PhantomData
    }
}

/// Which failures a `catch` routes to its recovery step (`catch(recover, on = timeouts)`).
///
/// `catch(recover, when = pred)` is the other form: `pred(&E)` sees the step's own error, as a
/// retry rule's `when` does, and only errors it accepts are caught.
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
/// use flow_runtime::policy::CatchOn;
/// let err = Runtime::new().run(&Order, 3).await.unwrap_err();
/// let failed = err.step_error().unwrap(); // `charge` returned its error
/// assert!(CatchOn::Any.matches(failed) && CatchOn::Errors.matches(failed));
/// assert!(!CatchOn::Timeouts.matches(failed) && !CatchOn::Panics.matches(failed));
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatchOn {
    /// Every failure: the step's errors, timeouts and panics (the default).
    Any,
    /// The step's own errors.
    Errors,
    /// Timed-out attempts.
    Timeouts,
    /// Panics.
    Panics,
}

impl CatchOn {
    /// Whether a step that failed with `error` (its final attempt) is caught.
    pub fn matches<E>(self, error: &StepError<E>) -> bool {
        match self {
            CatchOn::Any => true,
            CatchOn::Errors => error.error().is_some(),
            CatchOn::Timeouts => error.is_timeout(),
            CatchOn::Panics => error.is_panic(),
        }
    }
}

impl<E> Ctx<E> {
    /// `catch(recover, when = pred)`: catches the step's own errors that `pred` accepts (a
    /// timeout or a panic is not caught), the predicate having retry's `when` shape, `&E`.
    #[inline]
    pub fn catch_when<P>(&self, pred: P) -> impl FnOnce(&StepError<E>) -> bool + use<P, E>
    where
        P: FnOnce(&E) -> bool,
    {
        move |e| e.error().is_some_and(pred)
    }

    /// `catch(recover, on = kind)`.
    #[inline]
    pub fn catch_on(&self, on: CatchOn) -> impl FnOnce(&StepError<E>) -> bool + use<E> {
        move |e| on.matches(e)
    }
}

/// A step output whose error type is exactly `E` (see [`Ctx::exact`]).
#[doc(hidden)]
pub trait Exact<E> {}
impl<T, E> Exact<E> for Result<T, E> {}
impl<T, E> Exact<E> for ChildOutcome<T, E> {}

/// What a `#[workflow]` function called as a `flow!` step gives the step engine: the child
/// run's result, whose failure becomes the step's own. The child's error `X` (its step's
/// error after retries, or its code's) is the step's [`Failure::Error`], converted with
/// `From` (nothing to write when the flow's error type is `X`); its timeout is
/// [`Failure::TimedOut`], its panic [`Failure::Panicked`]; a cancelled child (its parent is
/// being cancelled too) is reported as panicked with the child's message.
#[doc(hidden)]
pub struct ChildOutcome<T, X>(pub Result<T, Error<X>>);

impl<T, X> ChildOutcome<T, X> {
    /// Wraps a child run's result.
    #[inline]
    pub fn new(result: Result<T, Error<X>>) -> Self {
        ChildOutcome(result)
    }
}

impl<T, E, X> StepOutput<E> for ChildOutcome<T, X>
where
    E: From<X>,
{
    type Ok = T;
    type Surfaced = Result<T, E>;

    fn into_result(self) -> Result<T, Failure<E>> {
        self.0.map_err(|error| {
            let workflow = error.workflow();
            match error.into_kind() {
                ErrorKind::Step(mut step) => match step.pop_attempt() {
                    Some(last) => match last.failure {
                        Failure::Error(x) => Failure::Error(E::from(x)),
                        Failure::TimedOut(d) => Failure::TimedOut(d),
                        Failure::Panicked(m) => Failure::Panicked(m),
                        Failure::Signal(e) => Failure::Signal(e),
                    },
                    None => Failure::Panicked(format!("workflow `{workflow}` failed")),
                },
                ErrorKind::Workflow(x) => Failure::Error(E::from(x)),
                ErrorKind::TimedOut { limit, .. } => Failure::TimedOut(limit),
                ErrorKind::Panicked { message, .. } => Failure::Panicked(message),
                ErrorKind::Durable(d) => Failure::Panicked(d.to_string()),
                ErrorKind::Cancelled { .. } => {
                    Failure::Panicked(format!("workflow `{workflow}` was cancelled"))
                }
            }
        })
    }

    fn surfaced(result: Result<T, E>) -> Result<T, E> {
        result
    }
}
