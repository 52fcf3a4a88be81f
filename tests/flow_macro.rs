//! `flow!`: one test per construct, timings on tokio's paused clock.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{DropFlag, Recorder, TestError};
use flow::WorkflowState;
use flow::graph::{EdgeKind, NodeKind};
use flow::prelude::*;
use tokio::time::{Instant, sleep};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn parse(s: &'static str) -> Result<u32, TestError> {
    s.parse()
        .map_err(|_| TestError::Broken(format!("not a number: {s}")))
}
async fn double(n: u32) -> Result<u32, TestError> {
    Ok(n * 2)
}
async fn square(n: u32) -> Result<u32, TestError> {
    Ok(n * n)
}
async fn add(p: (u32, u32)) -> Result<u32, TestError> {
    Ok(p.0 + p.1)
}

#[tokio::test]
async fn sequence_and_events_follow_the_graph() {
    let f = flow! { name = "arith"; parse -> double -> square };
    let g = f.graph();
    assert_eq!(g.name, "arith");
    let steps: Vec<&str> = g.steps().map(|(_, n)| n.name).collect();
    assert_eq!(steps, ["parse", "double", "square"]);
    assert_eq!(f.run("3").await.unwrap(), 36);

    let rec = Recorder::default();
    let err = Runtime::new()
        .with_observer(rec.observer())
        .run(&f, "x")
        .await
        .unwrap_err();
    assert_eq!(err.step(), Some("parse"));
    assert_eq!(
        rec.trace(),
        [
            "start:run-started",
            "parse:entered",
            "parse:attempt-1",
            "parse:attempt-1-failed",
            "parse:failed",
            "end:run-failed"
        ]
    );

    let rec = Recorder::default();
    Runtime::new()
        .with_observer(rec.observer())
        .run(&f, "2")
        .await
        .unwrap();
    let entered: Vec<String> = rec
        .trace()
        .into_iter()
        .filter(|t| t.ends_with(":entered"))
        .collect();
    assert_eq!(
        entered,
        ["parse:entered", "double:entered", "square:entered"]
    );
}

/// The state type is named through the workflow and carries the value on its incoming edge.
fn start_state<W: Workflow>(_: &W) -> &'static str
where
    W::State: WorkflowState,
{
    std::any::type_name::<W::State>()
}

#[test]
fn the_state_enum_is_generic_over_the_edge_types() {
    let f = flow! { parse -> double };
    let name = start_state(&f);
    assert!(name.contains("__FlowState<&str, &str, u32, u32>"), "{name}");
}

#[tokio::test]
async fn parallel_outputs_a_tuple_and_fails_fast() {
    let f = flow! { double -> (double & square) -> add };
    assert_eq!(f.run(3).await.unwrap(), 12 + 36);
    let g = f.graph();
    let par = g
        .nodes
        .iter()
        .position(|n| n.kind == NodeKind::Parallel)
        .unwrap() as u32;
    let branch_edges: Vec<&str> = g
        .edges
        .iter()
        .filter(|e| e.from == par)
        .map(|e| g.nodes[e.to as usize].name)
        .collect();
    assert_eq!(branch_edges, ["double", "square"]);
    assert!(
        g.edges
            .iter()
            .filter(|e| e.from == par)
            .all(|e| e.kind == EdgeKind::Parallel)
    );
}

static SLOW_DROPPED: AtomicBool = AtomicBool::new(false);

async fn slow_branch(n: u32) -> Result<u32, TestError> {
    let _g = DropFlag(Arc::new(AtomicBool::new(false)));
    struct Mark;
    impl Drop for Mark {
        fn drop(&mut self) {
            SLOW_DROPPED.store(true, Ordering::SeqCst);
        }
    }
    let _m = Mark;
    sleep(ms(1000)).await;
    Ok(n)
}
async fn failing_branch(_: u32) -> Result<u32, TestError> {
    sleep(ms(10)).await;
    Err(TestError::Busy)
}
async fn pair(p: (u32, u32)) -> Result<u32, TestError> {
    Ok(p.0 + p.1)
}
async fn count_ok(
    p: (
        Result<u32, flow::StepError<TestError>>,
        Result<u32, flow::StepError<TestError>>,
    ),
) -> Result<usize, TestError> {
    Ok(usize::from(p.0.is_ok()) + usize::from(p.1.is_ok()))
}

