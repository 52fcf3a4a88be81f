//! `flow::testing`: workflows run with scripted step outcomes on the paused clock.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::TestError;
use flow::prelude::*;
use flow::testing::{Harness, Outcome};
use tokio::time::Instant;

static REAL_CALLS: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
static UNDONE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

async fn launch(n: u32) -> Result<u32, TestError> {
    REAL_CALLS.lock().unwrap().push("launch");
    Ok(n)
}
async fn teardown(n: u32) -> Result<(), TestError> {
    UNDONE.lock().unwrap().push(n);
    Ok(())
}
async fn wait_healthy(n: u32) -> Result<u32, TestError> {
    REAL_CALLS.lock().unwrap().push("wait_healthy");
    Ok(n)
}
async fn create_schema(n: u32) -> Result<u32, TestError> {
    REAL_CALLS.lock().unwrap().push("create_schema");
    Ok(n * 10)
}
async fn degraded(e: flow::StepError<TestError>) -> Result<u32, TestError> {
    assert!(e.error().is_some());
    Ok(0)
}

#[workflow]
async fn provision(n: u32) -> Result<u32, TestError> {
    #[compensate(teardown)]
    let n = launch(n).await?;
    #[retry(max_attempts = 4, backoff = constant("100ms"))]
    #[timeout("2s")]
    let n = wait_healthy(n).await?;
    create_schema(n).await
}

#[tokio::test(start_paused = true)]
async fn scripted_failures_are_retried_on_the_test_clock() {
    let t0 = Instant::now();
    let run = Harness::new()
        .script(
            "wait_healthy",
            [Outcome::Fail(TestError::Busy), Outcome::TimeOut],
        )
        .run(&Provision, (3,))
        .await;
    assert_eq!(run.result.as_ref().unwrap(), &30);
    // A failure, 100 ms, a timed-out attempt (2 s), 100 ms, the real step.
    assert_eq!(t0.elapsed(), Duration::from_millis(2200));
    assert_eq!(run.attempts_of("wait_healthy"), 3);
    run.assert_path(["launch", "wait_healthy", "create_schema"]);
    let transitions = run.transitions();
    assert!(
        transitions.contains(
            &"wait_healthy: attempt 2 failed: timed out after 2s; retrying in 100ms".to_owned()
        ),
        "{transitions:#?}"
    );
}

#[tokio::test(start_paused = true)]
async fn exhausted_retries_fail_the_run_and_undo_what_completed() {
    let busy = || Outcome::Fail(TestError::Busy);
    let run = Harness::new()
        .script("wait_healthy", [busy(), busy(), busy(), busy()])
        .run(&Provision, (7,))
        .await;
    let err = run.result.as_ref().unwrap_err();
    assert_eq!(err.step(), Some("wait_healthy"));
    assert_eq!(err.step_error().unwrap().attempts().len(), 4);
    assert_eq!(run.attempts_of("wait_healthy"), 4);
    run.assert_path(["launch", "wait_healthy"]);
    assert!(UNDONE.lock().unwrap().contains(&7));
}

#[tokio::test(start_paused = true)]
async fn a_scripted_panic_is_the_step_failing() {
    let run = Harness::new()
        .script("create_schema", [Outcome::Panic("disk full".into())])
        .run(&Provision, (11,))
        .await;
    let err = run.result.unwrap_err();
    let step = err.step_error().unwrap();
    assert_eq!(step.step(), "create_schema");
    assert!(step.is_panic());
    assert!(UNDONE.lock().unwrap().contains(&11));
}

#[workflow]
async fn tolerant(n: u32) -> Result<u32, TestError> {
    #[catch(degraded, on = errors)]
    let n = create_schema(n).await?;
    Ok(n)
}

#[tokio::test(start_paused = true)]
async fn a_scripted_error_takes_the_catch_path() {
    let run = Harness::new()
        .script(
            "create_schema",
            [Outcome::Fail(TestError::Broken("x".into()))],
        )
        .run(&Tolerant, (2,))
        .await;
    assert_eq!(run.result.as_ref().unwrap(), &0);
    run.assert_path(["create_schema", "degraded"]);
    // The script is used up: the real step runs.
    let run = Harness::new()
        .script("create_schema", [Outcome::Succeed])
        .run(&Tolerant, (2,))
        .await;
    assert_eq!(run.result.as_ref().unwrap(), &20);
    run.assert_path(["create_schema"]);
}

#[tokio::test(start_paused = true)]
async fn a_flow_pipeline_is_scripted_the_same_way() {
    let pipeline = flow! { launch -> wait_healthy [retry(max_attempts = 2)] -> create_schema };
    let run = Harness::new()
        .script("wait_healthy", [Outcome::Fail(TestError::Busy)])
        .run(&pipeline, 5)
        .await;
    assert_eq!(run.result.as_ref().unwrap(), &50);
    assert_eq!(run.attempts_of("wait_healthy"), 2);
    run.assert_path(["launch", "wait_healthy", "create_schema"]);
}

#[tokio::test]
#[should_panic(expected = "`wait_healthyy` is not a step of workflow `Provision`")]
async fn a_misspelt_key_is_refused() {
    let _ = Harness::new()
        .script("wait_healthyy", [Outcome::Fail(TestError::Busy)])
        .run(&Provision, (1,))
        .await;
}
