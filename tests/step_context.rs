//! A step's own context: `flow::step_context()` (attempt, run, identity, idempotency key,
//! deadline, progress). Timings on tokio's paused clock.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::{Recorder, TestError};
use flow::prelude::*;
use flow::{RunId, StepContext, step_context};
use tokio::time::Instant;

// ---------------------------------------------------------------- attempts and the key

static FLAKY: Mutex<Vec<(u32, String)>> = Mutex::new(Vec::new());

async fn flaky() -> Result<u32, TestError> {
    let c = step_context().expect("inside a step");
    FLAKY
        .lock()
        .unwrap()
        .push((c.attempt(), c.idempotency_key()));
    if c.attempt() < 3 {
        Err(TestError::Busy)
    } else {
        Ok(c.attempt())
    }
}

#[workflow]
async fn retried() -> Result<u32, TestError> {
    #[retry(max_attempts = 5)]
    let n = flaky().await?;
    Ok(n)
}

#[tokio::test]
async fn a_retried_step_sees_its_attempts_and_one_idempotency_key() {
    assert_eq!(Runtime::default().run(&Retried, ()).await.unwrap(), 3);
    let seen = FLAKY.lock().unwrap().clone();
    let attempts: Vec<u32> = seen.iter().map(|(a, _)| *a).collect();
    assert_eq!(attempts, [1, 2, 3]);
    assert!(seen.iter().all(|(_, k)| *k == seen[0].1), "{seen:?}");
    assert!(seen[0].1.ends_with(":flaky#1"), "{}", seen[0].1);
}

async fn keyed(x: u32) -> Result<(String, u32, Option<u32>), TestError> {
    let c = step_context().expect("inside a step");
    assert_eq!(c.step(), "keyed");
    assert_eq!(c.key(), "keyed");
    let _ = x;
    Ok((c.idempotency_key(), c.iteration(), c.item()))
}

#[workflow]
async fn looped(n: u32) -> Result<Vec<(String, u32, Option<u32>)>, TestError> {
    let mut keys = Vec::new();
    for i in 0..n {
        let k = keyed(i).await?;
        keys.push(k);
    }
    Ok(keys)
}

#[workflow]
async fn mapped(items: Vec<u32>) -> Result<Vec<(String, u32, Option<u32>)>, TestError> {
    let keys = flow::map!(items, |x| keyed(x), concurrency = 2).await?;
    Ok(keys)
}

#[tokio::test]
async fn loop_iterations_and_map_items_get_their_own_keys() {
    let looped = Runtime::default().run(&Looped, (3,)).await.unwrap();
    let iterations: Vec<u32> = looped.iter().map(|k| k.1).collect();
    assert_eq!(iterations, [1, 2, 3]);
    assert!(looped.iter().all(|k| k.2.is_none()));
    assert_ne!(looped[0].0, looped[1].0);
    assert_ne!(looped[1].0, looped[2].0);
    assert!(looped[1].0.ends_with(":keyed#2"), "{}", looped[1].0);

    let mapped = Runtime::default()
        .run(&Mapped, (vec![10, 20, 30],))
        .await
        .unwrap();
    let items: Vec<Option<u32>> = mapped.iter().map(|k| k.2).collect();
    assert_eq!(items, [Some(0), Some(1), Some(2)]);
    assert_ne!(mapped[0].0, mapped[1].0);
    assert!(mapped[2].0.ends_with("[2]"), "{}", mapped[2].0);

    // Another run, other keys.
    let again = Runtime::default().run(&Looped, (1,)).await.unwrap();
    assert_ne!(again[0].0, looped[0].0);
}

// ---------------------------------------------------------------- deadline

async fn deadline_probe() -> Result<Option<Instant>, TestError> {
    Ok(step_context().expect("inside a step").deadline())
}

#[workflow]
async fn per_attempt() -> Result<Option<Instant>, TestError> {
    #[timeout("2s")]
    let d = deadline_probe().await?;
    Ok(d)
}

#[workflow(timeout = "10m")]
async fn whole_run() -> Result<(Option<Instant>, Option<Instant>), TestError> {
    let plain = deadline_probe().await?;
    #[retry(max_attempts = 2)]
    #[timeout("30s")]
    let tight = deadline_probe().await?;
    Ok((plain, tight))
}

#[workflow]
async fn unlimited() -> Result<Option<Instant>, TestError> {
    deadline_probe().await
}

#[tokio::test(start_paused = true)]
async fn the_deadline_is_the_earlier_of_the_attempt_and_the_run_limits() {
    let t0 = Instant::now();
    let d = Runtime::default().run(&PerAttempt, ()).await.unwrap();
    assert_eq!(d, Some(t0 + Duration::from_secs(2)));

    let t0 = Instant::now();
    let (plain, tight) = Runtime::default().run(&WholeRun, ()).await.unwrap();
    assert_eq!(plain, Some(t0 + Duration::from_secs(600)));
    assert_eq!(tight, Some(t0 + Duration::from_secs(30)));

    assert_eq!(Runtime::default().run(&Unlimited, ()).await.unwrap(), None);
}

