//! `flowctl` as a user runs it, on a store that durable runs wrote: list, show, graph,
//! cancel, restart from a step, and its errors.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use flow::prelude::*;
use flow::store::{RunStatus, Store};
use serde::{Deserialize, Serialize};

/// A step's error.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fail(String);

impl core::fmt::Display for Fail {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

static FETCHES: AtomicU32 = AtomicU32::new(0);
static SAVES: AtomicU32 = AtomicU32::new(0);

async fn fetch(n: u32) -> Result<u32, Fail> {
    FETCHES.fetch_add(1, Ordering::SeqCst);
    Ok(n * 10)
}
async fn transform(n: u32) -> Result<u32, Fail> {
    if n == 70 {
        return Err(Fail("seventy is refused".into()));
    }
    Ok(n + 1)
}
async fn save(n: u32) -> Result<u32, Fail> {
    SAVES.fetch_add(1, Ordering::SeqCst);
    Ok(n)
}
async fn wait_forever(_: u32) -> Result<u32, Fail> {
    core::future::pending::<()>().await;
    Ok(0)
}

#[workflow(durable)]
async fn etl(n: u32) -> Result<u32, Fail> {
    let a = fetch(n).await?;
    let b = transform(a).await?;
    if b > 1000 {
        return Ok(wait_forever(b).await?);
    }
    save(b).await
}

fn flowctl(store: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flowctl"))
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .expect("flowctl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn temp_store() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "flowctl-test-{}-{}",
        std::process::id(),
        flow::store::new_run_id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("runs.db")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flowctl_lists_shows_draws_cancels_and_restarts_runs() {
    let path = temp_store();
    let store = std::sync::Arc::new(flow_store_sqlite::SqliteStore::open(&path).unwrap());
    let runtime = Runtime::new().with_shared_store(store.clone());
    assert_eq!(
        runtime
            .start(Etl, "ok-1", (1,))
            .await
            .unwrap()
            .await
            .unwrap(),
        11
    );
    assert!(
        runtime
            .start(Etl, "bad-7", (7,))
            .await
            .unwrap()
            .await
            .is_err()
    );
    // Runs until cancelled.
    let stuck = runtime.start(Etl, "stuck-200", (200,)).await.unwrap();

    // list, filtered
    let (ok, out, err) = flowctl(&path, &["list"]);
    assert!(ok, "{err}");
    for id in ["ok-1", "bad-7", "stuck-200"] {
        assert!(out.contains(id), "{out}");
    }
    let (_, out, _) = flowctl(&path, &["list", "--status", "failed"]);
    assert!(out.contains("bad-7") && !out.contains("ok-1"), "{out}");
    let (_, out, _) = flowctl(&path, &["list", "--workflow", "Other", "--since", "1h"]);
    assert_eq!(out.lines().count(), 1, "only the header: {out}");

    // show
    let (ok, out, err) = flowctl(&path, &["show", "ok-1"]);
    assert!(ok, "{err}");
    assert!(out.contains("status       completed"), "{out}");
    assert!(out.contains("output       11"), "{out}");
    assert!(out.contains("fetch@0"), "{out}");
    assert!(out.contains("transform@0"), "{out}");
    let (_, out, _) = flowctl(&path, &["show", "bad-7"]);
    assert!(
        out.contains("failed") && out.contains("seventy is refused"),
        "{out}"
    );

    // graph: fetch done, transform failed, save not reached
    let (ok, out, err) = flowctl(&path, &["graph", "bad-7"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("%% run bad-7 (failed)"), "{out}");
    assert!(out.contains("flowchart TD"), "{out}");
    let class = |name: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with("class ") && l.trim_end().ends_with(name))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    let node = |step: &str| {
        out.lines()
            .find(|l| l.contains(&format!("\"{step}\"")))
            .and_then(|l| l.trim_start().split(['[', '(', '{']).next())
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no node {step} in {out}"))
    };
    assert!(class(" done").contains(&node("fetch")), "{out}");
    assert!(class(" failed").contains(&node("transform")), "{out}");
    assert!(class(" notreached").contains(&node("save")), "{out}");

    // cancel: refused for a finished run; a running run is cancelled by its process
    let (ok, _, err) = flowctl(&path, &["cancel", "ok-1"]);
    assert!(!ok && err.contains("already finished"), "{err}");
    let (ok, out, err) = flowctl(&path, &["cancel", "stuck-200"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("cancellation of run `stuck-200` requested"),
        "{out}"
    );
    let e = tokio::time::timeout(std::time::Duration::from_secs(10), stuck.wait())
        .await
        .expect("cancelled within the poll interval")
        .unwrap_err();
    assert!(e.is_cancelled(), "{e}");
    assert_eq!(
        store.get_run("stuck-200").await.unwrap().unwrap().status,
        RunStatus::Cancelled
    );

    // restart: refused for a step not in the graph; from `transform`, `fetch` keeps its output
    let (ok, _, err) = flowctl(&path, &["restart", "ok-1", "--from", "nope"]);
    assert!(!ok, "{err}");
    assert!(err.contains("step `nope` is not in its graph"), "{err}");
    assert!(err.contains("fetch") && err.contains("transform"), "{err}");
    let (fetches, saves) = (FETCHES.load(Ordering::SeqCst), SAVES.load(Ordering::SeqCst));
    let (ok, out, err) = flowctl(&path, &["restart", "ok-1", "--from", "transform"]);
    assert!(ok, "{err}");
    assert!(out.contains("records deleted: save, transform"), "{out}");
    assert!(out.contains("recorded outputs kept: fetch"), "{out}");
    let history = store.history_of("ok-1").await.unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(
        (history[0].actor.as_str(), history[0].action.as_str()),
        ("flowctl", "restart")
    );
    assert!(history[0].detail.contains("transform"), "{history:?}");
    assert_eq!(
        store.get_run("ok-1").await.unwrap().unwrap().status,
        RunStatus::Pending
    );
    let mut registry = flow::Registry::new();
    registry.register_durable(Etl).unwrap();
    for r in runtime.resume(&registry).await.unwrap().resumed {
        r.wait().await.unwrap();
    }
    assert_eq!(
        FETCHES.load(Ordering::SeqCst),
        fetches,
        "fetch was not run again"
    );
    assert_eq!(SAVES.load(Ordering::SeqCst), saves + 1, "save ran again");
    assert_eq!(
        runtime
            .result(&Etl, "ok-1")
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        11
    );

    // signal: a value that is not JSON is refused; a finished run is refused
    let (ok, _, err) = flowctl(&path, &["signal", "ok-1", "approve", "\"x\""]);
    assert!(!ok && err.contains("already finished"), "{err}");
    let pending = runtime.start(Etl, "stuck-300", (300,)).await.unwrap();
    let (ok, _, err) = flowctl(&path, &["signal", "stuck-300", "approve", "ada"]);
    assert!(!ok && err.contains("the value must be JSON"), "{err}");
    let (ok, out, err) = flowctl(&path, &["signal", "stuck-300", "approve", "\"ada\""]);
    assert!(ok, "{err}");
    assert!(
        out.contains("signal `approve` sent to run `stuck-300`"),
        "{out}"
    );
    let taken = store
        .take_signal("stuck-300", "approve")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(taken.payload, b"\"ada\"");
    let (ok, _, err) = flowctl(&path, &["cancel", "stuck-300"]);
    assert!(ok, "{err}");
    assert!(pending.wait().await.unwrap_err().is_cancelled());
    // Each action is in the run's history, by `flowctl`.
    let history = store.history_of("stuck-300").await.unwrap();
    assert_eq!(
        history
            .iter()
            .map(|h| (h.actor.as_str(), h.action.as_str()))
            .collect::<Vec<_>>(),
        [("flowctl", "signal"), ("flowctl", "cancel")]
    );
    assert!(history[0].detail.contains("approve"), "{history:?}");

    // errors a person understands
    let (ok, _, err) = flowctl(&path, &["show", "missing"]);
    assert!(!ok && err.contains("no run `missing`"), "{err}");
    let (ok, _, err) = flowctl(&path, &["serve", "--port", "http"]);
    assert!(!ok && err.contains("--port must be a port number"), "{err}");
    let (ok, _, err) = flowctl(&path, &["serve", "--bind", "localhost:1"]);
    assert!(!ok && err.contains("--bind must be an IP address"), "{err}");
    let (ok, _, err) = flowctl(&path, &["list", "--status", "done"]);
    assert!(!ok && err.contains("unknown status \"done\""), "{err}");
    let (ok, _, err) = flowctl(&path.with_file_name("absent.db"), &["list"]);
    assert!(!ok && err.contains("no store at"), "{err}");
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

static LOADS: AtomicU32 = AtomicU32::new(0);

async fn load(n: u32) -> Result<u32, Fail> {
    LOADS.fetch_add(1, Ordering::SeqCst);
    Ok(n + 5)
}
async fn report(n: u32) -> Result<u32, Fail> {
    Ok(n * 2)
}

/// A durable child workflow.
#[workflow(durable)]
async fn loader(n: u32) -> Result<u32, Fail> {
    load(n).await
}

/// A child's failure, as its parent step's error.
impl From<flow::Error<Fail>> for Fail {
    fn from(e: flow::Error<Fail>) -> Self {
        Fail(e.to_string())
    }
}

/// A durable parent: the child, then a step.
#[workflow(durable)]
async fn nightly(n: u32) -> Result<u32, Fail> {
    let a = loader(n).await?;
    report(a).await
}

/// A restart from the step that ran a durable child deletes the child's records with it: the
/// child runs again when the run resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_from_a_child_workflows_step_runs_the_child_again() {
    let path = temp_store();
    let store = std::sync::Arc::new(flow_store_sqlite::SqliteStore::open(&path).unwrap());
    let runtime = Runtime::new().with_shared_store(store.clone());
    let run = runtime.start(Nightly, "n-1", (5,)).await.unwrap();
    assert_eq!(run.wait().await.unwrap(), 20);
    assert_eq!(LOADS.load(Ordering::SeqCst), 1);
    let keys = |steps: Vec<flow::store::StepRecord>| {
        let mut k: Vec<String> = steps.into_iter().map(|s| s.key.node).collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(store.steps_of("n-1").await.unwrap()),
        ["loader", "loader@0.1/load", "report"]
    );
    let (ok, out, err) = flowctl(&path, &["restart", "n-1", "--from", "loader"]);
    assert!(ok, "{err}");
    assert!(out.contains("records deleted: loader, report"), "{out}");
    assert!(store.steps_of("n-1").await.unwrap().is_empty());
    let mut registry = flow::Registry::new();
    registry.register_durable(Nightly).unwrap();
    for r in runtime.resume(&registry).await.unwrap().resumed {
        r.wait().await.unwrap();
    }
    assert_eq!(LOADS.load(Ordering::SeqCst), 2, "the child ran again");
    assert_eq!(
        runtime
            .result(&Nightly, "n-1")
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        20
    );
}
