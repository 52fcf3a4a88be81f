//! The chaos test of workers on PostgreSQL: worker processes (`chaos-worker`) execute
//! hundreds of 10-step durable runs (a retry with a backoff, a parallel group, a map) from
//! one queue while this test SIGKILLs random workers and starts new ones, and SIGSTOPs one
//! worker for longer than its lease, then SIGCONTs it. Then, from the store and from the
//! side-effect logs the steps wrote:
//!
//! - every run finished, completed, with the right result, and has exactly its 12 step
//!   records, all completed (a committed step has one record: it was never committed twice);
//! - no stale worker committed: every step committed after a run was taken over was
//!   committed by the worker that took it over, and the steps committed before the first
//!   takeover by one worker (checked on the database server's clock, which stamps both);
//! - each step ran at most (attempts allowed) x (1 + takeovers of its run) times;
//! - the stopped worker lost its runs' leases and reported it after it woke up.
//!
//! Size: `FLOW_CHAOS_RUNS` runs (CI: 120) with `FLOW_CHAOS_WORKERS` workers (4), each
//! executing `FLOW_CHAOS_CONCURRENCY` runs at once (2). At full size (documented in the
//! README): `FLOW_CHAOS_RUNS=1000 FLOW_CHAOS_WORKERS=6 FLOW_CHAOS_CONCURRENCY=4 cargo test
//! -p flow-chaos-test --release -- --nocapture`. The server: `FLOW_PG_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/test`; the test works in a schema of its own and
//! drops it at the end.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flow::durable::EnqueueOptions;
use flow::store::{RunStatus, StepOutcome, Store};
use flow_chaos_test::{Chaos10, STEPS_PER_RUN, V, expected};
use flow_store_postgres::{Options, PgStore};

const LEASE_MS: u64 = 1500;

fn url() -> String {
    std::env::var("FLOW_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A worker process and its log.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

fn spawn_worker(dir: &Path, schema: &str, name: &str) -> Proc {
    let log = dir.join(format!("log-{name}"));
    let child = Command::new(env!("CARGO_BIN_EXE_chaos-worker"))
        .args([
            url().as_str(),
            schema,
            log.to_str().expect("a UTF-8 path"),
            name,
            &LEASE_MS.to_string(),
            &env_number("FLOW_CHAOS_CONCURRENCY", 2).to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the worker starts");
    Proc {
        name: name.to_owned(),
        child,
        log,
    }
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {sig} {pid}");
}

/// Drops the test's schema at the end, also when the test fails.
struct Schema {
    name: String,
}

impl Drop for Schema {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
                    .await
                    .expect("the server for DROP SCHEMA");
                tokio::spawn(conn);
                let _ = client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                    .await;
            });
        })
        .join();
    }
}

/// One `start` line of a side-effect log: (step, idempotency key, worker, attempt).
fn starts(logs: &[PathBuf]) -> Vec<(String, String, String, u32)> {
    let mut out = Vec::new();
    for log in logs {
        let Ok(text) = std::fs::read_to_string(log) else {
            continue;
        };
        for line in text.lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            if let ["start", step, key, worker, attempt] = parts[..] {
                out.push((
                    step.to_owned(),
                    key.to_owned(),
                    worker.to_owned(),
                    attempt.parse().expect("an attempt number"),
                ));
            }
        }
    }
    out
}

