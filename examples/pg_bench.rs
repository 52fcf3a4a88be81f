//! Durable runs on the PostgreSQL store, measured: a 10-step sequential
//! `#[workflow(durable)]` (each step adds one to a `u64`) run one at a time in place, and
//! 1,000 of them enqueued at once and executed by 1, 2 and 4 worker **processes**.
//!
//! ```sh
//! cargo run --release --example pg_bench -- --url postgres://postgres@127.0.0.1:5432/flow_bench \
//!     --runs 300 --workflows 1000 --processes 1,2,4 --concurrency 64 --pool 8
//! ```
//!
//! `scripts/bench-postgres.py` runs it beside DBOS for Python on the same server and prints
//! the table of `BENCHMARKS.md`.
//!
//! - **single**: `--runs` runs one after another, each `runtime.start(..).await?.await` on a
//!   fresh id, with every commit durable (the server's `synchronous_commit`, `on` by default,
//!   is read and reported); per-step latency = a run's wall time / 10 (p50, p99). Measured on
//!   tokio's multi-thread runtime, then on its current-thread runtime (no wake-up across
//!   threads). A run in place is 12 store writes: the run created (with its input), one commit
//!   a step, the run finished (with its output); plus the workflow's graph saved once.
//! - **workers**: for each N of `--processes`, N copies of this program are started as worker
//!   processes (`--worker`: a `flow::durable::Worker` of queue `bench` with `--concurrency`
//!   runs at once, its store with `--pool` connections, as the producer's), then this process enqueues `--workflows` runs at once (one task each) and
//!   waits until the last is finished (it counts the completed runs every 5 ms on a
//!   connection of its own). steps/s = 10 x runs / (first enqueue .. last run finished).
//!   Per-step latency within runs: (the run's last update - its claim) / 10, from the
//!   server's clock (milliseconds); the wait in the queue: its claim - its creation.
//! - **server counters**: for each phase, the committed transactions of the database
//!   (`pg_stat_database.xact_commit`: one per statement, since every store method is one
//!   statement in a transaction of its own, reads included) and the WAL fsyncs of the
//!   server (`pg_stat_wal.wal_sync`, cluster-wide), read before the phase's connections
//!   open and after they all closed (a backend reports its counters when it exits). They
//!   include the phase's setup (schema creation, connections, idle claims), a few dozen.
//! - **CPU**: the CPU time of the client processes (this one and, for workers, the worker
//!   processes) and of the whole machine (`/proc/stat`) over each timed window; the rest of
//!   the machine's busy time is mostly the PostgreSQL server.
//!
//! The URL's database is created if it is missing (and then dropped at the end); each phase
//! works in a schema of its own (`flow_pgbench_*`), dropped after it. The last line of output
//! is one JSON object (`{"flow_pg_bench": ..}`) for `scripts/bench-postgres.py`.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flow::Registry;
use flow::durable::{EnqueueOptions, Worker, WorkerOptions};
use flow::prelude::*;
use flow_store_postgres::{Options, PgStore};
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
const QUEUE: &str = "bench";
/// Clock ticks a second of `/proc` CPU times (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
const TICKS: f64 = 100.0;

/// The command line.
#[derive(Clone, Debug)]
struct Args {
    url: String,
    runs: usize,
    workflows: usize,
    processes: Vec<usize>,
    concurrency: u32,
    pool: usize,
    /// Time the store's PL/pgSQL functions in the worker phases (`track_functions = pl`).
    profile: bool,
    /// `Some(schema)`: this process is a worker of that schema.
    worker_of: Option<String>,
    name: String,
}

fn args() -> Args {
    let mut a = Args {
        url: std::env::var("FLOW_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/flow_bench".to_owned()),
        runs: 300,
        workflows: 1000,
        processes: vec![1, 2, 4],
        concurrency: 64,
        pool: 8,
        profile: false,
        worker_of: None,
        name: "worker".to_owned(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--profile" {
            a.profile = true;
            continue;
        }
        let value = it.next().unwrap_or_else(|| usage(&flag));
        let number = |v: &str| v.parse::<usize>().unwrap_or_else(|_| usage(&flag));
        match flag.as_str() {
            "--url" => a.url = value,
            "--runs" => a.runs = number(&value).max(1),
            "--workflows" => a.workflows = number(&value).max(1),
            "--processes" => {
                a.processes = value.split(',').map(|n| number(n).max(1)).collect();
            }
            "--concurrency" => a.concurrency = number(&value).max(1) as u32,
            "--pool" => a.pool = number(&value).max(1),
            "--worker" => a.worker_of = Some(value),
            "--name" => a.name = value,
            _ => usage(&flag),
        }
    }
    a
}

