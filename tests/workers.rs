//! Workers sharing a store's queue (`Runtime::enqueue`, `flow::durable::Worker`), through the
//! public API, on the in-memory store (the PostgreSQL store runs the same store checks, and
//! `tests/chaos` runs real worker processes against PostgreSQL).
//!
//! A worker "dies" here when the tokio runtime that drives it is dropped (its tasks stop,
//! nothing more reaches the store, its leases are not released), and "stalls" when the one
//! thread of its runtime is blocked (no heartbeat, no step makes progress), as SIGSTOP does.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use flow::Registry;
use flow::durable::{CANCEL_SIGNAL, EnqueueOptions, Worker, WorkerOptions, WorkerReport};
use flow::prelude::*;
use flow::store::{MemoryStore, Queue, RunStatus, Store};
use serde::{Deserialize, Serialize};

/// A step's error, stored with the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fail(String);

impl core::fmt::Display for Fail {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Every step execution: (tag, step, thread name), in order.
static LOG: LazyLock<Mutex<Vec<(String, String, String)>>> = LazyLock::new(Mutex::default);
/// Steps that wait while their `tag/step` is here.
static GATES: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(Mutex::default);
/// Steps executing now, by tag prefix (the test's name), and the most seen at once.
static BUSY: LazyLock<Mutex<HashMap<String, (u32, u32)>>> = LazyLock::new(Mutex::default);

fn gate(tag: &str, step: &str) {
    GATES.lock().unwrap().insert(format!("{tag}/{step}"));
}

fn open(tag: &str, step: &str) {
    GATES.lock().unwrap().remove(&format!("{tag}/{step}"));
}

fn runs_of(tag: &str, step: &str) -> Vec<String> {
    LOG.lock()
        .unwrap()
        .iter()
        .filter(|(t, s, _)| t == tag && s == step)
        .map(|(_, _, thread)| thread.clone())
        .collect()
}

/// A step's side effect: logged with the thread it ran on, then held while gated.
async fn effect(tag: &str, step: &str) {
    let thread = std::thread::current().name().unwrap_or("?").to_owned();
    LOG.lock()
        .unwrap()
        .push((tag.to_owned(), step.to_owned(), thread));
    let test = tag.split('#').next().unwrap_or(tag).to_owned();
    {
        let mut busy = BUSY.lock().unwrap();
        let (now, max) = busy.entry(test.clone()).or_default();
        *now += 1;
        *max = (*max).max(*now);
    }
    while GATES.lock().unwrap().contains(&format!("{tag}/{step}")) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    BUSY.lock().unwrap().entry(test).or_default().0 -= 1;
}

async fn first(tag: String, n: u32) -> Result<u32, Fail> {
    effect(&tag, "first").await;
    Ok(n + 1)
}

/// Its output says which thread (worker) committed it.
async fn second(tag: String, n: u32) -> Result<(u32, String), Fail> {
    effect(&tag, "second").await;
    let thread = std::thread::current().name().unwrap_or("?").to_owned();
    Ok((n * 10, thread))
}

/// Two steps; returns the second's value and the thread that ran it.
#[workflow(durable)]
async fn job(tag: String, n: u32) -> Result<(u32, String), Fail> {
    let a = first(tag.clone(), n).await?;
    second(tag, a).await
}

/// Fails its first attempt.
async fn once_failing(tag: String) -> Result<u32, Fail> {
    effect(&tag, "once_failing").await;
    let attempt = flow::step_context().map_or(1, |c| c.attempt());
    if attempt == 1 {
        return Err(Fail("not yet".into()));
    }
    Ok(attempt)
}

/// A step retried after a long backoff: what a worker parks.
#[workflow(durable)]
async fn patient(tag: String) -> Result<u32, Fail> {
    #[retry(max_attempts = 2, backoff = constant("1500ms"))]
    let attempt = once_failing(tag).await?;
    Ok(attempt)
}

/// A child's failure, as the parent's step error.
impl From<flow::Error<Fail>> for Fail {
    fn from(e: flow::Error<Fail>) -> Self {
        Fail(e.to_string())
    }
}

/// A step, then the durable child `patient` (whose step retries after a long backoff) in a
/// step: the child's backoff is what a worker parks.
#[workflow(durable)]
async fn guardian(tag: String) -> Result<u32, Fail> {
    let a = first(tag.clone(), 1).await?;
    let attempt = patient(tag).await?;
    Ok(a * 100 + attempt)
}

/// A step, a long durable sleep, a step.
#[workflow(durable)]
async fn napper(tag: String, n: u32) -> Result<(u32, String), Fail> {
    let a = first(tag.clone(), n).await?;
    flow::sleep("1500ms").await;
    second(tag, a).await
}

fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.register_durable(Job).unwrap();
    registry.register_durable(Patient).unwrap();
    registry.register_durable(Napper).unwrap();
    registry.register_durable(Guardian).unwrap();
    registry
}

