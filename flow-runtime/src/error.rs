//! Typed errors: what failed, where, and why.
//!
//! - [`Failure`]: why one attempt of a step failed (its own error, a timeout, a panic).
//! - [`StepError`]: a step that failed for good, with every attempt's failure.
//! - [`Error`]: a workflow run that failed, was cancelled or ran out of time, plus any
//!   compensation that failed while undoing it.

use core::fmt;
use core::time::Duration;

use crate::graph::NodeId;

/// Why one attempt of a step failed.
///
/// ```
/// use core::time::Duration;
/// use flow_runtime::Failure;
///
/// let declined: Failure<String> = Failure::Error("card declined".into());
/// assert_eq!(declined.error().map(String::as_str), Some("card declined"));
/// assert_eq!(declined.into_error(), Some(String::from("card declined")));
///
/// let slow: Failure<String> = Failure::TimedOut(Duration::from_secs(2));
/// assert!(slow.is_timeout() && !slow.is_panic() && slow.error().is_none());
/// assert_eq!(slow.to_string(), "timed out after 2s");
/// assert!(Failure::<String>::Panicked("boom".into()).is_panic());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure<E> {
    /// The step returned its error (converted into the workflow's error type).
    Error(E),
    /// The attempt ran longer than the step's timeout.
    TimedOut(Duration),
    /// The step panicked; the panic message, or `"<non-string panic payload>"`.
    Panicked(String),
    /// A signal the workflow waited for (`Ctx::signal`) carried a value
    /// of another type ([`SignalError::WrongType`](crate::SignalError::WrongType)).
    Signal(crate::signal::SignalError),
}

impl<E> Failure<E> {
    /// The step's own error, if this failure is one.
    pub fn error(&self) -> Option<&E> {
        match self {
            Failure::Error(e) => Some(e),
            _ => None,
        }
    }

    /// The step's own error, by value.
    pub fn into_error(self) -> Option<E> {
        match self {
            Failure::Error(e) => Some(e),
            _ => None,
        }
    }

    /// Whether the attempt timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Failure::TimedOut(_))
    }

    /// Whether the step panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self, Failure::Panicked(_))
    }
}

impl<E: fmt::Display> fmt::Display for Failure<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Error(e) => e.fmt(f),
            Failure::TimedOut(d) => write!(f, "timed out after {d:?}"),
            Failure::Panicked(msg) => write!(f, "panicked: {msg}"),
            Failure::Signal(e) => e.fmt(f),
        }
    }
}

/// One failed attempt of a step.
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
/// use flow_runtime::{Failure, Runtime};
/// let err = Runtime::new().run(&Order, 3).await.unwrap_err();
/// let attempts = err.step_error().unwrap().attempts();
/// assert_eq!(attempts.iter().map(|a| a.number).collect::<Vec<_>>(), [1, 2, 3]);
/// assert_eq!(attempts[0].failure, Failure::Error("card declined for 3".to_string()));
/// # }
/// ```
#[derive(Debug)]
pub struct Attempt<E> {
    /// 1 for the first attempt.
    pub number: u32,
    /// How long the attempt ran. Measured for steps with a retry or timeout policy and in
    /// observed runs; `None` for a plain step of an unobserved run, where the clock read it
    /// takes would be most of the step's overhead.
    pub elapsed: Option<Duration>,
    /// Why it failed.
    pub failure: Failure<E>,
}

/// Why a failing step stopped trying.
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
/// use flow_runtime::error::GaveUp;
/// // `charge` has a rule of 3 attempts, and all 3 failed.
/// let err = Runtime::new().run(&Order, 3).await.unwrap_err();
/// assert_eq!(err.step_error().unwrap().gave_up(), GaveUp::RetriesExhausted);
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GaveUp {
    /// No retry rule matched the failure (or the step has none, or it panicked).
    NotRetried,
    /// The matching rule's `max_attempts` was reached.
    RetriesExhausted,
    /// The next delay would have ended past the matching rule's `max_elapsed`.
    BudgetExhausted,
}