#[tokio::test(start_paused = true)]
async fn fail_fast_cancels_the_sibling_and_settle_waits_for_all() {
    let f = flow! { (slow_branch & failing_branch) -> pair };
    let t0 = Instant::now();
    let err = f.run(1).await.unwrap_err();
    assert_eq!(t0.elapsed(), ms(10));
    assert_eq!(err.step(), Some("failing_branch"));
    assert!(SLOW_DROPPED.load(Ordering::SeqCst), "sibling dropped");

    let s = flow! { (slow_branch & failing_branch) [settle] -> count_ok };
    let t0 = Instant::now();
    assert_eq!(s.run(1).await.unwrap(), 1);
    assert_eq!(t0.elapsed(), ms(1000));
}

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static MAX_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

async fn work(n: u64) -> Result<u64, TestError> {
    struct InFlight;
    impl Drop for InFlight {
        // Runs on completion and when a failing map drops the item mid-flight.
        fn drop(&mut self) {
            IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let now = IN_FLIGHT.fetch_add(1, Ordering::SeqCst) + 1;
    let _in_flight = InFlight;
    MAX_IN_FLIGHT.fetch_max(now, Ordering::SeqCst);
    // Later items finish first: the results must still come back in input order.
    sleep(ms(100 - n)).await;
    if n == 13 {
        Err(TestError::Busy)
    } else {
        Ok(n * 10)
    }
}
async fn range(n: u64) -> Result<Vec<u64>, TestError> {
    Ok((0..n).collect())
}
async fn total(v: Vec<u64>) -> Result<u64, TestError> {
    Ok(v.iter().sum())
}
async fn ok_count(v: Vec<Result<u64, flow::StepError<TestError>>>) -> Result<usize, TestError> {
    Ok(v.iter().filter(|r| r.is_ok()).count())
}

#[tokio::test(start_paused = true)]
async fn map_limits_concurrency_and_keeps_order() {
    let f = flow! { range -> map(work, concurrency = 4) };
    let out = f.run(12).await.unwrap();
    assert_eq!(out, (0..12).map(|n| n * 10).collect::<Vec<_>>());
    assert_eq!(MAX_IN_FLIGHT.load(Ordering::SeqCst), 4);

    let f = flow! { range -> map(work, concurrency = 4) -> total };
    let err = f.run(20).await.unwrap_err();
    assert_eq!(err.step(), Some("work"));

    assert_eq!(
        IN_FLIGHT.load(Ordering::SeqCst),
        0,
        "the failure dropped every item in flight"
    );

    MAX_IN_FLIGHT.store(0, Ordering::SeqCst);
    let tolerant = flow! { range -> map(work, concurrency = 8, tolerate = 1) -> ok_count };
    assert_eq!(tolerant.run(20).await.unwrap(), 19);
    assert_eq!(MAX_IN_FLIGHT.load(Ordering::SeqCst), 8);
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Plan {
    Free,
    Pro,
}
#[derive(Clone, Debug, PartialEq)]
struct Account {
    plan: Plan,
    notes: Vec<&'static str>,
}
async fn open(plan: Plan) -> Result<Account, TestError> {
    Ok(Account {
        plan,
        notes: vec!["opened"],
    })
}
async fn welcome(mut a: Account) -> Result<Account, TestError> {
    a.notes.push("welcome");
    Ok(a)
}
async fn assign_manager(mut a: Account) -> Result<Account, TestError> {
    a.notes.push("manager");
    Ok(a)
}

#[tokio::test]
async fn branch_takes_the_matching_arm() {
    let f = flow! {
        open -> branch(|a: &Account| a.plan) {
            Plan::Free => welcome,
            Plan::Pro => assign_manager -> welcome,
        }
    };
    assert_eq!(
        f.run(Plan::Free).await.unwrap().notes,
        ["opened", "welcome"]
    );
    assert_eq!(
        f.run(Plan::Pro).await.unwrap().notes,
        ["opened", "manager", "welcome"]
    );
    let g = f.graph();
    let labels: Vec<&str> = g
        .edges
        .iter()
        .filter(|e| e.kind == EdgeKind::Branch)
        .map(|e| e.label)
        .collect();
    assert_eq!(labels, ["Plan::Free", "Plan::Pro"]);
}

static ATTEMPTS: Mutex<Vec<Duration>> = Mutex::new(Vec::new());
static REVOKED: Mutex<Vec<u32>> = Mutex::new(Vec::new());

async fn reserve(n: u32) -> Result<u32, TestError> {
    Ok(n + 100)
}
async fn revoke(n: u32) -> Result<(), TestError> {
    REVOKED.lock().unwrap().push(n);
    Ok(())
}
async fn notify(n: u32) -> Result<u32, TestError> {
    let t = {
        let mut a = ATTEMPTS.lock().unwrap();
        a.push(Instant::now().elapsed());
        a.len()
    };
    match t {
        // First attempt hangs past the timeout; second fails fast; third works.
        1 => {
            sleep(Duration::from_secs(60)).await;
            Ok(n)
        }
        2 => Err(TestError::Busy),
        _ if n == 999 + 100 => Err(TestError::Broken("rejected".into())),
        _ => Ok(n),
    }
}
async fn recover(e: flow::StepError<TestError>) -> Result<u32, TestError> {
    Ok(e.attempts().len() as u32)
}

#[tokio::test(start_paused = true)]
async fn step_policies_retry_timeout_compensate_and_catch() {
    let f = flow! {
        reserve [compensate = revoke]
            -> notify [retry(max_attempts = 3, backoff = exponential("200ms", 2.0)), timeout = "2s"]
    };
    let t0 = Instant::now();
    assert_eq!(f.run(1).await.unwrap(), 101);
    // 2s timeout, 200ms delay, immediate failure, 400ms delay, success.
    assert_eq!(t0.elapsed(), ms(2600));
    assert!(
        REVOKED.lock().unwrap().is_empty(),
        "no compensation after success"
    );

    ATTEMPTS.lock().unwrap().clear();
    let err = f.run(999).await.unwrap_err();
    assert_eq!(err.step_error().unwrap().attempts().len(), 3);
    assert_eq!(
        *REVOKED.lock().unwrap(),
        [1099],
        "compensation got the step's output"
    );

    ATTEMPTS.lock().unwrap().clear();
    let caught = flow! {
        reserve -> notify [retry(max_attempts = 3), timeout = "1s", catch(recover, on = errors)]
    };
    assert_eq!(
        caught.run(999).await.unwrap(),
        3,
        "the recovery step got all three attempts"
    );
    assert!(
        caught
            .graph()
            .edges
            .iter()
            .any(|e| e.kind == EdgeKind::Catch)
    );

    // `when` sees the step's own error `&E`, as retry's `when` does: a rejected notification
    // (`Broken`) is caught, the timeout of the first attempt is not (it fails the flow).
    ATTEMPTS.lock().unwrap().clear();
    let only_rejections = flow! {
        reserve -> notify [timeout = "1s", catch(recover, when = |e| matches!(e, TestError::Broken(_)))]
    };
    assert!(
        only_rejections
            .run(999)
            .await
            .unwrap_err()
            .step_error()
            .unwrap()
            .is_timeout()
    );
    ATTEMPTS.lock().unwrap().clear();
    let timeouts = flow! {
        reserve -> notify [timeout = "1s", catch(recover, on = timeouts)]
    };
    assert_eq!(timeouts.run(999).await.unwrap(), 1);
}

#[derive(Debug, PartialEq)]
enum AppError {
    Test(TestError),
    Io(String),
}
impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}
impl From<TestError> for AppError {
    fn from(e: TestError) -> Self {
        AppError::Test(e)
    }
}
impl From<std::io::Error> for AppError {
    fn from(e: std::io::Error) -> Self {
        AppError::Io(e.kind().to_string())
    }
}
async fn read_len(path: String) -> Result<u64, std::io::Error> {
    Ok(tokio::fs::metadata(path).await?.len())
}
async fn halve(n: u64) -> Result<u64, TestError> {
    if n % 2 == 1 {
        Err(TestError::Busy)
    } else {
        Ok(n / 2)
    }
}

#[tokio::test]
async fn a_declared_error_type_takes_every_step_error_through_from() {
    let dir = std::env::temp_dir().join(format!("flow-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("data");
    std::fs::write(&file, b"0123456789").unwrap();
    let f = flow! { error = AppError; read_len -> halve };
    assert_eq!(f.run(file.display().to_string()).await.unwrap(), 5);
    let err = f
        .run(dir.join("missing").display().to_string())
        .await
        .unwrap_err();
    assert_eq!(err.error(), Some(&AppError::Io("entity not found".into())));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[flow::workflow]
async fn sub_workflow(n: u32) -> Result<u32, TestError> {
    let n = double(n).await?;
    square(n).await
}

// No `From<flow::Error<TestError>>` is needed: a workflow's failure is its step's failure.

#[flow::workflow]
async fn sub_failing(n: u32) -> Result<u32, TestError> {
    let n = double(n).await?;
    rejecting(n).await
}
async fn rejecting(n: u32) -> Result<u32, TestError> {
    Err(TestError::Broken(format!("{n} rejected")))
}

#[flow::workflow(timeout = "1s")]
async fn sub_slow(n: u32) -> Result<u32, TestError> {
    sleep(Duration::from_secs(60)).await;
    double(n).await
}

#[flow::workflow]
async fn sub_panicking(n: u32) -> Result<u32, TestError> {
    let n = double(n).await?;
    exploding(n).await
}
async fn exploding(_: u32) -> Result<u32, TestError> {
    panic!("boom")
}
async fn after_timeout(e: flow::StepError<TestError>) -> Result<u32, TestError> {
    assert!(e.is_timeout());
    Ok(0)
}

#[tokio::test(start_paused = true)]
async fn a_workflow_step_fails_as_its_child_run_failed() {
    // The flow's error type is inferred from its steps: the child's own `TestError`.
    let ok = flow! { double -> sub_workflow -> square };
    assert_eq!(ok.run(1).await.unwrap(), 256);

    let err = flow! { double -> sub_failing }.run(1).await.unwrap_err();
    let step = err.step_error().unwrap();
    assert_eq!(step.step(), "sub_failing");
    assert_eq!(step.error(), Some(&TestError::Broken("4 rejected".into())));

    // Retried like any step: the child run is started again for each attempt.
    let retried = flow! { double -> sub_failing [retry(max_attempts = 3)] };
    let err = retried.run(1).await.unwrap_err();
    assert_eq!(err.step_error().unwrap().attempts().len(), 3);

    let t0 = Instant::now();
    let err = flow! { double -> sub_slow }.run(1).await.unwrap_err();
    assert_eq!(t0.elapsed(), Duration::from_secs(1));
    assert!(err.step_error().unwrap().is_timeout(), "{err}");
    let caught = flow! { double -> sub_slow [catch(after_timeout, on = timeouts)] };
    assert_eq!(caught.run(1).await.unwrap(), 0);

    let err = flow! { error = TestError; double -> sub_panicking }
        .run(1)
        .await
        .unwrap_err();
    let step = err.step_error().unwrap();
    assert!(step.is_panic());
    assert_eq!(step.failure().to_string(), "panicked: boom");
}

async fn split(n: u32) -> Result<Vec<u32>, TestError> {
    Ok(vec![n, n + 1, n + 2])
}
async fn sum(v: Vec<u32>) -> Result<u32, TestError> {
    Ok(v.iter().sum())
}

#[tokio::test]
async fn nested_constructs_and_a_workflow_as_a_step() {
    let f = flow! {
        error = TestError;
        split -> (map(((double -> square) & sub_workflow) -> add) -> sum & sum) -> add
    };
    // map over [1,2,3]: each item -> (double->square, sub_workflow) -> sum
    // item 1: (4, 4) -> 8; item 2: (16, 16) -> 32; item 3: (36, 36) -> 72 => 112; plus sum(1,2,3)=6
    let rec = Recorder::default();
    let out = Runtime::new()
        .with_observer(rec.observer())
        .run(&f, 1)
        .await
        .unwrap();
    assert_eq!(out, 112 + 6);
    let child_runs = rec
        .events()
        .iter()
        .filter(|e| e.parent.is_some() && matches!(e.kind, flow::EventKind::RunCompleted))
        .count();
    assert_eq!(
        child_runs, 3,
        "the workflow step ran once per item, as a child run"
    );
}

#[tokio::test(start_paused = true)]
async fn a_flow_timeout_and_cancellation() {
    async fn forever(_: u32) -> Result<u32, TestError> {
        std::future::pending::<()>().await;
        Ok(0)
    }
    let f = flow! { timeout = "3s"; double [compensate = revoke_double] -> forever };
    async fn revoke_double(n: u32) -> Result<(), TestError> {
        REVOKED_DOUBLE.lock().unwrap().push(n);
        Ok(())
    }
    static REVOKED_DOUBLE: Mutex<Vec<u32>> = Mutex::new(Vec::new());
    let t0 = Instant::now();
    let err = f.run(4).await.unwrap_err();
    assert_eq!(t0.elapsed(), Duration::from_secs(3));
    assert!(matches!(
        err.kind(),
        flow::ErrorKind::TimedOut {
            step: Some("forever"),
            ..
        }
    ));
    assert_eq!(*REVOKED_DOUBLE.lock().unwrap(), [8]);

    let handle = Runtime::new().spawn(f, 5);
    sleep(ms(100)).await;
    assert_eq!(handle.state().name, "forever");
    handle.cancel();
    let err = handle.await.unwrap_err();
    assert!(err.is_cancelled());
    assert_eq!(*REVOKED_DOUBLE.lock().unwrap(), [8, 10]);
}
