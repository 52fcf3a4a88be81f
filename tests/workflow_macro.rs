//! `#[workflow]`: one test per construct, timings on tokio's paused clock.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{DropFlag, Recorder, TestError};
use flow::error::GaveUp;
use flow::graph::NodeKind;
use flow::prelude::*;
use flow::{Status, WorkflowState};
use tokio::time::{Instant, sleep};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---------------------------------------------------------------- sequence, states, events

async fn launch(n: u32) -> Result<Vec<u32>, TestError> {
    Ok((0..n).collect())
}
async fn check(nodes: Vec<u32>) -> Result<Vec<u32>, TestError> {
    Ok(nodes)
}
async fn first(nodes: Vec<u32>) -> Result<u32, TestError> {
    nodes.first().copied().ok_or(TestError::Busy)
}

#[workflow]
async fn sequence(n: u32) -> Result<u32, TestError> {
    let nodes = launch(n).await?;
    let nodes = check(nodes).await?;
    first(nodes).await
}

#[tokio::test]
async fn sequence_states_and_events_follow_the_graph() {
    let g = Sequence::GRAPH;
    let steps: Vec<&str> = g.steps().map(|(_, n)| n.name).collect();
    assert_eq!(steps, ["launch", "check", "first"]);
    assert_eq!(g.nodes[0].kind, NodeKind::Start);
    let edges: Vec<(u32, u32)> = g
        .edges
        .iter()
        .filter(|e| e.kind != flow::graph::EdgeKind::Exit)
        .map(|e| (e.from, e.to))
        .collect();
    assert_eq!(edges, [(0, 2), (2, 3), (3, 4), (4, 1)]);
    // Each `?` is an exit to the end, drawn as such.
    let exits: Vec<(u32, u32, &str)> = g
        .edges
        .iter()
        .filter(|e| e.kind == flow::graph::EdgeKind::Exit)
        .map(|e| (e.from, e.to, e.label))
        .collect();
    assert_eq!(exits, [(2, 1, "?"), (3, 1, "?")]);

    let mut handle = Runtime::new().spawn(Sequence, (3,));
    let mut trace = Vec::new();
    while let Some(e) = handle.events().next().await {
        trace.push(common::short(&e));
    }
    assert_eq!(
        trace,
        [
            "start:run-started",
            "launch:entered",
            "launch:attempt-1",
            "launch:ok",
            "check:entered",
            "check:attempt-1",
            "check:ok",
            "first:entered",
            "first:attempt-1",
            "first:ok",
            "end:run-completed",
        ]
    );
    let state = handle.state();
    assert_eq!(state.status, Status::Completed);
    assert_eq!(handle.typed_state(), Some(SequenceState::Completed));
    assert_eq!((&mut handle).await.unwrap(), 0);
    // The state enum names every step.
    assert_eq!(SequenceState::Launch.node(), flow::NodeId(2));
    assert_eq!(SequenceState::First.node(), flow::NodeId(4));
    assert_eq!(SequenceState::Start.node(), flow::NodeId::START);
    // Awaiting the function directly runs the same workflow.
    assert_eq!(sequence(2).await.unwrap(), 0);
}

// ---------------------------------------------------------------- retry, exact timings

static RETRY_CALLS: Mutex<Vec<Duration>> = Mutex::new(Vec::new());

async fn flaky(t0: Instant) -> Result<u32, TestError> {
    let mut calls = RETRY_CALLS.lock().unwrap();
    calls.push(t0.elapsed());
    if calls.len() < 4 {
        Err(TestError::Busy)
    } else {
        Ok(calls.len() as u32)
    }
}

#[workflow]
async fn retrying(t0: Instant) -> Result<u32, TestError> {
    #[retry(max_attempts = 5, backoff = exponential("200ms", 2.0), max_delay = "700ms")]
    let n = flaky(t0).await?;
    Ok(n)
}

