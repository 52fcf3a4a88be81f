//! `flow::sleep` in a `#[workflow]`: a node of the graph that waits; in a durable workflow
//! its wake-up time is recorded, so a resumed run waits only what is left.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use flow::prelude::*;
use flow::store::{MemoryStore, RunStatus, StepKey, Store};
use serde::{Deserialize, Serialize};

/// A step's error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fail(String);

impl core::fmt::Display for Fail {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

static CALLS: AtomicU32 = AtomicU32::new(0);

async fn deploy(n: u32) -> Result<u32, Fail> {
    CALLS.fetch_add(1, Ordering::SeqCst);
    Ok(n + 1)
}

async fn verify(n: u32) -> Result<u32, Fail> {
    Ok(n * 10)
}

/// Deploy, let it soak ten minutes, verify.
#[workflow]
async fn soak(n: u32) -> Result<u32, Fail> {
    let v = deploy(n).await?;
    #[label(soak_time)]
    flow::sleep("10m").await;
    verify(v).await
}

#[tokio::test(start_paused = true)]
async fn a_sleep_is_a_node_of_the_graph_and_waits_exactly() {
    let graph = Soak.graph();
    let node = graph
        .nodes
        .iter()
        .find(|n| n.name == "soak_time")
        .expect("the sleep is a node");
    assert_eq!(node.policy, "sleep = 10m");
    assert!(graph.to_mermaid().contains("soak_time"));
    let started = tokio::time::Instant::now();
    let mut handle = Runtime::new().spawn_with_events(Soak, (1,));
    let mut steps = Vec::new();
    while let Some(event) = handle.events().next().await {
        if matches!(event.kind, EventKind::AttemptStarted { attempt: 1 }) {
            steps.push((event.step, started.elapsed()));
        }
    }
    assert_eq!(handle.await.unwrap(), 20);
    assert_eq!(
        steps,
        [
            ("deploy", Duration::ZERO),
            ("soak_time", Duration::ZERO),
            ("verify", Duration::from_secs(600)),
        ]
    );
}

async fn prepare(n: u32) -> Result<u32, Fail> {
    CALLS.fetch_add(100, Ordering::SeqCst);
    Ok(n + 1)
}

/// A durable sleep between two steps.
#[workflow(durable)]
async fn cool_down(n: u32) -> Result<u32, Fail> {
    let v = prepare(n).await?;
    flow::sleep(Duration::from_millis(2000)).await;
    verify(v).await
}

#[test]
fn a_durable_sleep_resumed_after_a_crash_waits_only_what_is_left() {
    let store = MemoryStore::new();
    let started = std::time::Instant::now();
    // The first "process": crashes 1.2 s into the 2 s sleep.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let runtime = Runtime::new().with_store(store.clone());
        let run = runtime.start(CoolDown, "cool-1", (4,)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1200)).await;
        drop(run);
    });
    rt.shutdown_timeout(Duration::from_secs(10));
    let steps = futures_util::FutureExt::now_or_never(store.steps_of("cool-1"))
        .unwrap()
        .unwrap();
    let sleep = steps
        .iter()
        .find(|s| s.key == StepKey::new("cool-1", "sleep"))
        .expect("the sleep's record");
    assert!(sleep.outcome.is_none(), "still sleeping when it crashed");
    let wake = sleep
        .retry
        .wake_at_ms
        .expect("its wake-up time is recorded");
    let run = futures_util::FutureExt::now_or_never(store.get_run("cool-1"))
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        (run.created_ms + 1990..=run.created_ms + 2200).contains(&wake),
        "wakes 2 s after it started: {} vs {wake}",
        run.created_ms
    );

    // The second: resumes, waits what is left (about 0.8 s, not 2 s), then verifies.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let result = rt.block_on(async {
        let runtime = Runtime::new().with_store(store.clone());
        let mut registry = flow::Registry::new();
        registry.register_durable(CoolDown).unwrap();
        let report = runtime.resume(&registry).await.unwrap();
        assert_eq!(report.resumed.len(), 1);
        for r in report.resumed {
            r.wait().await.unwrap();
        }
        runtime.result(&CoolDown, "cool-1").await.unwrap()
    });
    let total = started.elapsed();
    assert_eq!(result.unwrap().unwrap(), 50);
    assert!(
        total >= Duration::from_millis(1950) && total < Duration::from_millis(3000),
        "the two processes together took {total:?}: the resumed sleep waited only what was left"
    );
    let run = futures_util::FutureExt::now_or_never(store.get_run("cool-1"))
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(run.status, RunStatus::Completed);
}
