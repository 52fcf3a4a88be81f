//! Durable runs on the SQLite store, measured: a 10-step sequential `#[workflow(durable)]`
//! (each step adds one to a `u64`) run one at a time and 100 at a time, with the store's
//! `synchronous` = FULL and = NORMAL, beside the same workflow with no store
//! (`Runtime::run`, in memory) and the time of one fsync on the same disk.
//!
//! ```sh
//! cargo run --release --example durable_bench -- --dir target/durable-bench --runs 300
//! cargo run --release --example durable_bench -- --modes normal --runs 3000   # one mode alone
//! cargo run --release --example durable_bench -- --modes normal --runs 2000 --breakdown
//! ```
//!
//! - **sequential**: `--runs` runs one after another, each `runtime.start(..).await?.await`
//!   on a fresh id; per-step latency = a run's wall time / 10 (p50, p99), steps/s = 10 x runs
//!   / total time. A durable run is 12 store writes: the run created (with its input, already
//!   running), one commit per step, the run finished (with its output).
//! - **concurrent**: 100 tasks, each running `--rounds` runs one after another (100 runs
//!   in flight at all times); steps/s = 10 x all runs / total time. The store's group commit
//!   shares one transaction (one fsync in FULL) among the writes queued together.
//! - **bare transaction** (the baseline of each durable mode): one row inserted and committed
//!   in a transaction of its own (`BEGIN IMMEDIATE`, `INSERT`, `COMMIT`), with rusqlite on a
//!   file of its own in `--dir`, WAL and the mode's `synchronous`; p50 of `12 x --runs` (at
//!   most 20,000), measured right before the mode's runs. `step/bare` is a step's p50 in
//!   these: the least a durable step can cost is about 1.2 (a run's 12 commits / 10 steps).
//! - **breakdown** (`--breakdown`): a run's 12 writes made by hand through the `Store` trait
//!   (no runtime, no workflow) on a fresh file, each timed beside one bare transaction made
//!   right before it: p50 of the run's creation, of a step's commit and of the run's finish,
//!   in microseconds and in bare transactions; the store's share of a step (a run's writes
//!   / 10) and the rest of a step's p50 (the runtime's share: thread hand-offs included).
//! - `--current-thread`: everything on tokio's current-thread runtime instead of the
//!   multi-thread one (no hand-off between threads).
//! - **fsync**: 4 KiB written at offset 0 of a file in `--dir`, then `fsync` (`File::sync_all`),
//!   200 times; p50 and p99. `scripts/bench-durable.py` measures it the same way in Python.
//!
//! Each mode opens a fresh database file in `--dir` (removed afterwards). The last line of
//! output is one JSON object (`{"flow_durable_bench": ..}`) for `scripts/bench-durable.py`.