/// Waits (2 s at most) for run `tag` to be parked: running, and no worker holding its lease.
async fn assert_parked(store: &MemoryStore, tag: &str) {
    for _ in 0..400 {
        let r = store.get_run(tag).await.unwrap().unwrap();
        if r.status == RunStatus::Running && r.lease.is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let run = store.get_run(tag).await.unwrap().unwrap();
    panic!(
        "run {tag} is not parked: {:?}, lease {:?}",
        run.status, run.lease
    );
}

fn options(queue: &str, name: &str) -> WorkerOptions {
    WorkerOptions::new(queue)
        .name(name)
        .lease(Duration::from_millis(600))
        .heartbeat(Duration::from_millis(100))
        .poll(Duration::from_millis(50))
}

/// A worker on a runtime of its own, on one thread named `name`: stop it with the sender
/// (a clean shutdown), or drop the returned runtime handle's thread by `kill`ing it.
struct Remote {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    report: std::sync::mpsc::Receiver<WorkerReport>,
    /// Blocks the worker's only thread for the given time (a stall).
    stall: tokio::sync::mpsc::UnboundedSender<Duration>,
    /// Dropping the runtime kills the worker (no release, no more writes).
    kill: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn spawn_worker(store: &MemoryStore, options: WorkerOptions) -> Remote {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (report_tx, report_rx) = std::sync::mpsc::channel();
    let (stall_tx, mut stall_rx) = tokio::sync::mpsc::unbounded_channel::<Duration>();
    let (kill_tx, kill_rx) = std::sync::mpsc::channel::<()>();
    let store: Arc<dyn Queue> = Arc::new(store.clone());
    let name = options.name.clone();
    let thread = std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let runtime = rt.block_on(async { Runtime::new().with_queue(store) });
            let worker = Worker::new(&runtime, registry(), options).unwrap();
            rt.spawn(async move {
                while let Some(d) = stall_rx.recv().await {
                    std::thread::sleep(d);
                }
            });
            let run = rt.spawn(worker.run(async {
                let _ = stop_rx.await;
            }));
            // Killed: the runtime is dropped with everything in flight.
            let killed = std::thread::spawn(move || kill_rx.recv().is_ok());
            loop {
                if run.is_finished() {
                    if let Ok(report) = rt.block_on(run) {
                        let _ = report_tx.send(report);
                    }
                    return;
                }
                if killed.is_finished() {
                    rt.shutdown_background();
                    return;
                }
                rt.block_on(async { tokio::time::sleep(Duration::from_millis(10)).await });
            }
        })
        .unwrap();
    Remote {
        stop: Some(stop_tx),
        report: report_rx,
        stall: stall_tx,
        kill: Some(kill_tx),
        thread: Some(thread),
    }
}

impl Remote {
    fn stop(mut self) -> WorkerReport {
        let _ = self.stop.take().unwrap().send(());
        self.report
            .recv_timeout(Duration::from_secs(20))
            .expect("the worker stops and reports")
    }

