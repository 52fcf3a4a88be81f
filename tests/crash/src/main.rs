//! The child process of the crash test (`tests/crash.rs`): runs durable workflows (six
//! `#[workflow(durable)]` functions, one running a durable child workflow, and a durable
//! `flow!`) on a
//! SQLite store until every run has finished, and is killed with SIGKILL at random moments.
//!
//! `crash-child <store> <log> <generation> <runs>`: resumes the unfinished runs of the store,
//! then starts (or, for ids that exist, joins) `runs` runs of each workflow, and exits 0 when
//! all have finished. Every step appends `start <name> <idempotency key> <generation>
//! <attempt>` to the side-effect log before it works, and every undo `undo <name> <key>
//! <generation>`; the test reads the log and the store.

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

static LOG: OnceLock<(PathBuf, u32)> = OnceLock::new();

/// Appends one line to the side-effect log (one `write` call: a killed process never leaves
/// half a line).
fn log(line: &str) {
    let Some((path, _)) = LOG.get() else { return };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("the side-effect log opens");
    f.write_all(format!("{line}\n").as_bytes())
        .expect("the side-effect log is written");
}

fn generation() -> u32 {
    LOG.get().map_or(0, |(_, g)| *g)
}

/// A step's side effect: logged, then a little real work (a file write) and a short wait,
/// so that kills land inside steps as well as between them.
async fn effect(name: &str) -> u32 {
    let ctx = flow::step_context();
    let key = ctx
        .as_ref()
        .map(|c| c.idempotency_key())
        .unwrap_or_default();
    let attempt = ctx.as_ref().map_or(1, |c| c.attempt());
    log(&format!("start {name} {key} {} {attempt}", generation()));
    tokio::time::sleep(Duration::from_millis(2)).await;
    attempt
}

async fn s1(n: u32) -> Result<u32, Fail> {
    effect("s1").await;
    Ok(n + 1)
}
async fn s2(n: u32) -> Result<u32, Fail> {
    effect("s2").await;
    Ok(n * 2)
}
async fn s3(n: u32) -> Result<u32, Fail> {
    effect("s3").await;
    Ok(n + 3)
}
async fn s4(n: u32) -> Result<u32, Fail> {
    effect("s4").await;
    Ok(n * 4)
}

/// A sequence of four steps.
#[workflow(durable)]
pub async fn sequence(n: u32) -> Result<u32, Fail> {
    let a = s1(n).await?;
    let b = s2(a).await?;
    let c = s3(b).await?;
    s4(c).await
}

async fn pa(n: u32) -> Result<u32, Fail> {
    effect("pa").await;
    Ok(n + 10)
}
async fn pb(n: u32) -> Result<u32, Fail> {
    effect("pb").await;
    Ok(n + 20)
}
async fn pc(n: u32) -> Result<u32, Fail> {
    effect("pc").await;
    Ok(n * 3)
}

/// A parallel group, then a step.
#[workflow(durable)]
pub async fn parallel(n: u32) -> Result<u32, Fail> {
    let (a, b) = flow::join!(pa(n), pb(n)).await?;
    pc(a + b).await
}

async fn item(i: u32) -> Result<u32, Fail> {
    effect(&format!("item{i}")).await;
    Ok(i * i)
}
async fn total(v: Vec<u32>) -> Result<u32, Fail> {
    effect("total").await;
    Ok(v.iter().sum())
}

/// A map over six items, three at a time, then a step.
#[workflow(durable)]
pub async fn fanout(n: u32) -> Result<u32, Fail> {
    let items: Vec<u32> = (n..n + 6).collect();
    let squares = flow::map!(items, |i| item(i), concurrency = 3).await?;
    total(squares).await
}

async fn flaky(n: u32) -> Result<u32, Fail> {
    let attempt = effect("flaky").await;
    if attempt < 3 {
        return Err(Fail(format!("attempt {attempt} failed")));
    }
    Ok(n + attempt)
}
async fn after(n: u32) -> Result<u32, Fail> {
    effect("after").await;
    Ok(n + 1)
}

/// A step that fails twice, retried with a backoff, then a step.
#[workflow(durable)]
pub async fn retried(n: u32) -> Result<u32, Fail> {
    #[retry(max_attempts = 5, backoff = constant("30ms"))]
    let v = flaky(n).await?;
    after(v).await
}

async fn reserve(n: u32) -> Result<u32, Fail> {
    effect("reserve").await;
    Ok(n)
}
async fn release(n: u32) -> Result<(), Fail> {
    log(&format!(
        "undo release flow:saga-{n}:release {}",
        generation()
    ));
    tokio::time::sleep(Duration::from_millis(2)).await;
    Ok(())
}
async fn charge(n: u32) -> Result<u32, Fail> {
    effect("charge").await;
    Err(Fail(format!("card {n} declined")))
}