fn usage(flag: &str) -> ! {
    eprintln!(
        "bad argument `{flag}`; usage: pg_bench [--url URL] [--runs N] [--workflows N] \
         [--processes 1,2,4] [--concurrency N] [--pool N] [--profile]"
    );
    std::process::exit(2)
}

fn percentile<T: Copy>(sorted: &[T], p: f64) -> T {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

// -------------------------------------------------------------------------------------
// Server counters, CPU times, and the database.

/// An administrative connection (its driver task runs in the background).
async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL: {e}"));
    tokio::spawn(connection);
    client
}

/// The URL with another database.
fn with_database(url: &str, database: &str) -> tokio_postgres::Config {
    let mut config: tokio_postgres::Config = url.parse().expect("a PostgreSQL URL");
    config.dbname(database);
    config
}

/// Creates the URL's database if it is missing: `true` if it did.
async fn ensure_database(url: &str) -> bool {
    let config: tokio_postgres::Config = url.parse().expect("a PostgreSQL URL");
    let database = config.get_dbname().unwrap_or("postgres").to_owned();
    let (admin, connection) = with_database(url, "postgres")
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connects to database postgres");
    tokio::spawn(connection);
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
        .await
        .expect("pg_database")
        .is_some();
    if !exists {
        admin
            .batch_execute(&format!("CREATE DATABASE \"{database}\""))
            .await
            .expect("CREATE DATABASE");
    }
    !exists
}

async fn drop_database(url: &str) {
    let config: tokio_postgres::Config = url.parse().expect("a PostgreSQL URL");
    let database = config.get_dbname().unwrap_or("postgres").to_owned();
    let (admin, connection) = with_database(url, "postgres")
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connects to database postgres");
    tokio::spawn(connection);
    admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
        ))
        .await
        .expect("DROP DATABASE");
}

/// The server's counters: (transactions committed in the database, WAL fsyncs, WAL bytes).
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    xacts: i64,
    wal_syncs: i64,
    wal_bytes: i64,
}

/// Reads the counters on a connection of its own (closed after), once the connections of the
/// phase before have closed and reported theirs.
async fn counters(url: &str) -> Counters {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = connect(url).await;
    let db = client
        .query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await
        .expect("pg_stat_database");
    let wal = client
        .query_one("SELECT wal_sync, wal_bytes::bigint FROM pg_stat_wal", &[])
        .await
        .expect("pg_stat_wal");
    Counters {
        xacts: db.get(0),
        wal_syncs: wal.get(0),
        wal_bytes: wal.get(1),
    }
}

/// CPU ticks: (busy, all) of the machine, from `/proc/stat`.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let all: u64 = cpu.iter().take(8).sum();
    // user nice system idle iowait irq softirq steal: idle and iowait are not busy.
    let idle = cpu.get(3).copied().unwrap_or(0) + cpu.get(4).copied().unwrap_or(0);
    (all.saturating_sub(idle), all)
}

/// CPU ticks (user + system) of process `pid` (`self` for this one).
fn process_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces): state is field 3, utime 14.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    fields.get(10).copied().unwrap_or(0) + fields.get(11).copied().unwrap_or(0)
}

/// CPU ticks of every PostgreSQL server process now alive, by pid.
fn server_ticks() -> std::collections::HashMap<String, u64> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Default::default();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .map(|pid| {
            let ticks = process_ticks(&pid);
            (pid, ticks)
        })
        .collect()
}

