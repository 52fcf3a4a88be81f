//! The workflow of the chaos test (`tests/chaos.rs`), shared by the worker processes
//! (`chaos-worker`) and the test that enqueues its runs.
//!
//! `chaos10` has ten step nodes: a step, a step retried with a backoff (its first attempt
//! fails for even inputs), a parallel group of two, a map of three items (two at a time),
//! and five steps. Every step execution appends `start <step> <idempotency key> <worker>
//! <attempt>` to its worker process's side-effect log before it works, and returns which
//! worker ran it, so that the test can tell who committed each step.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use flow::prelude::*;
use serde::{Deserialize, Serialize};

/// A step's error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fail(pub String);

impl core::fmt::Display for Fail {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A step's value, and the worker that computed it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct V {
    /// The value.
    pub v: u64,
    /// The worker's name.
    pub by: String,
}

/// This process's side-effect log and worker name (set by `chaos-worker` at start).
pub static WORKER: OnceLock<(PathBuf, String)> = OnceLock::new();

fn me() -> String {
    WORKER.get().map_or_else(String::new, |(_, n)| n.clone())
}

/// Appends one line to this process's log (one `write` call: a killed process leaves no
/// half line).
fn log(line: &str) {
    let Some((path, _)) = WORKER.get() else {
        return;
    };
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
    if let Err(e) = written {
        eprintln!("chaos-worker: the side-effect log cannot be written: {e}");
        std::process::exit(3);
    }
}

/// A step's side effect: logged, then held a few milliseconds so that kills and stalls land
/// inside steps as well as between them. Returns the attempt's number.
async fn effect(step: &str) -> u32 {
    let ctx = flow::step_context();
    let key = ctx
        .as_ref()
        .map(|c| c.idempotency_key())
        .unwrap_or_default();
    let attempt = ctx.as_ref().map_or(1, |c| c.attempt());
    log(&format!("start {step} {key} {} {attempt}", me()));
    tokio::time::sleep(Duration::from_millis(20 + u64::from(fastrand_ms()))).await;
    attempt
}

/// 0..40, from the clock (the steps need no better randomness).
fn fastrand_ms() -> u8 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    u8::try_from(nanos % 40).unwrap_or(0)
}

fn v(v: u64) -> V {
    V { v, by: me() }
}

async fn s1(n: u64) -> Result<V, Fail> {
    effect("s1").await;
    Ok(v(n + 1))
}

async fn flaky(n: u64) -> Result<V, Fail> {
    let attempt = effect("flaky").await;
    if n.is_multiple_of(2) && attempt == 1 {
        return Err(Fail(format!("attempt {attempt} of {n} failed")));
    }
    Ok(v(n + 100))
}

async fn left(n: u64) -> Result<V, Fail> {
    effect("left").await;
    Ok(v(n * 2))
}

async fn right(n: u64) -> Result<V, Fail> {
    effect("right").await;
    Ok(v(n * 3))
}

async fn probe(base: u64, item: u64) -> Result<V, Fail> {
    effect("probe").await;
    Ok(v(base + item * 10))
}

macro_rules! add_steps {
    ($($name:ident + $k:literal),*) => {$(
        async fn $name(n: u64) -> Result<V, Fail> {
            effect(stringify!($name)).await;
            Ok(v(n + $k))
        }
    )*};
}
add_steps!(s6 + 6, s7 + 7, s8 + 8, s9 + 9, s10 + 10);

/// Ten step nodes: a step, a retried step, a parallel group of two, a map of three items,
/// five steps.
#[workflow(durable)]
pub async fn chaos10(n: u64) -> Result<u64, Fail> {
    let a = s1(n).await?;
    #[retry(max_attempts = 3, backoff = constant("20ms"))]
    let b = flaky(a.v).await?;
    let (l, r) = flow::join!(left(b.v), right(b.v)).await?;
    let base = l.v + r.v;
    let items: Vec<u64> = vec![1, 2, 3];
    let probes = flow::map!(items, |i| probe(base, i), concurrency = 2).await?;
    let x = probes.iter().map(|p| p.v).sum::<u64>();
    let x = s6(x).await?.v;
    let x = s7(x).await?.v;
    let x = s8(x).await?.v;
    let x = s9(x).await?.v;
    Ok(s10(x).await?.v)
}

/// What `chaos10(n)` returns.
pub fn expected(n: u64) -> u64 {
    let b = n + 1 + 100;
    let base = 5 * b;
    3 * base + 60 + 40
}

/// The step records of one run: 12 (the map's three items are one node).
pub const STEPS_PER_RUN: usize = 12;