#[tokio::test(start_paused = true)]
async fn retry_delays_double_and_cap() {
    let t0 = Instant::now();
    assert_eq!(retrying(t0).await.unwrap(), 4);
    // Attempts at 0, then after 200, 400, and 800 capped to 700.
    assert_eq!(
        *RETRY_CALLS.lock().unwrap(),
        [ms(0), ms(200), ms(600), ms(1300)]
    );
}

async fn always_busy(calls: Arc<AtomicU32>) -> Result<(), TestError> {
    calls.fetch_add(1, Ordering::SeqCst);
    Err(TestError::Busy)
}

#[workflow]
async fn exhausting(calls: Arc<AtomicU32>) -> Result<(), TestError> {
    #[retry(max_attempts = 3)]
    always_busy(calls).await?;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn exhausted_retries_report_every_attempt() {
    let calls = Arc::new(AtomicU32::new(0));
    let t0 = Instant::now();
    let err = exhausting(calls.clone()).await.unwrap_err();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "max_attempts counts the first attempt"
    );
    assert_eq!(
        t0.elapsed(),
        Duration::ZERO,
        "zero delay never touches the timer"
    );
    let step = err.step_error().expect("a step error");
    assert_eq!(step.step(), "always_busy");
    assert_eq!(step.gave_up(), GaveUp::RetriesExhausted);
    assert_eq!(step.attempts().len(), 3);
    assert!(
        step.attempts()
            .iter()
            .all(|a| a.failure.error() == Some(&TestError::Busy))
    );
    assert_eq!(
        err.to_string(),
        "workflow `Exhausting` failed: step `always_busy` failed after 3 attempts (retries exhausted); last: busy"
    );
}

// ---------------------------------------------------------------- timeout, catch, compensation

async fn hang() -> Result<u32, TestError> {
    sleep(Duration::from_secs(3600)).await;
    Ok(1)
}
async fn fallback(e: flow::StepError<TestError>) -> Result<u32, TestError> {
    assert!(e.is_timeout());
    Ok(99)
}

#[workflow]
async fn timing_out() -> Result<u32, TestError> {
    #[timeout("250ms")]
    let v = hang().await?;
    Ok(v)
}

