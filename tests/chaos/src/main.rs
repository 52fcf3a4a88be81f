//! A worker process of the chaos test (`tests/chaos.rs`): executes the runs of queue
//! `chaos` on a PostgreSQL store until the file `<log>.stop` appears, then prints its
//! report (`report claimed=.. taken_over=.. finished=.. lost=.. released=..`) and exits 0.
//! The test kills it with SIGKILL and stops it with SIGSTOP at random moments.
//!
//! `chaos-worker <url> <schema> <log> <name> <lease-ms> <concurrency>`

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flow::durable::{Worker, WorkerOptions};
use flow_chaos_test::{Chaos10, WORKER};
use flow_store_postgres::{Options, PgStore};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, schema, log, name, lease_ms, concurrency] = &args[..] else {
        eprintln!("usage: chaos-worker <url> <schema> <log> <name> <lease-ms> <concurrency>");
        std::process::exit(2);
    };
    let Ok(concurrency) = concurrency.parse::<u32>() else {
        eprintln!("chaos-worker: the concurrency is a number, not {concurrency:?}");
        std::process::exit(2);
    };
    let Ok(lease_ms) = lease_ms.parse::<u64>() else {
        eprintln!("chaos-worker: the lease is a number of milliseconds, not {lease_ms:?}");
        std::process::exit(2);
    };
    let _ = WORKER.set((PathBuf::from(log), name.clone()));
    let options = Options {
        schema: Some(schema.clone()),
        pool_size: 8,
        ..Options::default()
    };
    let store = match PgStore::connect_with(url, options).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chaos-worker: {e}");
            std::process::exit(1);
        }
    };
    let runtime = flow::Runtime::new().with_queue(Arc::new(store));
    let mut registry = flow::Registry::new();
    if let Err(e) = registry.register_durable(Chaos10) {
        eprintln!("chaos-worker: {e}");
        std::process::exit(1);
    }
    let lease = Duration::from_millis(lease_ms);
    let options = WorkerOptions::new("chaos")
        .name(name.clone())
        .concurrency(concurrency)
        .lease(lease)
        .heartbeat(lease / 4)
        .poll(Duration::from_millis(200));
    let worker = match Worker::new(&runtime, registry, options) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("chaos-worker: {e}");
            std::process::exit(1);
        }
    };
    let stop = PathBuf::from(format!("{log}.stop"));
    let report = worker
        .run(async move {
            while !stop.exists() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    println!(
        "report claimed={} taken_over={} finished={} lost={} released={} parked={} stopped={} skipped={} store_errors={}",
        report.claimed,
        report.taken_over,
        report.finished,
        report.lost,
        report.released,
        report.parked,
        report.stopped,
        report.skipped,
        report.store_errors
    );
}
