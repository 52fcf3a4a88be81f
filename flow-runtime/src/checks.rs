//! Compile-time checks whose failures read as our own error messages.
//!
//! `#[diagnostic::on_unimplemented]` only shows our wording when *no* impl of the trait could
//! match; a blanket impl over `T: Clone` or `F: Fn(I)` would be picked and fail inside, and
//! rustc would print its own message. So each check first dispatches with autoref
//! specialisation (method probing skips an impl whose where-clause fails and falls back to
//! the impl on `&Probe`), yielding either a "pass" value or a "fail" value; a second trait,
//! implemented for the pass type only, then carries our message. Step names reach the
//! message as marker types the macros name after the steps.
//!
//! Generated code brings the dispatch traits into scope with `use ... as _`.

use core::marker::PhantomData;

/// What a check inspects: a value (by reference) and the type-level facts it needs.
pub struct Probe<'a, T, X = ()>(pub &'a T, pub PhantomData<X>);

/// A check that passed, carrying what it produced.
pub struct Met<T>(pub T);
/// A check that failed; `T` is the offending type.
pub struct Unmet<T>(PhantomData<T>);

impl<T> Unmet<T> {
    pub(crate) fn new() -> Self {
        Unmet(PhantomData)
    }
}

// ---------------------------------------------------------------- Clone (retry, parallel)

/// Dispatch: the value's type is `Clone`.
pub trait CloneYes<T> {
    /// A copy of the value.
    fn flow_clone(&self) -> Met<T>;
}
impl<T: Clone, X> CloneYes<T> for Probe<'_, T, X> {
    fn flow_clone(&self) -> Met<T> {
        Met(self.0.clone())
    }
}
/// Dispatch fallback: the value's type is not `Clone`.
pub trait CloneNo<T> {
    /// The failure.
    fn flow_clone(&self) -> Unmet<T>;
}
impl<T, X> CloneNo<T> for &Probe<'_, T, X> {
    fn flow_clone(&self) -> Unmet<T> {
        Unmet::new()
    }
}

/// A retried step's argument, copied for one attempt.
#[diagnostic::on_unimplemented(
    message = "step `{S}` is retried, so every attempt needs its own copy of each argument, but `{T}` is not `Clone`",
    label = "moved into a retried step",
    note = "pass a reference, derive `Clone` for `{T}`, or drop the `retry`"
)]
pub trait RetryArg<T, S> {
    /// The copy.
    fn get(self) -> T;
}
#[diagnostic::do_not_recommend]
impl<T, S> RetryArg<T, S> for Met<T> {
    fn get(self) -> T {
        self.0
    }
}

/// Checks and copies a retried step's argument (`S` names the step).
#[inline]
pub fn retry_arg<S, T, A: RetryArg<T, S>>(_: &T, copy: A) -> T {
    copy.get()
}

/// A retried `flow!` step's input, copied for one attempt.
#[diagnostic::on_unimplemented(
    message = "step `{S}` is retried, so every attempt needs its own copy of its input, but `{T}` is not `Clone`",
    label = "retried: each attempt takes a clone of the value on its incoming edge",
    note = "derive `Clone` for `{T}`, share it behind an `Arc` (have the step before return `Arc<{T}>`), or drop the `retry`"
)]
pub trait RetryInput<T, S> {
    /// The copy.
    fn get(self) -> T;
}
#[diagnostic::do_not_recommend]
impl<T, S> RetryInput<T, S> for Met<T> {
    fn get(self) -> T {
        self.0
    }
}

/// Checks and copies a retried `flow!` step's input (`S` names the step).
#[inline]
pub fn retry_input<S, T, A: RetryInput<T, S>>(_: &T, copy: A) -> T {
    copy.get()
}

/// A parallel group's input, copied for one branch.
#[diagnostic::on_unimplemented(
    message = "the parallel group after step `{S}` gives each branch its own copy of `{T}`, but `{T}` is not `Clone`",
    label = "every branch but the last gets a clone of this value",
    note = "derive `Clone` for `{T}`, or share it behind an `Arc`"
)]
pub trait BranchInput<T, S> {
    /// The copy.
    fn get(self) -> T;
}
#[diagnostic::do_not_recommend]
impl<T, S> BranchInput<T, S> for Met<T> {
    fn get(self) -> T {
        self.0
    }
}