/// CPU seconds over a window: the client processes, the server, and the whole machine.
#[derive(Clone, Copy, Debug, Default, Serialize)]
struct Cpu {
    /// Seconds of CPU of the client processes (this one, and the workers).
    client_s: f64,
    /// Seconds of CPU of the PostgreSQL server's processes (those alive at the window's end).
    server_s: f64,
    /// Seconds of CPU of the whole machine (client, server, anything else).
    machine_s: f64,
    /// The window, in seconds (the machine has `cores` x this much CPU).
    wall_s: f64,
    cores: usize,
}

/// A window's start: (machine ticks, client ticks, when).
struct CpuMark {
    machine: u64,
    client: u64,
    server: std::collections::HashMap<String, u64>,
    at: Instant,
}

fn cpu_mark(pids: &[u32]) -> CpuMark {
    CpuMark {
        machine: machine_ticks().0,
        client: process_ticks("self")
            + pids
                .iter()
                .map(|p| process_ticks(&p.to_string()))
                .sum::<u64>(),
        server: server_ticks(),
        at: Instant::now(),
    }
}

fn cpu_since(start: &CpuMark, pids: &[u32]) -> Cpu {
    let end = cpu_mark(pids);
    Cpu {
        client_s: end.client.saturating_sub(start.client) as f64 / TICKS,
        server_s: end
            .server
            .iter()
            .map(|(pid, t)| t.saturating_sub(start.server.get(pid).copied().unwrap_or(0)))
            .sum::<u64>() as f64
            / TICKS,
        machine_s: end.machine.saturating_sub(start.machine) as f64 / TICKS,
        wall_s: end.at.duration_since(start.at).as_secs_f64(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

async fn store(url: &str, schema: &str, pool: usize) -> PgStore {
    let options = Options {
        schema: Some(schema.to_owned()),
        pool_size: pool,
        ..Options::default()
    };
    PgStore::connect_with(url, options)
        .await
        .unwrap_or_else(|e| panic!("the store opens: {e}"))
}

async fn drop_schema(url: &str, schema: &str) {
    let client = connect(url).await;
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .expect("DROP SCHEMA");
}

// -------------------------------------------------------------------------------------
// The server's durable commit, alone.

/// The cost of a durable commit on this server, without flow: a one-row `INSERT` in a
/// transaction of its own (a WAL flush, an fsync), one at a time and from many connections.
#[derive(Debug, Serialize)]
struct Probe {
    commits: usize,
    commit_p50_us: f64,
    commit_p99_us: f64,
    /// Connections committing at once, and the commits a second they reached together.
    concurrent: usize,
    concurrent_commits_per_s: f64,
    concurrent_wal_syncs_per_commit: f64,
}

async fn probe(a: &Args) -> Probe {
    const COMMITS: usize = 300;
    const CONNECTIONS: usize = 64;
    const EACH: usize = 50;
    let client = connect(&a.url).await;
    client
        .batch_execute(
            "DROP TABLE IF EXISTS flow_pgbench_probe; \
             CREATE TABLE flow_pgbench_probe (id BIGSERIAL PRIMARY KEY, v BIGINT NOT NULL)",
        )
        .await
        .expect("the probe's table");
    let insert = "INSERT INTO flow_pgbench_probe (v) VALUES ($1)";
    let statement = client.prepare(insert).await.expect("prepare");
    let mut times = Vec::with_capacity(COMMITS);
    for i in 0..COMMITS + 20 {
        let t = Instant::now();
        client
            .execute(&statement, &[&(i as i64)])
            .await
            .expect("insert");
        if i >= 20 {
            times.push(t.elapsed());
        }
    }
    times.sort();
    let mut clients = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let c = connect(&a.url).await;
        let st = c.prepare(insert).await.expect("prepare");
        clients.push((c, st));
    }
    let before = counters(&a.url).await;
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|(c, st)| {
            tokio::spawn(async move {
                for i in 0..EACH {
                    c.execute(&st, &[&(i as i64)]).await.expect("insert");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let elapsed = start.elapsed();
    let after = counters(&a.url).await;
    client
        .batch_execute("DROP TABLE flow_pgbench_probe")
        .await
        .expect("drop the probe's table");
    let total = (CONNECTIONS * EACH) as f64;
    Probe {
        commits: COMMITS,
        commit_p50_us: us(percentile(&times, 0.5)),
        commit_p99_us: us(percentile(&times, 0.99)),
        concurrent: CONNECTIONS,
        concurrent_commits_per_s: total / elapsed.as_secs_f64(),
        concurrent_wal_syncs_per_commit: (after.wal_syncs - before.wal_syncs) as f64 / total,
    }
}

// -------------------------------------------------------------------------------------
// Single runs, in place.

/// The figures of the single-run phase.
#[derive(Debug, Serialize)]
struct Single {
    runtime: String,
    runs: usize,
    step_p50_us: f64,
    step_p99_us: f64,
    steps_per_s: f64,
    /// Statements (transactions) a run, and WAL fsyncs a run, over the phase.
    xacts_per_run: f64,
    wal_syncs_per_run: f64,
    cpu: Cpu,
}

/// `url` with a session setting (`name=value`) for every connection.
fn with_setting(url: &str, setting: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-c%20{}", setting.replace('=', "%3D"))
}

/// `flavor` names the row; the runs' store connects to `url`.
async fn single(a: &Args, flavor: &str, url: &str) -> Single {
    let a = &Args {
        url: url.to_owned(),
        ..a.clone()
    };
    let schema = format!("flow_pgbench_single_{flavor}");
    drop_schema(&a.url, &schema).await;
    // Warm-up on a store of its own (the schema created, the statements prepared once).
    {
        let runtime = Runtime::new().with_store(store(&a.url, &schema, a.pool).await);
        for i in 0..20 {
            let out = runtime
                .start(Chain10, format!("warm-{i}"), (0,))
                .await
                .expect("started")
                .await
                .expect("run ok");
            assert_eq!(out, STEPS);
        }
    }
    let before = counters(&a.url).await;
    let runtime = Runtime::new().with_store(store(&a.url, &schema, a.pool).await);
    // One run to prepare the new connection's statements.
    runtime
        .start(Chain10, "warm-again", (0,))
        .await
        .expect("started")
        .await
        .expect("run ok");
    let mut times = Vec::with_capacity(a.runs);
    let mark = cpu_mark(&[]);
    for i in 0..a.runs {
        let t = Instant::now();
        let out = runtime
            .start(Chain10, format!("seq-{i}"), (i as u64,))
            .await
            .expect("started")
            .await
            .expect("run ok");
        times.push(t.elapsed());
        assert_eq!(out, i as u64 + STEPS);
    }
    let cpu = cpu_since(&mark, &[]);
    drop(runtime);
    let after = counters(&a.url).await;
    drop_schema(&a.url, &schema).await;
    times.sort();
    let runs = a.runs as f64 + 1.0;
    Single {
        runtime: flavor.to_owned(),
        runs: a.runs,
        step_p50_us: us(percentile(&times, 0.5)) / STEPS as f64,
        step_p99_us: us(percentile(&times, 0.99)) / STEPS as f64,
        steps_per_s: (a.runs as u64 * STEPS) as f64 / cpu.wall_s,
        xacts_per_run: (after.xacts - before.xacts) as f64 / runs,
        wal_syncs_per_run: (after.wal_syncs - before.wal_syncs) as f64 / runs,
        cpu,
    }
}

// -------------------------------------------------------------------------------------
// Workers.

/// What a worker process prints when it stops.
#[derive(Debug, Default, Serialize, Deserialize)]
struct WorkerDone {
    claimed: u64,
    finished: u64,
    lost: u64,
    store_errors: u64,
}

/// A worker process: runs until its standard input closes.
async fn worker_process(a: &Args, schema: &str) {
    let store = store(&a.url, schema, a.pool).await;
    let runtime = Runtime::new().with_queue(Arc::new(store));
    let mut registry = Registry::new();
    registry.register_durable(Chain10).expect("registered");
    let options = WorkerOptions::new(QUEUE)
        .name(a.name.clone())
        .concurrency(a.concurrency);
    let worker = Worker::new(&runtime, registry, options).expect("a worker");
    println!("ready");
    std::io::stdout().flush().expect("stdout");
    let shutdown = async {
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        })
        .await;
    };
    let report = worker.run(shutdown).await;
    let done = WorkerDone {
        claimed: report.claimed,
        finished: report.finished,
        lost: report.lost,
        store_errors: report.store_errors,
    };
    println!("{}", serde_json::to_string(&done).expect("json"));
}

/// A worker process started by this one.
struct Spawned {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<std::process::ChildStdout>,
}

fn spawn_worker(a: &Args, schema: &str, name: &str) -> Spawned {
    let exe = std::env::current_exe().expect("this program's path");
    let mut child = Command::new(exe)
        .args(["--url", &a.url, "--worker", schema, "--name", name])
        .args(["--concurrency", &a.concurrency.to_string()])
        .args(["--pool", &a.pool.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("a worker process starts");
    let stdin = child.stdin.take();
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    Spawned {
        child,
        stdin,
        stdout,
    }
}

/// The figures of one worker phase.
#[derive(Debug, Serialize)]
struct Workers {
    processes: usize,
    concurrency: u32,
    workflows: usize,
    /// First enqueue .. last run finished, seconds.
    elapsed_s: f64,
    /// Enqueueing all of them, seconds (from the first).
    enqueue_s: f64,
    steps_per_s: f64,
    /// (last update - claim) / 10 over the runs, ms (the server's clock, whole ms).
    step_p50_ms: f64,
    step_p99_ms: f64,
    /// Claim - creation over the runs, ms.
    queued_p50_ms: f64,
    queued_p99_ms: f64,
    /// Runs each worker process finished.
    finished_by: Vec<u64>,
    xacts_per_run: f64,
    wal_syncs_per_run: f64,
    wal_bytes_per_run: f64,
    cpu: Cpu,
    /// With `--profile`: the store's functions, by time spent in them (excluding callees).
    functions: Vec<Function>,
}

/// The time the server spent in one of the store's functions over a phase.
#[derive(Debug, Serialize)]
struct Function {
    name: String,
    calls_per_run: f64,
    total_ms: f64,
    self_ms: f64,
}

async fn workers(a: &Args, processes: usize) -> Workers {
    let profiled;
    let a = if a.profile {
        profiled = Args {
            url: with_setting(&a.url, "track_functions=pl"),
            ..a.clone()
        };
        &profiled
    } else {
        a
    };
    let schema = format!("flow_pgbench_workers_{processes}");
    drop_schema(&a.url, &schema).await;
    let before = counters(&a.url).await;
    let producer = Runtime::new().with_queue(Arc::new(store(&a.url, &schema, a.pool).await));
    let mut spawned: Vec<Spawned> = (0..processes)
        .map(|i| spawn_worker(a, &schema, &format!("w{processes}-{i}")))
        .collect();
    for w in &mut spawned {
        let mut line = String::new();
        w.stdout
            .read_line(&mut line)
            .expect("a worker's first line");
        assert_eq!(line.trim(), "ready", "a worker starts");
    }
    let pids: Vec<u32> = spawned.iter().map(|w| w.child.id()).collect();
    let poll = connect(&a.url).await;
    let count = poll
        .prepare(&format!(
            "SELECT count(*) FROM {schema}.flow_runs WHERE status = 'completed'"
        ))
        .await
        .expect("the count");

    let mark = cpu_mark(&pids);
    let start = Instant::now();
    let tasks: Vec<_> = (0..a.workflows)
        .map(|i| {
            let producer = producer.clone();
            tokio::spawn(async move {
                producer
                    .enqueue(
                        Chain10,
                        format!("run-{i}"),
                        (i as u64,),
                        EnqueueOptions::queue(QUEUE),
                    )
                    .await
                    .expect("enqueued")
            })
        })
        .collect();
    for t in tasks {
        let run = t.await.expect("task");
        assert!(run.created());
    }
    let enqueued = start.elapsed();
    let mut polls = 0_i64;
    loop {
        polls += 1;
        let done: i64 = poll.query_one(&count, &[]).await.expect("count").get(0);
        if done as usize >= a.workflows {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed();
    let cpu = cpu_since(&mark, &pids);
    drop(poll);

    let mut finished_by = Vec::new();
    for mut w in spawned {
        drop(w.stdin.take());
        let mut line = String::new();
        w.stdout.read_line(&mut line).expect("a worker's report");
        let done: WorkerDone = serde_json::from_str(line.trim()).expect("a worker's report");
        assert_eq!(done.lost + done.store_errors, 0, "{done:?}");
        finished_by.push(done.finished);
        assert!(w.child.wait().expect("a worker exits").success());
    }
    drop(producer);
    let after = counters(&a.url).await;

    // The runs' times, from the server's clock; and their outputs.
    let client = connect(&a.url).await;
    let rows = client
        .query(
            &format!(
                "SELECT convert_from(input, 'UTF8'), convert_from(output, 'UTF8'), \
                 created_ms, started_ms, updated_ms FROM {schema}.flow_runs \
                 WHERE status = 'completed'"
            ),
            &[],
        )
        .await
        .expect("the runs");
    assert_eq!(rows.len(), a.workflows);
    let mut step = Vec::with_capacity(rows.len());
    let mut queued = Vec::with_capacity(rows.len());
    for row in &rows {
        let input: (u64,) = serde_json::from_str(row.get::<_, &str>(0)).expect("input");
        let output: u64 = serde_json::from_str(row.get::<_, &str>(1)).expect("output");
        assert_eq!(output, input.0 + STEPS);
        let (created, started, updated): (i64, i64, i64) = (row.get(2), row.get(3), row.get(4));
        step.push((updated - started) as f64 / STEPS as f64);
        queued.push((started - created) as f64);
    }
    step.sort_by(f64::total_cmp);
    queued.sort_by(f64::total_cmp);
    let functions = if a.profile {
        client
            .query(
                "SELECT funcname::text, calls, total_time, self_time FROM pg_stat_user_functions \
                 WHERE schemaname = $1 ORDER BY self_time DESC",
                &[&schema],
            )
            .await
            .expect("pg_stat_user_functions")
            .iter()
            .map(|r| Function {
                name: r.get(0),
                calls_per_run: r.get::<_, i64>(1) as f64 / a.workflows as f64,
                total_ms: r.get(2),
                self_ms: r.get(3),
            })
            .collect()
    } else {
        Vec::new()
    };
    drop(client);
    drop_schema(&a.url, &schema).await;
    let runs = a.workflows as f64;
    Workers {
        processes,
        concurrency: a.concurrency,
        workflows: a.workflows,
        elapsed_s: elapsed.as_secs_f64(),
        enqueue_s: enqueued.as_secs_f64(),
        steps_per_s: runs * STEPS as f64 / elapsed.as_secs_f64(),
        step_p50_ms: percentile(&step, 0.5),
        step_p99_ms: percentile(&step, 0.99),
        queued_p50_ms: percentile(&queued, 0.5),
        queued_p99_ms: percentile(&queued, 0.99),
        finished_by,
        // Not the counting statements of this process.
        xacts_per_run: (after.xacts - before.xacts - polls) as f64 / runs,
        wal_syncs_per_run: (after.wal_syncs - before.wal_syncs) as f64 / runs,
        wal_bytes_per_run: (after.wal_bytes - before.wal_bytes) as f64 / runs,
        cpu,
        functions,
    }
}

// -------------------------------------------------------------------------------------

/// The whole report.
#[derive(Debug, Serialize)]
struct Report {
    server_version: String,
    synchronous_commit: String,
    cores: usize,
    probe: Probe,
    single: Vec<Single>,
    workers: Vec<Workers>,
}

fn main() {
    let a = args();
    if let Some(schema) = a.worker_of.clone() {
        let rt = tokio::runtime::Runtime::new().expect("tokio");
        rt.block_on(worker_process(&a, &schema));
        return;
    }
    let multi = tokio::runtime::Runtime::new().expect("tokio");
    let created = multi.block_on(ensure_database(&a.url));
    let (server_version, synchronous_commit) = multi.block_on(async {
        let client = connect(&a.url).await;
        let show = |name: &'static str| {
            let client = &client;
            async move {
                let row = client.query_one(&format!("SHOW {name}"), &[]).await;
                row.expect("SHOW").get::<_, String>(0)
            }
        };
        (
            show("server_version").await,
            show("synchronous_commit").await,
        )
    });
    eprintln!("PostgreSQL {server_version}, synchronous_commit = {synchronous_commit}");

    let mut report = Report {
        server_version,
        synchronous_commit,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        probe: multi.block_on(probe(&a)),
        single: Vec::new(),
        workers: Vec::new(),
    };
    report
        .single
        .push(multi.block_on(single(&a, "multi_thread", &a.url)));
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    report
        .single
        .push(current.block_on(single(&a, "current_thread", &a.url)));
    // For reference, not durable: the server does not wait for the WAL flush of a commit.
    report.single.push(current.block_on(single(
        &a,
        "current_thread_async_commit",
        &with_setting(&a.url, "synchronous_commit=off"),
    )));
    drop(current);
    for &n in &a.processes {
        eprintln!("{n} worker process(es) ...");
        report.workers.push(multi.block_on(workers(&a, n)));
    }
    if created {
        multi.block_on(drop_database(&a.url));
    }

    println!(
        "PostgreSQL {}, synchronous_commit = {}, {} cores",
        report.server_version, report.synchronous_commit, report.cores
    );
    let p = &report.probe;
    println!(
        "durable commit alone (1-row INSERT): p50 {:.0} us, p99 {:.0} us; {} connections: \
         {:.0} commits/s, {:.3} fsyncs a commit",
        p.commit_p50_us,
        p.commit_p99_us,
        p.concurrent,
        p.concurrent_commits_per_s,
        p.concurrent_wal_syncs_per_commit
    );
    println!(
        "{:<28} {:>6} {:>12} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "single run in place",
        "runs",
        "step p50 us",
        "step p99 us",
        "steps/s",
        "stmts/run",
        "fsync/run",
        "client CPU",
        "server CPU"
    );
    for s in &report.single {
        println!(
            "{:<28} {:>6} {:>12.0} {:>12.0} {:>10.0} {:>10.1} {:>10.2} {:>9.0}% {:>9.0}%",
            s.runtime,
            s.runs,
            s.step_p50_us,
            s.step_p99_us,
            s.steps_per_s,
            s.xacts_per_run,
            s.wal_syncs_per_run,
            100.0 * s.cpu.client_s / (s.cpu.wall_s * s.cpu.cores as f64),
            100.0 * s.cpu.server_s / (s.cpu.wall_s * s.cpu.cores as f64),
        );
    }
    println!(
        "{:<10} {:>6} {:>9} {:>10} {:>11} {:>11} {:>11} {:>10} {:>10} {:>10} {:>12}",
        "workers",
        "runs",
        "secs",
        "steps/s",
        "step p50 ms",
        "step p99 ms",
        "queued p50",
        "stmts/run",
        "fsync/run",
        "client CPU",
        "server CPU"
    );
    for w in &report.workers {
        println!(
            "{:<10} {:>6} {:>9.2} {:>10.0} {:>11.1} {:>11.1} {:>11.0} {:>10.1} {:>10.3} {:>9.0}% {:>11.0}%",
            format!("{} x {}", w.processes, w.concurrency),
            w.workflows,
            w.elapsed_s,
            w.steps_per_s,
            w.step_p50_ms,
            w.step_p99_ms,
            w.queued_p50_ms,
            w.xacts_per_run,
            w.wal_syncs_per_run,
            100.0 * w.cpu.client_s / (w.cpu.wall_s * w.cpu.cores as f64),
            100.0 * w.cpu.server_s / (w.cpu.wall_s * w.cpu.cores as f64),
        );
    }
    for w in report.workers.iter().filter(|w| !w.functions.is_empty()) {
        println!(
            "server time in the store's functions, {} worker process(es):",
            w.processes
        );
        for f in &w.functions {
            println!(
                "  {:<32} {:>6.2} calls/run {:>9.1} ms total {:>9.1} ms self",
                f.name, f.calls_per_run, f.total_ms, f.self_ms
            );
        }
    }
    println!(
        "{{\"flow_pg_bench\":{}}}",
        serde_json::to_string(&report).expect("json")
    );
}