/// How many attempts a [`StepError`] keeps: the first one and the last
/// [`KEPT_LAST_ATTEMPTS`]; the ones in between are counted ([`StepError::attempt_count`]) but
/// not kept, so a step retried a million times does not hold a million errors.
///
/// ```
/// # use flow_runtime::{Error, Graph, NodeId, Workflow};
/// # use flow_runtime::__private::{Ctx, StepPolicy};
/// # use flow_runtime::dynamic::DynState;
/// # use flow_runtime::graph::{Node, NodeKind};
/// # const fn node(name: &'static str, kind: NodeKind) -> Node {
/// #     Node { name, key: name, fingerprint: 0, kind, policy: "", parent: None }
/// # }
/// # static GRAPH: Graph = Graph { name: "poll", fingerprint: 1, edges: &[], nodes: &[
/// #     node("start", NodeKind::Start), node("end", NodeKind::End), node("ping", NodeKind::Step)] };
/// # /// One step, `ping`, that always fails, with `retry(max_attempts = 30)`.
/// # struct Poll;
/// # impl Workflow for Poll {
/// #     type Input = (); type Output = (); type Error = String; type State = DynState;
/// #     fn graph(&self) -> &'static Graph { &GRAPH }
/// #     async fn execute(&self, ctx: Ctx<String>, _: ()) -> Result<(), Error<String>> {
/// #         let retry = [flow_runtime::policy::Retry::new(30)];
/// #         let policy = StepPolicy { retry: &retry, timeout: None };
/// #         Ok(ctx.step_with(NodeId(2), policy, || async { Err::<(), String>("down".into()) }).await?)
/// #     }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use flow_runtime::Runtime;
/// use flow_runtime::error::KEPT_LAST_ATTEMPTS;
/// // `ping` failed 30 times: the error keeps attempt 1 and attempts 15 to 30.
/// let err = Runtime::new().run(&Poll, ()).await.unwrap_err();
/// let step = err.step_error().unwrap();
/// assert_eq!(step.attempt_count(), 30);
/// assert_eq!(step.attempts().len(), 1 + KEPT_LAST_ATTEMPTS);
/// assert_eq!((step.attempts()[0].number, step.attempts()[1].number), (1, 15));
/// # }
/// ```
pub const KEPT_LAST_ATTEMPTS: usize = 16;

/// A step that failed for good: every attempt failed and no retry was left.
///
/// Boxed: a step's `Result<T, StepError<E>>` is moved through the state machine on every
/// step, so its error side is kept one pointer wide.
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
/// use flow_runtime::{ErrorKind, NodeId, Runtime};
/// use flow_runtime::error::GaveUp;
///
/// let err = Runtime::new().run(&Order, 3).await.unwrap_err();
/// let step = err.step_error().unwrap();
/// assert_eq!((step.step(), step.node()), ("charge", NodeId(3)));
/// assert_eq!((step.attempt_count(), step.gave_up()), (3, GaveUp::RetriesExhausted));
/// assert_eq!(step.error().map(String::as_str), Some("card declined for 3"));
/// assert!(!step.is_timeout() && !step.is_panic() && step.failure().error().is_some());
///
/// let ErrorKind::Step(step) = err.into_kind() else { unreachable!() };
/// assert_eq!(step.map_err(|e| e.len()).into_error(), Some(19));
/// # }
/// ```
pub struct StepError<E>(Box<StepErrorData<E>>);

struct StepErrorData<E> {
    step: &'static str,
    node: NodeId,
    gave_up: GaveUp,
    /// Never empty: the last entry is the failure that ended the step.
    attempts: Vec<Attempt<E>>,
}

impl<E> StepError<E> {
    /// Builds a step error. `attempts` must not be empty.
    #[doc(hidden)]
    pub fn new(
        step: &'static str,
        node: NodeId,
        gave_up: GaveUp,
        attempts: Vec<Attempt<E>>,
    ) -> Self {
        debug_assert!(!attempts.is_empty());
        StepError(Box::new(StepErrorData {
            step,
            node,
            gave_up,
            attempts,
        }))
    }