/// A step with an undo, then a step that fails: the undo runs.
#[workflow(durable)]
pub async fn saga(n: u32) -> Result<u32, Fail> {
    #[compensate(release)]
    let r = reserve(n).await?;
    charge(r).await
}

async fn c1(which: u32, n: u32) -> Result<u32, Fail> {
    effect(&format!("c1-{which}")).await;
    Ok(n + 1)
}
async fn c2(which: u32, n: u32) -> Result<u32, Fail> {
    effect(&format!("c2-{which}")).await;
    Ok(n * 2)
}

/// A durable child workflow of two steps.
#[workflow(durable)]
pub async fn inner(which: u32, n: u32) -> Result<u32, Fail> {
    let a = c1(which, n).await?;
    c2(which, a).await
}

/// A child's failure, as its parent step's error.
impl From<flow::Error<Fail>> for Fail {
    fn from(e: flow::Error<Fail>) -> Self {
        Fail(e.to_string())
    }
}

/// A durable workflow running the durable child twice: the child's steps are recorded in
/// this run.
#[workflow(durable)]
pub async fn nested(n: u32) -> Result<u32, Fail> {
    let a = inner(0, n).await?;
    inner(1, a).await
}

async fn f1(n: u32) -> Result<u32, Fail> {
    effect("f1").await;
    Ok(n + 1)
}
async fn fa(n: u32) -> Result<u32, Fail> {
    effect("fa").await;
    Ok(n + 10)
}
async fn fb(n: u32) -> Result<u32, Fail> {
    effect("fb").await;
    Ok(n + 20)
}
async fn fsum(a: u32, b: u32) -> Result<u32, Fail> {
    effect("fsum").await;
    Ok(a + b)
}

/// A durable `flow!`: a step, a parallel group, then a closure stage that joins it.
fn flowed() -> impl flow::durable::DurableWorkflow<Input = u32, Output = u32, Error = Fail> + Clone
{
    flow! { name = "flowed", durable;
        f1 -> (fa & fb) -> |a, b| fsum(a, b) [retry(max_attempts = 2)]
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, store, log_path, generation, runs] = &args[..] else {
        eprintln!("usage: crash-child <store> <log> <generation> <runs>");
        std::process::exit(2);
    };
    let generation: u32 = generation.parse().expect("generation is a number");
    let runs: u32 = runs.parse().expect("runs is a number");
    let _ = LOG.set((PathBuf::from(log_path), generation));
    let store = flow_store_sqlite::SqliteStore::open(store).expect("the store opens");
    let runtime = Runtime::new().with_store(store);
    let mut registry = flow::Registry::new();
    registry.register_durable(Sequence).expect("registered");
    registry.register_durable(Parallel).expect("registered");
    registry.register_durable(Fanout).expect("registered");
    registry.register_durable(Retried).expect("registered");
    registry.register_durable(Saga).expect("registered");
    registry.register_durable(flowed()).expect("registered");
    registry.register_durable(Nested).expect("registered");
    let report = runtime.resume(&registry).await.expect("resume");
    assert!(
        report.unknown.is_empty() && report.incompatible.is_empty() && report.failed.is_empty(),
        "{report:?}"
    );
    let mut waiting = Vec::new();
    for r in report.resumed {
        waiting.push(tokio::spawn(async move {
            let _ = r.wait().await;
        }));
    }
    for i in 0..runs {
        let rt = runtime.clone();
        waiting.push(tokio::spawn(async move {
            let _ = rt
                .start(Sequence, format!("sequence-{i}"), (i,))
                .await
                .expect("start")
                .await;
            let _ = rt
                .start(Parallel, format!("parallel-{i}"), (i,))
                .await
                .expect("start")
                .await;
            let _ = rt
                .start(Fanout, format!("fanout-{i}"), (i,))
                .await
                .expect("start")
                .await;
            let _ = rt
                .start(Retried, format!("retried-{i}"), (i,))
                .await
                .expect("start")
                .await;
            let _ = rt
                .start(Saga, format!("saga-{i}"), (i,))
                .await
                .expect("start")
                .await;
            let _ = rt
                .start(flowed(), format!("flowed-{i}"), i)
                .await
                .expect("start")
                .await;
            let _ = rt
                .start(Nested, format!("nested-{i}"), (i,))
                .await
                .expect("start")
                .await;
        }));
    }
    for w in waiting {
        w.await.expect("a run's task");
    }
}