/// Checks and copies a parallel group's input (`S` names the step before the group).
#[inline]
pub fn branch_input<S, T, A: BranchInput<T, S>>(_: &T, copy: A) -> T {
    copy.get()
}

// ---------------------------------------------------------------- map over an iterable

/// Dispatch: the value is iterable.
pub trait IterYes<T> {
    /// The value, checked.
    fn flow_iter(&self) -> Met<PhantomData<T>>;
}
impl<T: IntoIterator, X> IterYes<T> for Probe<'_, T, X> {
    fn flow_iter(&self) -> Met<PhantomData<T>> {
        Met(PhantomData)
    }
}
/// Dispatch fallback: the value is not iterable.
pub trait IterNo<T> {
    /// The failure.
    fn flow_iter(&self) -> Unmet<T>;
}
impl<T, X> IterNo<T> for &Probe<'_, T, X> {
    fn flow_iter(&self) -> Unmet<T> {
        Unmet::new()
    }
}

/// The input of a `map`.
#[diagnostic::on_unimplemented(
    message = "`map` runs its body once per item, but `{T}`, the output of step `{S}`, is not iterable",
    label = "the input of this `map`",
    note = "make step `{S}` return a collection such as `Vec<_>`"
)]
pub trait MapInput<T, S> {
    /// The checked input (on failure there is none, so nothing else reports on it).
    type Items;
    /// Passes the input through.
    fn pass(value: T) -> Self::Items;
}
#[diagnostic::do_not_recommend]
impl<T, S> MapInput<T, S> for Met<PhantomData<T>> {
    type Items = T;
    fn pass(value: T) -> T {
        value
    }
}

/// Checks a `map`'s input (`S` names the step before the map) and passes it through.
#[inline]
pub fn map_input<S, T, A: MapInput<T, S>>(value: T, _: A) -> A::Items {
    A::pass(value)
}

// ---------------------------------------------------------------- step input (flow! edges)

/// Dispatch: the step `F` takes the value on its incoming edge.
pub trait TakesYes {
    /// Passed.
    fn flow_takes(&self) -> Met<()>;
}
impl<F, I, R, X> TakesYes for Probe<'_, F, (I, X)>
where
    F: Fn(I) -> R,
{
    fn flow_takes(&self) -> Met<()> {
        Met(())
    }
}
/// Dispatch fallback: the step does not take that value.
pub trait TakesNo<I> {
    /// The failure.
    fn flow_takes(&self) -> Unmet<I>;
}
impl<F, I, X> TakesNo<I> for &Probe<'_, F, (I, X)> {
    fn flow_takes(&self) -> Unmet<I> {
        Unmet::new()
    }
}

/// An edge of a `flow!`: the output of step `P` is the input of step `S`.
#[diagnostic::on_unimplemented(
    message = "step `{S}` cannot take `{I}`, the output of step `{P}`",
    label = "this step's parameter is not `{I}`",
    note = "in a `flow!`, each step's output is the next step's input"
)]
pub trait Edge<I, S, P> {
    /// The checked input (on failure there is none, so the step's call reports nothing more).
    type Input;
    /// Passes the input through.
    fn pass(value: I) -> Self::Input;
}
#[diagnostic::do_not_recommend]
impl<I, S, P> Edge<I, S, P> for Met<()> {
    type Input = I;
    fn pass(value: I) -> I {
        value
    }
}

/// Checks that step `S` takes `I`, the output of step `P`, and passes the value through: an
/// unmet check is reported here, and the value it passes on has no type, so that the step's
/// call does not report the mismatch again.
#[inline]
pub fn edge<I, S, P, A: Edge<I, S, P>>(value: I, _: A) -> A::Input {
    A::pass(value)
}

// ---------------------------------------------------------------- undo and recovery steps

/// `compensate = U` on step `S`: the undo `U` takes a clone of the step's output `T`.
#[diagnostic::on_unimplemented(
    message = "the undo `{U}` of step `{S}` cannot take `{T}`, the output of step `{S}`",
    label = "this undo's parameter is not `{T}`",
    note = "once step `{S}` succeeds, `compensate = {U}` registers `{U}` with a clone of its output"
)]
pub trait UndoInput<T, U, S> {
    /// The checked output (on failure there is none, so the undo's call reports nothing more).
    type Input;
    /// Passes the output through.
    fn pass(value: T) -> Self::Input;
}
#[diagnostic::do_not_recommend]
impl<T, U, S> UndoInput<T, U, S> for Met<()> {
    type Input = T;
    fn pass(value: T) -> T {
        value
    }
}

