//! Measures `commit_step` against a PostgreSQL server: the latency of one commit (one
//! committer), and the commits a second with 16 concurrent committers (each its own run, as
//! workers executing different runs do).
//!
//! ```text
//! cargo run --release -p flow-store-postgres --example commit_latency [URL] [--fenced]
//!     [--current-thread]
//! ```
//!
//! URL defaults to `FLOW_PG_URL`, then `postgres://postgres@127.0.0.1:5432/test`. The example
//! works in a schema of its own, dropped at the end. `--fenced` commits through a fenced
//! store (a worker's lease checked in each commit's transaction). `--current-thread` runs on
//! tokio's current-thread runtime instead of the multi-threaded one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flow_runtime::store::{
    Claim, Enqueue, NewRun, Queue, QueueOptions, StepCommit, StepKey, StepOutcome, Store,
    new_run_id,
};
use flow_store_postgres::{Options, PgStore};

const COMMITTERS: usize = 16;

fn new_run(id: &str) -> NewRun {
    NewRun {
        id: id.to_owned(),
        workflow: "bench".into(),
        fingerprint: 1,
        node_fingerprints: Default::default(),
        input: b"{}".to_vec(),
    }
}

fn commit(run: &str, i: usize) -> StepCommit {
    StepCommit {
        key: StepKey::new(run, format!("step-{i}")),
        outcome: StepOutcome::Completed(b"{\"ok\":true}".to_vec()),
        attempts: Vec::new(),
        compensations: Vec::new(),
    }
}

/// A run to commit steps of, and the store to commit them through.
async fn run_of(store: &Arc<PgStore>, fenced: bool) -> (String, Arc<dyn Store>) {
    let id = new_run_id();
    if !fenced {
        store.create_run(new_run(&id)).await.expect("create_run");
        return (id, store.clone());
    }
    let queue = format!("bench-{id}");
    store
        .enqueue(Enqueue::new(new_run(&id), &queue))
        .await
        .expect("enqueue");
    let claimed = store
        .claim(Claim {
            worker: "bench".into(),
            queue,
            options: QueueOptions::default(),
            max: 1,
            lease: Duration::from_secs(600),
        })
        .await
        .expect("claim");
    let epoch = claimed[0].lease.as_ref().map_or(0, |l| l.epoch);
    let fenced = store.clone().fenced(&id, epoch);
    (id, fenced)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    // `--current-thread`: the store's connections and the committers on one thread (no
    // wake-ups across threads: the lowest latency); by default a multi-threaded runtime.
    let mut runtime = if std::env::args().any(|a| a == "--current-thread") {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    runtime
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(measure());
}

async fn measure() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let fenced = args.iter().any(|a| a == "--fenced");
    let url = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .cloned()
        .or_else(|| std::env::var("FLOW_PG_URL").ok())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("flow_bench_{}", fastrand::u32(..));
    let store = Arc::new(
        PgStore::connect_with(
            &url,
            Options {
                schema: Some(schema.clone()),
                pool_size: COMMITTERS,
                ..Options::default()
            },
        )
        .await
        .expect("connect"),
    );

    // One committer: the latency of each commit.
    let (run, s) = run_of(&store, fenced).await;
    for i in 0..200 {
        s.commit_step(commit(&run, 1_000_000 + i))
            .await
            .expect("warm-up");
    }
    let mut latencies = Vec::new();
    for i in 0..2000 {
        let started = Instant::now();
        s.commit_step(commit(&run, i)).await.expect("commit");
        latencies.push(started.elapsed());
    }
    latencies.sort();
    println!(
        "one committer{}: {} commits, p50 {:?}, p90 {:?}, p99 {:?}",
        if fenced { " (fenced)" } else { "" },
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99)
    );

    // 16 committers, each on its own run, for a few seconds.
    let runs =
        futures_util::future::join_all((0..COMMITTERS).map(|_| run_of(&store, fenced))).await;
    let window = Duration::from_secs(5);
    let started = Instant::now();
    let tasks: Vec<_> = runs
        .into_iter()
        .map(|(run, s)| {
            tokio::spawn(async move {
                let mut n = 0;
                while started.elapsed() < window {
                    s.commit_step(commit(&run, n)).await.expect("commit");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("task");
    }
    let took = started.elapsed().as_secs_f64();
    println!(
        "{COMMITTERS} committers{}: {total} commits in {took:.1} s, {:.0} steps/s",
        if fenced { " (fenced)" } else { "" },
        total as f64 / took
    );

    drop(store);
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect to drop the schema");
    tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .expect("drop the schema");
}
