//! Durable runs on the embedded SQLite store, through the public API as a user writes them:
//! a run is recorded step by step, a run whose process stopped mid-step resumes without
//! running a completed step again, an id never runs twice, and a changed workflow is refused.
//!
//! A "crash" here is the tokio runtime that drives the run shut down mid-step: the run's
//! future is dropped with nothing more written to the store (as when the process is killed).
//! The crash test with real processes killed by SIGKILL is `tests/crash`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use flow::durable::DurableRun;
use flow::prelude::*;
use flow::store::{RunStatus, Store};
use flow_store_sqlite::SqliteStore;
use serde::{Deserialize, Serialize};

/// A step's error, stored with the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fail(String);

impl core::fmt::Display for Fail {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Appends `line` to the side-effect log of `dir`.
fn log(dir: &str, line: &str) {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(Path::new(dir).join("log"))
        .expect("the test's log opens");
    writeln!(f, "{line}").expect("the test's log is written");
}

fn read_log(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A step's side effect: logs its name, value and idempotency key, then waits while the
/// file `hang-<name>` exists in `dir` (the test "kills" the process meanwhile).
async fn effect(dir: &str, name: &str, value: u32) -> u32 {
    let key = flow::step_context()
        .map(|c| c.idempotency_key())
        .unwrap_or_default();
    log(dir, &format!("{name} {value} {key}"));
    while Path::new(dir).join(format!("hang-{name}")).exists() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    value
}

async fn prepare(dir: String, n: u32) -> Result<u32, Fail> {
    Ok(effect(&dir, "prepare", n).await + 1)
}

async fn add(dir: String, total: u32, i: u32) -> Result<u32, Fail> {
    Ok(effect(&dir, &format!("add{i}"), total).await + i)
}

async fn left(dir: String, v: u32) -> Result<u32, Fail> {
    Ok(effect(&dir, "left", v).await * 2)
}

async fn right(dir: String, v: u32) -> Result<u32, Fail> {
    Ok(effect(&dir, "right", v).await * 3)
}

async fn probe(dir: String, item: u32) -> Result<u32, Fail> {
    Ok(effect(&dir, &format!("probe{item}"), item).await * 10)
}

/// Sequence, loop, parallel group and map: 1 + 3 + 2 + 3 steps.
#[workflow(durable)]
async fn pipeline(dir: String, n: u32) -> Result<u32, Fail> {
    let mut total = prepare(dir.clone(), n).await?;
    for i in 0..3 {
        total = add(dir.clone(), total, i).await?;
    }
    let (l, r) = flow::join!(left(dir.clone(), total), right(dir.clone(), total)).await?;
    let items: Vec<u32> = vec![1, 2, 3];
    let probes = flow::map!(items, |item| probe(dir.clone(), item), concurrency = 2).await?;
    Ok(l + r + probes.iter().sum::<u32>())
}

/// What an uninterrupted run of `pipeline(_, n)` returns.
fn expected(n: u32) -> u32 {
    let total = n + 1 + 1 + 2;
    total * 2 + total * 3 + 60
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "flow-durable-{name}-{}-{}",
        std::process::id(),
        fastrand_suffix()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn fastrand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(1);
    h.finish()
}

fn store(dir: &Path) -> SqliteStore {
    SqliteStore::open(dir.join("runs.db")).expect("the store opens")
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Runs `pipeline` until step `hang` is in flight, then drops the tokio runtime (the run's
/// future is dropped mid-step; nothing more reaches the store).
fn crash_at(dir: &Path, id: &str, hang: &str, committed: &[flow::store::StepKey]) {
    let gate = dir.join(format!("hang-{hang}"));
    std::fs::write(&gate, "").expect("gate");
    let rt = tokio_rt();
    rt.block_on(async {
        let runtime = Runtime::new().with_store(store(dir));
        let run: DurableRun<Pipeline> = runtime
            .start(Pipeline, id, (dir.display().to_string(), 5))
            .await
            .expect("started");
        assert!(run.created());
        let prefix = format!("{hang} ");
        while !read_log(dir).iter().any(|l| l.starts_with(&prefix)) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Steps that finished before the kill: wait for their commits to land.
        for key in committed {
            while runtime
                .store()
                .unwrap()
                .get_step(key)
                .await
                .unwrap()
                .is_none_or(|s| s.outcome.is_none())
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        drop(run);
    });
    // Every task is dropped before the gate opens ("the process died"): a background
    // shutdown could still poll the hanging step once the gate is gone, and let it commit.
    rt.shutdown_timeout(Duration::from_secs(10));
    std::fs::remove_file(&gate).expect("gate removed");
}

fn count(log: &[String], name: &str) -> usize {
    let prefix = format!("{name} ");
    log.iter().filter(|l| l.starts_with(&prefix)).count()
}

/// One process of a test: a fresh tokio runtime and a `Runtime` on the store of `dir`; when
/// `f` returns, every task is dropped (as if the process were killed) before this returns.
fn in_process<T, Fut>(dir: &Path, f: impl FnOnce(Runtime) -> Fut) -> T
where
    Fut: std::future::Future<Output = T>,
{
    let rt = tokio_rt();
    let out = rt.block_on(async { f(Runtime::new().with_store(store(dir))).await });
    rt.shutdown_timeout(Duration::from_secs(10));
    out
}

/// A process that starts a run with `start` and is killed once step `name` has logged (the
/// step is then in flight, held by its `hang-<name>` file, which is removed after the kill).
fn killed_in<Fut>(dir: &Path, name: &str, start: impl FnOnce(Runtime) -> Fut)
where
    Fut: std::future::Future<Output = ()>,
{
    let gate = dir.join(format!("hang-{name}"));
    std::fs::write(&gate, "").expect("gate");
    in_process(dir, |runtime| async move {
        start(runtime).await;
        while count(&read_log(dir), name) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    std::fs::remove_file(&gate).expect("gate removed");
}

/// Resumes every unfinished run the registry knows, and waits for each: how each ended.
async fn resume_all(runtime: &Runtime, registry: &flow::Registry) -> Vec<Result<(), String>> {
    let report = runtime.resume(registry).await.unwrap();
    assert!(
        report.unknown.is_empty() && report.incompatible.is_empty(),
        "{report:?}"
    );
    let mut ends = Vec::new();
    for r in report.resumed {
        ends.push(r.wait().await);
    }
    ends
}

/// The idempotency keys the log shows for step `name`, in order.
fn keys_of<'a>(log: &'a [String], name: &str) -> Vec<&'a str> {
    let prefix = format!("{name} ");
    log.iter()
        .filter(|l| l.starts_with(&prefix))
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_recorded_and_an_id_never_runs_twice() {
    let dir = temp_dir("once");
    let d = dir.display().to_string();
    let runtime = Runtime::new().with_store(store(&dir));
    let run = runtime
        .start(Pipeline, "order-1", (d.clone(), 5))
        .await
        .unwrap();
    assert!(run.created());
    assert_eq!(run.await.unwrap(), expected(5));
    let steps_run = read_log(&dir).len();
    assert_eq!(steps_run, 9, "{:?}", read_log(&dir));

    // Started again: the stored run, with its stored result; no step runs.
    let again = runtime.start(Pipeline, "order-1", (d, 99)).await.unwrap();
    assert!(!again.created());
    assert_eq!(again.await.unwrap(), expected(5));
    assert_eq!(read_log(&dir).len(), steps_run);

    let record = runtime
        .store()
        .unwrap()
        .get_run("order-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status, RunStatus::Completed);
    assert_eq!(record.workflow, "Pipeline");
    assert_eq!(
        String::from_utf8(record.output.unwrap()).unwrap(),
        expected(5).to_string()
    );
    let steps = runtime.store().unwrap().steps_of("order-1").await.unwrap();
    let keys: Vec<String> = steps.iter().map(|s| s.key.to_string()).collect();
    assert_eq!(steps.len(), 9, "{keys:?}");
    assert!(keys.contains(&"order-1/add@2".to_owned()), "{keys:?}");
    assert!(keys.contains(&"order-1/probe@0[2]".to_owned()), "{keys:?}");
    assert_eq!(
        runtime
            .result(&Pipeline, "order-1")
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        expected(5)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Killed in the loop's second iteration, resumed: the steps before are answered from the
/// store, the one in flight runs again with the same idempotency key, the result is an
/// uninterrupted run's.
#[test]
fn a_run_killed_mid_step_resumes_where_it_stopped() {
    let dir = temp_dir("resume");
    crash_at(&dir, "r1", "add1", &[]);
    let before = read_log(&dir);
    assert_eq!(count(&before, "prepare"), 1);
    assert_eq!(count(&before, "add1"), 1);

    let rt = tokio_rt();
    rt.block_on(async {
        let runtime = Runtime::new().with_store(store(&dir));
        let mut registry = flow::Registry::new();
        registry.register_durable(Pipeline).unwrap();
        let report = runtime.resume(&registry).await.unwrap();
        assert!(report.unknown.is_empty() && report.incompatible.is_empty());
        assert_eq!(report.resumed.len(), 1);
        let resumed = report.resumed.into_iter().next().unwrap();
        assert_eq!(
            (resumed.id.as_str(), resumed.workflow.as_str()),
            ("r1", "Pipeline")
        );
        resumed.wait().await.unwrap();
        assert_eq!(
            runtime
                .result(&Pipeline, "r1")
                .await
                .unwrap()
                .unwrap()
                .unwrap(),
            expected(5)
        );
    });
    let after = read_log(&dir);
    // Completed steps never ran again; the step in flight ran again, once.
    assert_eq!(count(&after, "prepare"), 1, "{after:?}");
    assert_eq!(count(&after, "add0"), 1, "{after:?}");
    assert_eq!(count(&after, "add1"), 2, "{after:?}");
    for name in ["add2", "left", "right", "probe1", "probe2", "probe3"] {
        assert_eq!(count(&after, name), 1, "{name}: {after:?}");
    }
    // The same idempotency key both times: the run's id and the step's identity.
    let keys: Vec<&str> = after
        .iter()
        .filter(|l| l.starts_with("add1 "))
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(keys, ["flow:r1:add@1", "flow:r1:add@1"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Killed while the map's items run, resumed: finished items are not run again.
#[test]
fn a_map_and_a_parallel_group_resume_item_by_item() {
    let dir = temp_dir("map");
    // Item 0 finishes (and is committed) while item 1 hangs.
    crash_at(
        &dir,
        "m1",
        "probe2",
        &[flow::store::StepKey::new("m1", "probe").item(0)],
    );
    let rt = tokio_rt();
    rt.block_on(async {
        let runtime = Runtime::new().with_store(store(&dir));
        let mut registry = flow::Registry::new();
        registry.register_durable(Pipeline).unwrap();
        let report = runtime.resume(&registry).await.unwrap();
        for r in report.resumed {
            r.wait().await.unwrap();
        }
        assert_eq!(
            runtime
                .result(&Pipeline, "m1")
                .await
                .unwrap()
                .unwrap()
                .unwrap(),
            expected(5)
        );
    });
    let after = read_log(&dir);
    for name in ["prepare", "add0", "add1", "add2", "left", "right", "probe1"] {
        assert_eq!(count(&after, name), 1, "{name}: {after:?}");
    }
    assert_eq!(count(&after, "probe2"), 2, "{after:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

mod changed {
    //! `pipeline` as a later build writes it: the loop's step is another function.
    use super::*;

    async fn add(dir: String, total: u32, i: u32) -> Result<u32, Fail> {
        Ok(effect(&dir, &format!("add{i}"), total).await + 100 * i)
    }

    #[workflow(durable, name = "Pipeline")]
    pub async fn pipeline(dir: String, n: u32) -> Result<u32, Fail> {
        let mut total = prepare(dir.clone(), n).await?;
        #[retry(max_attempts = 2)]
        let first = add(dir.clone(), total, 0).await?;
        total = first;
        let (l, r) = flow::join!(left(dir.clone(), total), right(dir.clone(), total)).await?;
        Ok(l + r)
    }
}

/// A build whose workflow changed in the part a stored run has done refuses to resume it,
/// naming the node and both fingerprints; the run stays in the store.
#[test]
fn a_changed_workflow_is_refused_and_the_run_kept() {
    let dir = temp_dir("changed");
    crash_at(&dir, "c1", "add1", &[]);
    let rt = tokio_rt();
    rt.block_on(async {
        let store = std::sync::Arc::new(store(&dir));
        let mut registry = flow::Registry::new();
        registry.register_durable(changed::Pipeline).unwrap();
        let checked = flow::durable::check(&*store, &registry).await.unwrap();
        assert_eq!(checked.len(), 1);
        let flow::durable::Verdict::Incompatible(e) = &checked[0].verdict else {
            panic!("{:?}", checked[0].verdict)
        };
        let text = e.to_string();
        assert!(text.contains("run `c1` of workflow `Pipeline`"), "{text}");
        assert!(text.contains("`add`"), "{text}");

        let runtime = Runtime::new().with_shared_store(store.clone());
        let report = runtime.resume(&registry).await.unwrap();
        assert!(report.resumed.is_empty());
        assert_eq!(report.incompatible.len(), 1);
        let run = store.get_run("c1").await.unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Running);

        // A registry without the workflow reports the run, never skips it silently.
        let report = runtime.resume(&flow::Registry::new()).await.unwrap();
        assert_eq!(report.unknown.len(), 1);
        assert_eq!(report.unknown[0].id, "c1");
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// A reservation: its number, and where its undo logs (each test has its own directory).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Booked {
    n: u32,
    dir: String,
}

async fn reserve_a(dir: String) -> Result<Booked, Fail> {
    let n = effect(&dir, "reserve_a", 1).await;
    Ok(Booked { n, dir })
}
async fn reserve_b(dir: String) -> Result<Booked, Fail> {
    let n = effect(&dir, "reserve_b", 2).await;
    Ok(Booked { n, dir })
}
async fn fail_charge(dir: String) -> Result<u32, Fail> {
    effect(&dir, "charge", 3).await;
    Err(Fail("card declined".into()))
}
async fn undo_a(b: Booked) -> Result<(), Fail> {
    effect(&b.dir, "undo_a", 0).await;
    Ok(())
}
async fn undo_b(b: Booked) -> Result<(), Fail> {
    effect(&b.dir, "undo_b", 0).await;
    Ok(())
}

/// Two undos; the run fails, then is killed while the second undo (`undo_a`) runs.
#[workflow(durable)]
async fn booking(dir: String) -> Result<u32, Fail> {
    #[compensate(undo_a)]
    let a = reserve_a(dir.clone()).await?;
    #[compensate(undo_b)]
    let b = reserve_b(dir.clone()).await?;
    let c = fail_charge(dir).await?;
    Ok(a.n + b.n + c)
}

async fn pay(dir: String) -> Result<u32, Fail> {
    Ok(effect(&dir, "pay", 2).await)
}

/// A reservation, then a payment that the test keeps waiting.
#[workflow(durable)]
async fn stay(dir: String) -> Result<u32, Fail> {
    #[compensate(undo_a)]
    let a = reserve_a(dir.clone()).await?;
    let p = pay(dir).await?;
    Ok(a.n + p)
}

/// Cancelled while no process runs it (as `flowctl cancel` does): the resumed run replays
/// its record first, so the undo of the step done before the kill runs; the step in flight
/// at the kill does not start again; the run ends cancelled.
#[test]
fn a_run_cancelled_while_down_undoes_its_recorded_steps_when_resumed() {
    let dir = temp_dir("cancel-down");
    let d = dir.display().to_string();
    let gate = dir.join("hang-pay");
    std::fs::write(&gate, "").unwrap();
    let rt = tokio_rt();
    rt.block_on(async {
        let runtime = Runtime::new().with_store(store(&dir));
        drop(runtime.start(Stay, "s1", (d.clone(),)).await.unwrap());
        while count(&read_log(&dir), "pay") == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    rt.shutdown_timeout(Duration::from_secs(10));
    std::fs::remove_file(&gate).unwrap();
    let rt = tokio_rt();
    rt.block_on(async {
        let runtime = Runtime::new().with_store(store(&dir));
        runtime
            .store()
            .unwrap()
            .send_signal("s1", flow::durable::CANCEL_SIGNAL, b"{}".to_vec())
            .await
            .unwrap();
        let mut registry = flow::Registry::new();
        registry.register_durable(Stay).unwrap();
        for r in runtime.resume(&registry).await.unwrap().resumed {
            let e = r.wait().await.unwrap_err();
            assert!(e.contains("was cancelled"), "{e}");
        }
        let run = runtime
            .store()
            .unwrap()
            .get_run("s1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(run.status, RunStatus::Cancelled);
    });
    let log = read_log(&dir);
    assert_eq!(count(&log, "reserve_a"), 1, "{log:?}");
    assert_eq!(
        count(&log, "undo_a"),
        1,
        "the recorded step is undone: {log:?}"
    );
    assert_eq!(
        count(&log, "pay"),
        1,
        "the step in flight does not start again: {log:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Killed while compensating: the undo that ran before the kill does not run again, the one
/// cut off runs, the failed steps are not run again, and the run ends failed.
#[test]
fn a_run_killed_while_compensating_runs_each_remaining_undo_once() {
    let dir = temp_dir("undo");
    let d = dir.display().to_string();
    let gate = dir.join("hang-undo_a");
    std::fs::write(&gate, "").unwrap();
    let rt = tokio_rt();
    rt.block_on(async {
        let runtime = Runtime::new().with_store(store(&dir));
        let run = runtime.start(Booking, "b1", (d.clone(),)).await.unwrap();
        drop(run);
        while count(&read_log(&dir), "undo_a") == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let record = runtime
            .store()
            .unwrap()
            .get_run("b1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.status, RunStatus::Compensating);
    });
    rt.shutdown_timeout(Duration::from_secs(10));
    std::fs::remove_file(&gate).unwrap();
    let rt = tokio_rt();
    rt.block_on(async {
        let runtime = Runtime::new().with_store(store(&dir));
        let mut registry = flow::Registry::new();
        registry.register_durable(Booking).unwrap();
        let report = runtime.resume(&registry).await.unwrap();
        assert_eq!(report.resumed.len(), 1);
        for r in report.resumed {
            let e = r.wait().await.unwrap_err();
            assert!(e.contains("card declined"), "{e}");
        }
        let record = runtime
            .store()
            .unwrap()
            .get_run("b1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.status, RunStatus::Failed);
    });
    let log = read_log(&dir);
    for (name, n) in [
        ("reserve_a", 1),
        ("reserve_b", 1),
        ("charge", 1),
        ("undo_b", 1),
        ("undo_a", 2),
    ] {
        assert_eq!(count(&log, name), n, "{name}: {log:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

async fn flaky_once(dir: String) -> Result<u32, Fail> {
    let attempt = flow::step_context().map_or(0, |c| c.attempt());
    let now = flow::store::now_ms();
    log(&dir, &format!("flaky {attempt} {now}"));
    if attempt == 1 {
        return Err(Fail("first attempt fails".into()));
    }
    Ok(attempt)
}

#[workflow(durable)]
async fn backing_off(dir: String) -> Result<u32, Fail> {
    #[retry(max_attempts = 3, backoff = constant("800ms"))]
    let n = flaky_once(dir).await?;
    Ok(n)
}

/// Killed during a backoff: the stored retry state says when the next attempt is due; the
/// resumed run makes attempt 2 (not 1 again), not before that time and without waiting a
/// whole new delay. (Real time: the wait spans two tokio runtimes, as two processes.)
#[test]
fn a_run_killed_during_a_backoff_resumes_with_its_attempt_count_and_the_rest_of_the_delay() {
    let dir = temp_dir("backoff");
    let d = dir.display().to_string();
    let rt = tokio_rt();
    let wake_at = rt.block_on(async {
        let runtime = Runtime::new().with_store(store(&dir));
        let run = runtime.start(BackingOff, "k1", (d.clone(),)).await.unwrap();
        drop(run);
        let key = flow::store::StepKey::new("k1", "flaky_once");
        loop {
            let step = runtime.store().unwrap().get_step(&key).await.unwrap();
            if let Some(wake) = step.and_then(|s| s.retry.wake_at_ms) {
                break wake;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    // Killed 300 ms into the 800 ms backoff.
    std::thread::sleep(Duration::from_millis(300));
    rt.shutdown_timeout(Duration::from_secs(10));
    let failed_at: u64 = read_log(&dir)[0]
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (790..900).contains(&(wake_at - failed_at)),
        "the backoff's wake-up time is recorded: {wake_at} - {failed_at}"
    );
    let resumed_at = flow::store::now_ms();
    let rt = tokio_rt();
    rt.block_on(async {
        let runtime = Runtime::new().with_store(store(&dir));
        let mut registry = flow::Registry::new();
        registry.register_durable(BackingOff).unwrap();
        for r in runtime.resume(&registry).await.unwrap().resumed {
            r.wait().await.unwrap();
        }
        assert_eq!(
            runtime
                .result(&BackingOff, "k1")
                .await
                .unwrap()
                .unwrap()
                .unwrap(),
            2
        );
    });
    let log = read_log(&dir);
    assert_eq!(log.len(), 2, "{log:?}");
    let second: Vec<u64> = log[1]
        .split(' ')
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(second[0], 2, "the attempt count goes on: {log:?}");
    assert!(second[1] >= wake_at, "not before the wake-up time: {log:?}");
    assert!(
        second[1] < resumed_at + 700,
        "only the rest of the delay was waited ({} ms after resuming)",
        second[1] - resumed_at
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two tasks start the same id at once: one run, each step once, both see its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_starts_of_one_id_race_to_one_run() {
    let dir = temp_dir("race");
    let d = dir.display().to_string();
    let runtime = Runtime::new().with_store(store(&dir));
    let (a, b) = tokio::join!(
        runtime.start(Pipeline, "same", (d.clone(), 1)),
        runtime.start(Pipeline, "same", (d.clone(), 1)),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(u8::from(a.created()) + u8::from(b.created()), 1);
    let (ra, rb) = tokio::join!(a.wait(), b.wait());
    assert_eq!((ra.unwrap(), rb.unwrap()), (expected(1), expected(1)));
    assert_eq!(read_log(&dir).len(), 9, "{:?}", read_log(&dir));
    let _ = std::fs::remove_dir_all(&dir);
}

static TAKE_LEFT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

async fn first(dir: String) -> Result<u32, Fail> {
    Ok(effect(&dir, "first", 1).await)
}
async fn go_left(dir: String) -> Result<u32, Fail> {
    Ok(effect(&dir, "go_left", 2).await)
}
async fn go_right(dir: String) -> Result<u32, Fail> {
    Ok(effect(&dir, "go_right", 3).await)
}
async fn last(dir: String, v: u32) -> Result<u32, Fail> {
    Ok(effect(&dir, "last", v).await)
}

/// Takes a branch on something outside its input and its steps (a global flag): not
/// deterministic, which a resumed run must notice.
#[workflow(durable)]
async fn wandering(dir: String) -> Result<u32, Fail> {
    let a = first(dir.clone()).await?;
    let b = if TAKE_LEFT.load(std::sync::atomic::Ordering::SeqCst) {
        go_left(dir.clone()).await?
    } else {
        go_right(dir.clone()).await?
    };
    last(dir, a + b).await
}

/// The body took another path after the restart: the run stops, naming the recorded step and
/// the one reached, runs nothing on the new path, and stays in the store unfinished.
#[test]
fn a_resumed_body_that_takes_another_path_stops_and_names_both_steps() {
    let dir = temp_dir("diverge");
    let d = dir.display().to_string();
    let gate = dir.join("hang-last");
    std::fs::write(&gate, "").unwrap();
    let rt = tokio_rt();
    rt.block_on(async {
        let runtime = Runtime::new().with_store(store(&dir));
        drop(runtime.start(Wandering, "w1", (d.clone(),)).await.unwrap());
        while count(&read_log(&dir), "last") == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    rt.shutdown_timeout(Duration::from_secs(10));
    std::fs::remove_file(&gate).unwrap();
    TAKE_LEFT.store(false, std::sync::atomic::Ordering::SeqCst);
    let rt = tokio_rt();
    rt.block_on(async {
        let runtime = Runtime::new().with_store(store(&dir));
        let mut registry = flow::Registry::new();
        registry.register_durable(Wandering).unwrap();
        let report = runtime.resume(&registry).await.unwrap();
        let e = report.resumed.into_iter().next().unwrap().wait().await.unwrap_err();
        assert!(
            e.contains("the record says it ran step `go_left@0` next, but the code now reaches `go_right@0`"),
            "{e}"
        );
        let run = runtime.store().unwrap().get_run("w1").await.unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Running, "left for a build that can resume it");
    });
    assert_eq!(count(&read_log(&dir), "go_right"), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A store whose step commits fail after the first `ok` of them (a full disk, say).
#[derive(Clone)]
struct FailingStore {
    inner: flow::store::MemoryStore,
    ok: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl Store for FailingStore {
    fn create_run(
        &self,
        new: flow::store::NewRun,
    ) -> flow::store::StoreFuture<'_, flow::store::Created> {
        self.inner.create_run(new)
    }
    fn get_run<'a>(
        &'a self,
        id: &'a str,
    ) -> flow::store::StoreFuture<'a, Option<flow::store::RunRecord>> {
        self.inner.get_run(id)
    }
    fn set_status<'a>(
        &'a self,
        id: &'a str,
        status: RunStatus,
        result: Option<Vec<u8>>,
    ) -> flow::store::StoreFuture<'a, flow::store::RunRecord> {
        self.inner.set_status(id, status, result)
    }
    fn unfinished_runs(&self) -> flow::store::StoreFuture<'_, Vec<flow::store::RunRecord>> {
        self.inner.unfinished_runs()
    }
    fn list_runs(
        &self,
        filter: flow::store::RunFilter,
    ) -> flow::store::StoreFuture<'_, flow::store::RunPage> {
        self.inner.list_runs(filter)
    }
    fn save_progress(
        &self,
        progress: flow::store::StepProgress,
    ) -> flow::store::StoreFuture<'_, ()> {
        self.inner.save_progress(progress)
    }
    fn commit_step(
        &self,
        commit: flow::store::StepCommit,
    ) -> flow::store::StoreFuture<'_, flow::store::Committed> {
        let left = self.ok.load(std::sync::atomic::Ordering::SeqCst);
        if left == 0 {
            return Box::pin(async {
                Err(flow::store::StoreError::Io {
                    message: "disk full".into(),
                })
            });
        }
        self.ok.store(left - 1, std::sync::atomic::Ordering::SeqCst);
        self.inner.commit_step(commit)
    }
    fn get_step<'a>(
        &'a self,
        key: &'a flow::store::StepKey,
    ) -> flow::store::StoreFuture<'a, Option<flow::store::StepRecord>> {
        self.inner.get_step(key)
    }
    fn steps_of<'a>(
        &'a self,
        run: &'a str,
    ) -> flow::store::StoreFuture<'a, Vec<flow::store::StepRecord>> {
        self.inner.steps_of(run)
    }
    fn update_compensations<'a>(
        &'a self,
        run: &'a str,
        ops: Vec<flow::store::CompensationOp>,
    ) -> flow::store::StoreFuture<'a, Vec<u64>> {
        self.inner.update_compensations(run, ops)
    }
    fn compensations_of<'a>(
        &'a self,
        run: &'a str,
    ) -> flow::store::StoreFuture<'a, Vec<flow::store::CompensationRecord>> {
        self.inner.compensations_of(run)
    }
    fn send_signal<'a>(
        &'a self,
        run: &'a str,
        name: &'a str,
        payload: Vec<u8>,
    ) -> flow::store::StoreFuture<'a, u64> {
        self.inner.send_signal(run, name, payload)
    }
    fn take_signal<'a>(
        &'a self,
        run: &'a str,
        name: &'a str,
    ) -> flow::store::StoreFuture<'a, Option<flow::store::SignalRecord>> {
        self.inner.take_signal(run, name)
    }
    fn take_signal_into_step<'a>(
        &'a self,
        run: &'a str,
        name: &'a str,
        key: flow::store::StepKey,
    ) -> flow::store::StoreFuture<'a, Option<flow::store::SignalRecord>> {
        self.inner.take_signal_into_step(run, name, key)
    }
    fn save_graph<'a>(
        &'a self,
        workflow: &'a str,
        fingerprint: u64,
        graph: Vec<u8>,
    ) -> flow::store::StoreFuture<'a, ()> {
        self.inner.save_graph(workflow, fingerprint, graph)
    }
    fn get_graph<'a>(
        &'a self,
        workflow: &'a str,
        fingerprint: u64,
    ) -> flow::store::StoreFuture<'a, Option<Vec<u8>>> {
        self.inner.get_graph(workflow, fingerprint)
    }
    fn reset_steps<'a>(
        &'a self,
        run: &'a str,
        nodes: Vec<String>,
    ) -> flow::store::StoreFuture<'a, flow::store::RunRecord> {
        self.inner.reset_steps(run, nodes)
    }
    fn record_history<'a>(
        &'a self,
        run: &'a str,
        entry: flow::store::NewHistory,
    ) -> flow::store::StoreFuture<'a, u64> {
        self.inner.record_history(run, entry)
    }
    fn history_of<'a>(
        &'a self,
        run: &'a str,
    ) -> flow::store::StoreFuture<'a, Vec<flow::store::HistoryRecord>> {
        self.inner.history_of(run)
    }
}

/// The store fails mid-run: the run stops with an error that says so, undoes nothing (its
/// undo is not run: the run is not over), and is left running in the store; once the store
/// works again, resuming finishes it without running a recorded step again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_fails_mid_run_stops_the_run_and_leaves_it_to_resume() {
    let dir = temp_dir("full");
    let d = dir.display().to_string();
    let memory = flow::store::MemoryStore::new();
    let failing = FailingStore {
        inner: memory.clone(),
        ok: std::sync::Arc::new(std::sync::atomic::AtomicU32::new(1)),
    };
    let runtime = Runtime::new().with_store(failing);
    let e = runtime
        .start(Booking, "f1", (d.clone(),))
        .await
        .unwrap()
        .await
        .unwrap_err();
    let ErrorKind::Durable(fault) = e.kind() else {
        panic!("{e}")
    };
    assert!(
        matches!(**fault, flow::store::DurableError::Store { .. }),
        "{fault}"
    );
    let text = e.to_string();
    assert!(
        text.contains("the store failed recording step `reserve_b@0`: store I/O error: disk full"),
        "{text}"
    );
    assert!(text.contains("left as it is, to be resumed"), "{text}");
    assert_eq!(count(&read_log(&dir), "undo_a"), 0, "nothing undone");
    let run = memory.get_run("f1").await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Running);