    /// The step's name, as written in the flow.
    pub fn step(&self) -> &'static str {
        self.0.step
    }

    /// The step's node in the workflow's graph.
    pub fn node(&self) -> NodeId {
        self.0.node
    }

    /// Why the step stopped trying.
    pub fn gave_up(&self) -> GaveUp {
        self.0.gave_up
    }

    /// The attempts kept, in order; the last one is the final failure. At most
    /// `1 + KEPT_LAST_ATTEMPTS`: the first attempt and the last [`KEPT_LAST_ATTEMPTS`] (see
    /// [`attempt_count`](Self::attempt_count) for how many ran).
    pub fn attempts(&self) -> &[Attempt<E>] {
        &self.0.attempts
    }

    /// How many attempts ran (the number of the final attempt), including those not kept.
    pub fn attempt_count(&self) -> u32 {
        self.0.attempts.last().map_or(0, |a| a.number)
    }

    /// The failure that ended the step.
    pub fn failure(&self) -> &Failure<E> {
        // The constructor's invariant: never empty. A fallback keeps this total anyway.
        match self.0.attempts.last() {
            Some(a) => &a.failure,
            None => &Failure::TimedOut(Duration::ZERO),
        }
    }

    /// Whether the final attempt timed out.
    pub fn is_timeout(&self) -> bool {
        self.failure().is_timeout()
    }

    /// Whether the step panicked.
    pub fn is_panic(&self) -> bool {
        self.failure().is_panic()
    }

    /// The final attempt's error, if it was the step's own error.
    pub fn error(&self) -> Option<&E> {
        self.failure().error()
    }

    /// Removes and returns the final attempt (the error is left with the earlier ones).
    #[doc(hidden)]
    pub fn pop_attempt(&mut self) -> Option<Attempt<E>> {
        self.0.attempts.pop()
    }

    /// The final attempt's error, by value, if it was the step's own error.
    pub fn into_error(mut self) -> Option<E> {
        self.0.attempts.pop().and_then(|a| a.failure.into_error())
    }

    /// Appends an attempt (used to put back the final attempt taken by `pop_attempt`).
    #[doc(hidden)]
    pub fn push_attempt(&mut self, attempt: Attempt<E>) {
        self.0.attempts.push(attempt);
    }

    /// Converts the errors of every attempt.
    pub fn map_err<F>(self, mut f: impl FnMut(E) -> F) -> StepError<F> {
        let data = *self.0;
        StepError(Box::new(StepErrorData {
            step: data.step,
            node: data.node,
            gave_up: data.gave_up,
            attempts: data
                .attempts
                .into_iter()
                .map(|a| Attempt {
                    number: a.number,
                    elapsed: a.elapsed,
                    failure: match a.failure {
                        Failure::Error(e) => Failure::Error(f(e)),
                        Failure::TimedOut(d) => Failure::TimedOut(d),
                        Failure::Panicked(m) => Failure::Panicked(m),
                        Failure::Signal(e) => Failure::Signal(e),
                    },
                })
                .collect(),
        }))
    }
}

impl<E: fmt::Debug> fmt::Debug for StepError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepError")
            .field("step", &self.0.step)
            .field("node", &self.0.node)
            .field("gave_up", &self.0.gave_up)
            .field("attempts", &self.0.attempts)
            .finish()
    }
}

impl<E> StepError<E> {
    /// The error's message, with the failure formatted by `describe`.
    pub(crate) fn message(&self, describe: impl Fn(&Failure<E>) -> String) -> String {
        let n = self.attempt_count();
        let step = self.0.step;
        let failure = self.failure();
        if let Failure::Panicked(msg) = failure {
            return format!("step `{step}` panicked: {msg}");
        }
        let failure = describe(failure);
        match self.0.gave_up {
            GaveUp::NotRetried if n == 1 => format!("step `{step}` failed: {failure}"),
            GaveUp::NotRetried => format!(
                "step `{step}` failed on attempt {n} with an error no retry rule covers: {failure}"
            ),
            GaveUp::RetriesExhausted => {
                format!(
                    "step `{step}` failed after {n} attempts (retries exhausted); last: {failure}"
                )
            }
            GaveUp::BudgetExhausted => format!(
                "step `{step}` failed after {n} attempts (retry time budget exhausted); last: {failure}"
            ),
        }
    }
}

impl<E: fmt::Display> fmt::Display for StepError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message(ToString::to_string))
    }
}

impl<E: std::error::Error + 'static> std::error::Error for StepError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error().map(|e| e as _)
    }
}

/// A compensation that failed while a failed run was being undone.
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
/// use flow_runtime::{Failure, Runtime};
/// // Order 7: `charge` fails, and undoing `reserve` fails too.
/// let err = Runtime::new().run(&Order, 7).await.unwrap_err();
/// let failed = &err.compensation_failures()[0];
/// assert_eq!(failed.step, "reserve");
/// assert_eq!(failed.failure, Failure::Error("cannot release 7".to_string()));
/// # }
/// ```
#[derive(Debug)]
pub struct CompensationFailure<E> {
    /// The step whose compensation failed.
    pub step: &'static str,
    /// Why it failed.
    pub failure: Failure<E>,
}

