//! The expansion of both macros is clean under the strictest lints a user may set: this file
//! denies warnings, `clippy::all` and `clippy::pedantic`, and forbids `unsafe` (CI runs
//! `cargo clippy --all-targets -- -D warnings`, which lints it).
#![deny(warnings, clippy::all, clippy::pedantic)]
#![forbid(unsafe_code)]

use flow::prelude::*;

/// The error of every step here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed;

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("failed")
    }
}

async fn one(n: u32) -> Result<u32, Failed> {
    tokio::task::yield_now().await;
    Ok(n + 1)
}
async fn two(n: u32) -> Result<u32, Failed> {
    tokio::task::yield_now().await;
    Ok(n * 2)
}
async fn pair(p: (u32, u32)) -> Result<Vec<u32>, Failed> {
    tokio::task::yield_now().await;
    Ok(vec![p.0, p.1])
}
async fn total(v: Vec<u32>) -> Result<u32, Failed> {
    tokio::task::yield_now().await;
    Ok(v.iter().sum())
}
async fn undo(_: u32) -> Result<(), Failed> {
    tokio::task::yield_now().await;
    Ok(())
}
async fn recover(_: flow::StepError<Failed>) -> Result<u32, Failed> {
    tokio::task::yield_now().await;
    Ok(0)
}
fn transient(e: &Failed) -> bool {
    *e == Failed
}

/// Every `#[workflow]` construct.
#[workflow(timeout = "1m")]
pub async fn everything(n: u32) -> Result<u32, Failed> {
    tokio::task::yield_now().await;
    #[compensate(undo)]
    let a = one(n).await?;
    #[retry(max_attempts = 3, backoff = exponential("10ms", 2.0), max_delay = "1s", jitter = full, when = transient)]
    #[retry(max_attempts = 2, on = timeouts)]
    #[timeout("5s")]
    let b = two(a).await?;
    #[catch(recover, on = timeouts)]
    #[timeout("1s")]
    let c = one(b).await?;
    // An infallible step: its output is `()`, and so is what the body sees.
    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    let (d, e) = flow::join!(one(c), two(c)).await?;
    let (f, _) = flow::settle!(one(d), two(e)).await;
    Ok(f.unwrap_or_default())
}

#[tokio::test]
async fn workflow_expansion_is_lint_clean() {
    assert_eq!(everything(1).await.ok(), Some(7));
}

#[tokio::test]
async fn flow_expansion_is_lint_clean() {
    let f = flow! {
        name = "everything", timeout = "1m";
        one [compensate = undo]
            -> two [retry(max_attempts = 3, backoff = constant("1ms"), jitter = equal), timeout = "1s"]
            -> (one & two)
            -> pair
            -> map(one -> two, concurrency = 2)
            -> total
            -> branch(|n| *n > 10) { true => one, false => two [catch(recover)] }
    };
    assert_eq!(f.run(1).await.unwrap(), 31);
}
