//! Scale run: 100,000 concurrent runs of a 5-step flow, each on its own tokio task, against
//! the same work as hand-written tokio tasks. Reports memory per run and steps per second.
//!
//! ```sh
//! cargo run --release --example scale              # every mode, each in a fresh process
//! cargo run --release --example scale -- --runs 10000 --mode flow
//! ```
//!
//! Each run's first step parks on a shared gate; once every run is parked (all of them in
//! flight at once), the resident set is read (`VmRSS` in `/proc/self/status`), the gate
//! opens and the remaining four steps each `yield_now`. Memory per run is
//! `(RSS with every run parked - RSS before spawning) / runs`: the task (tokio's header and
//! the run's future, in one allocation), the run's context (`Ctx`, one `Arc`), and for
//! `Runtime::spawn` the handle's event channel and every event buffered for it. The
//! `JoinHandle`s kept to await the runs are counted in every mode alike. Peak (`VmHWM`) is
//! reported too. Modes, each in its own process so that one's heap does not hide another's:
//!
//! - `hand`: `tokio::spawn` of the hand-written `async fn` chain;
//! - `flow`: `tokio::spawn(runtime.run(&flow, x))` (no observer);
//! - `workflow`: `tokio::spawn(runtime.run(&Chain5, (x,)))` (`#[workflow]`, no observer);
//! - `handle`: `Runtime::spawn` (returns a `Handle`, which buffers the run's events).

use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use flow::prelude::*;
use tokio::sync::watch;

#[derive(Debug)]
struct E;

impl std::fmt::Display for E {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("step failed")
    }
}

static ARRIVED: AtomicUsize = AtomicUsize::new(0);
static GATE: OnceLock<watch::Sender<bool>> = OnceLock::new();

/// Step 1: parks until every run has arrived.
async fn arrive(x: u64) -> Result<u64, E> {
    let mut rx = GATE.get().expect("gate").subscribe();
    ARRIVED.fetch_add(1, Ordering::Relaxed);
    let _ = rx.wait_for(|open| *open).await;
    Ok(x + 1)
}

macro_rules! yielding_steps {
    ($($name:ident),*) => {$(
        async fn $name(x: u64) -> Result<u64, E> {
            tokio::task::yield_now().await;
            Ok(x + 1)
        }
    )*};
}
yielding_steps!(y2, y3, y4, y5);

async fn hand(x: u64) -> Result<u64, E> {
    let x = arrive(x).await?;
    let x = y2(x).await?;
    let x = y3(x).await?;
    let x = y4(x).await?;
    y5(x).await
}

#[workflow]
async fn chain5(x: u64) -> Result<u64, E> {
    let x = arrive(x).await?;
    let x = y2(x).await?;
    let x = y3(x).await?;
    let x = y4(x).await?;
    y5(x).await
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let runs: usize = arg("--runs").map_or(100_000, |n| n.parse().expect("--runs N"));
    match arg("--mode") {
        Some(mode) => measure(&mode, runs),
        None => {
            println!(
                "{:<9} {:>8} {:>12} {:>14} {:>14} {:>14} {:>13}",
                "mode", "runs", "future B", "RSS/run B", "peak/run B", "steps/s", "wall ms"
            );
            let exe = std::env::current_exe().expect("current exe");
            for mode in ["hand", "flow", "workflow", "handle"] {
                let out = Command::new(&exe)
                    .args(["--mode", mode, "--runs", &runs.to_string()])
                    .output()
                    .expect("run a mode");
                print!("{}", String::from_utf8_lossy(&out.stdout));
                if !out.status.success() {
                    eprint!("{}", String::from_utf8_lossy(&out.stderr));
                    std::process::exit(1);
                }
            }
        }
    }
}

fn measure(mode: &str, runs: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let f = flow! { arrive -> y2 -> y3 -> y4 -> y5 };
    let runtime = Runtime::new();
    let future_size = match mode {
        "hand" => std::mem::size_of_val(&hand(0)),
        "flow" => std::mem::size_of_val(&runtime.run(&f, 0)),
        "workflow" => std::mem::size_of_val(&runtime.run(&Chain5, (0,))),
        _ => 0,
    };
    let (tx, _) = watch::channel(false);
    GATE.set(tx).expect("gate set once");
    rt.block_on(async move {
        // Warm the runtime and the allocator so that their one-time cost is not counted.
        tokio::task::yield_now().await;
        let before = status_kib("VmRSS:");
        let hwm_before = status_kib("VmHWM:");
        let f = std::sync::Arc::new(f);
        let mut tasks = Vec::with_capacity(runs);
        let mut handles = Vec::new();
        for i in 0..runs as u64 {
            match mode {
                "hand" => tasks.push(tokio::spawn(hand(i))),
                "flow" => {
                    let (f, runtime) = (f.clone(), runtime.clone());
                    tasks.push(tokio::spawn(async move {
                        runtime.run(&*f, i).await.map_err(|_| E)
                    }));
                }
                "workflow" => {
                    let runtime = runtime.clone();
                    tasks.push(tokio::spawn(async move {
                        runtime.run(&Chain5, (i,)).await.map_err(|_| E)
                    }));
                }
                "handle" => handles.push(runtime.spawn(Chain5, (i,))),
                other => panic!("unknown mode {other}: hand, flow, workflow or handle"),
            }
        }
        while ARRIVED.load(Ordering::Relaxed) < runs {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let parked = status_kib("VmRSS:");
        let start = Instant::now();
        GATE.get().expect("gate").send_replace(true);
        let mut sum = 0u64;
        for t in tasks {
            sum += t.await.expect("task").expect("run");
        }
        for h in handles {
            sum += h.await.expect("run");
        }
        let wall = start.elapsed();
        let hwm = status_kib("VmHWM:");
        assert_eq!(sum, (0..runs as u64).map(|i| i + 5).sum::<u64>());
        let per_run = |kib: u64| kib.saturating_mul(1024) / runs as u64;
        println!(
            "{:<9} {:>8} {:>12} {:>14} {:>14} {:>14.0} {:>13.1}",
            mode,
            runs,
            future_size,
            per_run(parked.saturating_sub(before)),
            per_run(hwm.saturating_sub(hwm_before.max(before))),
            (runs * 5) as f64 / wall.as_secs_f64(),
            wall.as_secs_f64() * 1e3,
        );
    });
}
