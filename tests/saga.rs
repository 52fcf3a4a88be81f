//! The saga through the macros, as users write it: undo limits, the compensation budget,
//! dropped runs, completed and abandoned child workflows, panics between steps. Side effects
//! go to a log, which each test reads.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use flow::RunReport;
use flow::error::CompensationOutcome;
use flow::prelude::*;

/// What the steps and undos did, in order.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, s: impl Into<String>) {
        self.0.lock().unwrap().push(s.into());
    }
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

async fn create(log: Log, what: &'static str) -> Result<(Log, &'static str), String> {
    log.push(format!("create {what}"));
    Ok((log, what))
}

async fn delete((log, what): (Log, &'static str)) -> Result<(), String> {
    log.push(format!("delete {what}"));
    Ok(())
}

/// Fails its first two attempts.
async fn delete_flaky((log, what): (Log, &'static str)) -> Result<(), String> {
    let n = log
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("try delete"))
        .count();
    log.push(format!("try delete {what}"));
    if n < 2 {
        return Err(format!("delete {what}: busy"));
    }
    log.push(format!("delete {what}"));
    Ok(())
}

async fn delete_hangs((log, what): (Log, &'static str)) -> Result<(), String> {
    log.push(format!("hang deleting {what}"));
    std::future::pending().await
}

async fn fail(log: Log) -> Result<(), String> {
    log.push("fail");
    Err("boom".into())
}

async fn wait_forever(log: Log) -> Result<(), String> {
    log.push("waiting");
    std::future::pending().await
}

// ---------------------------------------------------------------- an undo's own limits

#[workflow]
async fn flaky_undo(log: Log) -> Result<(), String> {
    #[compensate(delete_flaky, timeout = "1s", retry(max_attempts = 3))]
    create(log.clone(), "bucket").await?;
    fail(log).await
}

#[workflow(compensation_timeout = "5s")]
async fn hung_undo(log: Log) -> Result<(), String> {
    #[compensate(delete)]
    create(log.clone(), "first").await?;
    #[compensate(delete_hangs)]
    create(log.clone(), "second").await?;
    fail(log).await
}

#[tokio::test(start_paused = true)]
async fn an_undo_is_retried_under_its_own_policy() {
    let log = Log::default();
    let err = flaky_undo(log.clone()).await.unwrap_err();
    assert_eq!(err.error(), Some(&"boom".to_owned()));
    let rec = &err.compensations()[0];
    assert_eq!((rec.step, rec.attempts), ("create", 3));
    assert!(rec.succeeded());
    assert_eq!(
        log.take(),
        [
            "create bucket",
            "fail",
            "try delete bucket",
            "try delete bucket",
            "try delete bucket",
            "delete bucket"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_hung_undo_is_bounded_by_the_compensation_budget_and_the_others_still_run() {
    let log = Log::default();
    let started = tokio::time::Instant::now();
    let err = hung_undo(log.clone()).await.unwrap_err();
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(5),
        "waited the budget, not forever"
    );
    let outcomes: Vec<(&str, &CompensationOutcome)> = err
        .compensations()
        .iter()
        .map(|r| (r.key, &r.outcome))
        .collect();
    // Reverse order; the hung undo timed out; the budget was spent, so the first one is
    // reported as timed out too (it never ran), never silently dropped.
    assert_eq!(
        outcomes[0],
        (
            "create#2",
            &CompensationOutcome::TimedOut(Duration::from_secs(5))
        )
    );
    assert_eq!(outcomes.len(), 2);
    assert_eq!(
        log.take()[..4],
        [
            "create first",
            "create second",
            "fail",
            "hang deleting second"
        ]
    );
}

async fn delete_never((log, what): (Log, &'static str)) -> Result<(), String> {
    log.push(format!("try delete {what}"));
    Err(format!("delete {what}: refused"))
}

#[workflow]
async fn undo_within_budget(log: Log) -> Result<(), String> {
    #[compensate(delete_never, retry(max_attempts = 10, backoff = constant("100ms"), max_elapsed = "300ms"))]
    create(log.clone(), "bucket").await?;
    fail(log).await
}

#[workflow(compensation_timeout = "100ms")]
async fn undo_longer_than_the_budget(log: Log) -> Result<(), String> {
    #[compensate(delete_hangs, timeout = "1s")]
    create(log.clone(), "volume").await?;
    fail(log).await
}

async fn delete_in_40ms((log, what): (Log, &'static str)) -> Result<(), String> {
    tokio::time::sleep(Duration::from_millis(40)).await;
    log.push(format!("delete {what}"));
    Ok(())
}

#[workflow(compensation_timeout = "100ms")]
async fn undo_ending_with_the_budget(log: Log) -> Result<(), String> {
    #[compensate(delete_hangs, timeout = "60ms")]
    create(log.clone(), "volume").await?;
    #[compensate(delete_in_40ms)]
    create(log.clone(), "disk").await?;
    fail(log).await
}

/// An undo's `max_elapsed` is exact: retries 100 ms apart within 300 ms are made at 0, 100,
/// 200 and 300 ms (the last ends exactly at the budget), and no more.
#[tokio::test(start_paused = true)]
async fn an_undos_retries_stop_at_its_max_elapsed() {
    let log = Log::default();
    let started = tokio::time::Instant::now();
    let err = undo_within_budget(log.clone()).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_millis(300));
    let rec = &err.compensations()[0];
    assert_eq!(rec.attempts, 4, "{rec:?}");
    assert!(!rec.succeeded());
    let tries = log
        .take()
        .iter()
        .filter(|l| l.starts_with("try delete"))
        .count();
    assert_eq!(tries, 4);
}

/// An undo's own timeout longer than what is left of the compensation budget: the budget
/// cuts it, and the record says the budget's time.
#[tokio::test(start_paused = true)]
async fn an_undos_own_timeout_does_not_outlast_the_compensation_budget() {
    let log = Log::default();
    let started = tokio::time::Instant::now();
    let err = undo_longer_than_the_budget(log.clone()).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    assert_eq!(
        err.compensations()[0].outcome,
        CompensationOutcome::TimedOut(Duration::from_millis(100))
    );

    // The second undo starts 40 ms in: its own 60 ms end exactly with the budget, which is
    // what cuts it (and what its record says).
    let started = tokio::time::Instant::now();
    let err = undo_ending_with_the_budget(log.clone()).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    let outcomes: Vec<&CompensationOutcome> =
        err.compensations().iter().map(|r| &r.outcome).collect();
    assert_eq!(
        outcomes,
        [
            &CompensationOutcome::Succeeded,
            &CompensationOutcome::TimedOut(Duration::from_millis(100))
        ]
    );
}

// ---------------------------------------------------------------- dropped runs

#[workflow]
async fn handler(log: Log) -> Result<(), String> {
    #[compensate(delete)]
    create(log.clone(), "session").await?;
    wait_forever(log).await
}

#[workflow(compensate_on_drop = false)]
async fn handler_no_undo(log: Log) -> Result<(), String> {
    #[compensate(delete)]
    create(log.clone(), "session").await?;
    wait_forever(log).await
}

#[tokio::test(start_paused = true)]
async fn dropping_an_awaited_workflow_undoes_it_unless_told_not_to() {
    let log = Log::default();
    // A request handler whose client went away: its future is dropped mid-run.
    let r = tokio::time::timeout(Duration::from_secs(1), handler(log.clone())).await;
    assert!(r.is_err());
    // The undo runs on a task of its own.
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert_eq!(log.take(), ["create session", "waiting", "delete session"]);

    let r = tokio::time::timeout(Duration::from_secs(1), handler_no_undo(log.clone())).await;
    assert!(r.is_err());
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert_eq!(log.take(), ["create session", "waiting"]);
}

async fn open_session(log: Log) -> Result<(Log, &'static str), String> {
    create(log, "session").await
}

async fn hang_session((log, _): (Log, &'static str)) -> Result<(), String> {
    wait_forever(log).await
}

/// The same with `flow!`: its run's future dropped mid-run undoes its steps, unless the flow
/// says `compensate_on_drop = false`.
#[tokio::test(start_paused = true)]
async fn dropping_a_flows_run_undoes_it_unless_told_not_to() {
    let log = Log::default();
    let undoes = flow! { open_session [compensate = delete] -> hang_session };
    let keeps = flow! {
        compensate_on_drop = false;
        open_session [compensate = delete] -> hang_session
    };
    let runtime = Runtime::new();
    let r = tokio::time::timeout(Duration::from_secs(1), runtime.run(&undoes, log.clone())).await;
    assert!(r.is_err());
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert_eq!(log.take(), ["create session", "waiting", "delete session"]);

    let r = tokio::time::timeout(Duration::from_secs(1), runtime.run(&keeps, log.clone())).await;
    assert!(r.is_err());
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert_eq!(log.take(), ["create session", "waiting"]);
}

// ---------------------------------------------------------------- child workflows

#[workflow]
async fn child(log: Log) -> Result<(), String> {
    #[compensate(delete)]
    create(log.clone(), "child volume").await?;
    #[compensate(delete)]
    create(log.clone(), "child disk").await?;
    Ok(())
}

async fn run_child(log: Log) -> Result<(), String> {
    child(log).await.map_err(|e| e.to_string())
}

#[workflow]
async fn parent(log: Log) -> Result<(), String> {
    #[compensate(delete)]
    create(log.clone(), "network").await?;
    run_child(log.clone()).await?;
    #[compensate(delete)]
    create(log.clone(), "dns").await?;
    fail(log).await
}

#[tokio::test]
async fn a_completed_child_is_undone_when_its_parent_fails_later_in_reverse_order() {
    let log = Log::default();
    let err = parent(log.clone()).await.unwrap_err();
    assert_eq!(err.error(), Some(&"boom".to_owned()));
    assert_eq!(
        log.take(),
        [
            "create network",
            "create child volume",
            "create child disk",
            "create dns",
            "fail",
            "delete dns",
            "delete child disk",
            "delete child volume",
            "delete network",
        ]
    );
    assert!(err.compensations().iter().all(|r| r.succeeded()));
    assert_eq!(err.compensations().len(), 4);
}

async fn slow_child_step(log: Log, attempt: Arc<Mutex<u32>>) -> Result<(), String> {
    let n = {
        let mut a = attempt.lock().unwrap();
        *a += 1;
        *a
    };
    slow_child(log, n).await.map_err(|e| e.to_string())
}

#[workflow]
async fn slow_child(log: Log, attempt: u32) -> Result<(), String> {
    #[compensate(delete)]
    create(log.clone(), if attempt == 1 { "vm 1" } else { "vm 2" }).await?;
    if attempt == 1 {
        wait_forever(log).await?;
    }
    Ok(())
}

#[workflow]
async fn provision_vm(log: Log) -> Result<(), String> {
    let attempt = Arc::new(Mutex::new(0));
    #[retry(max_attempts = 2)]
    #[timeout("1s")]
    slow_child_step(log.clone(), attempt.clone()).await?;
    log.push("ready");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_attempt_is_undone_before_the_next_and_reported_when_the_run_succeeds() {
    let log = Log::default();
    let report: RunReport<(), String> = Runtime::new()
        .run_report(&ProvisionVm, (log.clone(),))
        .await;
    assert!(report.result.is_ok());
    assert_eq!(
        log.take(),
        [
            "create vm 1",
            "waiting",
            "delete vm 1",
            "create vm 2",
            "ready"
        ],
        "attempt 1's vm is deleted before attempt 2 creates its own, and vm 2 is kept"
    );
    assert_eq!(report.compensations.len(), 1);
    assert_eq!(report.compensations[0].workflow, "SlowChild");
}

async fn provision_vm_step(log: Log) -> Result<(), String> {
    provision_vm(log).await.map_err(|e| e.to_string())
}

#[workflow]
async fn provision_cluster(log: Log) -> Result<(), String> {
    provision_vm_step(log.clone()).await?;
    log.push("cluster ready");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn undos_a_completed_child_ran_for_its_abandoned_work_are_in_the_parents_report() {
    let log = Log::default();
    let report: RunReport<(), String> = Runtime::new()
        .run_report(&ProvisionCluster, (log.clone(),))
        .await;
    assert!(report.result.is_ok());
    assert_eq!(
        log.take(),
        [
            "create vm 1",
            "waiting",
            "delete vm 1",
            "create vm 2",
            "ready",
            "cluster ready"
        ]
    );
    // `ProvisionVm` (a child of this run, which has run no undo of its own) undid its
    // abandoned attempt's `SlowChild`: that record joins this run's report.
    assert_eq!(report.compensations.len(), 1);
    assert_eq!(report.compensations[0].workflow, "SlowChild");
    assert_eq!(report.compensations[0].step, "create");
    assert!(report.compensations[0].succeeded());
}

#[workflow]
async fn disk_child(log: Log) -> Result<(), String> {
    #[compensate(delete)]
    create(log.clone(), "child disk").await?;
    Ok(())
}

/// Runs `DiskChild` (which completes), then takes a while: its sibling finishes first.
async fn attach_disk(log: Log) -> Result<Log, String> {
    disk_child(log.clone()).await.map_err(|e| e.to_string())?;
    tokio::time::sleep(Duration::from_millis(10)).await;
    log.push("disk attached");
    Ok(log)
}

async fn open_port(log: Log) -> Result<Log, String> {
    log.push("port opened");
    Ok(log)
}

async fn detach_disk(log: Log) -> Result<(), String> {
    log.push("disk detached");
    Ok(())
}

async fn close_port(log: Log) -> Result<(), String> {
    log.push("port closed");
    Ok(())
}

async fn refuse_pair((log, _): (Log, Log)) -> Result<(), String> {
    log.push("fail");
    Err("boom".into())
}

#[tokio::test(start_paused = true)]
async fn a_steps_undo_takes_over_its_childs_even_when_a_sibling_registered_an_undo_in_between() {
    let log = Log::default();
    let f = flow! {
        (attach_disk [compensate = detach_disk] & open_port [compensate = close_port]) -> refuse_pair
    };
    let err = Runtime::new().run(&f, log.clone()).await.unwrap_err();
    assert_eq!(err.error(), Some(&"boom".to_owned()));
    // `open_port` registers its undo while `attach_disk` still runs; `attach_disk`'s own undo,
    // registered after, is responsible for the child it ran: the child's undo is dropped.
    assert_eq!(
        log.take(),
        [
            "create child disk",
            "port opened",
            "disk attached",
            "fail",
            "disk detached",
            "port closed",
        ]
    );
    assert_eq!(err.compensations().len(), 2);
}

async fn reserve_slot(log: Log) -> Result<Log, String> {
    log.push("reserved");
    Ok(log)
}

/// An undo that takes 400 days (on the paused clock).
async fn release_slowly(log: Log) -> Result<(), String> {
    tokio::time::sleep(Duration::from_secs(400 * 24 * 3600)).await;
    log.push("released");
    Ok(())
}

async fn refuse_slot(log: Log) -> Result<(), String> {
    log.push("fail");
    Err("boom".into())
}

#[tokio::test(start_paused = true)]
async fn an_unbounded_compensation_budget_does_not_cut_a_slow_undo_short() {
    let log = Log::default();
    // `Instant + Duration::MAX` overflows: the budget's end is then 30 years away.
    let f = flow! { reserve_slot [compensate = release_slowly] -> refuse_slot }
        .with_compensation_timeout(Duration::MAX);
    let err = Runtime::new().run(&f, log.clone()).await.unwrap_err();
    assert_eq!(log.take(), ["reserved", "fail", "released"]);
    assert_eq!(err.compensations().len(), 1);
    assert!(err.compensations()[0].succeeded());
}

/// An undo that takes 5 s.
async fn delete_slowly((log, what): (Log, &'static str)) -> Result<(), String> {
    log.push(format!("deleting {what}"));
    tokio::time::sleep(Duration::from_secs(5)).await;
    log.push(format!("deleted {what}"));
    Ok(())
}

#[workflow]
async fn slow_undo_child(log: Log, attempt: u32) -> Result<(), String> {
    #[compensate(delete_slowly)]
    create(log.clone(), if attempt == 1 { "vm 1" } else { "vm 2" }).await?;
    if attempt == 1 {
        wait_forever(log).await?;
    }
    Ok(())
}

async fn slow_undo_child_step(log: Log, attempt: Arc<Mutex<u32>>) -> Result<(), String> {
    let n = {
        let mut a = attempt.lock().unwrap();
        *a += 1;
        *a
    };
    slow_undo_child(log, n).await.map_err(|e| e.to_string())
}

#[workflow(timeout = "2s")]
async fn provision_vm_in_time(log: Log) -> Result<(), String> {
    let attempt = Arc::new(Mutex::new(0));
    #[retry(max_attempts = 2)]
    #[timeout("1s")]
    slow_undo_child_step(log.clone(), attempt.clone()).await?;
    log.push("ready");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn an_undo_of_abandoned_work_cut_off_by_the_time_limit_is_finished_by_the_run() {
    let log = Log::default();
    let start = tokio::time::Instant::now();
    let err = provision_vm_in_time(log.clone()).await.unwrap_err();
    // Attempt 1 times out at 1 s: its child's vm is being deleted (5 s) when the run's time
    // limit ends it at 2 s; the deletion is not dropped but finished as the run ends.
    assert!(
        matches!(err.kind(), flow::ErrorKind::TimedOut { .. }),
        "{err}"
    );
    assert_eq!(
        log.take(),
        ["create vm 1", "waiting", "deleting vm 1", "deleted vm 1"]
    );
    assert_eq!(start.elapsed(), Duration::from_secs(6));
    assert_eq!(err.compensations().len(), 1);
    assert_eq!(err.compensations()[0].workflow, "SlowUndoChild");
    assert!(err.compensations()[0].succeeded());
}

// ---------------------------------------------------------------- panics

#[workflow]
async fn panics_between_steps(log: Log, index: usize) -> Result<(), String> {
    #[compensate(delete)]
    create(log.clone(), "table").await?;
    let shards: Vec<u32> = vec![1, 2];
    let _ = shards[index]; // a bug in the workflow's own code
    fail(log).await
}

#[tokio::test]
async fn a_panic_in_the_body_fails_the_run_and_undoes_it() {
    let log = Log::default();
    let mut handle = Runtime::new().spawn_with_events(PanicsBetweenSteps, (log.clone(), 9));
    let mut last = None;
    while let Some(e) = handle.events().next().await {
        last = Some(e.kind);
    }
    assert!(
        matches!(last, Some(EventKind::RunFailed { .. })),
        "the event stream ends"
    );
    let err = handle.await.unwrap_err();
    assert!(err.to_string().contains("panicked"), "{err}");
    assert!(err.to_string().contains("index out of bounds"), "{err}");
    assert_eq!(log.take(), ["create table", "delete table"]);
}

// ---------------------------------------------------------------- failures say what they are

async fn slow(log: Log) -> Result<(), String> {
    log.push("slow");
    tokio::time::sleep(Duration::from_secs(10)).await;
    Ok(())
}

#[workflow]
async fn times_out(log: Log) -> Result<(), String> {
    #[timeout("1s")]
    slow(log).await?;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_failure_says_whether_it_was_a_timeout_an_error_or_a_panic() {
    let err = times_out(Log::default()).await.unwrap_err();
    let step = err.step_error().unwrap();
    assert!(step.failure().is_timeout() && !step.failure().is_panic());
    assert!(step.failure().error().is_none());

    let err = parent(Log::default()).await.unwrap_err();
    // `fail` returned its own error: not a timeout, not a panic.
    let failure = err.step_error().unwrap().failure();
    assert!(!failure.is_timeout() && !failure.is_panic());
    assert_eq!(failure.error(), Some(&"boom".to_owned()));

    let err = panics_between_steps(Log::default(), 9).await.unwrap_err();
    assert!(err.step_error().is_none_or(|s| !s.failure().is_timeout()));
}

// ---------------------------------------------------------------- what a step error says

async fn slow_then_broken(log: Log) -> Result<(), String> {
    let n = log.0.lock().unwrap().len();
    log.push("try");
    if n == 0 {
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    Err("broken".into())
}

#[workflow]
async fn only_timeouts_retried(log: Log) -> Result<(), String> {
    #[retry(on = timeouts, max_attempts = 3)]
    #[timeout("1s")]
    slow_then_broken(log).await?;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_step_error_message_says_how_the_step_gave_up() {
    // One attempt, its own error: "failed: ..".
    let err = parent(Log::default()).await.unwrap_err();
    let step = err.step_error().unwrap();
    assert_eq!(step.to_string(), "step `fail` failed: boom");
    assert!(!step.is_timeout() && !step.is_panic());
    // A timeout (retried), then an error no rule covers: says which attempt, and why.
    let err = only_timeouts_retried(Log::default()).await.unwrap_err();
    let step = err.step_error().unwrap();
    assert_eq!(
        step.to_string(),
        "step `slow_then_broken` failed on attempt 2 with an error no retry rule covers: broken"
    );
    assert!(step.attempts()[0].failure.is_timeout());
    // A timeout that ends the step.
    let err = times_out(Log::default()).await.unwrap_err();
    assert!(err.step_error().unwrap().is_timeout());
}

/// An error type that is a `std::error::Error`, so step errors chain to it.
#[derive(Debug, PartialEq)]
struct Refused;
impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("refused")
    }
}
impl std::error::Error for Refused {}

async fn refuse() -> Result<(), Refused> {
    Err(Refused)
}

#[workflow]
async fn refusing() -> Result<(), Refused> {
    refuse().await
}

#[tokio::test]
async fn errors_chain_to_the_steps_own_error() {
    let err = refusing().await.unwrap_err();
    let step = err.step_error().unwrap();
    let source = std::error::Error::source(step).expect("the step's own error is its source");
    assert_eq!(source.to_string(), "refused");
    assert!(std::error::Error::source(&err).is_some());
}

async fn delete_fails((log, what): (Log, &'static str)) -> Result<(), String> {
    log.push(format!("cannot delete {what}"));
    Err(format!("cannot delete {what}"))
}

#[workflow]
async fn undo_fails(log: Log) -> Result<(), String> {
    #[compensate(delete)]
    create(log.clone(), "kept").await?;
    #[compensate(delete_fails)]
    create(log.clone(), "stuck").await?;
    fail(log).await
}

#[tokio::test]
async fn a_report_lists_the_undos_that_did_not_succeed() {
    let report = Runtime::new()
        .run_report(&UndoFails, (Log::default(),))
        .await;
    assert!(report.result.is_err());
    assert_eq!(report.compensations.len(), 2);
    let problems: Vec<&str> = report.compensation_problems().map(|r| r.key).collect();
    assert_eq!(problems, ["create#2"]);
}

#[workflow]
async fn refuses_itself(n: u32) -> Result<u32, Refused> {
    if n > 1 {
        return Err(Refused);
    }
    Ok(n)
}

#[tokio::test]
async fn a_runs_error_value_is_reachable_whichever_code_returned_it() {
    // The workflow's own code returned it.
    let err = refuses_itself(2).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Workflow(Refused)));
    assert_eq!(err.error(), Some(&Refused));
    assert_eq!(
        std::error::Error::source(&err).map(ToString::to_string),
        Some("refused".to_owned())
    );
    assert_eq!(err.into_error(), Some(Refused));
    // A step returned it.
    let err = refusing().await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Step(_)));
    assert_eq!(err.error(), Some(&Refused));
    assert!(std::error::Error::source(&err).is_some());
    assert_eq!(err.into_error(), Some(Refused));
    // A timeout has no error value.
    assert_eq!(
        times_out(Log::default()).await.unwrap_err().into_error(),
        None
    );
}

// ---------------------------------------------------------------- observers that panic

#[tokio::test]
async fn observers_that_panic_are_removed_once_and_the_others_hear_of_it_once() {
    use std::sync::atomic::{AtomicU32, Ordering};
    let notes_b = Arc::new(AtomicU32::new(0));
    let notes_d = Arc::new(AtomicU32::new(0));
    let events_d = Arc::new(AtomicU32::new(0));
    let (nb, nd, ed) = (notes_b.clone(), notes_d.clone(), events_d.clone());
    let seen_e = Arc::new(AtomicU32::new(0));
    let runtime = Runtime::new()
        // A: panics on the first event it sees.
        .with_observer(|_: &Event| panic!("observer A is broken"))
        // B: counts the notes about panicking observers.
        .with_observer(move |e: &Event| {
            if matches!(e.kind, EventKind::ObserverPanicked { .. }) {
                nb.fetch_add(1, Ordering::SeqCst);
            }
        })
        // C: panics on a note.
        .with_observer(|e: &Event| {
            if matches!(e.kind, EventKind::ObserverPanicked { .. }) {
                panic!("observer C cannot take notes");
            }
        })
        // D: counts notes and everything else.
        .with_observer(move |e: &Event| {
            if matches!(e.kind, EventKind::ObserverPanicked { .. }) {
                nd.fetch_add(1, Ordering::SeqCst);
            } else {
                ed.fetch_add(1, Ordering::SeqCst);
            }
        })
        // E: panics on the third event it sees (not a note).
        .with_observer(move |e: &Event| {
            if !matches!(e.kind, EventKind::ObserverPanicked { .. })
                && seen_e.fetch_add(1, Ordering::SeqCst) == 2
            {
                panic!("observer E gave up");
            }
        });
    // A run without child runs: an observer is removed from one run at a time.
    let report = runtime.run_report(&UndoFails, (Log::default(),)).await;
    assert!(
        report.result.is_err(),
        "the run itself goes on, and fails as it would"
    );
    // A and E panicked once each and were removed (a second panic would be another entry); C's
    // panic on the first note removed it silently.
    assert_eq!(
        report.observer_panics.len(),
        2,
        "{:?}",
        report.observer_panics
    );
    assert_eq!(
        notes_b.load(Ordering::SeqCst),
        2,
        "B heard of each panic once"
    );
    assert_eq!(
        notes_d.load(Ordering::SeqCst),
        2,
        "D too, though C panicked before it"
    );
    assert!(events_d.load(Ordering::SeqCst) > 10, "D saw the whole run");
}

// ---------------------------------------------------------------- catch by kind

async fn fails_with_an_error(log: Log) -> Result<u32, String> {
    log.push("fails");
    Err("boom".into())
}
async fn recover_any(_: flow::StepError<String>) -> Result<u32, String> {
    Ok(99)
}

#[workflow]
async fn catches_timeouts_only(log: Log) -> Result<u32, String> {
    #[catch(recover_any, on = timeouts)]
    let n = fails_with_an_error(log).await?;
    Ok(n)
}

#[workflow]
async fn catches_errors(log: Log) -> Result<u32, String> {
    #[catch(recover_any, on = errors)]
    let n = fails_with_an_error(log).await?;
    Ok(n)
}

#[tokio::test]
async fn catch_on_a_kind_catches_only_that_kind() {
    let err = catches_timeouts_only(Log::default()).await.unwrap_err();
    assert_eq!(
        err.error(),
        Some(&"boom".to_owned()),
        "an error is not a timeout"
    );
    assert_eq!(catches_errors(Log::default()).await.unwrap(), 99);
}

// ---------------------------------------------------------------- unseeded jitter is random

async fn always_busy(log: Log) -> Result<(), String> {
    log.push("busy");
    Err("busy".into())
}

#[workflow]
async fn jittery(log: Log) -> Result<(), String> {
    #[retry(max_attempts = 4, backoff = constant("1000s"), jitter = full)]
    always_busy(log).await?;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn runs_of_an_unseeded_runtime_draw_their_own_jitter() {
    let mut waited = Vec::new();
    for _ in 0..2 {
        let started = tokio::time::Instant::now();
        let _ = Runtime::new().run(&Jittery, (Log::default(),)).await;
        waited.push(started.elapsed());
    }
    // Three delays drawn uniformly in [0, 1000 s] at nanosecond resolution: two runs with
    // the same total would mean the same seed.
    assert_ne!(waited[0], waited[1]);
    assert!(
        waited
            .iter()
            .all(|w| *w <= std::time::Duration::from_secs(3000))
    );
}

// ---------------------------------------------------------------- the event stream

#[tokio::test]
async fn the_event_stream_is_a_stream_that_ends_with_its_run_also_read_without_waiting() {
    use futures_util::StreamExt as _;
    // Read as a `Stream`: ends after the run's own final event, though a child run's final
    // events come first.
    let mut handle = Runtime::new().spawn_with_events(Parent, (Log::default(),));
    let kinds: Vec<EventKind> = handle.events().map(|e| e.kind).collect().await;
    assert!(matches!(kinds.first(), Some(EventKind::RunStarted)));
    assert!(matches!(kinds.last(), Some(EventKind::RunFailed { .. })));
    assert!(
        kinds
            .iter()
            .filter(|k| matches!(k, EventKind::RunCompleted))
            .count()
            == 1,
        "the child's completion is in the stream and did not end it"
    );
    assert!(handle.events().next().await.is_none());
    assert!(handle.await.is_err());

    // Read without waiting, once the run is over: every event is there, then nothing.
    let mut handle = Runtime::new().spawn_with_events(Parent, (Log::default(),));
    let mut handle_done = None;
    for _ in 0..200 {
        tokio::task::yield_now().await;
        if handle.state().status.is_terminal() {
            handle_done = Some(());
            break;
        }
    }
    assert!(handle_done.is_some());
    let mut read = Vec::new();
    while let Some(e) = handle.events().try_next() {
        read.push(e.kind);
    }
    assert_eq!(read.len(), kinds.len());
    assert!(matches!(read.last(), Some(EventKind::RunFailed { .. })));
    assert!(handle.events().try_next().is_none());
}

// ---------------------------------------------------------------- a step in a loop

#[workflow]
async fn node_child(log: Log, pass: u32) -> Result<(), String> {
    #[compensate(delete)]
    create(log.clone(), if pass == 1 { "node a" } else { "node b" }).await?;
    Ok(())
}

/// Runs a child workflow (which completes), then fails the first attempt of pass 2.
async fn join_node(log: Log, pass: u32, attempt: Arc<Mutex<u32>>) -> Result<(), String> {
    node_child(log.clone(), pass)
        .await
        .map_err(|e| e.to_string())?;
    let n = {
        let mut a = attempt.lock().unwrap();
        *a += 1;
        *a
    };
    if pass == 2 && n == 2 {
        log.push("join fails");
        return Err("join failed".into());
    }
    Ok(())
}

#[workflow]
async fn join_nodes(log: Log) -> Result<(), String> {
    let attempt = Arc::new(Mutex::new(0));
    for pass in 1..=2 {
        #[retry(max_attempts = 2)]
        join_node(log.clone(), pass, attempt.clone()).await?;
    }
    log.push("joined");
    Ok(())
}

/// The run succeeded; pass 2's first attempt's child (node b) was undone before the retry,
/// pass 1's (node a) was kept; that one undo is the report's only compensation.
fn only_pass_2s_child_was_abandoned(report: &RunReport<(), String>, log: &Log) {
    assert!(report.result.is_ok(), "{:?}", report.result);
    assert_eq!(
        log.take(),
        [
            "create node a",
            "create node b",
            "join fails",
            "delete node b",
            "create node b",
            "joined"
        ]
    );
    assert_eq!(report.compensations.len(), 1, "{:?}", report.compensations);
}

/// The same step, in two passes of a loop, runs a child workflow each time; its attempt in
/// pass 2 fails after its child completed. That child is abandoned work, undone before the
/// retry; the child of pass 1, whose step succeeded, is not: the run succeeds with node a.
#[tokio::test(start_paused = true)]
async fn a_failed_attempt_in_a_loop_abandons_only_its_own_children() {
    let log = Log::default();
    let report: RunReport<(), String> = Runtime::new().run_report(&JoinNodes, (log.clone(),)).await;
    only_pass_2s_child_was_abandoned(&report, &log);
}

#[workflow]
async fn join_items(log: Log) -> Result<(), String> {
    let attempt = Arc::new(Mutex::new(0));
    for pass in 1..=2 {
        flow::map!(
            [pass],
            |p| #[retry(max_attempts = 2)]
            join_node(log.clone(), p, attempt.clone()),
            concurrency = 1
        )
        .await?;
    }
    log.push("joined");
    Ok(())
}

/// The same, with the step as the body of a `map` in the loop: item 0 of pass 2 abandons its
/// own child only, not item 0 of pass 1's.
#[tokio::test(start_paused = true)]
async fn a_failed_map_item_in_a_loop_abandons_only_its_own_children() {
    let log = Log::default();
    let report: RunReport<(), String> = Runtime::new().run_report(&JoinItems, (log.clone(),)).await;
    only_pass_2s_child_was_abandoned(&report, &log);
}

/// Waits, so that its sibling is entered first; then runs a child workflow (which completes),
/// then fails.
async fn late_child_then_fail(log: Log) -> Result<(), String> {
    tokio::time::sleep(Duration::from_millis(10)).await;
    node_child(log.clone(), 1)
        .await
        .map_err(|e| e.to_string())?;
    log.push("branch fails");
    Err("branch failed".into())
}

async fn slow_sibling(log: Log) -> Result<(), String> {
    tokio::time::sleep(Duration::from_millis(50)).await;
    log.push("sibling done");
    Ok(())
}

#[workflow]
async fn settle_branches(log: Log) -> Result<(), String> {
    let (a, b) = flow::settle!(late_child_then_fail(log.clone()), slow_sibling(log.clone())).await;
    log.push(format!("settled: {} {}", a.is_ok(), b.is_ok()));
    Ok(())
}

/// A branch of a `settle!` runs a child workflow after its sibling was entered (so the
/// sibling is the run's current node when the child starts), then fails: the child is that
/// branch's abandoned work, undone although the run succeeds.
#[tokio::test(start_paused = true)]
async fn a_failed_branchs_child_is_undone_even_when_a_sibling_was_entered_after_it() {
    let log = Log::default();
    let report: RunReport<(), String> = Runtime::new()
        .run_report(&SettleBranches, (log.clone(),))
        .await;
    assert!(report.result.is_ok(), "{:?}", report.result);
    let log = log.take();
    assert!(
        log.contains(&"delete node a".to_owned()),
        "the failed branch's child is undone: {log:?}"
    );
    assert_eq!(report.compensations.len(), 1, "{:?}", report.compensations);
}