use std::io::{Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flow::prelude::*;
use flow_store_sqlite::{Options, SqliteStore, Synchronous};
use serde::{Deserialize, Serialize};

/// A step's error (never returned; durable runs store their errors, so it is serializable).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fail(String);

impl core::fmt::Display for Fail {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! add_one_steps {
    ($($name:ident),*) => {$(
        async fn $name(x: u64) -> Result<u64, Fail> {
            Ok(x + 1)
        }
    )*};
}
add_one_steps!(s1, s2, s3, s4, s5, s6, s7, s8, s9, s10);

/// Ten steps in sequence, each adding one.
#[workflow(durable)]
async fn chain10(x: u64) -> Result<u64, Fail> {
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

const STEPS: u64 = 10;
const CONCURRENT: usize = 100;

struct Args {
    dir: PathBuf,
    runs: usize,
    rounds: usize,
    /// Modes to measure (`--modes memory,full,normal`, all by default): one alone for a profile.
    modes: Vec<String>,
    /// `--breakdown`: also time a run's store writes alone, by kind (see [`breakdown`]).
    breakdown: bool,
    /// `--current-thread`: run on tokio's current-thread runtime (no hand-off between threads)
    /// instead of the multi-thread one.
    current_thread: bool,
}

fn args() -> Args {
    let mut a = Args {
        dir: std::env::temp_dir().join("flow-durable-bench"),
        runs: 300,
        rounds: 10,
        modes: vec!["memory".into(), "full".into(), "normal".into()],
        breakdown: false,
        current_thread: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--breakdown" {
            a.breakdown = true;
            continue;
        }
        if flag == "--current-thread" {
            a.current_thread = true;
            continue;
        }
        let value = it.next().unwrap_or_else(|| usage(&flag));
        match flag.as_str() {
            "--dir" => a.dir = PathBuf::from(value),
            "--runs" => a.runs = value.parse().unwrap_or_else(|_| usage(&flag)),
            "--rounds" => a.rounds = value.parse().unwrap_or_else(|_| usage(&flag)),
            "--modes" => {
                a.modes = value.split(',').map(|m| m.trim().to_lowercase()).collect();
                if a.modes
                    .iter()
                    .any(|m| !["memory", "full", "normal"].contains(&m.as_str()))
                {
                    usage(&flag)
                }
            }
            _ => usage(&flag),
        }
    }
    a.runs = a.runs.max(1);
    a.rounds = a.rounds.max(1);
    a
}

fn usage(flag: &str) -> ! {
    eprintln!(
        "bad argument `{flag}`; usage: durable_bench [--dir PATH] [--runs N] [--rounds R] [--modes memory,full,normal] [--breakdown] [--current-thread]"
    );
    std::process::exit(2)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// One mode's figures.
#[derive(Serialize)]
struct Figures {
    mode: String,
    runs: usize,
    step_p50_us: f64,
    step_p99_us: f64,
    seq_steps_per_s: f64,
    concurrent_runs: usize,
    concurrent_total_runs: usize,
    concurrent_steps_per_s: f64,
    /// Write transactions of the store in the concurrent phase (group commit), if any.
    concurrent_transactions: Option<u64>,
    /// The baseline of a durable mode: p50 of one bare SQLite transaction (`BEGIN IMMEDIATE`,
    /// an `INSERT` of one row, `COMMIT`) on a file of its own in `--dir`, with the same
    /// journal mode and `synchronous`, measured right before the mode's runs.
    bare_txn_p50_us: Option<f64>,
    /// `--breakdown`: a run's store writes timed alone.
    breakdown: Option<Breakdown>,
}

fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// Per-run wall times of `runs` sequential runs, and the total.
async fn sequential<F, Fut>(runs: usize, run: F) -> (Vec<Duration>, Duration)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = u64>,
{
    let mut times = Vec::with_capacity(runs);
    let start = Instant::now();
    for i in 0..runs {
        let t = Instant::now();
        let out = run(i).await;
        times.push(t.elapsed());
        assert_eq!(out, i as u64 + STEPS);
    }
    let total = start.elapsed();
    times.sort();
    (times, total)
}

fn figures(mode: &str, times: &[Duration], total: Duration, conc: (usize, Duration)) -> Figures {
    let (conc_runs, conc_elapsed) = conc;
    Figures {
        mode: mode.to_owned(),
        runs: times.len(),
        step_p50_us: us(percentile(times, 0.5)) / STEPS as f64,
        step_p99_us: us(percentile(times, 0.99)) / STEPS as f64,
        seq_steps_per_s: (times.len() as u64 * STEPS) as f64 / total.as_secs_f64(),
        concurrent_runs: CONCURRENT,
        concurrent_total_runs: conc_runs,
        concurrent_steps_per_s: (conc_runs as u64 * STEPS) as f64 / conc_elapsed.as_secs_f64(),
        concurrent_transactions: None,
        bare_txn_p50_us: None,
        breakdown: None,
    }
}

/// A database of one table, on a file of its own, for bare transactions: one row inserted
/// and committed (`BEGIN IMMEDIATE`, `INSERT`, `COMMIT`; WAL, prepared statements), with a
/// durable mode's `synchronous`: the least a durable commit can cost on this disk with it.
struct Bare {
    conn: rusqlite::Connection,
    path: PathBuf,
}

impl Bare {
    fn open(dir: &Path, synchronous: Synchronous) -> Bare {
        let path = dir.join("flow-durable-bench-bare.db");
        remove_db(&path);
        let conn = rusqlite::Connection::open(&path).expect("bare database opens");
        let sync = match synchronous {
            Synchronous::Full => "FULL",
            _ => "NORMAL",
        };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync};
             CREATE TABLE t (run TEXT NOT NULL, node TEXT NOT NULL, v BLOB,
                             PRIMARY KEY (run, node)) WITHOUT ROWID;"
        ))
        .expect("bare database set up");
        Bare { conn, path }
    }

    /// One transaction (row `i`), timed.
    fn transaction(&self, i: usize) -> Duration {
        let t = Instant::now();
        for sql in [
            "BEGIN IMMEDIATE",
            "INSERT INTO t VALUES (?1, ?2, ?3)",
            "COMMIT",
        ] {
            let mut stmt = self.conn.prepare_cached(sql).expect("prepared");
            if sql.starts_with("INSERT") {
                let run = format!("run-{}", i / 12);
                let node = format!("s{}", i % 12);
                stmt.execute(rusqlite::params![run, node, b"1".as_slice()])
            } else {
                stmt.execute([])
            }
            .expect("bare transaction");
        }
        t.elapsed()
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        remove_db(&self.path);
    }
}