/// Checks that undo `U` of step `S` takes the step's output `T` (dispatched with
/// [`probe_edge`]), and passes it through.
#[inline]
pub fn undo_input<T, U, S, A: UndoInput<T, U, S>>(value: T, _: A) -> A::Input {
    A::pass(value)
}

/// `catch(R)` on step `S`: the recovery step `R` takes the step's failure `T`
/// (a `StepError<E>`).
#[diagnostic::on_unimplemented(
    message = "the recovery step `{R}` of step `{S}` cannot take `{T}`, the failure of step `{S}`",
    label = "this step's parameter is not `{T}`",
    note = "when step `{S}` fails (after its retries), `catch({R})` runs `{R}` with the failure, and its output replaces the step's"
)]
pub trait RecoverInput<T, R, S> {
    /// The checked failure (on failure there is none, so the recovery's call reports nothing
    /// more).
    type Input;
    /// Passes the failure through.
    fn pass(value: T) -> Self::Input;
}
#[diagnostic::do_not_recommend]
impl<T, R, S> RecoverInput<T, R, S> for Met<()> {
    type Input = T;
    fn pass(value: T) -> T {
        value
    }
}

/// Checks that recovery step `R` of step `S` takes the step's failure `T` (dispatched with
/// [`probe_edge`]), and passes it through.
#[inline]
pub fn recover_input<T, R, S, A: RecoverInput<T, R, S>>(value: T, _: A) -> A::Input {
    A::pass(value)
}

// ---------------------------------------------------------------- error conversion

/// Dispatch: the step's output (`Result<T, E2>` or `()`) fits the workflow's error `E`.
pub trait ConvertsYes {
    /// Passed.
    fn flow_converts(&self) -> Met<()>;
}
impl<Fut, E> ConvertsYes for Probe<'_, PhantomData<Fut>, E>
where
    Fut: core::future::Future,
    Fut::Output: crate::ctx::StepOutput<E>,
{
    fn flow_converts(&self) -> Met<()> {
        Met(())
    }
}
/// Dispatch fallback: it does not.
pub trait ConvertsNo<E> {
    /// The failure.
    fn flow_converts(&self) -> Unmet<E>;
}
impl<Fut, E> ConvertsNo<E> for &Probe<'_, PhantomData<Fut>, E> {
    fn flow_converts(&self) -> Unmet<E> {
        Unmet::new()
    }
}

/// The error of step `S` converts into the workflow's error `E`; passes the step's future (or
/// its `make` closure) `F` through, so that a failed check is the only error reported.
#[diagnostic::on_unimplemented(
    message = "the error of step `{S}` does not convert into the workflow's error type `{E}`",
    label = "this step's error has no `From` conversion into `{E}` (or it does not return a `Result`)",
    note = "implement `From<the step's error>` for `{E}`, or change the step's error type"
)]
pub trait Converts<E, S, F> {
    /// `F`, checked.
    type Checked;
    /// Passes `F` through.
    fn pass(f: F) -> Self::Checked;
}
#[diagnostic::do_not_recommend]
impl<E, S, F> Converts<E, S, F> for Met<()> {
    type Checked = F;
    fn pass(f: F) -> F {
        f
    }
}

/// Checks that step `S`'s error converts into `E`, passing the step's future through.
#[inline]
pub fn converts<E, S, F, A: Converts<E, S, F>>(f: F, _: A) -> A::Checked {
    A::pass(f)
}

/// The type of a future, as a zero-sized value a [`Probe`] can hold.
#[inline]
pub fn future_type<F: core::future::Future>(_: &F) -> PhantomData<F> {
    PhantomData
}

/// The type of the futures a retried step's `make` creates.
#[inline]
pub fn made_future_type<M: FnMut() -> F, F: core::future::Future>(_: &M) -> PhantomData<F> {
    PhantomData
}

/// A probe of whether step function `f` takes `input` (see [`edge`]).
#[inline]
pub fn probe_edge<'a, F, I>(f: &'a F, _: &I) -> Probe<'a, F, (I, ())> {
    Probe(f, PhantomData)
}