/// A compensation of a workflow that ran inside one of this run's steps (a child run), which
/// failed while undoing the child after it was dropped mid-run (this run was cancelled, timed
/// out, or a sibling branch failed). The child's error type is not this run's, so the failure
/// is kept as text.
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
/// let err = Runtime::new().run(&Order, 7).await.unwrap_err();
/// // No workflow ran inside `Order`'s steps, so no child's undo failed.
/// for nested in err.nested_compensation_failures() {
///     eprintln!("{} / {}: {}", nested.workflow, nested.step, nested.message);
/// }
/// assert!(err.nested_compensation_failures().is_empty());
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NestedCompensationFailure {
    /// The child workflow.
    pub workflow: &'static str,
    /// The child's step whose compensation failed.
    pub step: &'static str,
    /// Why it failed.
    pub message: String,
}

/// How one compensation ended.
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
/// use flow_runtime::{Failure, Runtime};
/// use flow_runtime::error::CompensationOutcome;
/// let err = Runtime::new().run(&Order, 7).await.unwrap_err();
/// let outcome = &err.compensations()[0].outcome;
/// assert_eq!(outcome, &CompensationOutcome::Failed(Failure::Error("cannot release 7".into())));
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompensationOutcome {
    /// The undo succeeded (possibly after retries).
    Succeeded,
    /// The undo failed: its error (as text, whatever the workflow's error type) or its panic,
    /// after its retries.
    Failed(Failure<String>),
    /// The undo did not finish in time: its own timeout (after its retries), or the
    /// workflow's total compensation budget
    /// ([`Workflow::compensation_timeout`](crate::Workflow::compensation_timeout)) ran out.
    /// The limit that applied.
    TimedOut(Duration),
}

/// One compensation that ran: whose, and how it ended. A run's records list every
/// compensation it ran, in the order they ran, including those of its child runs (with their
/// workflow and run id) and those of abandoned work undone while the run went on.
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
/// // Order 3: `charge` fails, `reserve` is undone.
/// let err = Runtime::new().run(&Order, 3).await.unwrap_err();
/// let record = &err.compensations()[0];
/// assert_eq!((record.workflow, record.step, record.attempts), ("order", "reserve", 1));
/// assert!(record.succeeded());
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompensationRecord {
    /// The workflow whose step is undone (a child workflow's name for its own steps).
    pub workflow: &'static str,
    /// The run whose step is undone.
    pub run: crate::event::RunId,
    /// The step's node.
    pub node: NodeId,
    /// The step's name.
    pub step: &'static str,
    /// The step's stable key ([`Node::key`](crate::graph::Node::key)).
    pub key: &'static str,
    /// How many attempts the undo took.
    pub attempts: u32,
    /// How it ended.
    pub outcome: CompensationOutcome,
}

impl CompensationRecord {
    /// Whether the undo succeeded.
    pub fn succeeded(&self) -> bool {
        self.outcome == CompensationOutcome::Succeeded
    }
}

/// Everything a run reports: its result, every compensation it ran (also when it succeeded:
/// the undoing of abandoned attempts and dropped child runs), and the observers that panicked
/// (they were removed from the run, which went on).
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
/// let report = Runtime::new().run_report(&Order, 7).await;
/// assert!(report.result.is_err());
/// assert_eq!(report.compensations.len(), 1);
/// let problems: Vec<_> = report.compensation_problems().map(|r| r.step).collect();
/// assert_eq!(problems, ["reserve"]);
/// assert!(report.observer_panics.is_empty());
/// # }
/// ```
#[derive(Debug)]
pub struct RunReport<T, E> {
    /// The run's result.
    pub result: Result<T, Error<E>>,
    /// Every compensation the run ran, in order.
    pub compensations: Vec<CompensationRecord>,
    /// The panic messages of the observers that panicked during the run.
    pub observer_panics: Vec<String>,
}

impl<T, E> RunReport<T, E> {
    /// The compensations that did not succeed.
    pub fn compensation_problems(&self) -> impl Iterator<Item = &CompensationRecord> {
        self.compensations.iter().filter(|r| !r.succeeded())
    }
}

