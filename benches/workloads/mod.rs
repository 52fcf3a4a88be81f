//! The workloads shared by `benches/overhead.rs` (criterion, wall-clock) and
//! `benches/instructions.rs` (gungraun, callgrind instruction counts), so that both measure
//! exactly the same code: the trivial steps, the hand-written chain and its `#[workflow]`
//! twin, the boxed reference chain, the observer, and the retry path.
//!
//! Each bench target uses a part of this module only, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::cell::Cell;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;

use flow::prelude::*;

// ---------------------------------------------------------------- the steps

/// The steps' error type.
#[derive(Debug)]
pub struct E;

impl std::fmt::Display for E {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("step failed")
    }
}

impl std::error::Error for E {}

macro_rules! trivial_steps {
    ($($name:ident),*) => {$(
        /// A trivial step: adds 1.
        pub async fn $name(x: u64) -> Result<u64, E> {
            Ok(x + 1)
        }
    )*};
}
trivial_steps!(s1, s2, s3, s4, s5, s6, s7, s8, s9, s10);

// ---------------------------------------------------------------- the chains

/// The baseline: ten trivial steps awaited by hand.
pub async fn hand(x: u64) -> Result<u64, E> {
    let x = s1(x).await?;
    let x = s2(x).await?;
    let x = s3(x).await?;
    let x = s4(x).await?;
    let x = s5(x).await?;
    let x = s6(x).await?;
    let x = s7(x).await?;
    let x = s8(x).await?;
    let x = s9(x).await?;
    s10(x).await
}

/// The same ten steps as a `#[workflow]` (type `Chain`).
#[workflow]
pub async fn chain(x: u64) -> Result<u64, E> {
    let x = s1(x).await?;
    let x = s2(x).await?;
    let x = s3(x).await?;
    let x = s4(x).await?;
    let x = s5(x).await?;
    let x = s6(x).await?;
    let x = s7(x).await?;
    let x = s8(x).await?;
    let x = s9(x).await?;
    s10(x).await
}

/// A boxed future, as a boxed step returns.
pub type BoxFut = Pin<Box<dyn Future<Output = Result<u64, E>> + Send>>;
/// A boxed step.
pub type BoxStep = Box<dyn Fn(u64) -> BoxFut + Send + Sync>;

/// The reference point of DESIGN.md: ten boxed steps, one boxed future each.
pub fn boxed_steps() -> Vec<BoxStep> {
    fn b<F: Future<Output = Result<u64, E>> + Send + 'static>(
        f: fn(u64) -> F,
    ) -> Box<dyn Fn(u64) -> BoxFut + Send + Sync> {
        Box::new(move |x| Box::pin(f(x)))
    }
    vec![
        b(s1),
        b(s2),
        b(s3),
        b(s4),
        b(s5),
        b(s6),
        b(s7),
        b(s8),
        b(s9),
        b(s10),
    ]
}

/// Runs the boxed steps in order.
pub async fn run_boxed(steps: &[BoxStep], mut x: u64) -> Result<u64, E> {
    for s in steps {
        x = s(x).await?;
    }
    Ok(x)
}

/// The observer of the observed cases: it only `black_box`es the event.
pub fn observer(e: &Event) {
    black_box(e);
}

/// The input of a fan-out or map: `0..n`.
pub fn items(n: u64) -> Vec<u64> {
    (0..n).collect()
}

// ---------------------------------------------------------------- retry

thread_local! {
    /// How many more calls of `flaky` fail.
    static FAILS_LEFT: Cell<u32> = const { Cell::new(0) };
}

/// Fails as many times as `arm` said, then adds 1.
pub async fn flaky(x: u64) -> Result<u64, E> {
    FAILS_LEFT.with(|left| match left.get() {
        0 => Ok(x + 1),
        n => {
            left.set(n - 1);
            Err(E)
        }
    })
}

/// The next two calls of `flaky` fail.
pub fn arm() {
    FAILS_LEFT.with(|left| left.set(2));
}

/// The baseline retry: at most 3 attempts, no delay.
pub async fn hand_retry(x: u64) -> Result<u64, E> {
    let mut attempt = 1;
    loop {
        match flaky(x).await {
            Ok(v) => return Ok(v),
            Err(e) if attempt >= 3 => return Err(e),
            Err(_) => attempt += 1,
        }
    }
}

/// `flaky` retried by `#[workflow]` (type `Retrying`).
#[workflow]
pub async fn retrying(x: u64) -> Result<u64, E> {
    #[retry(max_attempts = 3)]
    let x = flaky(x).await?;
    Ok(x)
}