// ---------------------------------------------------------------- a step never awaited

/// Dispatch: the value is a future (a step called without `.await`).
pub trait FutureYes<T> {
    /// The failure.
    fn flow_future(&self) -> Unmet<T>;
}
impl<T: core::future::Future, X> FutureYes<T> for Probe<'_, T, X> {
    fn flow_future(&self) -> Unmet<T> {
        Unmet::new()
    }
}
/// Dispatch fallback: the value is not a future.
pub trait FutureNo<T> {
    /// The value passes.
    fn flow_future(&self) -> Met<()>;
}
impl<T, X> FutureNo<T> for &Probe<'_, T, X> {
    fn flow_future(&self) -> Met<()> {
        Met(())
    }
}

/// A call whose value a `#[workflow]` body drops: it must not be a future.
#[diagnostic::on_unimplemented(
    message = "`{S}(..)` makes a future that is never awaited, so this step never runs",
    label = "add `.await` (and `?`) to run this step",
    note = "to start it later, bind it (`let fut = {S}(..);`) and await it where it should run"
)]
pub trait Awaited<S> {}
#[diagnostic::do_not_recommend]
impl<S> Awaited<S> for Met<()> {}

/// Checks that a dropped value is not an unawaited step future (`S` names the call).
#[inline]
pub fn unawaited<S, T, A: Awaited<S>>(value: T, _: A) -> T {
    value
}

// ---------------------------------------------------------------- one error type in a flow!

/// What [`same_error`] inspects: a step's future type and the flow's error type.
pub fn error_probe<'a, Fut, E>(
    fut: &'a PhantomData<Fut>,
    _: PhantomData<fn() -> E>,
) -> Probe<'a, PhantomData<Fut>, fn() -> E> {
    Probe(fut, PhantomData)
}

/// Dispatch: the step fails with the flow's error type.
pub trait SameErrorYes {
    /// Passed.
    fn flow_same_error(&self) -> Met<()>;
}
impl<Fut, E> SameErrorYes for Probe<'_, PhantomData<Fut>, fn() -> E>
where
    Fut: core::future::Future,
    Fut::Output: crate::glue::Exact<E>,
{
    fn flow_same_error(&self) -> Met<()> {
        Met(())
    }
}
/// Dispatch fallback: it fails with another type.
pub trait SameErrorNo<E> {
    /// The failure.
    fn flow_same_error(&self) -> Unmet<E>;
}
impl<Fut, E> SameErrorNo<E> for &Probe<'_, PhantomData<Fut>, fn() -> E> {
    fn flow_same_error(&self) -> Unmet<E> {
        Unmet::new()
    }
}

/// Every step of a `flow!` without `error = Type` fails with the flow's error type.
#[diagnostic::on_unimplemented(
    message = "step `{S}` fails with another error type than this flow's, `{E}` (the error type of its first step)",
    label = "this step's error type is not `{E}`",
    note = "without `error = Type`, every step of a `flow!` fails with one error type; declare one that each step's error converts into (`From`): `flow! {{ error = AppError; .. }}`"
)]
pub trait SameError<E, S, F> {
    /// `F`, checked.
    type Checked;
    /// Passes `F` through.
    fn pass(f: F) -> Self::Checked;
}
#[diagnostic::do_not_recommend]
impl<E, S, F> SameError<E, S, F> for Met<()> {
    type Checked = F;
    fn pass(f: F) -> F {
        f
    }
}

/// Checks that step `S` fails with the flow's error type `E`, passing its future (or `make`
/// closure) `F` through.
#[inline]
pub fn same_error<E, S, F, A: SameError<E, S, F>>(
    _: PhantomData<fn() -> E>,
    f: F,
    _: A,
) -> A::Checked {
    A::pass(f)
}

// ---------------------------------------------------------------- a workflow as a `flow!` step

/// The step's future gives a child run's result (`Result<T, flow::Error<X>>`).
pub struct IsChild;
/// Any other step.
pub struct NotChild;

/// Dispatch: the step is a `#[workflow]` function (its output is a run's result).
pub trait ChildYes {
    /// It is.
    fn flow_child(&self) -> IsChild;
}
impl<F, T, X> ChildYes for Probe<'_, F, ()>
where
    F: core::future::Future<Output = Result<T, crate::error::Error<X>>>,
{
    fn flow_child(&self) -> IsChild {
        IsChild
    }
}
/// Dispatch fallback: another step.
pub trait ChildNo {
    /// It is not.
    fn flow_child(&self) -> NotChild;
}
impl<F, X> ChildNo for &Probe<'_, F, X> {
    fn flow_child(&self) -> NotChild {
        NotChild
    }
}