/// What ended a run that did not complete.
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
/// use flow_runtime::{ErrorKind, Runtime};
/// let err = Runtime::new().run(&Order, 3).await.unwrap_err();
/// match err.kind() {
///     ErrorKind::Step(step) => assert_eq!(step.step(), "charge"),
///     ErrorKind::Workflow(e) => panic!("the workflow's own error: {e}"),
///     ErrorKind::TimedOut { .. } | ErrorKind::Cancelled { .. } | ErrorKind::Panicked { .. }
///     | ErrorKind::Durable(_) => {}
/// }
/// # }
/// ```
#[derive(Debug)]
pub enum ErrorKind<E> {
    /// A step failed and nothing caught the failure.
    Step(StepError<E>),
    /// The workflow's own code returned this error (it did not come from a failed step).
    Workflow(E),
    /// The run was cancelled through its handle. `step` is the step that was in flight.
    Cancelled {
        /// The step in flight when the run was cancelled.
        step: Option<&'static str>,
    },
    /// The run exceeded the workflow's time limit.
    TimedOut {
        /// The workflow's limit.
        limit: Duration,
        /// The step in flight when the limit was reached.
        step: Option<&'static str>,
    },
    /// Code of the run outside any step's own future panicked: the workflow's body between
    /// steps, a `branch` selector, a retry `when` predicate, a `catch` predicate. (A step that
    /// panics is a [`Step`](ErrorKind::Step) failure with [`Failure::Panicked`].)
    Panicked {
        /// The node the run was at (the node most recently entered, whose code was running):
        /// `None` before the first step.
        step: Option<&'static str>,
        /// The panic message.
        message: String,
    },
    /// A durable run stopped because its store failed, or could not follow its record (see
    /// [`DurableError`](crate::store::DurableError)).
    Durable(Box<crate::store::DurableError>),
}

/// The error of a workflow run: what ended it, and every compensation that failed afterwards.
///
/// A failing compensation never hides the original error: it is listed in
/// [`compensation_failures`](Self::compensation_failures).
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
/// let err = Runtime::new().run(&Order, 7).await.unwrap_err();
/// assert_eq!((err.workflow(), err.step()), ("order", Some("charge")));
/// assert_eq!(err.error().map(String::as_str), Some("card declined for 7"));
/// assert!(!err.is_cancelled());
/// // Undoing `reserve` failed; that never hides the original error.
/// assert_eq!(err.compensation_failures()[0].step, "reserve");
/// assert!(!err.compensations()[0].succeeded());
/// assert_eq!(err.map_err(|e| e.len()).into_error(), Some(19));
/// # }
/// ```
pub struct Error<E> {
    workflow: &'static str,
    kind: ErrorKind<E>,
    /// Boxed, and only when something was undone: a run's result stays small.
    undo: Option<Box<Undone<E>>>,
}

/// What an error says about the compensations that ran.
struct Undone<E> {
    compensation_failures: Vec<CompensationFailure<E>>,
    nested_compensation_failures: Vec<NestedCompensationFailure>,
    compensations: Vec<CompensationRecord>,
}

impl<E> Error<E> {
    /// Builds an error of `workflow`.
    #[doc(hidden)]
    pub fn new(workflow: &'static str, kind: ErrorKind<E>) -> Self {
        Error {
            workflow,
            kind,
            undo: None,
        }
    }

    fn undo_mut(&mut self) -> &mut Undone<E> {
        self.undo.get_or_insert_with(|| {
            Box::new(Undone {
                compensation_failures: Vec::new(),
                nested_compensation_failures: Vec::new(),
                compensations: Vec::new(),
            })
        })
    }

    pub(crate) fn set_compensations(&mut self, records: Vec<CompensationRecord>) {
        if !records.is_empty() || self.undo.is_some() {
            self.undo_mut().compensations = records;
        }
    }

    /// Every compensation that ran while undoing the run (and abandoned work before), in the
    /// order they ran, with how each ended. Failures are also in
    /// [`compensation_failures`](Self::compensation_failures) (this run's steps, typed) and
    /// [`nested_compensation_failures`](Self::nested_compensation_failures) (child runs').
    pub fn compensations(&self) -> &[CompensationRecord] {
        self.undo.as_deref().map_or(&[], |u| &u.compensations)
    }