    // The store works again: resumed, reserve_a is not run again; the run fails at `charge`
    // and undoes both reservations.
    let healthy = Runtime::new().with_store(memory.clone());
    let mut registry = flow::Registry::new();
    registry.register_durable(Booking).unwrap();
    for r in healthy.resume(&registry).await.unwrap().resumed {
        assert!(r.wait().await.unwrap_err().contains("card declined"));
    }
    let log = read_log(&dir);
    for (name, n) in [
        ("reserve_a", 1),
        ("reserve_b", 2),
        ("charge", 1),
        ("undo_a", 1),
        ("undo_b", 1),
    ] {
        assert_eq!(count(&log, name), n, "{name}: {log:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A damaged record (a step output that is not what the code reads back): the run stops
/// with an error naming the value, runs nothing after it, and stays in the store as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_step_record_stops_the_run_with_an_error_naming_it() {
    let dir = temp_dir("corrupt");
    let d = dir.display().to_string();
    let memory = flow::store::MemoryStore::new();
    let graph = <Pipeline as flow::Workflow>::graph(&Pipeline);
    memory
        .create_run(flow::store::NewRun {
            id: "x1".into(),
            workflow: "Pipeline".into(),
            fingerprint: graph.fingerprint,
            node_fingerprints: graph
                .nodes
                .iter()
                .map(|n| (n.key.to_owned(), n.fingerprint))
                .collect(),
            input: serde_json::to_vec(&(d.clone(), 5)).unwrap(),
        })
        .await
        .unwrap();
    memory
        .commit_step(flow::store::StepCommit {
            key: flow::store::StepKey::new("x1", "prepare"),
            outcome: flow::store::StepOutcome::Completed(b"{not json".to_vec()),
            attempts: Vec::new(),
            compensations: Vec::new(),
        })
        .await
        .unwrap();
    let runtime = Runtime::new().with_store(memory.clone());
    let mut registry = flow::Registry::new();
    registry.register_durable(Pipeline).unwrap();
    let report = runtime.resume(&registry).await.unwrap();
    let e = report
        .resumed
        .into_iter()
        .next()
        .unwrap()
        .wait()
        .await
        .unwrap_err();
    assert!(
        e.contains("the output of step x1/prepare@0 cannot be read back from the store"),
        "{e}"
    );
    assert!(
        read_log(&dir).is_empty(),
        "no step ran: {:?}",
        read_log(&dir)
    );
    let run = memory.get_run("x1").await.unwrap().unwrap();
    assert_eq!(
        run.status,
        RunStatus::Running,
        "unfinished, not marked failed"
    );
    assert_eq!(memory.steps_of("x1").await.unwrap().len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

async fn prepare_release(dir: String) -> Result<u32, Fail> {
    Ok(effect(&dir, "prepare_release", 7).await)
}
async fn release(dir: String, v: u32, approved_by: String) -> Result<String, Fail> {
    effect(&dir, "release", v).await;
    Ok(format!("{v} approved by {approved_by}"))
}

/// A manual judgment: waits for the signal `approve` (an approver's name).
#[workflow(durable)]
async fn gated(dir: String) -> Result<String, Fail> {
    let v = prepare_release(dir.clone()).await?;
    let approver: String = flow::signal("approve").timeout("1h").await?;
    release(dir, v, approver).await
}

/// A signal sent while no process runs the run is kept in the store; the resumed run takes
/// it, records it, and goes on; its earlier steps are not run again.
#[test]
fn a_signal_sent_while_the_run_is_down_is_taken_when_it_resumes() {
    let dir = temp_dir("signal");
    let d = dir.display().to_string();
    let rt = tokio_rt();
    rt.block_on(async {
        let runtime = Runtime::new().with_store(store(&dir));
        drop(runtime.start(Gated, "g1", (d.clone(),)).await.unwrap());
        // Waiting for the signal: its time limit is recorded.
        let key = flow::store::StepKey::new("g1", "approve");
        loop {
            let step = runtime.store().unwrap().get_step(&key).await.unwrap();
            if step.is_some_and(|s| s.retry.wake_at_ms.is_some()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    rt.shutdown_timeout(Duration::from_secs(10));
    let rt = tokio_rt();
    rt.block_on(async {
        let runtime = Runtime::new().with_store(store(&dir));
        // Sent while no process runs it.
        runtime
            .signal_durable("g1", "approve", &"ada".to_owned())
            .await
            .unwrap();
        let mut registry = flow::Registry::new();
        registry.register_durable(Gated).unwrap();
        for r in runtime.resume(&registry).await.unwrap().resumed {
            r.wait().await.unwrap();
        }
        assert_eq!(
            runtime
                .result(&Gated, "g1")
                .await
                .unwrap()
                .unwrap()
                .unwrap(),
            "7 approved by ada"
        );
        // Recorded as the wait's output; taken once.
        let step = runtime
            .store()
            .unwrap()
            .get_step(&flow::store::StepKey::new("g1", "approve"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            step.outcome,
            Some(flow::store::StepOutcome::Completed(b"\"ada\"".to_vec()))
        );
        assert!(
            runtime
                .store()
                .unwrap()
                .take_signal("g1", "approve")
                .await
                .unwrap()
                .is_none()
        );
    });
    let log = read_log(&dir);
    assert_eq!(count(&log, "prepare_release"), 1, "{log:?}");
    assert_eq!(count(&log, "release"), 1, "{log:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A live run takes a signal sent from elsewhere (another runtime on the same file, as
/// another process would) within the poll interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_durable_run_takes_a_signal_sent_through_the_store() {
    let dir = temp_dir("signal-live");
    let d = dir.display().to_string();
    let runtime = Runtime::new().with_store(store(&dir));
    let run = runtime.start(Gated, "g2", (d.clone(),)).await.unwrap();
    let elsewhere = Runtime::new().with_store(store(&dir));
    elsewhere
        .signal_durable("g2", "approve", &"grace".to_owned())
        .await
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(10), run.wait())
        .await
        .expect("taken within the poll interval")
        .unwrap();
    assert_eq!(out, "7 approved by grace");
    let _ = std::fs::remove_dir_all(&dir);
}

async fn explode(dir: String) -> Result<u32, Fail> {
    effect(&dir, "explode", 0).await;
    panic!("the disk caught fire")
}

#[workflow(durable)]
async fn panicky(dir: String) -> Result<u32, Fail> {
    let a = prepare(dir.clone(), 1).await?;
    let b = explode(dir).await?;
    Ok(a + b)
}

async fn slow(dir: String) -> Result<u32, Fail> {
    effect(&dir, "slow", 0).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    Ok(0)
}

#[workflow(durable, timeout = "50ms")]
async fn too_slow(dir: String) -> Result<u32, Fail> {
    slow(dir).await
}

/// A step that panics and a run past its time limit end the durable run as failed; the
/// stored error reads back with its kind, and starting the id again runs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_and_a_timeout_end_a_durable_run_as_failed_and_are_read_back() {
    let dir = temp_dir("panic");
    let d = dir.display().to_string();
    let runtime = Runtime::new().with_store(store(&dir));
    let e = runtime
        .start(Panicky, "p1", (d.clone(),))
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert!(e.step_error().is_some_and(|s| s.is_panic()), "{e}");
    let e = runtime
        .start(TooSlow, "t1", (d.clone(),))
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::TimedOut { .. }), "{e}");
    for id in ["p1", "t1"] {
        let run = runtime.store().unwrap().get_run(id).await.unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Failed, "{id}");
    }
    let again = runtime
        .start(Panicky, "p1", (d.clone(),))
        .await
        .unwrap()
        .await
        .unwrap_err();
    let step = again.step_error().expect("a step error, read back");
    assert!(step.is_panic() && step.step() == "explode", "{again}");
    assert!(
        again.to_string().contains("the disk caught fire"),
        "{again}"
    );
    let again = runtime
        .result(&TooSlow, "t1")
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(again.kind(), ErrorKind::TimedOut { .. }),
        "{again}"
    );
    let log = read_log(&dir);
    assert_eq!(
        (count(&log, "explode"), count(&log, "slow")),
        (1, 1),
        "{log:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------ durable `flow!`

async fn combine(l: u32, r: u32) -> Result<Vec<u32>, Fail> {
    Ok(vec![l % 7, r % 7, (l + r) % 7])
}

async fn sum(items: Vec<u32>) -> Result<u32, Fail> {
    Ok(items.iter().sum())
}

/// A durable `flow!`: a sequence, a parallel group, a map and a retried step, its closures
/// owning what they use.
fn provisioning(
    dir: &Path,
) -> impl flow::durable::DurableWorkflow<Input = u32, Output = u32, Error = Fail> + Clone {
    let d = dir.display().to_string();
    let (d1, d2, d3, d4) = (d.clone(), d.clone(), d.clone(), d);
    flow! { name = "provisioning", durable;
        move |n| prepare(d1.clone(), n)
        -> (move |v| left(d2.clone(), v) & move |v| right(d3.clone(), v))
        -> |l, r| combine(l, r)
        -> map(move |item| probe(d4.clone(), item), concurrency = 2)
        -> sum [retry(max_attempts = 3, backoff = constant("10ms"))]
    }
}

/// What an uninterrupted run of `provisioning` on `n` returns.
fn provisioning_expected(n: u32) -> u32 {
    let v = n + 1;
    let (l, r) = (v * 2, v * 3);
    [l % 7, r % 7, (l + r) % 7].iter().map(|x| x * 10).sum()
}

/// Runs `provisioning` as run `id` until step `hang` is in flight and the steps `committed`
/// are committed, then drops the process's tokio runtime.
fn crash_flow_at(dir: &Path, id: &str, hang: &str, committed: &[flow::store::StepKey]) {
    let gate = dir.join(format!("hang-{hang}"));
    std::fs::write(&gate, "").expect("gate");
    let rt = tokio_rt();
    rt.block_on(async {
        let runtime = Runtime::new().with_store(store(dir));
        let run = runtime
            .start(provisioning(dir), id, 5)
            .await
            .expect("started");
        assert!(run.created());
        let prefix = format!("{hang} ");
        while !read_log(dir).iter().any(|l| l.starts_with(&prefix)) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for key in committed {
            while runtime
                .store()
                .unwrap()
                .get_step(key)
                .await
                .unwrap()
                .is_none_or(|s| s.outcome.is_none())
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        drop(run);
    });
    rt.shutdown_timeout(Duration::from_secs(10));
    std::fs::remove_file(&gate).expect("gate removed");
}

/// Resumes every unfinished run of `dir`'s store with `provisioning` registered, and returns
/// run `id`'s stored result.
fn resume_flow(dir: &Path, id: &str) -> u32 {
    let rt = tokio_rt();
    rt.block_on(async {
        let runtime = Runtime::new().with_store(store(dir));
        let mut registry = flow::Registry::new();
        registry.register_durable(provisioning(dir)).unwrap();
        let report = runtime.resume(&registry).await.unwrap();
        assert!(report.unknown.is_empty() && report.incompatible.is_empty());
        assert_eq!(report.resumed.len(), 1);
        for r in report.resumed {
            assert_eq!((r.id.as_str(), r.workflow.as_str()), (id, "provisioning"));
            r.wait().await.unwrap();
        }
        runtime
            .result(&provisioning(dir), id)
            .await
            .unwrap()
            .expect("finished")
            .expect("succeeded")
    })
}

/// A durable `flow!` killed in one branch of its parallel group while the other branch had
/// committed: resumed, it runs the branch in flight again (with the same idempotency key),
/// not the committed one, and finishes with an uninterrupted run's result.
#[test]
fn a_durable_flow_killed_in_a_parallel_branch_resumes_where_it_stopped() {
    let dir = temp_dir("flow-par");
    crash_flow_at(
        &dir,
        "p1",
        "right",
        &[flow::store::StepKey::new("p1", "left")],
    );
    assert_eq!(resume_flow(&dir, "p1"), provisioning_expected(5));
    let log = read_log(&dir);
    for name in ["prepare", "left", "probe5", "probe4", "probe2"] {
        assert_eq!(count(&log, name), 1, "{name}: {log:?}");
    }
    assert_eq!(count(&log, "right"), 2, "{log:?}");
    let keys: Vec<&str> = log
        .iter()
        .filter(|l| l.starts_with("right "))
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(keys, ["flow:p1:right@0", "flow:p1:right@0"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Killed while the map's items run: the item that finished is not run again.
#[test]
fn a_durable_flow_killed_in_a_map_resumes_item_by_item() {
    let dir = temp_dir("flow-map");
    // 5 -> 6 -> (12, 18) -> [5, 4, 2]: item 0 (probe5) finishes while item 1 (probe4) hangs.
    crash_flow_at(
        &dir,
        "m1",
        "probe4",
        &[flow::store::StepKey::new("m1", "probe").item(0)],
    );
    assert_eq!(resume_flow(&dir, "m1"), provisioning_expected(5));
    let log = read_log(&dir);
    for name in ["prepare", "left", "right", "probe5", "probe2"] {
        assert_eq!(count(&log, name), 1, "{name}: {log:?}");
    }
    assert_eq!(count(&log, "probe4"), 2, "{log:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A durable `flow!`'s id never runs twice, its result is read back by id, and its run's
/// record carries its name and every step's output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_flow_is_recorded_and_its_id_never_runs_twice() {
    let dir = temp_dir("flow-once");
    let runtime = Runtime::new().with_store(store(&dir));
    let run = runtime.start(provisioning(&dir), "f1", 2).await.unwrap();
    assert!(run.created());
    assert_eq!(run.wait().await.unwrap(), provisioning_expected(2));
    let again = runtime.start(provisioning(&dir), "f1", 9).await.unwrap();
    assert!(!again.created());
    assert_eq!(again.wait().await.unwrap(), provisioning_expected(2));
    let store = runtime.store().unwrap();
    let record = store.get_run("f1").await.unwrap().unwrap();
    assert_eq!(
        (record.workflow.as_str(), record.status),
        ("provisioning", RunStatus::Completed)
    );
    let steps = store.steps_of("f1").await.unwrap();
    let mut keys: Vec<String> = steps
        .iter()
        .map(|s| match s.key.item {
            Some(i) => format!("{}[{i}]", s.key.node),
            None => s.key.node.clone(),
        })
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "combine", "left", "prepare", "probe[0]", "probe[1]", "probe[2]", "right", "sum"
        ]
    );
    let sum = steps.iter().find(|s| s.key.node == "sum").unwrap();
    assert_eq!(
        sum.outcome,
        Some(flow::store::StepOutcome::Completed(
            provisioning_expected(2).to_string().into_bytes()
        ))
    );
    // Run without a store, the same flow runs as any other, and records nothing.
    assert_eq!(
        Runtime::new().run(&provisioning(&dir), 2).await.unwrap(),
        provisioning_expected(2)
    );
    assert_eq!(count(&read_log(&dir), "prepare"), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `signal` stage of a durable `flow!`: a signal sent while no process runs the run is
/// kept, and the resumed run takes it without running its first step again.
#[test]
fn a_durable_flow_takes_a_signal_sent_while_it_was_down() {
    fn gated_flow(
        dir: &Path,
    ) -> impl flow::durable::DurableWorkflow<Input = (), Output = String, Error = Fail> + Clone
    {
        let d = dir.display().to_string();
        let d2 = d.clone();
        flow! { name = "gated_flow", durable;
            move || prepare_release(d.clone())
            -> signal("approve", timeout = "1h")
            -> move |v, by| release(d2.clone(), v, by)
        }
    }
    let dir = temp_dir("flow-signal");
    let rt = tokio_rt();
    rt.block_on(async {
        let runtime = Runtime::new().with_store(store(&dir));
        drop(runtime.start(gated_flow(&dir), "gf1", ()).await.unwrap());
        let key = flow::store::StepKey::new("gf1", "approve");
        loop {
            let step = runtime.store().unwrap().get_step(&key).await.unwrap();
            if step.is_some_and(|s| s.retry.wake_at_ms.is_some()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    rt.shutdown_timeout(Duration::from_secs(10));
    let rt = tokio_rt();
    rt.block_on(async {
        let runtime = Runtime::new().with_store(store(&dir));
        runtime
            .signal_durable("gf1", "approve", &"ada".to_owned())
            .await
            .unwrap();
        let mut registry = flow::Registry::new();
        registry.register_durable(gated_flow(&dir)).unwrap();
        for r in runtime.resume(&registry).await.unwrap().resumed {
            r.wait().await.unwrap();
        }
        assert_eq!(
            runtime
                .result(&gated_flow(&dir), "gf1")
                .await
                .unwrap()
                .unwrap()
                .unwrap(),
            "7 approved by ada"
        );
    });
    let log = read_log(&dir);
    assert_eq!(count(&log, "prepare_release"), 1, "{log:?}");
    assert_eq!(count(&log, "release"), 1, "{log:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A durable `flow!` with two undos, killed while the second undo runs: resumed, the undo
/// that ran is not run again, the one cut off runs, the failed step is not run again.
#[test]
fn a_durable_flow_killed_while_compensating_runs_each_remaining_undo_once() {
    fn booking_flow(
        dir: &Path,
    ) -> impl flow::durable::DurableWorkflow<Input = (), Output = u32, Error = Fail> + Clone {
        let d = dir.display().to_string();
        let (d1, d2) = (d.clone(), d.clone());
        flow! { name = "booking_flow", durable;
            move || reserve_a(d.clone()) [compensate = undo_a]
            -> move |_a| reserve_b(d1.clone()) [compensate = undo_b]
            -> move |_b| fail_charge(d2.clone())
        }
    }
    let dir = temp_dir("flow-undo");
    let gate = dir.join("hang-undo_a");
    std::fs::write(&gate, "").unwrap();
    let rt = tokio_rt();
    rt.block_on(async {
        let runtime = Runtime::new().with_store(store(&dir));
        drop(runtime.start(booking_flow(&dir), "bf1", ()).await.unwrap());
        while count(&read_log(&dir), "undo_a") == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let record = runtime
            .store()
            .unwrap()
            .get_run("bf1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.status, RunStatus::Compensating);
    });
    rt.shutdown_timeout(Duration::from_secs(10));
    std::fs::remove_file(&gate).unwrap();
    let rt = tokio_rt();
    rt.block_on(async {
        let runtime = Runtime::new().with_store(store(&dir));
        let mut registry = flow::Registry::new();
        registry.register_durable(booking_flow(&dir)).unwrap();
        let report = runtime.resume(&registry).await.unwrap();
        assert_eq!(report.resumed.len(), 1);
        for r in report.resumed {
            let e = r.wait().await.unwrap_err();
            assert!(e.contains("card declined"), "{e}");
        }
        let record = runtime
            .store()
            .unwrap()
            .get_run("bf1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.status, RunStatus::Failed);
    });
    let log = read_log(&dir);
    for (name, n) in [
        ("reserve_a", 1),
        ("reserve_b", 1),
        ("charge", 1),
        ("undo_b", 1),
        ("undo_a", 2),
    ] {
        assert_eq!(count(&log, name), n, "{name}: {log:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every failed attempt is recorded with its real start and end, and so is the attempt that
/// succeeded after them (the paused clock makes the times exact).
async fn slow_flaky(ms: u64) -> Result<u32, Fail> {
    let attempt = flow::step_context().map_or(0, |c| c.attempt());
    tokio::time::sleep(Duration::from_millis(ms * u64::from(attempt))).await;
    if attempt < 3 {
        return Err(Fail(format!("attempt {attempt} failed")));
    }
    Ok(attempt)
}

async fn quick(v: u32) -> Result<u32, Fail> {
    tokio::time::sleep(Duration::from_millis(40)).await;
    Ok(v + 1)
}

#[workflow(durable)]
async fn timed(ms: u64) -> Result<u32, Fail> {
    #[retry(max_attempts = 3, backoff = constant("1s"))]
    let v = slow_flaky(ms).await?;
    quick(v).await
}

#[tokio::test(start_paused = true)]
async fn every_attempt_of_a_retried_step_is_recorded_with_its_start_and_end() {
    let runtime = Runtime::new().with_store(flow::store::MemoryStore::new());
    let run = runtime.start(Timed, "t1", (100,)).await.unwrap();
    assert_eq!(run.wait().await.unwrap(), 4);
    let store = runtime.store().unwrap();
    let steps = store.steps_of("t1").await.unwrap();
    let step = |node: &str| steps.iter().find(|s| s.key.node == node).unwrap();
    // Times from the first attempt's start.
    let t0 = step("slow_flaky").attempts[0].started_ms;
    let attempts = |node: &str| {
        step(node)
            .attempts
            .iter()
            .map(|a| (a.number, a.started_ms - t0, a.ended_ms.unwrap() - t0))
            .collect::<Vec<_>>()
    };
    // Attempt n runs n x 100 ms; 1 s between attempts.
    assert_eq!(
        attempts("slow_flaky"),
        [(1, 0, 100), (2, 1100, 1300), (3, 2300, 2600)]
    );
    let failures: Vec<Option<&str>> = step("slow_flaky")
        .attempts
        .iter()
        .map(|a| a.failure.as_deref())
        .collect();
    assert!(
        failures[0].is_some_and(|f| f.contains("attempt 1 failed"))
            && failures[1].is_some_and(|f| f.contains("attempt 2 failed"))
            && failures[2].is_none(),
        "{failures:?}"
    );
    // A step that succeeds at its first attempt is recorded by its commit alone.
    assert!(step("quick").attempts.is_empty());
    assert!(matches!(
        step("quick").outcome,
        Some(flow::store::StepOutcome::Completed(_))
    ));
}

// ------------------------------------------------------------------ durable child workflows

async fn fetch_part(dir: String, n: u32) -> Result<u32, Fail> {
    Ok(effect(&dir, &format!("fetch{n}"), n).await)
}

async fn check_part(dir: String, v: u32) -> Result<u32, Fail> {
    Ok(effect(&dir, &format!("check{v}"), v).await + 100)
}

/// A durable child workflow: two steps.
#[workflow(durable)]
async fn assemble(dir: String, n: u32) -> Result<u32, Fail> {
    let v = fetch_part(dir.clone(), n).await?;
    check_part(dir, v).await
}

/// A child's failure, as the parent's step error.
impl From<flow::Error<Fail>> for Fail {
    fn from(e: flow::Error<Fail>) -> Self {
        Fail(e.to_string())
    }
}

/// A durable parent running the child twice, in a loop.
#[workflow(durable)]
async fn build(dir: String) -> Result<u32, Fail> {
    let mut total = 0;
    for n in 1..=2 {
        total += assemble(dir.clone(), n).await?;
    }
    Ok(total)
}

/// Killed inside the second run of a durable child workflow, after the child's first step
/// committed: resumed, the parent's completed child is not run again, and the child in
/// flight replays its committed step and runs only the step that was in flight (with the
/// same idempotency key, which names the parent's step).
#[test]
fn a_durable_child_workflow_resumes_inside_its_parent_step() {
    let dir = temp_dir("child");
    let d = dir.display().to_string();
    killed_in(&dir, "check2", |runtime| async move {
        drop(runtime.start(Build, "c1", (d,)).await.unwrap());
    });
    // The child's steps are recorded in the parent's run, under the step that runs them.
    in_process(&dir, |runtime| async move {
        let steps = runtime.store().unwrap().steps_of("c1").await.unwrap();
        let mut keys: Vec<String> = steps
            .iter()
            .filter(|s| s.outcome.is_some())
            .map(|s| format!("{}@{}", s.key.node, s.key.occurrence))
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "assemble@0",
                "assemble@0.1/check_part@0",
                "assemble@0.1/fetch_part@0",
                "assemble@1.1/fetch_part@0",
            ]
        );
        let mut registry = flow::Registry::new();
        registry.register_durable(Build).unwrap();
        assert_eq!(resume_all(&runtime, &registry).await, [Ok(())]);
        let result = runtime.result(&Build, "c1").await.unwrap().unwrap();
        assert_eq!(result.unwrap(), 101 + 102);
    });
    let log = read_log(&dir);
    for (name, n) in [("fetch1", 1), ("check1", 1), ("fetch2", 1), ("check2", 2)] {
        assert_eq!(count(&log, name), n, "{name}: {log:?}");
    }
    let key = "flow:c1:assemble@1.1/check_part@0";
    assert_eq!(keys_of(&log, "check2"), [key, key]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The store fails while a durable child workflow commits its second step: the whole run
/// stops (the child's error is not committed as the parent step's failure) and is left to
/// resume; resumed on a working store, it finishes without running a committed step again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failure_inside_a_durable_child_stops_the_whole_run() {
    let dir = temp_dir("child-full");
    let d = dir.display().to_string();
    let memory = flow::store::MemoryStore::new();
    let failing = FailingStore {
        inner: memory.clone(),
        ok: std::sync::Arc::new(std::sync::atomic::AtomicU32::new(1)),
    };
    let runtime = Runtime::new().with_store(failing);
    let e = runtime
        .start(Build, "cf1", (d.clone(),))
        .await
        .unwrap()
        .await
        .unwrap_err();
    let ErrorKind::Durable(fault) = e.kind() else {
        panic!("{e}")
    };
    assert!(
        matches!(**fault, flow::store::DurableError::Store { .. }),
        "{fault}"
    );
    assert!(
        e.to_string()
            .contains("the store failed recording step `assemble@0.1/check_part@0`"),
        "{e}"
    );
    let run = memory.get_run("cf1").await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Running);
    assert!(
        memory
            .get_step(&flow::store::StepKey::new("cf1", "assemble"))
            .await
            .unwrap()
            .is_none(),
        "the parent's step is not committed"
    );
    let healthy = Runtime::new().with_store(memory.clone());
    let mut registry = flow::Registry::new();
    registry.register_durable(Build).unwrap();
    for r in healthy.resume(&registry).await.unwrap().resumed {
        r.wait().await.unwrap();
    }
    assert_eq!(
        healthy
            .result(&Build, "cf1")
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        203
    );
    let log = read_log(&dir);
    for (name, n) in [("fetch1", 1), ("check1", 2), ("fetch2", 1), ("check2", 1)] {
        assert_eq!(count(&log, name), n, "{name}: {log:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A durable child workflow with an undo.
#[workflow(durable)]
async fn reserve_child(dir: String) -> Result<u32, Fail> {
    #[compensate(undo_a)]
    let a = reserve_a(dir).await?;
    Ok(a.n)
}

/// The child, then a payment the test keeps waiting, then a charge that fails.
#[workflow(durable)]
async fn trip(dir: String) -> Result<u32, Fail> {
    let a = reserve_child(dir.clone()).await?;
    let p = pay(dir.clone()).await?;
    let c = fail_charge(dir).await?;
    Ok(a + p + c)
}

/// Killed after a durable child workflow completed: resumed, the child is replayed from the
/// record (its step does not run again) so that its undo is registered again, and the
/// parent's later failure undoes the child's step.
#[test]
fn a_completed_durable_child_is_undone_when_its_resumed_parent_fails() {
    let dir = temp_dir("child-undo");
    let d = dir.display().to_string();
    killed_in(&dir, "pay", |runtime| async move {
        drop(runtime.start(Trip, "u1", (d,)).await.unwrap());
    });
    in_process(&dir, |runtime| async move {
        let mut registry = flow::Registry::new();
        registry.register_durable(Trip).unwrap();
        let ends = resume_all(&runtime, &registry).await;
        assert!(
            matches!(&ends[..], [Err(e)] if e.contains("card declined")),
            "{ends:?}"
        );
    });
    let log = read_log(&dir);
    for (name, n) in [("reserve_a", 1), ("pay", 2), ("charge", 1), ("undo_a", 1)] {
        assert_eq!(count(&log, name), n, "{name}: {log:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

async fn maybe_fail(dir: String) -> Result<u32, Fail> {
    effect(&dir, "maybe", 0).await;
    if count(&read_log(Path::new(&dir)), "maybe") == 1 {
        return Err(Fail("first time".into()));
    }
    Ok(5)
}

/// A durable child whose second step fails the first time it ever runs.
#[workflow(durable)]
async fn flaky_child(dir: String) -> Result<u32, Fail> {
    let v = fetch_part(dir.clone(), 7).await?;
    Ok(v + maybe_fail(dir).await?)
}

/// A retried step running the child, then a payment the test keeps waiting.
#[workflow(durable)]
async fn retrying_parent(dir: String) -> Result<u32, Fail> {
    #[retry(max_attempts = 2)]
    let v = flaky_child(dir.clone()).await?;
    let p = pay(dir).await?;
    Ok(v + p)
}

/// A retried parent step runs its durable child afresh (attempt 2 does not replay the
/// failed attempt 1); killed later and resumed, the child of the attempt that completed is
/// replayed, not run again.
#[test]
fn a_retried_parent_step_runs_its_durable_child_afresh_and_replays_the_one_that_completed() {
    let dir = temp_dir("child-retry");
    let d = dir.display().to_string();
    killed_in(&dir, "pay", |runtime| async move {
        drop(runtime.start(RetryingParent, "rp1", (d,)).await.unwrap());
    });
    let before = read_log(&dir);
    assert_eq!(count(&before, "fetch7"), 2, "{before:?}");
    assert_eq!(count(&before, "maybe"), 2, "{before:?}");
    in_process(&dir, |runtime| async move {
        let mut registry = flow::Registry::new();
        registry.register_durable(RetryingParent).unwrap();
        assert_eq!(resume_all(&runtime, &registry).await, [Ok(())]);
        let result = runtime
            .result(&RetryingParent, "rp1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(result.unwrap(), 7 + 5 + 2);
    });
    let log = read_log(&dir);
    for (name, n) in [("fetch7", 2), ("maybe", 2), ("pay", 2)] {
        assert_eq!(count(&log, name), n, "{name}: {log:?}");
    }
    assert_eq!(
        keys_of(&log, "fetch7"),
        [
            "flow:rp1:flaky_child@0.1/fetch_part@0",
            "flow:rp1:flaky_child@0.2/fetch_part@0"
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------ durable methods

/// A service whose durable workflow is a method: it owns its receiver (`self: Arc<Self>`).
struct Shop {
    dir: String,
    price: u32,
}

impl Shop {
    #[workflow(durable)]
    async fn order(self: std::sync::Arc<Self>, qty: u32) -> Result<u32, Fail> {
        let n = fetch_part(self.dir.clone(), qty).await?;
        check_part(self.dir.clone(), n * self.price).await
    }
}

/// Killed mid-method: resumed with the method's workflow registered (holding a fresh
/// service), it does not run the committed step again.
#[test]
fn a_durable_method_resumes_where_it_stopped() {
    let dir = temp_dir("method");
    let d = dir.display().to_string();
    let shop = move || {
        std::sync::Arc::new(Shop {
            dir: d.clone(),
            price: 10,
        })
    };
    let first = shop.clone();
    killed_in(&dir, "check30", |runtime| async move {
        drop(
            runtime
                .start(first().order_workflow(), "o1", (3,))
                .await
                .unwrap(),
        );
    });
    in_process(&dir, |runtime| async move {
        let mut registry = flow::Registry::new();
        registry.register_durable(shop().order_workflow()).unwrap();
        assert_eq!(resume_all(&runtime, &registry).await, [Ok(())]);
        let result = runtime.result(&shop().order_workflow(), "o1").await;
        assert_eq!(result.unwrap().unwrap().unwrap(), 130);
    });
    let log = read_log(&dir);
    assert_eq!(count(&log, "fetch3"), 1, "{log:?}");
    assert_eq!(count(&log, "check30"), 2, "{log:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts run `id` of `workflow` (input: `dir`) in a process of its own on `dir`'s store and
/// waits for its end.
fn run_to_end<W>(dir: &Path, workflow: W, id: &str) -> Result<W::Output, String>
where
    W: flow::durable::DurableWorkflow<Input = (String,)>,
{
    let (d, id) = (dir.display().to_string(), id.to_owned());
    in_process(dir, |runtime| async move {
        runtime
            .start(workflow, id, (d,))
            .await
            .unwrap()
            .await
            .map_err(|e| e.to_string())
    })
}

/// The idempotency key the step that logged `name` saw (the last word of its line).
fn key_logged_by(log: &[String], name: &str) -> String {
    let prefix = format!("{name} ");
    let line = log
        .iter()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("{name} ran: {log:?}"));
    line.rsplit(' ').next().unwrap_or_default().to_owned()
}

/// A durable child with an undo, giving its directory back.
#[workflow(durable)]
async fn pass_child(dir: String) -> Result<String, Fail> {
    #[compensate(undo_a)]
    reserve_a(dir.clone()).await?;
    Ok(dir)
}

async fn undo_pass(dir: String) -> Result<(), Fail> {
    effect(&dir, "undo_pass", 0).await;
    Ok(())
}

/// The same step, with an undo of its own, runs the child in two passes of a loop; then a
/// charge fails.
#[workflow(durable)]
async fn two_passes(dir: String) -> Result<u32, Fail> {
    for _ in 0..2 {
        #[compensate(undo_pass)]
        pass_child(dir.clone()).await?;
    }
    fail_charge(dir).await
}

/// A step's undo takes over the undos of the child it ran, in every pass of a loop (the
/// second execution of the node too, whose record is occurrence 1): the failure undoes each
/// pass once, with the step's undo, and never the child's own.
#[test]
fn a_durable_steps_undo_takes_over_its_childs_in_every_pass_of_a_loop() {
    let dir = temp_dir("passes");
    let end = run_to_end(&dir, TwoPasses, "p1");
    assert!(
        matches!(&end, Err(e) if e.contains("card declined")),
        "{end:?}"
    );
    let log = read_log(&dir);
    for (name, n) in [
        ("reserve_a", 2),
        ("charge", 1),
        ("undo_pass", 2),
        ("undo_a", 0),
    ] {
        assert_eq!(count(&log, name), n, "{name}: {log:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A workflow without `durable`.
#[workflow]
async fn plain_child(dir: String) -> Result<u32, Fail> {
    fetch_part(dir, 9).await
}

#[workflow(durable)]
async fn durable_parent_of_plain(dir: String) -> Result<u32, Fail> {
    Ok(plain_child(dir).await? + 1)
}

/// A workflow that is not durable, run by a durable run's step, is not recorded: it runs in
/// memory, and its steps' idempotency keys are an in-memory run's (this process, this run),
/// not keys of the durable run's record.
#[test]
fn a_plain_child_of_a_durable_run_is_not_recorded() {
    let dir = temp_dir("plain-child");
    assert_eq!(run_to_end(&dir, DurableParentOfPlain, "pc1").unwrap(), 10);
    let key = key_logged_by(&read_log(&dir), "fetch9");
    assert!(
        key.starts_with("flow:") && key.ends_with(":fetch_part#1") && !key.contains("pc1"),
        "an in-memory run's key, not one of run pc1's record: {key}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `flow!` that is not durable, and one that is, each run by a durable run's step
/// (`DynWorkflow::call`: a child of the step, as awaiting a `#[workflow]` function is).
#[workflow(durable)]
async fn durable_parent_of_flows(dir: String) -> Result<u32, Fail> {
    let plain: flow::BoxWorkflow<String, u32, Fail> =
        Box::new(flow! { |d: String| fetch_part(d, 8) });
    let stored: flow::BoxWorkflow<String, u32, Fail> =
        Box::new(flow! { name = "stored_fetch", durable; |d: String| fetch_part(d, 7) });
    let a = plain.call(dir.clone()).await?;
    let b = stored.call(dir).await?;
    Ok(a + b)
}

/// The plain `flow!`'s step gets an in-memory run's idempotency key; the durable one's is
/// recorded under the parent's step, in the parent run's record.
#[test]
fn a_durable_runs_step_records_a_durable_flow_it_runs_and_not_a_plain_one() {
    let dir = temp_dir("flow-children");
    assert_eq!(run_to_end(&dir, DurableParentOfFlows, "fc1").unwrap(), 15);
    let log = read_log(&dir);
    let plain = key_logged_by(&log, "fetch8");
    assert!(!plain.contains("fc1"), "an in-memory run's key: {plain}");
    let stored = key_logged_by(&log, "fetch7");
    assert!(
        stored.starts_with("flow:fc1:"),
        "the parent run's record: {stored}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