/// A child run's result, as its step's output.
pub type ChildMap<F, T, X> = futures_util::future::Map<
    F,
    fn(Result<T, crate::error::Error<X>>) -> crate::glue::ChildOutcome<T, X>,
>;

/// Makes a step's future give a [`ChildOutcome`](crate::glue::ChildOutcome) when it is a
/// child run, and passes any other future through.
pub trait ChildStep<F> {
    /// The step's future.
    type Out;
    /// Wraps (or passes) it.
    fn wrap(f: F) -> Self::Out;
}
impl<F> ChildStep<F> for NotChild {
    type Out = F;
    #[inline]
    fn wrap(f: F) -> F {
        f
    }
}
impl<F, T, X> ChildStep<F> for IsChild
where
    F: core::future::Future<Output = Result<T, crate::error::Error<X>>>,
{
    type Out = ChildMap<F, T, X>;
    #[inline]
    fn wrap(f: F) -> Self::Out {
        futures_util::FutureExt::map(f, crate::glue::ChildOutcome::new as fn(_) -> _)
    }
}

/// See [`ChildStep`].
#[inline]
pub fn child_step<F, K: ChildStep<F>>(f: F, _: K) -> K::Out {
    K::wrap(f)
}

// ---------------------------------------------------------------- a durable step's output is stored

/// Dispatch: the step's output can be stored by a durable run.
#[cfg(feature = "durable")]
pub trait StoredYes {
    /// Passed.
    fn flow_stored(&self) -> Met<()>;
}
#[cfg(feature = "durable")]
impl<Fut, E> StoredYes for Probe<'_, PhantomData<Fut>, fn() -> E>
where
    Fut: core::future::Future,
    Fut::Output: crate::ctx::StepOutput<E>,
    <Fut::Output as crate::ctx::StepOutput<E>>::Ok: crate::durable::Stored,
{
    fn flow_stored(&self) -> Met<()> {
        Met(())
    }
}
/// Dispatch fallback: it cannot.
#[cfg(feature = "durable")]
pub trait StoredNo<T> {
    /// The failure.
    fn flow_stored(&self) -> Unmet<T>;
}
#[cfg(feature = "durable")]
impl<Fut, E> StoredNo<<Fut::Output as crate::ctx::StepOutput<E>>::Ok>
    for &Probe<'_, PhantomData<Fut>, fn() -> E>
where
    Fut: core::future::Future,
    Fut::Output: crate::ctx::StepOutput<E>,
{
    fn flow_stored(&self) -> Unmet<<Fut::Output as crate::ctx::StepOutput<E>>::Ok> {
        Unmet::new()
    }
}

/// A durable workflow's step: its output is stored when it completes.
#[cfg(feature = "durable")]
#[diagnostic::on_unimplemented(
    message = "step `{S}` is durable, so its output is stored, but `{T}` cannot be stored by a durable run",
    label = "its output, `{T}`, is stored when it completes",
    note = "a durable workflow's input, output, error and every step's output are stored as JSON: derive `serde::Serialize` and `serde::Deserialize` for `{T}`"
)]
pub trait StoredOutput<T, S, F> {
    /// `F`, checked.
    type Checked;
    /// Passes `F` through.
    fn pass(f: F) -> Self::Checked;
}
#[cfg(feature = "durable")]
#[diagnostic::do_not_recommend]
impl<T, S, F> StoredOutput<T, S, F> for Met<()> {
    type Checked = F;
    fn pass(f: F) -> F {
        f
    }
}

/// The output type of a step whose future type is `Fut`, in a workflow whose error type is
/// `E`.
#[cfg(feature = "durable")]
#[inline]
pub fn ok_type<Fut, E>(
    _: &PhantomData<Fut>,
    _: PhantomData<fn() -> E>,
) -> PhantomData<<Fut::Output as crate::ctx::StepOutput<E>>::Ok>
where
    Fut: core::future::Future,
    Fut::Output: crate::ctx::StepOutput<E>,
{
    PhantomData
}