    /// Kills the worker, and returns once it is dead.
    fn kill(mut self) {
        let _ = self.kill.take().unwrap().send(());
        let _ = self.thread.take().unwrap().join();
    }
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn enqueue(
    store: &MemoryStore,
    queue: &str,
    tag: &str,
    n: u32,
) -> flow::durable::DurableRun<Job> {
    let runtime = Runtime::new().with_queue(Arc::new(store.clone()));
    runtime
        .enqueue(Job, tag, (tag.to_owned(), n), EnqueueOptions::queue(queue))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_run_every_enqueued_run_once() {
    let store = MemoryStore::new();
    let a = spawn_worker(&store, options("q-many", "many-a").concurrency(4));
    let b = spawn_worker(&store, options("q-many", "many-b").concurrency(4));
    let mut runs = Vec::new();
    for i in 0..30 {
        let tag = format!("many#{i}");
        runs.push((i, enqueue(&store, "q-many", &tag, i).await));
    }
    for (i, run) in runs {
        assert!(run.created());
        let (value, _) = run.wait().await.unwrap();
        assert_eq!(value, (i + 1) * 10);
    }
    let (ra, rb) = (a.stop(), b.stop());
    assert_eq!(ra.finished + rb.finished, 30, "{ra:?} {rb:?}");
    assert_eq!(ra.claimed + rb.claimed, 30, "{ra:?} {rb:?}");
    assert_eq!(ra.lost + rb.lost + ra.taken_over + rb.taken_over, 0);
    for i in 0..30 {
        let tag = format!("many#{i}");
        assert_eq!(runs_of(&tag, "first").len(), 1, "{tag}");
        assert_eq!(runs_of(&tag, "second").len(), 1, "{tag}");
        let run = store.get_run(&tag).await.unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Completed);
        assert_eq!(run.lease, None, "a finished run holds no lease");
    }
    assert!(BUSY.lock().unwrap()["many"].1 <= 8, "at most 4 a worker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_workers_run_is_taken_over_from_its_last_committed_step() {
    let store = MemoryStore::new();
    let tag = "dead#1";
    gate(tag, "second");
    let a = spawn_worker(&store, options("q-dead", "dead-a"));
    let run = enqueue(&store, "q-dead", tag, 4).await;
    wait_for("the second step on worker a", || {
        !runs_of(tag, "second").is_empty()
    })
    .await;
    a.kill();
    open(tag, "second");
    let b = spawn_worker(&store, options("q-dead", "dead-b"));
    let (value, thread) = run.wait().await.unwrap();
    assert_eq!((value, thread.as_str()), (50, "dead-b"));
    assert_eq!(
        runs_of(tag, "first"),
        ["dead-a"],
        "a committed step never runs again"
    );
    assert_eq!(runs_of(tag, "second"), ["dead-a", "dead-b"]);
    let report = b.stop();
    assert_eq!(
        (report.claimed, report.taken_over, report.finished),
        (1, 1, 1)
    );
    let history = store.history_of(tag).await.unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0].actor, "worker dead-b");
    assert_eq!(history[0].action, "takeover");
    assert!(
        history[0].detail.contains("epoch 2"),
        "{}",
        history[0].detail
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_worker_loses_its_run_and_commits_nothing_after() {
    let store = MemoryStore::new();
    let tag = "stall#1";
    gate(tag, "second");
    let a = spawn_worker(&store, options("q-stall", "stall-a"));
    let run = enqueue(&store, "q-stall", tag, 1).await;
    wait_for("the second step on worker a", || {
        !runs_of(tag, "second").is_empty()
    })
    .await;
    // Worker a freezes for longer than its lease, with its step about to finish.
    let stalled = std::time::Instant::now();
    a.stall.send(Duration::from_millis(1500)).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    open(tag, "second");
    let b = spawn_worker(&store, options("q-stall", "stall-b"));
    let (value, thread) = run.wait().await.unwrap();
    assert_eq!((value, thread.as_str()), (20, "stall-b"));
    // Worker a wakes up: its step ends, its commit is refused (the lease is b's now), and
    // its next heartbeat hears the lease is lost.
    let awake = Duration::from_millis(1500 + 500);
    tokio::time::sleep(awake.saturating_sub(stalled.elapsed())).await;
    let ra = a.stop();
    let rb = b.stop();
    assert_eq!(ra.lost, 1, "{ra:?}");
    assert_eq!(ra.finished, 0, "{ra:?}");
    assert_eq!((rb.taken_over, rb.finished), (1, 1), "{rb:?}");
    let step = store
        .get_step(&flow::store::StepKey::new(tag, "second"))
        .await
        .unwrap()
        .unwrap();
    match step.outcome {
        Some(flow::store::StepOutcome::Completed(bytes)) => {
            let (_, by): (u32, String) = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(by, "stall-b", "only the lease holder committed");
        }
        other => panic!("{other:?}"),
    }
    let run = store.get_run(tag).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_runs_for_another_worker_at_once() {
    let store = MemoryStore::new();
    let tag = "release#1";
    gate(tag, "first");
    // A long lease: only the release lets b take the run over soon.
    let long = |name: &str| {
        options("q-release", name)
            .lease(Duration::from_secs(60))
            .heartbeat(Duration::from_secs(5))
    };
    let a = spawn_worker(&store, long("release-a"));
    let run = enqueue(&store, "q-release", tag, 2).await;
    wait_for("the first step on worker a", || {
        !runs_of(tag, "first").is_empty()
    })
    .await;
    let ra = a.stop();
    assert_eq!((ra.claimed, ra.released, ra.finished), (1, 1, 0), "{ra:?}");
    assert_eq!(store.get_run(tag).await.unwrap().unwrap().lease, None);
    open(tag, "first");
    let b = spawn_worker(&store, long("release-b"));
    let started = std::time::Instant::now();
    let (value, thread) = run.wait().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!((value, thread.as_str()), (30, "release-b"));
    assert_eq!(runs_of(tag, "first"), ["release-a", "release-b"]);
    assert_eq!(b.stop().taken_over, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_an_unknown_workflow_is_skipped_and_said_so() {
    let store = MemoryStore::new();
    let queue: Arc<dyn Queue> = Arc::new(store.clone());
    let mut e = flow::store::Enqueue::new(
        flow::store::NewRun {
            id: "unknown#1".into(),
            workflow: "no_such_workflow".into(),
            fingerprint: 1,
            node_fingerprints: Default::default(),
            input: b"null".to_vec(),
        },
        "q-unknown",
    );
    e.priority = 0;
    queue.enqueue(e).await.unwrap();
    let a = spawn_worker(&store, options("q-unknown", "unknown-a"));
    let store2 = store.clone();
    for _ in 0..400 {
        if !store2.history_of("unknown#1").await.unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let report = a.stop();
    assert!(report.skipped >= 1, "{report:?}");
    let history = store.history_of("unknown#1").await.unwrap();
    assert_eq!(history[0].action, "skip");
    assert!(
        history[0].detail.contains("`no_such_workflow`"),
        "{}",
        history[0].detail
    );
    let run = store.get_run("unknown#1").await.unwrap().unwrap();
    assert_eq!(
        run.status,
        RunStatus::Pending,
        "left for a build that knows it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_run_is_cancelled_through_the_store() {
    let store = MemoryStore::new();
    let tag = "cancel#1";
    gate(tag, "second");
    let a = spawn_worker(&store, options("q-cancel", "cancel-a"));
    let run = enqueue(&store, "q-cancel", tag, 1).await;
    wait_for("the second step", || !runs_of(tag, "second").is_empty()).await;
    store
        .send_signal(tag, CANCEL_SIGNAL, b"null".to_vec())
        .await
        .unwrap();
    let error = run.wait().await.unwrap_err();
    assert!(error.is_cancelled(), "{error}");
    open(tag, "second");
    let report = a.stop();
    assert_eq!(report.finished, 1, "{report:?}");
    assert_eq!(
        store.get_run(tag).await.unwrap().unwrap().status,
        RunStatus::Cancelled
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_runs_at_most_its_concurrency() {
    let store = MemoryStore::new();
    let a = spawn_worker(&store, options("q-limit", "limit-a").concurrency(3));
    let mut runs = Vec::new();
    for i in 0..12 {
        runs.push(enqueue(&store, "q-limit", &format!("limit#{i}"), i).await);
    }
    for run in runs {
        run.wait().await.unwrap();
    }
    assert_eq!(a.stop().finished, 12);
    let max = BUSY.lock().unwrap()["limit"].1;
    assert!((1..=3).contains(&max), "{max} steps at once");
}

#[tokio::test]
async fn enqueue_and_workers_need_a_queue_store() {
    let runtime = Runtime::new().with_store(MemoryStore::new());
    let error = runtime
        .enqueue(Job, "x", ("x".into(), 1), EnqueueOptions::queue("q"))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("Runtime::with_queue"), "{error}");
    let error = Worker::new(&runtime, registry(), WorkerOptions::new("q")).unwrap_err();
    assert!(error.to_string().contains("Runtime::with_queue"), "{error}");
    let runtime = Runtime::new().with_queue(Arc::new(MemoryStore::new()));
    let bad = WorkerOptions::new("q").heartbeat(Duration::from_secs(60));
    let error = Worker::new(&runtime, registry(), bad).unwrap_err();
    assert!(
        error.to_string().contains("shorter than its lease"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_backoff_parks_the_run_and_a_live_worker_wakes_it_when_due() {
    let store = MemoryStore::new();
    let tag = "park#1";
    let parking = |name: &str| options("q-park", name).park_after(Duration::from_millis(300));
    let a = spawn_worker(&store, parking("park-a"));
    let runtime = Runtime::new().with_queue(Arc::new(store.clone()));
    let enqueued = std::time::Instant::now();
    let run = runtime
        .enqueue(
            Patient,
            tag,
            (tag.to_owned(),),
            EnqueueOptions::queue("q-park"),
        )
        .await
        .unwrap();
    // The first attempt fails; its worker parks the run for the 1.5 s backoff.
    assert_parked(&store, tag).await;
    assert_eq!(runs_of(tag, "once_failing"), ["park-a"]);
    // Worker a goes away; worker b, alive when the backoff ends, wakes the run.
    let ra = a.stop();
    assert_eq!((ra.parked, ra.finished, ra.lost), (1, 0, 0), "{ra:?}");
    let b = spawn_worker(&store, parking("park-b"));
    let attempt = run.wait().await.unwrap();
    assert_eq!(attempt, 2, "the attempt count goes on");
    assert!(
        enqueued.elapsed() >= Duration::from_millis(1500),
        "woken when due, not before: {:?}",
        enqueued.elapsed()
    );
    assert_eq!(runs_of(tag, "once_failing"), ["park-a", "park-b"]);
    let rb = b.stop();
    assert_eq!((rb.claimed, rb.finished), (1, 1), "{rb:?}");
}

/// The backoff of a step inside a durable child workflow parks the parent's run like its own
/// would: the worker gives the run back, another wakes it when due, and the child's retry
/// goes on (attempt 2) without running the parent's first step or the child's first attempt
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backoff_inside_a_durable_child_parks_the_run() {
    let store = MemoryStore::new();
    let tag = "childpark#1";
    let parking = |name: &str| options("q-cpark", name).park_after(Duration::from_millis(300));
    let a = spawn_worker(&store, parking("cpark-a"));
    let runtime = Runtime::new().with_queue(Arc::new(store.clone()));
    let enqueued = std::time::Instant::now();
    let run = runtime
        .enqueue(
            Guardian,
            tag,
            (tag.to_owned(),),
            EnqueueOptions::queue("q-cpark"),
        )
        .await
        .unwrap();
    wait_for("the child's first attempt", || {
        !runs_of(tag, "once_failing").is_empty()
    })
    .await;
    assert_parked(&store, tag).await;
    let ra = a.stop();
    assert_eq!((ra.parked, ra.finished, ra.lost), (1, 0, 0), "{ra:?}");
    let b = spawn_worker(&store, parking("cpark-b"));
    assert_eq!(run.wait().await.unwrap(), 2 * 100 + 2);
    assert!(
        enqueued.elapsed() >= Duration::from_millis(1500),
        "woken when due, not before: {:?}",
        enqueued.elapsed()
    );
    assert_eq!(
        runs_of(tag, "first"),
        ["cpark-a"],
        "the parent's step ran once"
    );
    assert_eq!(runs_of(tag, "once_failing"), ["cpark-a", "cpark-b"]);
    let rb = b.stop();
    assert_eq!((rb.claimed, rb.finished), (1, 1), "{rb:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_sleep_is_parked_and_woken_by_another_worker() {
    let store = MemoryStore::new();
    let tag = "nap#1";
    let parking = |name: &str| options("q-nap", name).park_after(Duration::from_millis(300));
    let a = spawn_worker(&store, parking("nap-a"));
    let runtime = Runtime::new().with_queue(Arc::new(store.clone()));
    let enqueued = std::time::Instant::now();
    let run = runtime
        .enqueue(
            Napper,
            tag,
            (tag.to_owned(), 2),
            EnqueueOptions::queue("q-nap"),
        )
        .await
        .unwrap();
    wait_for("the first step", || !runs_of(tag, "first").is_empty()).await;
    for _ in 0..400 {
        let r = store.get_run(tag).await.unwrap().unwrap();
        if r.lease.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ra = a.stop();
    assert_eq!((ra.parked, ra.finished), (1, 0), "{ra:?}");
    let b = spawn_worker(&store, parking("nap-b"));
    let (value, thread) = run.wait().await.unwrap();
    assert_eq!((value, thread.as_str()), (30, "nap-b"));
    assert!(
        enqueued.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        enqueued.elapsed()
    );
    assert_eq!(
        runs_of(tag, "first"),
        ["nap-a"],
        "the step before the sleep ran once"
    );
    assert_eq!(b.stop().finished, 1);
}
