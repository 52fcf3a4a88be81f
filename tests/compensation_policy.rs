//! `compensate(undo, timeout = "..", retry(..))`: an undo's own policies, through both macros,
//! on tokio's paused clock.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::TestError;
use flow::error::CompensationOutcome;
use flow::prelude::*;

static UNDO_TRIES: Mutex<u32> = Mutex::new(0);

async fn reserve(n: u32) -> Result<u32, TestError> {
    Ok(n)
}

/// Fails its first attempt, then succeeds.
async fn release(_: u32) -> Result<(), TestError> {
    let mut tries = UNDO_TRIES.lock().unwrap();
    *tries += 1;
    if *tries == 1 {
        Err(TestError::Busy)
    } else {
        Ok(())
    }
}

/// Never returns.
async fn hang(_: u32) -> Result<(), TestError> {
    std::future::pending().await
}

async fn boom(_: u32) -> Result<u32, TestError> {
    Err(TestError::Busy)
}

#[workflow]
async fn policied(n: u32) -> Result<u32, TestError> {
    #[compensate(release, retry(max_attempts = 2, backoff = constant("100ms")))]
    let a = reserve(n).await?;
    #[compensate(hang, timeout = "1s", retry(max_attempts = 2))]
    let b = reserve(a).await?;
    boom(b).await
}

#[tokio::test(start_paused = true)]
async fn an_undo_has_its_own_timeout_and_retries_in_a_workflow() {
    let policy = Policied::GRAPH.nodes[2].policy;
    assert_eq!(
        policy,
        "compensate(release, retry(max_attempts = 2, backoff = constant(100ms)))"
    );
    let e = Runtime::new().run(&Policied, (1,)).await.unwrap_err();
    let outcomes: Vec<_> = e
        .compensations()
        .iter()
        .map(|r| (r.step, r.attempts, r.outcome.clone()))
        .collect();
    assert_eq!(
        outcomes,
        [
            (
                "reserve",
                2,
                CompensationOutcome::TimedOut(Duration::from_secs(1))
            ),
            ("reserve", 2, CompensationOutcome::Succeeded)
        ]
    );
}

static HANG_TRIES: Mutex<u32> = Mutex::new(0);

async fn hang_counted(_: u32) -> Result<(), TestError> {
    *HANG_TRIES.lock().unwrap() += 1;
    std::future::pending().await
}

#[tokio::test(start_paused = true)]
async fn an_undo_has_its_own_timeout_in_a_flow() {
    let f = flow! {
        reserve [compensate(hang_counted, timeout = "2s", retry(max_attempts = 3))] -> boom
    };
    let e = f.run(5).await.unwrap_err();
    assert_eq!(*HANG_TRIES.lock().unwrap(), 3);
    assert_eq!(
        e.compensations()[0].outcome,
        CompensationOutcome::TimedOut(Duration::from_secs(2))
    );
}