/// Checks that step `S`'s output `T` can be stored, passing its future (or `make` closure)
/// `F` through: an unmet check is reported here, at the step, and the value it passes on
/// has no type, so that nothing after reports it again.
#[cfg(feature = "durable")]
#[inline]
pub fn stored_output<T, S, F, A: StoredOutput<T, S, F>>(
    _: PhantomData<T>,
    f: F,
    _: A,
) -> A::Checked {
    A::pass(f)
}

// ---------------------------------------------------------------- a durable workflow's values are stored

/// The type `T` of a durable workflow's input, output or error, probed where `durable` is
/// written.
#[cfg(feature = "durable")]
pub struct FlowValue<T>(PhantomData<fn() -> T>);

#[cfg(feature = "durable")]
impl<T> FlowValue<T> {
    /// The probe.
    #[inline]
    pub fn new() -> Self {
        FlowValue(PhantomData)
    }
}

#[cfg(feature = "durable")]
impl<T> Default for FlowValue<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Dispatch: the value can be stored.
#[cfg(feature = "durable")]
pub trait FlowStoredYes {
    /// Passed.
    fn flow_value_stored(&self) -> Met<()>;
}
#[cfg(feature = "durable")]
impl<T: crate::durable::Stored> FlowStoredYes for FlowValue<T> {
    fn flow_value_stored(&self) -> Met<()> {
        Met(())
    }
}
/// Dispatch fallback: it cannot.
#[cfg(feature = "durable")]
pub trait FlowStoredNo<T> {
    /// The failure.
    fn flow_value_stored(&self) -> Unmet<T>;
}
#[cfg(feature = "durable")]
impl<T> FlowStoredNo<T> for &FlowValue<T> {
    fn flow_value_stored(&self) -> Unmet<T> {
        Unmet::new()
    }
}

/// A durable workflow's input is stored.
#[cfg(feature = "durable")]
#[diagnostic::on_unimplemented(
    message = "this workflow is durable, so its input is stored, but `{T}` cannot be stored by a durable run",
    label = "its input, `{T}`, is stored with each run",
    note = "a durable workflow's input, output, error and every step's output are stored as JSON: derive `serde::Serialize` and `serde::Deserialize` for `{T}`"
)]
pub trait StoredInput<T> {}
#[cfg(feature = "durable")]
#[diagnostic::do_not_recommend]
impl<T> StoredInput<T> for Met<()> {}

/// Checks, where `durable` is written, that a durable workflow's input of type `T` can be
/// stored.
#[cfg(feature = "durable")]
#[inline]
pub fn stored_input<T, A: StoredInput<T>>(_: &FlowValue<T>, _: A) {}

/// A durable workflow's output is stored.
#[cfg(feature = "durable")]
#[diagnostic::on_unimplemented(
    message = "this workflow is durable, so its output is stored, but `{T}` cannot be stored by a durable run",
    label = "its output, `{T}`, is stored with each run",
    note = "a durable workflow's input, output, error and every step's output are stored as JSON: derive `serde::Serialize` and `serde::Deserialize` for `{T}`"
)]
pub trait StoredResult<T> {}
#[cfg(feature = "durable")]
#[diagnostic::do_not_recommend]
impl<T> StoredResult<T> for Met<()> {}

/// Checks, where `durable` is written, that a durable workflow's output of type `T` can be
/// stored.
#[cfg(feature = "durable")]
#[inline]
pub fn stored_result<T, A: StoredResult<T>>(_: &FlowValue<T>, _: A) {}

/// A durable workflow's error is stored.
#[cfg(feature = "durable")]
#[diagnostic::on_unimplemented(
    message = "this workflow is durable, so its error is stored, but `{T}` cannot be stored by a durable run",
    label = "its error, `{T}`, is stored with each run",
    note = "a durable workflow's input, output, error and every step's output are stored as JSON: derive `serde::Serialize` and `serde::Deserialize` for `{T}`"
)]
pub trait StoredError<T> {}
#[cfg(feature = "durable")]
#[diagnostic::do_not_recommend]
impl<T> StoredError<T> for Met<()> {}

/// Checks, where `durable` is written, that a durable workflow's error of type `T` can be
/// stored.
#[cfg(feature = "durable")]
#[inline]
pub fn stored_error<T, A: StoredError<T>>(_: &FlowValue<T>, _: A) {}