#[test]
fn workers_killed_and_stalled_finish_every_run_exactly() {
    let runs = env_number("FLOW_CHAOS_RUNS", 120);
    let workers = env_number("FLOW_CHAOS_WORKERS", 4);
    let schema = Schema {
        name: format!("flow_chaos_{}_{}", std::process::id(), fastrand::u32(..)),
    };
    let dir = std::env::temp_dir().join(&schema.name);
    std::fs::create_dir_all(&dir).expect("the test's directory");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let store = rt.block_on(async {
        let options = Options {
            schema: Some(schema.name.clone()),
            retry_for: Duration::from_secs(5),
            ..Options::default()
        };
        match PgStore::connect_with(&url(), options).await {
            Ok(s) => Arc::new(s),
            Err(e) => panic!(
                "the chaos test needs PostgreSQL at {} (FLOW_PG_URL); start it with \
                 `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`: {e}",
                url()
            ),
        }
    });
    let started = Instant::now();

    let mut live: Vec<Proc> = (0..workers)
        .map(|i| spawn_worker(&dir, &schema.name, &format!("w{i}.0")))
        .collect();
    let mut logs: Vec<PathBuf> = live.iter().map(|p| p.log.clone()).collect();
    let mut generation = 0;

    // Enqueue every run at once.
    let runtime = flow::Runtime::new().with_queue(store.clone());
    rt.block_on(async {
        for n in 0..runs {
            runtime
                .enqueue(
                    Chaos10,
                    format!("chaos-{n}"),
                    (n as u64,),
                    EnqueueOptions::queue("chaos"),
                )
                .await
                .expect("enqueued");
        }
    });

    // Chaos until every run has finished: every 0.3 to 0.8 s, maybe a worker killed and a
    // new one started; once, a worker stopped until another worker has taken one of its
    // runs over (at most 3 leases), then woken up in the middle of that run's takeover, so
    // that its late writes race the new holder's.
    let mut kills = 0;
    let mut stalled: Option<(Proc, Instant, Vec<String>)> = None;
    let mut stalls = 0;
    let mut woke_on_takeover = false;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut next_chaos = Instant::now() + Duration::from_millis(300);
    loop {
        let unfinished = rt
            .block_on(store.unfinished_runs())
            .expect("the store answers");
        if unfinished.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} runs unfinished after 5 minutes",
            unfinished.len()
        );
        if let Some((p, since, held)) = &stalled {
            let taken = unfinished.iter().any(|r| {
                held.contains(&r.id) && r.lease.as_ref().is_some_and(|l| l.worker != p.name)
            });
            if taken || since.elapsed() > Duration::from_millis(LEASE_MS * 3) {
                woke_on_takeover |= taken;
                if let Some((p, _, _)) = stalled.take() {
                    signal(p.child.id(), "-CONT");
                    live.push(p);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
        if Instant::now() < next_chaos {
            continue;
        }
        next_chaos = Instant::now() + Duration::from_millis(300 + fastrand::u64(..500));
        if stalls == 0 && started.elapsed() > Duration::from_secs(1) && live.len() > 1 {
            let p = live.remove(fastrand::usize(..live.len()));
            signal(p.child.id(), "-STOP");
            stalls += 1;
            let held = unfinished
                .iter()
                .filter(|r| r.lease.as_ref().is_some_and(|l| l.worker == p.name))
                .map(|r| r.id.clone())
                .collect();
            stalled = Some((p, Instant::now(), held));
            continue;
        }
        if stalled.is_none() && !live.is_empty() && fastrand::bool() {
            let mut p = live.remove(fastrand::usize(..live.len()));
            p.child.kill().expect("SIGKILL");
            let _ = p.child.wait();
            kills += 1;
            generation += 1;
            let index = p.name.split('.').next().unwrap_or("w").to_owned();
            let new = spawn_worker(&dir, &schema.name, &format!("{index}.{generation}"));
            logs.push(new.log.clone());
            live.push(new);
        }
    }
    if let Some((p, _, _)) = stalled.take() {
        signal(p.child.id(), "-CONT");
        live.push(p);
    }

    // Stop the live workers cleanly; read their reports.
    let mut reports: BTreeMap<String, String> = BTreeMap::new();
    for p in &live {
        std::fs::write(format!("{}.stop", p.log.display()), "").expect("stop file");
    }
    for p in live {
        let out = p.child.wait_with_output().expect("the worker exits");
        assert!(
            out.status.success(),
            "worker {} failed: {:?}",
            p.name,
            out.status
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let report = text
            .lines()
            .find(|l| l.starts_with("report "))
            .unwrap_or("")
            .to_owned();
        reports.insert(p.name, report);
    }
    let elapsed = started.elapsed();

    // The store: every run completed with its result, 12 committed steps each.
    let all = rt
        .block_on(flow::durable::all_runs(&*store, Default::default()))
        .expect("runs");
    assert_eq!(all.len(), runs);
    let mut takeovers_of: HashMap<String, usize> = HashMap::new();
    let mut takeovers = 0;
    let mut committed = 0;
    let mut late_checked = 0;
    for run in &all {
        let n: u64 = run.id["chaos-".len()..].parse().expect("a run number");
        assert_eq!(run.status, RunStatus::Completed, "run {}", run.id);
        assert_eq!(
            run.output.as_deref(),
            Some(expected(n).to_string().as_bytes()),
            "run {}",
            run.id
        );
        assert_eq!(run.lease, None, "run {} still leased", run.id);
        let steps = rt.block_on(store.steps_of(&run.id)).expect("steps");
        assert_eq!(steps.len(), STEPS_PER_RUN, "run {}: {steps:?}", run.id);
        let history = rt.block_on(store.history_of(&run.id)).expect("history");
        let taken: Vec<(u64, String)> = history
            .iter()
            .filter(|h| h.action == "takeover")
            .map(|h| {
                let worker = h
                    .actor
                    .strip_prefix("worker ")
                    .unwrap_or(&h.actor)
                    .to_owned();
                (h.at_ms, worker)
            })
            .collect();
        takeovers += taken.len();
        takeovers_of.insert(run.id.clone(), taken.len());
        let mut first_holder: Option<String> = None;
        for step in &steps {
            committed += 1;
            let Some(StepOutcome::Completed(bytes)) = &step.outcome else {
                panic!(
                    "step {} of run {} is not completed: {step:?}",
                    step.key, run.id
                );
            };
            let value: V = serde_json::from_slice(bytes).expect("a step value");
            // The holder at the commit: the last takeover before it, or the first holder. A
            // commit in the same millisecond as a takeover's record may have come just
            // before the takeover's claim: not judged.
            if taken.iter().any(|(at, _)| *at == step.updated_ms) {
                continue;
            }
            match taken.iter().rev().find(|(at, _)| *at < step.updated_ms) {
                Some((at, holder)) => {
                    late_checked += 1;
                    assert_eq!(
                        &value.by, holder,
                        "run {}: step {} committed at {} by {}, but {} took the run over at {at}",
                        run.id, step.key, step.updated_ms, value.by, holder
                    );
                }
                None => match &first_holder {
                    None => first_holder = Some(value.by.clone()),
                    Some(first) => assert_eq!(
                        &value.by, first,
                        "run {}: steps committed by {first} and {} before any takeover",
                        run.id, value.by
                    ),
                },
            }
        }
    }

    // The side effects: each step ran at most attempts x (1 + takeovers) times.
    let effects = starts(&logs);
    let mut runs_of_step: HashMap<String, usize> = HashMap::new();
    for (_, key, _, _) in &effects {
        *runs_of_step.entry(key.clone()).or_default() += 1;
    }
    let mut reruns = 0;
    let mut worst = 0;
    for (key, times) in &runs_of_step {
        // flow:<run>:<node>@<occurrence>[item]
        let run = key.split(':').nth(1).expect("a run in the key");
        let attempts = if key.contains(":flaky@") { 2 } else { 1 };
        let bound = attempts * (1 + takeovers_of.get(run).copied().unwrap_or(0));
        assert!(
            *times <= bound,
            "step {key} ran {times} times (bound {bound})"
        );
        reruns += times.saturating_sub(attempts.min(*times));
        worst = worst.max(*times);
    }
    assert_eq!(runs_of_step.len(), runs * STEPS_PER_RUN, "every step ran");

    let lost: usize = reports
        .values()
        .filter_map(|r| {
            r.split(' ')
                .find_map(|kv| kv.strip_prefix("lost="))
                .and_then(|v| v.parse::<usize>().ok())
        })
        .sum();
    println!(
        "chaos: {runs} runs x {STEPS_PER_RUN} steps on {workers} workers in {elapsed:.1?}: \
         {kills} SIGKILLs, {stalls} SIGSTOP past the lease ({LEASE_MS} ms); \
         {takeovers} takeovers, {committed} steps committed once each, {} step executions \
         ({reruns} re-executions after a takeover or retry, at most {worst} of one step), \
         {late_checked} commits after a takeover all by the new holder, {lost} leases lost \
         as reported by the workers that stopped cleanly (the stopped worker woke {})",
        effects.len(),
        if woke_on_takeover {
            "as one of its runs was taken over"
        } else {
            "after 3 leases, none of its runs taken over"
        }
    );
    for (name, report) in &reports {
        println!("  {name}: {report}");
    }
    assert!(kills >= 1 && stalls == 1, "the chaos happened");
    assert!(takeovers >= 1, "some runs were taken over");
    let _ = std::fs::remove_dir_all(&dir);
}