// ---------------------------------------------------------------- progress and heartbeat

async fn copy_files(n: u32) -> Result<u32, TestError> {
    let c = step_context().expect("inside a step");
    c.report_progress(0.25);
    c.report_progress((0.5, "copying b.txt"));
    tokio::time::sleep(Duration::from_secs(10)).await;
    c.report_progress("verifying");
    Ok(n)
}

#[workflow]
async fn copy(n: u32) -> Result<u32, TestError> {
    copy_files(n).await
}

#[tokio::test(start_paused = true)]
async fn progress_reaches_observers_and_is_a_heartbeat() {
    let rec = Recorder::default();
    let bars = flow::ProgressObserver::hidden().with_graph(Copy::GRAPH);
    let runtime = Runtime::default()
        .with_observer(rec.observer())
        .with_observer(bars.clone());
    let handle = runtime.spawn(Copy, (7,));
    assert!(handle.last_heartbeat().is_none());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let beat = handle.last_heartbeat().expect("a heartbeat");
    let lines = bars.lines().join("\n");
    assert!(lines.contains("50% copying b.txt"), "{lines}");
    assert_eq!(handle.await.unwrap(), 7);

    let progress: Vec<(Option<f64>, Option<String>, String)> = rec
        .events()
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Progress {
                attempt: 1,
                fraction,
                message,
            } => Some((*fraction, message.clone(), e.to_string())),
            _ => None,
        })
        .collect();
    assert_eq!(progress.len(), 3);
    assert_eq!(progress[0].0, Some(0.25));
    assert_eq!(progress[1].1.as_deref(), Some("copying b.txt"));
    assert!(
        progress[1]
            .2
            .ends_with("copy_files: progress 50%: copying b.txt"),
        "{}",
        progress[1].2
    );
    assert_eq!(
        progress[2],
        (None, Some("verifying".to_owned()), progress[2].2.clone())
    );
    let _ = beat;
}

// ---------------------------------------------------------------- where there is none

async fn outer_step() -> Result<(RunId, RunId, RunId), TestError> {
    let mine = step_context().expect("inside a step").run_id();
    let theirs = unlimited_child()
        .await
        .map_err(|e| TestError::Broken(e.to_string()))?;
    // Back in this step after the child: its own context again.
    let after = step_context().expect("still inside the step").run_id();
    Ok((mine, theirs, after))
}

async fn child_probe() -> Result<RunId, TestError> {
    Ok(step_context().expect("inside the child's step").run_id())
}

#[workflow]
async fn unlimited_child() -> Result<RunId, TestError> {
    // The workflow's own code is not a step.
    assert!(StepContext::current().is_none());
    child_probe().await
}

#[workflow]
async fn parent() -> Result<(RunId, RunId, RunId), TestError> {
    outer_step().await
}

#[tokio::test]
async fn outside_a_step_there_is_none_and_a_child_run_has_its_own() {
    assert!(step_context().is_none());
    let (mine, theirs, after) = Runtime::default().run(&Parent, ()).await.unwrap();
    assert_ne!(mine, theirs);
    assert_eq!(mine, after);
    assert!(step_context().is_none());
}

// ---------------------------------------------------------------- an undo is not a step

static UNDO_SAW: Mutex<Vec<bool>> = Mutex::new(Vec::new());

async fn acquire(n: u32) -> Result<u32, TestError> {
    Ok(n)
}
async fn release(_: u32) -> Result<(), TestError> {
    UNDO_SAW.lock().unwrap().push(step_context().is_some());
    Ok(())
}
async fn refuse(_: u32) -> Result<u32, TestError> {
    Err(TestError::Busy)
}

#[workflow]
async fn undoing_child(n: u32) -> Result<u32, TestError> {
    #[compensate(release)]
    let n = acquire(n).await?;
    refuse(n).await
}

async fn runs_child(n: u32) -> Result<u32, TestError> {
    let r = undoing_child(n).await;
    // The step's own context is back after the child undid itself.
    assert!(step_context().is_some());
    r.map_err(|_| TestError::Busy)
}

#[workflow]
async fn parent_of_undoing(n: u32) -> Result<u32, TestError> {
    runs_child(n).await
}

#[tokio::test]
async fn a_compensation_has_no_step_context() {
    assert!(
        Runtime::default()
            .run(&ParentOfUndoing, (1,))
            .await
            .is_err()
    );
    assert_eq!(*UNDO_SAW.lock().unwrap(), [false]);
}