/// p50 of `n` bare transactions ([`Bare`]), after a tenth more to warm the cache and the WAL.
fn bare_transactions(dir: &Path, synchronous: Synchronous, n: usize) -> Duration {
    let bare = Bare::open(dir, synchronous);
    let mut times: Vec<Duration> = (0..n + n / 10)
        .map(|i| bare.transaction(i))
        .skip(n / 10)
        .collect();
    times.sort();
    percentile(&times, 0.5)
}

async fn durable(mode: &str, synchronous: Synchronous, a: &Args) -> Figures {
    let path = a
        .dir
        .join(format!("flow-durable-bench-{}.db", mode.to_lowercase()));
    remove_db(&path);
    let bare = bare_transactions(&a.dir, synchronous, (a.runs * 12).min(20_000));
    let options = Options {
        synchronous,
        ..Options::default()
    };
    let store = std::sync::Arc::new(SqliteStore::open_with(&path, options).expect("store opens"));
    let runtime = Runtime::new().with_shared_store(store.clone());

    // Warm-up (schema pages in cache, the WAL file created).
    for i in 0..20 {
        let out = runtime
            .start(Chain10, format!("warm-{i}"), (0,))
            .await
            .expect("started")
            .await
            .expect("run ok");
        assert_eq!(out, STEPS);
    }

    let (times, total) = sequential(a.runs, |i| {
        let runtime = runtime.clone();
        async move {
            runtime
                .start(Chain10, format!("seq-{i}"), (i as u64,))
                .await
                .expect("started")
                .await
                .expect("run ok")
        }
    })
    .await;

    let before = store.write_transactions();
    let start = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENT)
        .map(|t| {
            let runtime = runtime.clone();
            let rounds = a.rounds;
            tokio::spawn(async move {
                for r in 0..rounds {
                    let out = runtime
                        .start(Chain10, format!("conc-{t}-{r}"), (r as u64,))
                        .await
                        .expect("started")
                        .await
                        .expect("run ok");
                    assert_eq!(out, r as u64 + STEPS);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let elapsed = start.elapsed();
    let transactions = store.write_transactions() - before;
    let mut f = figures(mode, &times, total, (CONCURRENT * a.rounds, elapsed));
    f.concurrent_transactions = Some(transactions);
    f.bare_txn_p50_us = Some(us(bare));
    drop(runtime);
    drop(store);
    remove_db(&path);
    if a.breakdown {
        f.breakdown = Some(breakdown(&a.dir, synchronous, a.runs).await);
    }
    f
}

/// A run's store writes, timed alone (`--breakdown`).
#[derive(Serialize)]
struct Breakdown {
    /// p50 of the bare transaction, measured interleaved with the writes below.
    bare_us: f64,
    /// p50 of `Store::create_running` (the run's row, created running).
    create_us: f64,
    /// p50 of `Store::commit_step` (a step's output, no attempt rows).
    commit_us: f64,
    /// p50 of `Store::set_status` to completed, with the output.
    finish_us: f64,
}

impl Breakdown {
    /// The store's share of a step: a run's writes over its 10 steps.
    fn per_step_us(&self) -> f64 {
        (self.create_us + STEPS as f64 * self.commit_us + self.finish_us) / STEPS as f64
    }
}

/// The writes a 10-step run makes, made by hand through the `Store` trait (no runtime, no
/// workflow), each timed, with one bare transaction on another file before each (the same
/// 12 a run), `runs` times: what a durable step costs in the store alone, by kind of write.
/// A step's p50 in the runs above minus the store's share (`per_step_us`) is the runtime's.
async fn breakdown(dir: &Path, synchronous: Synchronous, runs: usize) -> Breakdown {
    use flow::store::{NewRun, RunStatus, StepCommit, StepKey, StepOutcome, Store};

    let path = dir.join("flow-durable-bench-breakdown.db");
    remove_db(&path);
    let options = Options {
        synchronous,
        ..Options::default()
    };
    let store = SqliteStore::open_with(&path, options).expect("store opens");
    let bare = Bare::open(dir, synchronous);
    let graph = Chain10.graph();
    // The run's row holds every node's fingerprint, as the runtime writes it.
    let nodes: std::collections::BTreeMap<String, u64> = graph
        .nodes
        .iter()
        .map(|n| (n.key.to_owned(), n.fingerprint))
        .collect();
    let steps: Vec<String> = (1..=STEPS).map(|i| format!("s{i}")).collect();
    assert!(
        steps.iter().all(|s| nodes.contains_key(s)),
        "chain10's steps are its nodes"
    );
    let (mut bares, mut creates, mut commits, mut finishes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let warm = runs / 10;
    for r in 0..runs + warm {
        let keep = r >= warm;
        let id = format!("breakdown-{r}");
        let b = bare.transaction(r * 12);
        let t = Instant::now();
        store
            .create_running(NewRun {
                id: id.clone(),
                workflow: graph.name.to_owned(),
                fingerprint: graph.fingerprint,
                node_fingerprints: nodes.clone(),
                input: b"0".to_vec(),
            })
            .await
            .expect("run created");
        if keep {
            creates.push(t.elapsed());
            bares.push(b);
        }
        for (i, node) in steps.iter().enumerate() {
            let b = bare.transaction(r * 12 + 1 + i);
            let t = Instant::now();
            store
                .commit_step(StepCommit {
                    key: StepKey {
                        run: id.clone(),
                        node: node.clone(),
                        occurrence: 0,
                        item: None,
                    },
                    outcome: StepOutcome::Completed((i + 1).to_string().into_bytes()),
                    attempts: Vec::new(),
                    compensations: Vec::new(),
                })
                .await
                .expect("step committed");
            if keep {
                commits.push(t.elapsed());
                bares.push(b);
            }
        }
        let b = bare.transaction(r * 12 + 11);
        let t = Instant::now();
        store
            .set_status(&id, RunStatus::Completed, Some(b"10".to_vec()))
            .await
            .expect("run finished");
        if keep {
            finishes.push(t.elapsed());
            bares.push(b);
        }
    }
    drop(store);
    remove_db(&path);
    let p50 = |mut v: Vec<Duration>| {
        v.sort();
        us(percentile(&v, 0.5))
    };
    Breakdown {
        bare_us: p50(bares),
        create_us: p50(creates),
        commit_us: p50(commits),
        finish_us: p50(finishes),
    }
}

async fn in_memory(a: &Args) -> Figures {
    let runtime = Runtime::new();
    for _ in 0..1000 {
        runtime.run(&Chain10, (0,)).await.expect("run ok");
    }
    // Many more runs than the durable modes: a run takes microseconds here.
    let runs = a.runs.max(10_000);
    let (times, total) = sequential(runs, |i| {
        let runtime = runtime.clone();
        async move { runtime.run(&Chain10, (i as u64,)).await.expect("run ok") }
    })
    .await;
    let rounds = a.rounds.max(1000);
    let start = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENT)
        .map(|_| {
            let runtime = runtime.clone();
            tokio::spawn(async move {
                for r in 0..rounds {
                    let out = runtime.run(&Chain10, (r as u64,)).await.expect("run ok");
                    assert_eq!(out, r as u64 + STEPS);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    figures(
        "memory",
        &times,
        total,
        (CONCURRENT * rounds, start.elapsed()),
    )
}

/// 4 KiB written at offset 0, then fsync, `n` times: the sorted times.
fn fsyncs(dir: &Path, n: usize) -> Vec<Duration> {
    let path = dir.join("flow-durable-bench-fsync.bin");
    let mut file = std::fs::File::create(&path).expect("fsync file");
    let block = [0x5a_u8; 4096];
    file.write_all(&block).expect("write");
    file.sync_all().expect("fsync");
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        file.seek(SeekFrom::Start(0)).expect("seek");
        file.write_all(&block).expect("write");
        file.sync_all().expect("fsync");
        times.push(t.elapsed());
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    times.sort();
    times
}

#[derive(Serialize)]
struct Report {
    dir: String,
    fsync_p50_us: f64,
    fsync_p99_us: f64,
    fsync_after_us: f64,
    modes: Vec<Figures>,
}

fn main() {
    let a = args();
    let runtime = if a.current_thread {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    }
    .enable_all()
    .build()
    .expect("tokio runtime");
    runtime.block_on(measure(a));
}

async fn measure(a: Args) {
    std::fs::create_dir_all(&a.dir).expect("--dir is created");
    let fs_before = fsyncs(&a.dir, 200);
    let mut modes = Vec::new();
    for mode in &a.modes {
        modes.push(match mode.as_str() {
            "memory" => in_memory(&a).await,
            "full" => durable("FULL", Synchronous::Full, &a).await,
            _ => durable("NORMAL", Synchronous::Normal, &a).await,
        });
    }
    // fsync again at the end: the disk's state may drift during the run.
    let fs_after = fsyncs(&a.dir, 200);
    let fsync_p50 = us(percentile(&fs_before, 0.5));
    let report = Report {
        dir: a.dir.display().to_string(),
        fsync_p50_us: fsync_p50,
        fsync_p99_us: us(percentile(&fs_before, 0.99)),
        fsync_after_us: us(percentile(&fs_after, 0.5)),
        modes,
    };

    println!(
        "fsync (4 KiB write + fsync, 200x, {}): p50 {:.1} us, p99 {:.1} us (p50 again at the end: {:.1} us)",
        report.dir, report.fsync_p50_us, report.fsync_p99_us, report.fsync_after_us
    );
    println!(
        "{:<8} {:>6} {:>14} {:>14} {:>12} {:>10} {:>18} {:>8} {:>12} {:>12}",
        "mode",
        "runs",
        "step p50 us",
        "step p99 us",
        "p50 fsyncs",
        "seq st/s",
        "100 conc. st/s",
        "txns",
        "bare txn us",
        "step/bare"
    );
    for f in &report.modes {
        println!(
            "{:<8} {:>6} {:>14.2} {:>14.2} {:>12.2} {:>10.0} {:>18.0} {:>8} {:>12} {:>12}",
            f.mode,
            f.runs,
            f.step_p50_us,
            f.step_p99_us,
            f.step_p50_us / fsync_p50,
            f.seq_steps_per_s,
            f.concurrent_steps_per_s,
            f.concurrent_transactions
                .map_or_else(|| "-".to_owned(), |t| t.to_string()),
            f.bare_txn_p50_us
                .map_or_else(|| "-".to_owned(), |b| format!("{b:.2}")),
            f.bare_txn_p50_us
                .map_or_else(|| "-".to_owned(), |b| format!("{:.2}", f.step_p50_us / b)),
        );
    }
    if report.modes.iter().any(|f| f.breakdown.is_some()) {
        println!(
            "\na run's store writes alone (Store trait, no runtime), p50, in bare transactions:"
        );
        println!(
            "{:<8} {:>8} {:>14} {:>14} {:>14} {:>16} {:>16}",
            "mode", "bare us", "create", "step commit", "finish", "store / step", "runtime / step"
        );
        for f in &report.modes {
            let Some(b) = &f.breakdown else { continue };
            let r = |x: f64| format!("{:.2} us {:.2}", x, x / b.bare_us);
            let store = b.per_step_us();
            println!(
                "{:<8} {:>8.2} {:>14} {:>14} {:>14} {:>16} {:>16}",
                f.mode,
                b.bare_us,
                r(b.create_us),
                r(b.commit_us),
                r(b.finish_us),
                r(store),
                r(f.step_p50_us - store),
            );
        }
    }
    println!(
        "{{\"flow_durable_bench\":{}}}",
        serde_json::to_string(&report).expect("json")
    );
}
