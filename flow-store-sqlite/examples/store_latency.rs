//! Durable step commits on this machine's disk: the latency of one commit at a time (p50,
//! p99) with `synchronous=FULL` and `NORMAL`, and the throughput of many concurrent runs
//! (group commit). Run with `cargo run --release -p flow-store-sqlite --example store_latency`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flow_runtime::store::{NewRun, StepCommit, StepKey, StepOutcome, Store, new_run_id};
use flow_store_sqlite::{Options, SqliteStore, Synchronous};

fn commit(run: &str, node: String) -> StepCommit {
    StepCommit {
        key: StepKey::new(run, node),
        outcome: StepOutcome::Completed(br#"{"ok":true}"#.to_vec()),
        attempts: Vec::new(),
        compensations: Vec::new(),
    }
}

async fn new_run(store: &dyn Store) -> String {
    let id = new_run_id();
    store
        .create_run(NewRun {
            id: id.clone(),
            workflow: "bench".into(),
            fingerprint: 1,
            node_fingerprints: Default::default(),
            input: Vec::new(),
        })
        .await
        .expect("create_run");
    id
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

#[tokio::main]
async fn main() {
    let path = std::env::temp_dir().join(format!("flow-store-latency-{}.db", new_run_id()));
    for synchronous in [Synchronous::Full, Synchronous::Normal] {
        let options = Options {
            synchronous,
            ..Options::default()
        };
        let store = Arc::new(SqliteStore::open_with(&path, options).expect("open"));
        let run = new_run(store.as_ref()).await;
        let mut times = Vec::new();
        for i in 0..2000 {
            let start = Instant::now();
            store
                .commit_step(commit(&run, format!("s{i}")))
                .await
                .expect("commit");
            times.push(start.elapsed());
        }
        times.sort();
        println!(
            "{synchronous:?}: one commit at a time: p50 {:?}, p99 {:?}",
            percentile(&times, 0.5),
            percentile(&times, 0.99)
        );

        let (tasks, steps) = (256, 200);
        let mut runs = Vec::new();
        for _ in 0..tasks {
            runs.push(new_run(store.as_ref()).await);
        }
        let before = store.write_transactions();
        let start = Instant::now();
        let handles: Vec<_> = runs
            .into_iter()
            .map(|run| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in 0..steps {
                        store
                            .commit_step(commit(&run, format!("s{i}")))
                            .await
                            .expect("commit");
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.expect("task");
        }
        let elapsed = start.elapsed();
        let total = tasks * steps;
        println!(
            "{synchronous:?}: {tasks} concurrent runs: {total} commits in {elapsed:?} = {:.0} steps/s, {} transactions",
            total as f64 / elapsed.as_secs_f64(),
            store.write_transactions() - before
        );
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}