#[workflow]
async fn catching() -> Result<u32, TestError> {
    #[timeout("250ms")]
    #[catch(fallback, on = timeouts)]
    let v = hang().await?;
    Ok(v)
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_step_fails_the_run_or_is_caught() {
    let t0 = Instant::now();
    let err = timing_out().await.unwrap_err();
    assert_eq!(t0.elapsed(), ms(250));
    assert!(err.step_error().unwrap().is_timeout());
    assert_eq!(err.step(), Some("hang"));

    let t0 = Instant::now();
    assert_eq!(catching().await.unwrap(), 99);
    assert_eq!(t0.elapsed(), ms(250));
    assert!(
        Catching::GRAPH
            .nodes
            .iter()
            .any(|n| n.kind == NodeKind::Recovery && n.name == "fallback")
    );
}

async fn fails_with(e: TestError) -> Result<u32, TestError> {
    Err(e)
}
async fn fell_back(e: flow::StepError<TestError>) -> Result<u32, TestError> {
    assert_eq!(e.error(), Some(&TestError::Busy));
    Ok(7)
}
fn is_busy(e: &TestError) -> bool {
    *e == TestError::Busy
}

#[workflow]
async fn catching_busy(e: TestError) -> Result<u32, TestError> {
    // `when` sees the step's own error, as retry's `when` does.
    #[retry(max_attempts = 2, when = is_busy)]
    #[catch(fell_back, when = |e| matches!(e, TestError::Busy))]
    let v = fails_with(e).await?;
    Ok(v)
}

#[workflow]
async fn catching_busy_by_path(e: TestError) -> Result<u32, TestError> {
    #[catch(fell_back, when = is_busy)]
    let v = fails_with(e).await?;
    Ok(v)
}

#[workflow]
async fn catching_panics() -> Result<u32, TestError> {
    #[catch(fallback_after_panic, on = panics)]
    let v = panicking().await?;
    Ok(v)
}
async fn panicking() -> Result<u32, TestError> {
    panic!("boom")
}
async fn fallback_after_panic(e: flow::StepError<TestError>) -> Result<u32, TestError> {
    assert!(e.is_panic());
    Ok(5)
}

#[tokio::test(start_paused = true)]
async fn catch_when_sees_the_error_and_on_picks_a_failure_kind() {
    assert_eq!(catching_busy(TestError::Busy).await.unwrap(), 7);
    let err = catching_busy(TestError::Broken("x".into()))
        .await
        .unwrap_err();
    assert_eq!(err.step(), Some("fails_with"));
    assert_eq!(catching_busy_by_path(TestError::Busy).await.unwrap(), 7);
    assert!(
        catching_busy_by_path(TestError::Broken("x".into()))
            .await
            .is_err()
    );
    assert_eq!(catching_panics().await.unwrap(), 5);
    // A timeout is not an error: `when` does not catch it, `on = timeouts` does (above).
}

static UNDONE: Mutex<Vec<String>> = Mutex::new(Vec::new());

async fn create(name: &'static str) -> Result<String, TestError> {
    Ok(name.to_owned())
}
async fn destroy(name: String) -> Result<(), TestError> {
    UNDONE.lock().unwrap().push(name);
    Ok(())
}
async fn boom(_: String, _: String) -> Result<(), TestError> {
    Err(TestError::Broken("disk full".into()))
}
async fn explode() -> Result<(), TestError> {
    panic!("index out of bounds")
}

#[workflow]
async fn compensating(panic_instead: bool) -> Result<(), TestError> {
    #[compensate(destroy)]
    let a = create("a").await?;
    #[compensate(destroy)]
    let b = create("b").await?;
    if panic_instead {
        explode().await?;
    }
    boom(a, b).await
}

#[tokio::test]
async fn compensations_run_in_reverse_after_failure_and_panic() {
    let err = compensating(false).await.unwrap_err();
    assert_eq!(err.step(), Some("boom"));
    assert_eq!(err.error(), Some(&TestError::Broken("disk full".into())));
    assert_eq!(std::mem::take(&mut *UNDONE.lock().unwrap()), ["b", "a"]);

    let err = compensating(true).await.unwrap_err();
    let step = err.step_error().unwrap();
    assert!(step.is_panic());
    assert_eq!(step.step(), "explode");
    assert_eq!(
        err.to_string(),
        "workflow `Compensating` failed: step `explode` panicked: index out of bounds"
    );
    assert_eq!(std::mem::take(&mut *UNDONE.lock().unwrap()), ["b", "a"]);
}

// ---------------------------------------------------------------- parallel

async fn slow(v: u32, flag: Arc<AtomicBool>) -> Result<u32, TestError> {
    let _guard = DropFlag(flag);
    sleep(ms(100 * u64::from(v))).await;
    Ok(v)
}
async fn fail_after(d: u64) -> Result<u32, TestError> {
    sleep(ms(d)).await;
    Err(TestError::Broken("branch".into()))
}

#[workflow]
async fn fan_out(flag: Arc<AtomicBool>) -> Result<u32, TestError> {
    let (a, b) = flow::join!(slow(1, flag.clone()), slow(2, flag)).await?;
    Ok(a + b)
}

#[workflow]
async fn fail_fast(flag: Arc<AtomicBool>) -> Result<u32, TestError> {
    let (a, b) = flow::join!(slow(5, flag), fail_after(50)).await?;
    Ok(a + b)
}

#[workflow]
async fn settling(flag: Arc<AtomicBool>) -> Result<usize, TestError> {
    let (a, b) = flow::settle!(slow(2, flag), fail_after(50)).await;
    assert_eq!(a.as_ref().ok(), Some(&2));
    assert_eq!(b.as_ref().err().map(|e| e.step()), Some("fail_after"));
    Ok(usize::from(a.is_ok()) + usize::from(b.is_ok()))
}

#[tokio::test(start_paused = true)]
async fn join_runs_steps_concurrently_and_fails_fast() {
    let t0 = Instant::now();
    assert_eq!(fan_out(Arc::new(AtomicBool::new(false))).await.unwrap(), 3);
    assert_eq!(t0.elapsed(), ms(200), "branches overlap");
    let par = FanOut::GRAPH
        .nodes
        .iter()
        .position(|n| n.kind == NodeKind::Parallel)
        .unwrap() as u32;
    assert_eq!(
        FanOut::GRAPH.edges.iter().filter(|e| e.from == par).count(),
        2
    );

    let dropped = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let err = fail_fast(dropped.clone()).await.unwrap_err();
    assert_eq!(
        t0.elapsed(),
        ms(50),
        "the failure does not wait for the sibling"
    );
    assert!(
        dropped.load(Ordering::SeqCst),
        "the sibling was cancelled (dropped)"
    );
    assert_eq!(err.step(), Some("fail_after"));

    let t0 = Instant::now();
    assert_eq!(settling(Arc::new(AtomicBool::new(false))).await.unwrap(), 1);
    assert_eq!(t0.elapsed(), ms(200), "settle waits for every branch");
}

// ---------------------------------------------------------------- nesting, cancellation, errors

#[workflow]
async fn child(n: u32) -> Result<u32, TestError> {
    let nodes = launch(n).await?;
    first(nodes).await
}

impl From<flow::Error<TestError>> for TestError {
    fn from(e: flow::Error<TestError>) -> Self {
        TestError::Broken(e.to_string())
    }
}

#[workflow]
async fn parent(n: u32) -> Result<u32, TestError> {
    let x = child(n).await?;
    Ok(x + 1)
}

#[tokio::test]
async fn a_workflow_calling_another_runs_it_as_a_child_run() {
    let rec = Recorder::default();
    let out = Runtime::new()
        .with_observer(rec.observer())
        .run(&Parent, (4,))
        .await
        .unwrap();
    assert_eq!(out, 1);
    let events = rec.events();
    let parent_run = events[0].run;
    let child_events: Vec<_> = events
        .iter()
        .filter(|e| e.parent == Some(parent_run))
        .collect();
    assert_eq!(child_events.first().map(|e| e.workflow), Some("Child"));
    assert!(child_events.iter().any(|e| e.step == "launch"));
    // The child's events arrive while the parent's `child` step is in flight.
    let trace: Vec<String> = events
        .iter()
        .map(|e| format!("{}/{}", e.workflow, common::short(e)))
        .collect();
    let started = trace
        .iter()
        .position(|t| t == "Parent/child:attempt-1")
        .unwrap();
    let child_done = trace
        .iter()
        .position(|t| t == "Child/end:run-completed")
        .unwrap();
    let parent_ok = trace.iter().position(|t| t == "Parent/child:ok").unwrap();
    assert!(started < child_done && child_done < parent_ok, "{trace:#?}");
}

async fn wait_forever(flag: Arc<AtomicBool>) -> Result<(), TestError> {
    let _guard = DropFlag(flag);
    std::future::pending::<()>().await;
    Ok(())
}

static UNDONE_ON_CANCEL: Mutex<Vec<String>> = Mutex::new(Vec::new());

async fn destroy_on_cancel(name: String) -> Result<(), TestError> {
    UNDONE_ON_CANCEL.lock().unwrap().push(name);
    Ok(())
}

#[workflow]
async fn cancellable(flag: Arc<AtomicBool>) -> Result<(), TestError> {
    #[compensate(destroy_on_cancel)]
    let _a = create("c").await?;
    wait_forever(flag).await
}

#[tokio::test(start_paused = true)]
async fn cancelling_through_the_handle_drops_the_step_and_compensates() {
    let dropped = Arc::new(AtomicBool::new(false));
    let handle = Runtime::new().spawn(Cancellable, (dropped.clone(),));
    sleep(ms(10)).await;
    assert_eq!(handle.state().name, "wait_forever");
    assert_eq!(handle.typed_state(), Some(CancellableState::WaitForever));
    handle.cancel();
    let state_after = {
        let err = (&mut { handle }).await.unwrap_err();
        assert!(err.is_cancelled());
        assert_eq!(err.step(), Some("wait_forever"));
        err
    };
    assert!(dropped.load(Ordering::SeqCst));
    assert_eq!(*UNDONE_ON_CANCEL.lock().unwrap(), ["c"]);
    assert_eq!(
        state_after.to_string(),
        "workflow `Cancellable` was cancelled during step `wait_forever`"
    );
}

#[workflow(timeout = "1s")]
async fn deadline() -> Result<u32, TestError> {
    hang().await
}

#[tokio::test(start_paused = true)]
async fn workflow_timeout_ends_the_run() {
    let t0 = Instant::now();
    let err = deadline().await.unwrap_err();
    assert_eq!(t0.elapsed(), Duration::from_secs(1));
    assert!(matches!(
        err.kind(),
        flow::ErrorKind::TimedOut {
            step: Some("hang"),
            ..
        }
    ));
}

#[derive(Debug)]
struct ParseError;
impl From<ParseError> for TestError {
    fn from(_: ParseError) -> Self {
        TestError::Broken("parse".into())
    }
}
async fn parse(s: String) -> Result<u32, ParseError> {
    s.parse().map_err(|_| ParseError)
}

#[workflow]
async fn converting(s: String) -> Result<u32, TestError> {
    let n = parse(s).await?;
    if n > 100 {
        return Err(TestError::Broken("too big".into()));
    }
    Ok(n)
}

#[tokio::test]
async fn step_errors_convert_and_workflow_errors_are_told_apart() {
    assert_eq!(converting("7".into()).await.unwrap(), 7);
    let err = converting("x".into()).await.unwrap_err();
    assert_eq!(
        err.step(),
        Some("parse"),
        "a step's error is attributed to the step"
    );
    assert_eq!(err.error(), Some(&TestError::Broken("parse".into())));
    // A plain step of an unobserved run is not timed (a clock read is most of a step's cost);
    // in an observed run it is.
    assert_eq!(err.step_error().unwrap().attempts()[0].elapsed, None);
    let observed = Runtime::new()
        .with_observer(|_: &flow::Event| {})
        .run(&Converting, ("x".into(),))
        .await
        .unwrap_err();
    assert!(
        observed.step_error().unwrap().attempts()[0]
            .elapsed
            .is_some()
    );
    let err = converting("500".into()).await.unwrap_err();
    assert!(
        matches!(err.kind(), flow::ErrorKind::Workflow(TestError::Broken(s)) if s == "too big")
    );
}

// ---------------------------------------------------------------- hygiene

mod shadowing {
    #![allow(dead_code, clippy::all)]
    use super::common::TestError;
    struct Option;
    struct Box;
    struct Vec;
    type Result<T> = core::result::Result<T, TestError>;
    #[allow(non_snake_case)]
    fn Ok() {}
    #[allow(non_snake_case)]
    fn Some() {}
    #[allow(non_snake_case)]
    fn Err() {}

    async fn step(n: u32) -> Result<u32> {
        core::result::Result::Ok(n + 1)
    }

    async fn pair(n: u32) -> Result<(u32, u32)> {
        core::result::Result::Ok((n, n))
    }
    async fn sum(p: (u32, u32)) -> Result<u32> {
        core::result::Result::Ok(p.0 + p.1)
    }
    async fn many(n: u32) -> Result<std::vec::Vec<u32>> {
        core::result::Result::Ok(std::vec![n, n])
    }
    async fn total(v: std::vec::Vec<u32>) -> Result<u32> {
        core::result::Result::Ok(v.iter().sum())
    }

    #[flow::workflow]
    pub async fn shadowed(n: u32) -> Result<u32> {
        #[retry(max_attempts = 2, backoff = exponential("1ms", 2.0))]
        #[timeout("1s")]
        let n = step(n).await?;
        let (a, b) = flow::join!(step(n), step(n)).await?;
        step(a + b).await
    }

    pub async fn shadowed_flow(n: u32) -> core::result::Result<u32, flow::Error<TestError>> {
        let f = flow::flow! {
            step [retry(max_attempts = 2), timeout = "1s"]
                -> (step & step) -> sum -> many -> map(step, concurrency = 2) -> total
                -> branch(|n| *n > 100) { true => step, false => pair -> sum }
        };
        f.run(n).await
    }
}

#[tokio::test]
async fn expansion_ignores_shadowed_prelude_names() {
    assert_eq!(shadowing::shadowed(1).await.unwrap(), 7);
    // 1 -> 2 -> (3, 3) -> 6 -> [6, 6] -> [7, 7] -> 14 -> (14, 14) -> 28
    assert_eq!(shadowing::shadowed_flow(1).await.unwrap(), 28);
}

// ---------------------------------------------------------------- reference and generic steps

#[derive(Clone, Debug)]
struct Spec {
    nodes: u32,
}

async fn count_nodes(spec: &Spec) -> Result<u32, TestError> {
    Ok(spec.nodes)
}
async fn describe<T: std::fmt::Display + Send>(value: T) -> Result<String, TestError> {
    Ok(format!("<{value}>"))
}

#[workflow]
async fn borrowing(spec: Spec) -> Result<String, TestError> {
    #[retry(max_attempts = 2)]
    let n = count_nodes(&spec).await?;
    let again = count_nodes(&spec).await?;
    describe::<u32>(n + again).await
}

#[tokio::test]
async fn steps_may_borrow_and_be_generic() {
    assert_eq!(borrowing(Spec { nodes: 2 }).await.unwrap(), "<4>");
    let f = flow! { describe -> describe };
    assert_eq!(f.run(7).await.unwrap(), "<<7>>");
}

// ---------------------------------------------------------------- child runs dropped mid-run

static UNDO_ORDER: Mutex<Vec<String>> = Mutex::new(Vec::new());

async fn acquire(name: &'static str) -> Result<String, TestError> {
    Ok(name.to_owned())
}
async fn release(name: String) -> Result<(), TestError> {
    UNDO_ORDER.lock().unwrap().push(name);
    Ok(())
}
async fn release_badly(name: String) -> Result<(), TestError> {
    Err(TestError::Broken(format!("cannot release {name}")))
}
async fn block_forever() -> Result<(), TestError> {
    std::future::pending::<()>().await;
    Ok(())
}

#[workflow]
async fn child_holding() -> Result<(), TestError> {
    #[compensate(release)]
    let _a = acquire("child-a").await?;
    #[compensate(release_badly)]
    let _b = acquire("child-b").await?;
    block_forever().await
}

#[workflow]
async fn parent_of_blocked() -> Result<(), TestError> {
    #[compensate(release)]
    let _p = acquire("parent").await?;
    child_holding().await?;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_parent_undoes_its_child_run_first() {
    let handle = Runtime::new().spawn(ParentOfBlocked, ());
    sleep(ms(10)).await;
    handle.cancel();
    let err = handle.await.unwrap_err();
    assert!(err.is_cancelled());
    // The child's completed steps are undone (in reverse), before the parent's own step.
    assert_eq!(*UNDO_ORDER.lock().unwrap(), ["child-a", "parent"]);
    let nested = err.nested_compensation_failures();
    assert_eq!(nested.len(), 1);
    assert_eq!(nested[0].workflow, "ChildHolding");
    assert_eq!(nested[0].step, "acquire");
    assert_eq!(nested[0].message, "broken: cannot release child-b");
    assert!(err.to_string().contains(
        "compensation of step `acquire` of child workflow `ChildHolding` also failed: broken: cannot release child-b"
    ));
}

fn is_broken_a(e: &TestError) -> bool {
    *e == TestError::Broken("a".into())
}
fn is_broken_b(e: &TestError) -> bool {
    *e == TestError::Broken("b".into())
}
fn is_broken_c(e: &TestError) -> bool {
    *e == TestError::Broken("c".into())
}

/// Fails as `script` says, call by call (`None`: succeeds with the call's number).
async fn scripted(script: Arc<Mutex<Vec<Option<TestError>>>>) -> Result<u32, TestError> {
    let mut script = script.lock().unwrap();
    let call = u32::try_from(script.len()).unwrap();
    match script.pop() {
        Some(Some(e)) => Err(e),
        _ => Ok(call),
    }
}

#[workflow]
async fn five_rules(script: Arc<Mutex<Vec<Option<TestError>>>>) -> Result<u32, TestError> {
    // More rules than a step keeps counters for inline: each rule still counts only its own
    // failures.
    #[retry(max_attempts = 2, on = timeouts)]
    #[retry(max_attempts = 2, when = is_broken_a)]
    #[retry(max_attempts = 2, when = is_broken_b)]
    #[retry(max_attempts = 3, when = is_busy)]
    #[retry(max_attempts = 3, when = is_broken_c)]
    let v = scripted(script).await?;
    Ok(v)
}

#[tokio::test(start_paused = true)]
async fn a_step_with_five_retry_rules_counts_each_rules_failures_apart() {
    let c = || Some(TestError::Broken("c".into()));
    // Busy twice (its rule allows 3 attempts), Broken("c") twice (its rule allows 3): the
    // fifth attempt runs and succeeds, though no rule allows five.
    let script = Arc::new(Mutex::new(vec![
        c(),
        c(),
        Some(TestError::Busy),
        Some(TestError::Busy),
    ]));
    assert_eq!(five_rules(script.clone()).await.unwrap(), 0);
    // Broken("c") three times: its rule gives up after its own 3 attempts, the Busy failure
    // before them not counted against it.
    let script = Arc::new(Mutex::new(vec![c(), c(), c(), Some(TestError::Busy)]));
    let err = five_rules(script.clone()).await.unwrap_err();
    let step = err.step_error().unwrap();
    assert_eq!(step.attempt_count(), 4);
    assert_eq!(step.gave_up(), GaveUp::RetriesExhausted);
    assert_eq!(step.error(), Some(&TestError::Broken("c".into())));
    assert!(script.lock().unwrap().is_empty());
}

// ---------------------------------------------------------------- steps named like modules

/// A module and a step of the same name, side by side (a function lives in the value
/// namespace, a module in the type namespace). The body names both.
mod health {
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Status {
        Up,
        Down,
    }
}

async fn health(node: u32) -> Result<health::Status, TestError> {
    Ok(if node.is_multiple_of(2) {
        health::Status::Up
    } else {
        health::Status::Down
    })
}

async fn count_up(up: bool) -> Result<u32, TestError> {
    Ok(u32::from(up))
}

/// The step `health` is retried (so its name reaches a compile-time check) in a body that
/// uses the module `health`, in a path and inside a macro: the step's marker must not shadow
/// the module (the body would not compile).
#[workflow]
async fn probe(node: u32) -> Result<u32, TestError> {
    #[retry(max_attempts = 2)]
    let status = health(node).await?;
    assert!(matches!(status, health::Status::Up | health::Status::Down));
    count_up(status == health::Status::Up).await
}

/// The module shows in the signature only: the body's function has the same parameters.
#[workflow]
async fn recheck(node: u32, last: health::Status) -> Result<u32, TestError> {
    #[retry(max_attempts = 2)]
    let now = health(node).await?;
    count_up(now == last).await
}

/// A workflow generic over a const parameter: the body is called with it (and the steps'
/// markers) explicitly.
#[workflow]
async fn sum_first<const N: usize>(values: Vec<u32>) -> Result<u32, TestError> {
    let values = check(values).await?;
    Ok(values.iter().take(N).sum())
}

#[tokio::test]
async fn a_step_named_like_a_module_and_a_const_generic_workflow_run() {
    let runtime = Runtime::new();
    assert_eq!(runtime.run(&Probe, (4,)).await.unwrap(), 1);
    assert_eq!(runtime.run(&Probe, (3,)).await.unwrap(), 0);
    assert_eq!(
        runtime
            .run(&Recheck, (2, health::Status::Up))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        runtime
            .run(&SumFirst::<2>::new(), (vec![5, 6, 7],))
            .await
            .unwrap(),
        11
    );
    assert_eq!(sum_first::<3>(vec![1, 2, 3, 4]).await.unwrap(), 6);
}