    pub(crate) fn set_workflow(&mut self, workflow: &'static str) {
        if self.workflow.is_empty() {
            self.workflow = workflow;
        }
    }

    pub(crate) fn add_compensation_failures(&mut self, failures: Vec<CompensationFailure<E>>) {
        if !failures.is_empty() {
            self.undo_mut().compensation_failures.extend(failures);
        }
    }

    pub(crate) fn add_nested_compensation_failures(
        &mut self,
        failures: Vec<NestedCompensationFailure>,
    ) {
        if !failures.is_empty() {
            self.undo_mut()
                .nested_compensation_failures
                .extend(failures);
        }
    }

    /// The workflow's name.
    pub fn workflow(&self) -> &'static str {
        self.workflow
    }

    /// What ended the run.
    pub fn kind(&self) -> &ErrorKind<E> {
        &self.kind
    }

    /// What ended the run, by value.
    pub fn into_kind(self) -> ErrorKind<E> {
        self.kind
    }

    /// Compensations that failed while undoing the run, in the order they ran.
    pub fn compensation_failures(&self) -> &[CompensationFailure<E>] {
        self.undo
            .as_deref()
            .map_or(&[], |u| &u.compensation_failures)
    }

    /// Compensations of child runs (workflows run inside this run's steps and dropped
    /// mid-run) that failed while undoing them.
    pub fn nested_compensation_failures(&self) -> &[NestedCompensationFailure] {
        self.undo
            .as_deref()
            .map_or(&[], |u| &u.nested_compensation_failures)
    }

    /// The failed step, if a step failure ended the run.
    pub fn step_error(&self) -> Option<&StepError<E>> {
        match &self.kind {
            ErrorKind::Step(s) => Some(s),
            _ => None,
        }
    }

    /// The name of the step that failed or was in flight, if any.
    pub fn step(&self) -> Option<&'static str> {
        match &self.kind {
            ErrorKind::Step(s) => Some(s.step()),
            ErrorKind::Workflow(_) => None,
            ErrorKind::Cancelled { step }
            | ErrorKind::TimedOut { step, .. }
            | ErrorKind::Panicked { step, .. } => *step,
            ErrorKind::Durable(_) => None,
        }
    }

    /// Whether the run was cancelled.
    pub fn is_cancelled(&self) -> bool {
        matches!(self.kind, ErrorKind::Cancelled { .. })
    }

    /// The workflow's own error type, if the run ended with one (a step's error after its
    /// retries, or an error returned by the workflow's code).
    pub fn error(&self) -> Option<&E> {
        match &self.kind {
            ErrorKind::Step(s) => s.error(),
            ErrorKind::Workflow(e) => Some(e),
            _ => None,
        }
    }

    /// The workflow's own error by value, as [`error`](Self::error).
    pub fn into_error(self) -> Option<E> {
        match self.kind {
            ErrorKind::Step(s) => s.into_error(),
            ErrorKind::Workflow(e) => Some(e),
            _ => None,
        }
    }
}

impl<E> Error<E> {
    /// The same error with the workflow's error values (in its kind and its compensation
    /// failures) converted by `f`: for example into a type-erased error, as a
    /// [`Registry`](crate::Registry) does.
    ///
    /// ```
    /// use flow_runtime::{Error, ErrorKind};
    /// let e: Error<u32> = Error::new("demo", ErrorKind::Workflow(7));
    /// let e: Error<String> = e.map_err(|n| format!("code {n}"));
    /// assert_eq!(e.error().map(String::as_str), Some("code 7"));
    /// ```
    pub fn map_err<F>(self, mut f: impl FnMut(E) -> F) -> Error<F> {
        let kind = match self.kind {
            ErrorKind::Step(s) => ErrorKind::Step(s.map_err(&mut f)),
            ErrorKind::Workflow(e) => ErrorKind::Workflow(f(e)),
            ErrorKind::Cancelled { step } => ErrorKind::Cancelled { step },
            ErrorKind::TimedOut { limit, step } => ErrorKind::TimedOut { limit, step },
            ErrorKind::Panicked { step, message } => ErrorKind::Panicked { step, message },
            ErrorKind::Durable(d) => ErrorKind::Durable(d),
        };
        let undo = self.undo.map(|u| {
            let Undone {
                compensation_failures,
                nested_compensation_failures,
                compensations,
            } = *u;
            Box::new(Undone {
                compensation_failures: compensation_failures
                    .into_iter()
                    .map(|c| CompensationFailure {
                        step: c.step,
                        failure: match c.failure {
                            Failure::Error(e) => Failure::Error(f(e)),
                            Failure::TimedOut(d) => Failure::TimedOut(d),
                            Failure::Panicked(m) => Failure::Panicked(m),
                            Failure::Signal(e) => Failure::Signal(e),
                        },
                    })
                    .collect(),
                nested_compensation_failures,
                compensations,
            })
        });
        Error {
            workflow: self.workflow,
            kind,
            undo,
        }
    }
}

impl<E> From<StepError<E>> for Error<E> {
    fn from(e: StepError<E>) -> Self {
        Error::new("", ErrorKind::Step(e))
    }
}

impl<E: fmt::Debug> fmt::Debug for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("workflow", &self.workflow)
            .field("kind", &self.kind)
            .field("compensation_failures", &self.compensation_failures())
            .field(
                "nested_compensation_failures",
                &self.nested_compensation_failures(),
            )
            .field("compensations", &self.compensations())
            .finish()
    }
}

impl<E: fmt::Display> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "workflow `{}` ", self.workflow)?;
        match &self.kind {
            ErrorKind::Step(s) => write!(f, "failed: {s}")?,
            ErrorKind::Workflow(e) => write!(f, "failed: {e}")?,
            ErrorKind::Cancelled { step: Some(s) } => write!(f, "was cancelled during step `{s}`")?,
            ErrorKind::Cancelled { step: None } => f.write_str("was cancelled")?,
            ErrorKind::TimedOut { limit, step } => {
                write!(f, "timed out after {limit:?}")?;
                if let Some(s) = step {
                    write!(f, " during step `{s}`")?;
                }
            }
            ErrorKind::Panicked {
                step: Some(s),
                message,
            } => write!(f, "panicked at `{s}`: {message}")?,
            ErrorKind::Panicked {
                step: None,
                message,
            } => write!(f, "panicked: {message}")?,
            ErrorKind::Durable(d) => write!(f, "stopped: {d}")?,
        }
        for c in self.compensation_failures() {
            write!(
                f,
                "; compensation of step `{}` also failed: {}",
                c.step, c.failure
            )?;
        }
        for c in self.nested_compensation_failures() {
            write!(
                f,
                "; compensation of step `{}` of child workflow `{}` also failed: {}",
                c.step, c.workflow, c.message
            )?;
        }
        Ok(())
    }
}

impl<E: std::error::Error + 'static> std::error::Error for Error<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ErrorKind::Step(s) => Some(s),
            ErrorKind::Workflow(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(n: u32, f: Failure<String>) -> Attempt<String> {
        Attempt {
            number: n,
            elapsed: Some(Duration::from_millis(5)),
            failure: f,
        }
    }

    #[test]
    fn messages_say_what_and_where() {
        let e = StepError::new(
            "wait_healthy",
            NodeId(3),
            GaveUp::RetriesExhausted,
            vec![
                attempt(1, Failure::Error("refused".into())),
                attempt(2, Failure::TimedOut(Duration::from_secs(30))),
            ],
        );
        assert_eq!(
            e.to_string(),
            "step `wait_healthy` failed after 2 attempts (retries exhausted); last: timed out after 30s"
        );
        let mut w = Error::from(e);
        w.set_workflow("provision");
        w.add_compensation_failures(vec![CompensationFailure {
            step: "launch_nodes",
            failure: Failure::Error("kill failed".into()),
        }]);
        assert_eq!(
            w.to_string(),
            "workflow `provision` failed: step `wait_healthy` failed after 2 attempts (retries \
             exhausted); last: timed out after 30s; compensation of step `launch_nodes` also \
             failed: kill failed"
        );
        assert_eq!(w.step(), Some("wait_healthy"));
    }

    #[test]
    fn panic_message() {
        let e = StepError::<String>::new(
            "seed",
            NodeId(1),
            GaveUp::NotRetried,
            vec![attempt(1, Failure::Panicked("index out of bounds".into()))],
        );
        assert_eq!(e.to_string(), "step `seed` panicked: index out of bounds");
        assert!(e.is_panic());
    }
}
