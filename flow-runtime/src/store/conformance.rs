//! The behaviour every [`Store`] must have, written once as async functions taking the store
//! (feature `store-conformance`). A backend's tests call [`run_all`], or each function on its
//! own:
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
//! async fn conformance() {
//!     let store: Arc<dyn Store> = Arc::new(MyStore::open(..)?);
//!     flow_runtime::store::conformance::run_all(store).await;
//! }
//! ```
//!
//! The functions panic (with `assert!`) when the store misbehaves. They can share one store:
//! each makes its own runs, under a workflow name of its own, and never assumes the store is
//! empty. The races spawn tokio tasks: run them on a multi-threaded runtime for a real race.

use std::collections::BTreeMap;
use std::sync::Arc;

use std::time::Duration;

use super::{
    AttemptRecord, Claim, CompensationOp, CompensationStatus, Enqueue, NewHistory, NewRun, Queue,
    QueueOptions, Rate, RetryState, RunFilter, RunStatus, StepCommit, StepKey, StepOutcome,
    StepProgress, Store, StoreError, new_run_id,
};

/// Runs every check of this module on `store`, one after the other.
pub async fn run_all(store: Arc<dyn Store>) {
    create_is_idempotent(store.clone()).await;
    create_races_make_one_run(store.clone()).await;
    create_running_starts_the_run(store.clone()).await;
    statuses_move_until_finished(store.clone()).await;
    commit_step_is_idempotent(store.clone()).await;
    steps_are_keyed_by_occurrence_and_item(store.clone()).await;
    progress_keeps_attempts_and_retry_state(store.clone()).await;
    compensation_stack_push_drop_mark(store.clone()).await;
    signals_are_fifo_and_taken_once(store.clone()).await;
    a_signal_taken_into_a_step_is_recorded_with_it(store.clone()).await;
    unfinished_runs_are_the_ones_to_resume(store.clone()).await;
    list_runs_filters_and_pages(store.clone()).await;
    graphs_are_saved_once(store.clone()).await;
    reset_steps_restarts_a_run(store.clone()).await;
    history_is_kept_in_order(store.clone()).await;
    list_runs_newest_first(store.clone()).await;
    missing_records_are_reported(store).await;
}

/// Runs every check of the [`Queue`] part on `store` (call [`run_all`] for the rest).
pub async fn run_queue_all(store: Arc<dyn Queue>) {
    enqueued_runs_are_claimed_once_by_priority(store.clone()).await;
    claims_race_without_sharing_a_run(store.clone()).await;
    expired_leases_are_taken_over_and_fenced(store.clone()).await;
    renew_and_release(store.clone()).await;
    queue_concurrency_and_rate_limits(store.clone()).await;
    dedup_keys_hold_while_in_flight(store.clone()).await;
    not_before_delays_a_claim(store.clone()).await;
    waiting_for_work_wakes_on_enqueue(store).await;
}

/// A workflow name no other check (or earlier call) uses.
fn unique_workflow(what: &str) -> String {
    format!("{what}-{}", new_run_id())
}

fn new_run(id: &str, workflow: &str, input: &[u8]) -> NewRun {
    NewRun {
        id: id.to_owned(),
        workflow: workflow.to_owned(),
        fingerprint: 0xdead_beef_cafe_f00d,
        node_fingerprints: BTreeMap::from([
            ("launch_nodes".to_owned(), 1),
            ("wait_healthy".to_owned(), u64::MAX),
        ]),
        input: input.to_vec(),
    }
}

fn completed(key: StepKey, output: &[u8]) -> StepCommit {
    StepCommit {
        key,
        outcome: StepOutcome::Completed(output.to_vec()),
        attempts: vec![AttemptRecord {
            number: 1,
            started_ms: 1,
            ended_ms: Some(2),
            failure: None,
        }],
        compensations: Vec::new(),
    }
}

/// Creating a run twice with one id returns the first run, unchanged, and `created` says
/// which call made it. Every field round-trips (u64 fingerprints at the extremes included).
pub async fn create_is_idempotent(store: Arc<dyn Store>) {
    let workflow = unique_workflow("create");
    let id = new_run_id();
    let first = store
        .create_run(new_run(&id, &workflow, b"{\"n\":3}"))
        .await
        .unwrap();
    assert!(first.created);
    let run = &first.run;
    assert_eq!(run.id, id);
    assert_eq!(run.workflow, workflow);
    assert_eq!(run.fingerprint, 0xdead_beef_cafe_f00d);
    assert_eq!(run.node_fingerprints["wait_healthy"], u64::MAX);
    assert_eq!(run.node_fingerprints["launch_nodes"], 1);
    assert_eq!(run.input, b"{\"n\":3}");
    assert_eq!(run.status, RunStatus::Pending);
    assert_eq!((run.output.clone(), run.error.clone()), (None, None));
    assert!(run.created_ms > 0 && run.updated_ms >= run.created_ms);

    // A second create with another input: the first run stays.
    let again = store
        .create_run(new_run(&id, &workflow, b"other"))
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.run, first.run);
    assert_eq!(store.get_run(&id).await.unwrap(), Some(first.run));
}

/// `create_running` creates a run already `Running` (what the runtime does for a run it starts
/// at once), returns a run that exists as it is (never moving it), and its runs are among those
/// to resume.
pub async fn create_running_starts_the_run(store: Arc<dyn Store>) {
    let workflow = unique_workflow("running");
    let id = new_run_id();
    let first = store
        .create_running(new_run(&id, &workflow, b"7"))
        .await
        .unwrap();
    assert!(first.created);
    assert_eq!(first.run.status, RunStatus::Running);
    assert_eq!(first.run.input, b"7");
    assert_eq!(first.run.node_fingerprints["wait_healthy"], u64::MAX);
    assert_eq!(store.get_run(&id).await.unwrap(), Some(first.run.clone()));
    assert!(
        store
            .unfinished_runs()
            .await
            .unwrap()
            .iter()
            .any(|r| r.id == id)
    );

    let again = store
        .create_running(new_run(&id, &workflow, b"8"))
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.run, first.run);

    // A run created `Pending` (enqueued, or by another process's `create_run`) stays so.
    let pending = new_run_id();
    let created = store
        .create_run(new_run(&pending, &workflow, b""))
        .await
        .unwrap();
    let found = store
        .create_running(new_run(&pending, &workflow, b""))
        .await
        .unwrap();
    assert!(!found.created);
    assert_eq!(found.run, created.run);
    assert_eq!(found.run.status, RunStatus::Pending);

    // A finished run is returned finished.
    store
        .set_status(&id, RunStatus::Completed, Some(b"9".to_vec()))
        .await
        .unwrap();
    let done = store
        .create_running(new_run(&id, &workflow, b""))
        .await
        .unwrap();
    assert!(!done.created);
    assert_eq!(done.run.status, RunStatus::Completed);
    assert_eq!(done.run.output.as_deref(), Some(&b"9"[..]));
}

/// Sixteen tasks racing to create one id make exactly one run, and all see the same one.
pub async fn create_races_make_one_run(store: Arc<dyn Store>) {
    let workflow = unique_workflow("race");
    let id = new_run_id();
    let tasks: Vec<_> = (0..16u8)
        .map(|i| {
            let (store, id, workflow) = (store.clone(), id.clone(), workflow.clone());
            tokio::spawn(async move { store.create_run(new_run(&id, &workflow, &[i])).await })
        })
        .collect();
    let mut created = 0;
    let mut inputs = Vec::new();
    for task in tasks {
        let c = task.await.expect("task").expect("create_run");
        created += usize::from(c.created);
        inputs.push(c.run.input);
    }
    assert_eq!(created, 1, "exactly one of 16 racing creates makes the run");
    assert!(inputs.windows(2).all(|w| w[0] == w[1]), "{inputs:?}");
    let page = store
        .list_runs(RunFilter {
            workflow: Some(workflow),
            ..RunFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(page.runs.len(), 1);
}

/// Statuses move freely until the run finishes; the result is stored with the final status;
/// a finished run never changes again; a result with an unfinished status is refused.
pub async fn statuses_move_until_finished(store: Arc<dyn Store>) {
    let workflow = unique_workflow("status");
    let id = new_run_id();
    let created = store
        .create_run(new_run(&id, &workflow, b""))
        .await
        .unwrap();
    let running = store
        .set_status(&id, RunStatus::Running, None)
        .await
        .unwrap();
    assert_eq!(running.status, RunStatus::Running);
    assert!(running.updated_ms >= created.run.updated_ms);
    assert!(matches!(
        store
            .set_status(&id, RunStatus::Running, Some(b"x".to_vec()))
            .await,
        Err(StoreError::Invalid { .. })
    ));
    store
        .set_status(&id, RunStatus::Compensating, None)
        .await
        .unwrap();
    let failed = store
        .set_status(&id, RunStatus::Failed, Some(b"boom".to_vec()))
        .await
        .unwrap();
    assert_eq!(failed.status, RunStatus::Failed);
    assert_eq!(failed.error.as_deref(), Some(&b"boom"[..]));
    assert_eq!(failed.output, None);
    for status in RunStatus::ALL {
        let r = store.set_status(&id, status, None).await;
        assert!(
            matches!(r, Err(StoreError::Conflict { .. })),
            "{status}: {r:?}"
        );
    }
    assert_eq!(store.get_run(&id).await.unwrap(), Some(failed));

    let id = new_run_id();
    store
        .create_run(new_run(&id, &workflow, b""))
        .await
        .unwrap();
    let done = store
        .set_status(&id, RunStatus::Completed, Some(b"42".to_vec()))
        .await
        .unwrap();
    assert_eq!(
        (done.output.as_deref(), done.error.as_deref()),
        (Some(&b"42"[..]), None)
    );
    let id = new_run_id();
    store
        .create_run(new_run(&id, &workflow, b""))
        .await
        .unwrap();
    let cancelled = store
        .set_status(&id, RunStatus::Cancelled, None)
        .await
        .unwrap();
    assert_eq!(cancelled.status, RunStatus::Cancelled);
}

/// Committing one step identity twice keeps the first commit, reports it, and does not apply
/// the second commit's compensation changes.
pub async fn commit_step_is_idempotent(store: Arc<dyn Store>) {
    let id = new_run_id();
    store
        .create_run(new_run(&id, &unique_workflow("commit"), b""))
        .await
        .unwrap();
    let key = StepKey::new(&id, "launch_nodes");
    let mut commit = completed(key.clone(), b"[1,2,3]");
    commit.compensations.push(CompensationOp::Push {
        node: "launch_nodes".into(),
        occurrence: 0,
        item: None,
        undo: b"[1,2,3]".to_vec(),
    });
    let first = store.commit_step(commit.clone()).await.unwrap();
    assert!(first.first);
    assert_eq!(first.pushed.len(), 1);
    assert_eq!(
        first.step.outcome,
        Some(StepOutcome::Completed(b"[1,2,3]".to_vec()))
    );
    assert_eq!(first.step.attempts, commit.attempts);

    let mut second = completed(key.clone(), b"other");
    second.outcome = StepOutcome::Failed("late".into());
    second.compensations = commit.compensations.clone();
    let again = store.commit_step(second).await.unwrap();
    assert!(!again.first);
    assert!(again.pushed.is_empty());
    assert_eq!(again.step, first.step);
    assert_eq!(store.get_step(&key).await.unwrap(), Some(first.step));
    assert_eq!(store.compensations_of(&id).await.unwrap().len(), 1);

    // Progress on a committed step is a conflict.
    let r = store
        .save_progress(StepProgress {
            key,
            attempt: None,
            retry: RetryState::default(),
        })
        .await;
    assert!(matches!(r, Err(StoreError::Conflict { .. })), "{r:?}");

    // Several attempts in one commit, two with one number: the last of a number replaces the
    // earlier, and the record returned is the one stored, in the order of the numbers.
    let key = StepKey::new(&id, "ping_nodes");
    let mut many = completed(key.clone(), b"1");
    let attempt = |number, started_ms, failure: Option<&str>| AttemptRecord {
        number,
        started_ms,
        ended_ms: Some(started_ms + 1),
        failure: failure.map(str::to_owned),
    };
    many.attempts = vec![
        attempt(2, 20, None),
        attempt(1, 10, Some("refused")),
        attempt(1, 11, Some("timed out")),
    ];
    let c = store.commit_step(many).await.unwrap();
    assert_eq!(
        c.step.attempts,
        vec![attempt(1, 11, Some("timed out")), attempt(2, 20, None)]
    );
    assert_eq!(store.get_step(&key).await.unwrap(), Some(c.step));

    // A failed step is committed the same way.
    let key = StepKey::new(&id, "wait_healthy");
    let mut failed = completed(key.clone(), b"");
    failed.outcome = StepOutcome::Failed("retries exhausted".into());
    let c = store.commit_step(failed).await.unwrap();
    assert_eq!(
        c.step.outcome,
        Some(StepOutcome::Failed("retries exhausted".into()))
    );
}

/// A step's identity is (run, node, occurrence, item): the same node in another occurrence or
/// another map item is another step; map items commit in any order.
pub async fn steps_are_keyed_by_occurrence_and_item(store: Arc<dyn Store>) {
    let id = new_run_id();
    store
        .create_run(new_run(&id, &unique_workflow("identity"), b""))
        .await
        .unwrap();
    let probe = StepKey::new(&id, "probe");
    // Items 1 then 0, concurrently, then the same node outside the map, then a second
    // occurrence (a loop's next iteration).
    let (a, b) = futures_util::future::join(
        store.commit_step(completed(probe.clone().item(1), b"one")),
        store.commit_step(completed(probe.clone().item(0), b"zero")),
    )
    .await;
    assert!(a.unwrap().first && b.unwrap().first);
    assert!(
        store
            .commit_step(completed(probe.clone(), b"plain"))
            .await
            .unwrap()
            .first
    );
    assert!(
        store
            .commit_step(completed(probe.clone().occurrence(1).item(0), b"again"))
            .await
            .unwrap()
            .first
    );
    let steps = store.steps_of(&id).await.unwrap();
    let seen: Vec<(u32, Option<u32>, Option<StepOutcome>)> = steps
        .iter()
        .map(|s| (s.key.occurrence, s.key.item, s.outcome.clone()))
        .collect();
    let out = |b: &[u8]| Some(StepOutcome::Completed(b.to_vec()));
    assert_eq!(
        seen,
        vec![
            (0, None, out(b"plain")),
            (0, Some(0), out(b"zero")),
            (0, Some(1), out(b"one")),
            (1, Some(0), out(b"again")),
        ]
    );
    assert!(
        steps
            .iter()
            .all(|s| s.key.run == id && s.key.node == "probe")
    );
    assert_eq!(
        store
            .get_step(&probe.clone().occurrence(2))
            .await
            .unwrap()
            .map(|s| s.key),
        None
    );
}

/// A step in progress keeps its attempts and retry state (a run killed during a backoff
/// resumes with its counters and its wake-up time); its commit keeps them.
pub async fn progress_keeps_attempts_and_retry_state(store: Arc<dyn Store>) {
    let id = new_run_id();
    store
        .create_run(new_run(&id, &unique_workflow("progress"), b""))
        .await
        .unwrap();
    let key = StepKey::new(&id, "wait_healthy").occurrence(2);
    let attempt = |n: u32, failure: Option<&str>| AttemptRecord {
        number: n,
        started_ms: 1000 * u64::from(n),
        ended_ms: failure.map(|_| 1000 * u64::from(n) + 10),
        failure: failure.map(str::to_owned),
    };
    // Attempt 1 starts, then fails; a retry is due at 5000.
    for (a, wake) in [
        (attempt(1, None), None),
        (attempt(1, Some("refused")), Some(5000)),
    ] {
        store
            .save_progress(StepProgress {
                key: key.clone(),
                attempt: Some(a),
                retry: RetryState {
                    counters: vec![1, 0],
                    wake_at_ms: wake,
                },
            })
            .await
            .unwrap();
    }
    let step = store.get_step(&key).await.unwrap().expect("in progress");
    assert_eq!(step.outcome, None);
    assert_eq!(step.attempts, vec![attempt(1, Some("refused"))]);
    assert_eq!(
        step.retry,
        RetryState {
            counters: vec![1, 0],
            wake_at_ms: Some(5000)
        }
    );
    // A durable sleep: only the wake-up time.
    let sleep = StepKey::new(&id, "sleep");
    store
        .save_progress(StepProgress {
            key: sleep.clone(),
            attempt: None,
            retry: RetryState {
                counters: Vec::new(),
                wake_at_ms: Some(u64::MAX >> 1),
            },
        })
        .await
        .unwrap();
    let s = store.get_step(&sleep).await.unwrap().unwrap();
    assert_eq!(s.retry.wake_at_ms, Some(u64::MAX >> 1));
    assert!(s.attempts.is_empty() && s.retry.counters.is_empty());

    // The commit adds attempt 2 and keeps attempt 1.
    let mut commit = completed(key.clone(), b"ok");
    commit.attempts = vec![attempt(2, None)];
    let c = store.commit_step(commit).await.unwrap();
    assert_eq!(
        c.step.attempts.iter().map(|a| a.number).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(c.step.retry.counters, vec![1, 0]);
}

/// The compensation stack: entries get increasing `seq`s, pushed with the step commit that
/// causes them; dropped and marked entries change in place; an unknown entry is reported.
pub async fn compensation_stack_push_drop_mark(store: Arc<dyn Store>) {
    let id = new_run_id();
    store
        .create_run(new_run(&id, &unique_workflow("saga"), b""))
        .await
        .unwrap();
    let push = |node: &str, item: Option<u32>, undo: &[u8]| CompensationOp::Push {
        node: node.into(),
        occurrence: 0,
        item,
        undo: undo.to_vec(),
    };
    let mut launch = completed(StepKey::new(&id, "launch"), b"nodes");
    launch.compensations = vec![push("launch", None, b"teardown")];
    let a = store.commit_step(launch).await.unwrap().pushed;
    // A child's entries, tagged with the step `deploy`, then `deploy`'s own undo takes over.
    let children = store
        .update_compensations(
            &id,
            vec![
                push("deploy", Some(0), b"child-0"),
                push("deploy", Some(1), b"child-1"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(children.len(), 2);
    assert!(a[0] < children[0] && children[0] < children[1]);
    let mut deploy = completed(StepKey::new(&id, "deploy"), b"");
    deploy.compensations = vec![
        CompensationOp::Drop { seq: children[0] },
        CompensationOp::Drop { seq: children[1] },
        push("deploy", None, b"rollback"),
    ];
    let d = store.commit_step(deploy).await.unwrap().pushed;
    assert!(d[0] > children[1], "seqs are never reused");
    let stack = store.compensations_of(&id).await.unwrap();
    let undos: Vec<&[u8]> = stack.iter().map(|c| &c.undo[..]).collect();
    assert_eq!(undos, [&b"teardown"[..], b"rollback"]);
    assert!(
        stack
            .iter()
            .all(|c| c.status == CompensationStatus::Pending)
    );
    assert_eq!(stack[1].node, "deploy");
    assert_eq!(stack[0].run, id);

    // Compensating: the last first.
    store
        .update_compensations(
            &id,
            vec![
                CompensationOp::Mark {
                    seq: d[0],
                    status: CompensationStatus::Done,
                },
                CompensationOp::Mark {
                    seq: a[0],
                    status: CompensationStatus::TimedOut,
                },
            ],
        )
        .await
        .unwrap();
    let statuses: Vec<CompensationStatus> = store
        .compensations_of(&id)
        .await
        .unwrap()
        .iter()
        .map(|c| c.status)
        .collect();
    assert_eq!(
        statuses,
        [CompensationStatus::TimedOut, CompensationStatus::Done]
    );

    // An unknown entry fails the whole batch: nothing of it is applied.
    let r = store
        .update_compensations(
            &id,
            vec![
                CompensationOp::Mark {
                    seq: a[0],
                    status: CompensationStatus::Failed,
                },
                CompensationOp::Drop { seq: 9999 },
            ],
        )
        .await;
    assert!(matches!(r, Err(StoreError::NotFound { .. })), "{r:?}");
    assert_eq!(
        store.compensations_of(&id).await.unwrap()[0].status,
        CompensationStatus::TimedOut
    );
}

/// `take_signal_into_step` takes the oldest signal and commits the step with its payload,
/// together; nothing when there is no signal or the step is committed already.
pub async fn a_signal_taken_into_a_step_is_recorded_with_it(store: Arc<dyn Store>) {
    let id = new_run_id();
    store
        .create_run(new_run(&id, &unique_workflow("signal-step"), b""))
        .await
        .unwrap();
    let key = StepKey::new(id.as_str(), "approve");
    assert_eq!(
        store
            .take_signal_into_step(&id, "approve", key.clone())
            .await
            .unwrap(),
        None
    );
    assert!(
        store.get_step(&key).await.unwrap().is_none(),
        "no signal: no step"
    );
    let s1 = store
        .send_signal(&id, "approve", b"\"yes\"".to_vec())
        .await
        .unwrap();
    store
        .send_signal(&id, "approve", b"\"again\"".to_vec())
        .await
        .unwrap();
    let taken = store
        .take_signal_into_step(&id, "approve", key.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((taken.seq, &taken.payload[..]), (s1, &b"\"yes\""[..]));
    let step = store.get_step(&key).await.unwrap().unwrap();
    assert_eq!(
        step.outcome,
        Some(StepOutcome::Completed(b"\"yes\"".to_vec()))
    );
    // The step is committed: nothing more is taken into it.
    assert_eq!(
        store
            .take_signal_into_step(&id, "approve", key.clone())
            .await
            .unwrap(),
        None
    );
    let left = store.take_signal(&id, "approve").await.unwrap().unwrap();
    assert_eq!(&left.payload[..], b"\"again\"");
    assert!(matches!(
        store
            .take_signal_into_step("no-such-run", "approve", StepKey::new("no-such-run", "a"))
            .await,
        Err(StoreError::NotFound { .. })
    ));
}

/// Signals: first in, first out per name, each taken exactly once, also by racing takers.
pub async fn signals_are_fifo_and_taken_once(store: Arc<dyn Store>) {
    let id = new_run_id();
    store
        .create_run(new_run(&id, &unique_workflow("signal"), b""))
        .await
        .unwrap();
    assert_eq!(store.take_signal(&id, "approve").await.unwrap(), None);
    let s1 = store
        .send_signal(&id, "approve", b"1".to_vec())
        .await
        .unwrap();
    let other = store
        .send_signal(&id, "other", b"x".to_vec())
        .await
        .unwrap();
    let s2 = store
        .send_signal(&id, "approve", b"2".to_vec())
        .await
        .unwrap();
    assert!(s1 < other && other < s2);
    let t1 = store.take_signal(&id, "approve").await.unwrap().unwrap();
    assert_eq!(
        (t1.seq, &t1.payload[..], &t1.name[..]),
        (s1, &b"1"[..], "approve")
    );
    let t2 = store.take_signal(&id, "approve").await.unwrap().unwrap();
    assert_eq!((t2.seq, &t2.payload[..]), (s2, &b"2"[..]));
    assert_eq!(store.take_signal(&id, "approve").await.unwrap(), None);
    assert_eq!(
        store
            .take_signal(&id, "other")
            .await
            .unwrap()
            .map(|s| s.payload),
        Some(b"x".to_vec())
    );

    // Eight signals, sixteen racing takers: each signal taken once.
    for i in 0..8u8 {
        store.send_signal(&id, "race", vec![i]).await.unwrap();
    }
    let takers: Vec<_> = (0..16)
        .map(|_| {
            let (store, id) = (store.clone(), id.clone());
            tokio::spawn(async move { store.take_signal(&id, "race").await })
        })
        .collect();
    let mut taken = Vec::new();
    for t in takers {
        if let Some(s) = t.await.unwrap().unwrap() {
            taken.push(s.payload[0]);
        }
    }
    taken.sort_unstable();
    assert_eq!(taken, (0..8).collect::<Vec<u8>>());

    let r = store
        .send_signal("no-such-run", "approve", Vec::new())
        .await;
    assert!(matches!(r, Err(StoreError::NotFound { .. })), "{r:?}");
}

/// `unfinished_runs` lists pending, running and compensating runs, and no finished one.
pub async fn unfinished_runs_are_the_ones_to_resume(store: Arc<dyn Store>) {
    let workflow = unique_workflow("unfinished");
    let mut ids = BTreeMap::new();
    for status in RunStatus::ALL {
        let id = new_run_id();
        store
            .create_run(new_run(&id, &workflow, b""))
            .await
            .unwrap();
        if status != RunStatus::Pending {
            store.set_status(&id, status, None).await.unwrap();
        }
        ids.insert(id, status);
    }
    let unfinished: Vec<(String, RunStatus)> = store
        .unfinished_runs()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.workflow == workflow)
        .map(|r| (r.id, r.status))
        .collect();
    // Ids made one after the other sort in creation order (see `new_run_id`).
    let expected: Vec<(String, RunStatus)> = ids
        .into_iter()
        .filter(|(_, status)| !status.is_finished())
        .collect();
    assert_eq!(unfinished, expected, "oldest first, finished runs left out");
}

/// `list_runs` filters by workflow, status and creation time, and pages with a cursor
/// without skipping or repeating a run.
pub async fn list_runs_filters_and_pages(store: Arc<dyn Store>) {
    let workflow = unique_workflow("list");
    let mut ids = Vec::new();
    for i in 0..7 {
        let id = new_run_id();
        store
            .create_run(new_run(&id, &workflow, b""))
            .await
            .unwrap();
        if i % 3 == 0 {
            store
                .set_status(&id, RunStatus::Completed, Some(Vec::new()))
                .await
                .unwrap();
        }
        ids.push(id);
    }
    let filter = RunFilter {
        workflow: Some(workflow.clone()),
        limit: 3,
        ..RunFilter::default()
    };
    let mut paged = Vec::new();
    let mut pages = 0;
    let mut after = None;
    loop {
        let page = store
            .list_runs(RunFilter {
                after: after.clone(),
                ..filter.clone()
            })
            .await
            .unwrap();
        assert!(page.runs.len() <= 3);
        pages += 1;
        paged.extend(page.runs.into_iter().map(|r| r.id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    // Ids made one after the other sort in creation order (see `new_run_id`).
    ids.sort();
    assert_eq!(paged, ids, "every run once, oldest first");
    assert!((3..=4).contains(&pages));

    let completed = store
        .list_runs(RunFilter {
            status: Some(RunStatus::Completed),
            ..filter.clone()
        })
        .await
        .unwrap();
    assert_eq!(completed.runs.len(), 3);
    assert!(
        completed
            .runs
            .iter()
            .all(|r| r.status == RunStatus::Completed)
    );

    let all = store
        .list_runs(RunFilter {
            limit: 100,
            ..filter.clone()
        })
        .await
        .unwrap();
    assert_eq!(all.next, None);
    let middle = all.runs[3].created_ms;
    let before = store
        .list_runs(RunFilter {
            created_before: Some(middle),
            limit: 100,
            ..filter.clone()
        })
        .await
        .unwrap();
    let after = store
        .list_runs(RunFilter {
            created_after: Some(middle),
            limit: 100,
            ..filter.clone()
        })
        .await
        .unwrap();
    assert!(before.runs.iter().all(|r| r.created_ms < middle));
    assert!(after.runs.iter().all(|r| r.created_ms >= middle));
    assert_eq!(before.runs.len() + after.runs.len(), 7);
    let none = store
        .list_runs(RunFilter {
            workflow: Some(unique_workflow("nothing")),
            ..RunFilter::default()
        })
        .await
        .unwrap();
    assert_eq!((none.runs.len(), none.next), (0, None));
}

/// Changes to a run that does not exist are `NotFound`; reads of it are empty.
pub async fn missing_records_are_reported(store: Arc<dyn Store>) {
    let ghost = format!("ghost-{}", new_run_id());
    assert_eq!(store.get_run(&ghost).await.unwrap(), None);
    assert!(store.steps_of(&ghost).await.unwrap().is_empty());
    assert!(store.compensations_of(&ghost).await.unwrap().is_empty());
    let r = store.set_status(&ghost, RunStatus::Running, None).await;
    assert!(matches!(r, Err(StoreError::NotFound { .. })), "{r:?}");
    let r = store
        .commit_step(completed(StepKey::new(&ghost, "x"), b""))
        .await;
    assert!(matches!(r, Err(StoreError::NotFound { .. })), "{r:?}");
    let r = store
        .save_progress(StepProgress {
            key: StepKey::new(&ghost, "x"),
            attempt: None,
            retry: RetryState::default(),
        })
        .await;
    assert!(matches!(r, Err(StoreError::NotFound { .. })), "{r:?}");
    let r = store
        .update_compensations(
            &ghost,
            vec![CompensationOp::Push {
                node: "x".into(),
                occurrence: 0,
                item: None,
                undo: Vec::new(),
            }],
        )
        .await;
    assert!(matches!(r, Err(StoreError::NotFound { .. })), "{r:?}");
}

/// A graph is saved once per (workflow, fingerprint): saving it again keeps the first bytes;
/// another fingerprint, or another workflow, is another graph; an unknown one is `None`.
pub async fn graphs_are_saved_once(store: Arc<dyn Store>) {
    let workflow = unique_workflow("graph");
    let other = unique_workflow("graph-other");
    assert_eq!(store.get_graph(&workflow, 1).await.unwrap(), None);
    store
        .save_graph(&workflow, 1, b"{\"nodes\":1}".to_vec())
        .await
        .unwrap();
    store
        .save_graph(&workflow, 1, b"changed".to_vec())
        .await
        .unwrap();
    assert_eq!(
        store.get_graph(&workflow, 1).await.unwrap().as_deref(),
        Some(&b"{\"nodes\":1}"[..]),
        "the first save stays"
    );
    // Fingerprints at the extremes round-trip, each its own graph.
    for (fingerprint, graph) in [(u64::MAX, &b"max"[..]), (0, b"zero"), (2, b"")] {
        assert_eq!(store.get_graph(&workflow, fingerprint).await.unwrap(), None);
        store
            .save_graph(&workflow, fingerprint, graph.to_vec())
            .await
            .unwrap();
    }
    for (fingerprint, graph) in [
        (1, &b"{\"nodes\":1}"[..]),
        (u64::MAX, b"max"),
        (0, b"zero"),
        (2, b""),
    ] {
        assert_eq!(
            store
                .get_graph(&workflow, fingerprint)
                .await
                .unwrap()
                .as_deref(),
            Some(graph),
            "fingerprint {fingerprint:x}"
        );
    }
    assert_eq!(store.get_graph(&workflow, 3).await.unwrap(), None);
    assert_eq!(store.get_graph(&other, 1).await.unwrap(), None);
    store
        .save_graph(&other, 1, b"other".to_vec())
        .await
        .unwrap();
    assert_eq!(
        store.get_graph(&other, 1).await.unwrap().as_deref(),
        Some(&b"other"[..])
    );
    assert_eq!(
        store.get_graph(&workflow, 1).await.unwrap().as_deref(),
        Some(&b"{\"nodes\":1}"[..])
    );
}

/// `reset_steps` deletes the given nodes' steps (every occurrence and item, with their
/// attempts and retry state) and their undo records (`<key>~undo`), and the run's
/// compensation entries of those nodes; keeps everything else; clears the run's output and
/// error; and makes the run pending again, also a finished one. A missing run is `NotFound`.
pub async fn reset_steps_restarts_a_run(store: Arc<dyn Store>) {
    let workflow = unique_workflow("reset");
    let id = new_run_id();
    store
        .create_run(new_run(&id, &workflow, b"in"))
        .await
        .unwrap();
    let push = |node: &str, occurrence: u32, item: Option<u32>| CompensationOp::Push {
        node: node.into(),
        occurrence,
        item,
        undo: node.as_bytes().to_vec(),
    };
    let key = |node: &str| StepKey::new(&id, node);
    // `launch` (kept) with its undo entry; `deploy` (reset) twice in a loop, the second time
    // over a map of two items, each with an undo entry; `deploy`'s undo record, committed
    // while compensating; `deploy~undo~undo`, `deployer` and `deploy~undone`, which are other
    // nodes; `probe` (reset) in progress with attempts and a pending retry.
    let mut launch = completed(key("launch"), b"nodes");
    launch.compensations = vec![push("launch", 0, None)];
    store.commit_step(launch).await.unwrap();
    let mut deploy = completed(key("deploy"), b"v1");
    deploy.compensations = vec![push("deploy", 0, None)];
    store.commit_step(deploy).await.unwrap();
    for item in 0..2 {
        let mut c = completed(key("deploy").occurrence(1).item(item), b"v2");
        c.compensations = vec![push("deploy", 1, Some(item))];
        store.commit_step(c).await.unwrap();
    }
    store
        .commit_step(completed(key("deploy~undo"), b"undone"))
        .await
        .unwrap();
    for other in [
        "deploy~undo~undo",
        "deployer",
        "deploy~undone",
        "launch~undo",
    ] {
        store.commit_step(completed(key(other), b"")).await.unwrap();
    }
    store
        .save_progress(StepProgress {
            key: key("probe").occurrence(3),
            attempt: Some(AttemptRecord {
                number: 2,
                started_ms: 10,
                ended_ms: Some(20),
                failure: Some("refused".into()),
            }),
            retry: RetryState {
                counters: vec![2],
                wake_at_ms: Some(30),
            },
        })
        .await
        .unwrap();
    let stack_before = store.compensations_of(&id).await.unwrap();
    assert_eq!(stack_before.len(), 4);
    // The run failed (after compensating), with an error.
    store
        .set_status(&id, RunStatus::Failed, Some(b"boom".to_vec()))
        .await
        .unwrap();
    let before = store.get_run(&id).await.unwrap().unwrap();

    let reset = store
        .reset_steps(
            &id,
            vec!["deploy".into(), "probe".into(), "never-ran".into()],
        )
        .await
        .unwrap();
    assert_eq!(reset.status, RunStatus::Pending);
    assert_eq!(
        (reset.output.as_deref(), reset.error.as_deref()),
        (None, None)
    );
    assert!(reset.updated_ms >= before.updated_ms);
    assert_eq!(
        (&reset.id, &reset.workflow, reset.fingerprint, &reset.input),
        (
            &before.id,
            &before.workflow,
            before.fingerprint,
            &before.input
        )
    );
    assert_eq!(reset.node_fingerprints, before.node_fingerprints);
    assert_eq!(reset.created_ms, before.created_ms);
    assert_eq!(store.get_run(&id).await.unwrap(), Some(reset.clone()));
    assert!(
        store
            .unfinished_runs()
            .await
            .unwrap()
            .iter()
            .any(|r| r.id == id),
        "a reset run is resumed"
    );

    let left: Vec<String> = store
        .steps_of(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.key.node)
        .collect();
    assert_eq!(
        left,
        // Ordered by node key, byte by byte (`e` < `n` < `~`).
        [
            "deployer",
            "deploy~undone",
            "deploy~undo~undo",
            "launch",
            "launch~undo"
        ]
    );
    for gone in [
        key("deploy"),
        key("deploy").occurrence(1).item(0),
        key("deploy").occurrence(1).item(1),
        key("deploy~undo"),
        key("probe").occurrence(3),
    ] {
        assert_eq!(store.get_step(&gone).await.unwrap(), None, "{gone}");
    }
    let launch = store.get_step(&key("launch")).await.unwrap().unwrap();
    assert_eq!(
        launch.outcome,
        Some(StepOutcome::Completed(b"nodes".to_vec()))
    );
    assert_eq!(launch.attempts.len(), 1);
    let stack = store.compensations_of(&id).await.unwrap();
    assert_eq!(stack, stack_before[..1], "only `launch`'s entry is left");
    assert_eq!(stack[0].node, "launch");

    // The steps run again from scratch: a new commit is the first, with only its attempts;
    // a new push takes a seq never used.
    let mut again = completed(key("probe").occurrence(3), b"ok");
    again.compensations = vec![push("probe", 3, None)];
    let c = store.commit_step(again).await.unwrap();
    assert!(c.first);
    assert_eq!(c.step.attempts.len(), 1);
    assert_eq!(c.step.retry, RetryState::default());
    assert!(stack_before.iter().all(|e| e.seq < c.pushed[0]));
    let d = store
        .commit_step(completed(key("deploy"), b"v3"))
        .await
        .unwrap();
    assert!(d.first);

    // A completed run is reset too; an empty list of nodes only resets the run.
    let done = store
        .set_status(&id, RunStatus::Completed, Some(b"42".to_vec()))
        .await
        .unwrap();
    assert_eq!(done.output.as_deref(), Some(&b"42"[..]));
    let steps_before = store.steps_of(&id).await.unwrap();
    let reset = store.reset_steps(&id, Vec::new()).await.unwrap();
    assert_eq!(reset.status, RunStatus::Pending);
    assert_eq!((reset.output, reset.error), (None, None));
    assert_eq!(store.steps_of(&id).await.unwrap(), steps_before);
    // And a running one.
    store
        .set_status(&id, RunStatus::Running, None)
        .await
        .unwrap();
    let reset = store.reset_steps(&id, vec!["launch".into()]).await.unwrap();
    assert_eq!(reset.status, RunStatus::Pending);
    assert_eq!(store.get_step(&key("launch")).await.unwrap(), None);
    assert_eq!(store.get_step(&key("launch~undo")).await.unwrap(), None);
    assert_eq!(
        store
            .compensations_of(&id)
            .await
            .unwrap()
            .iter()
            .map(|c| c.node.as_str())
            .collect::<Vec<_>>(),
        ["probe"]
    );

    // Another run's steps are not touched.
    let neighbour = new_run_id();
    store
        .create_run(new_run(&neighbour, &workflow, b""))
        .await
        .unwrap();
    store
        .commit_step(completed(StepKey::new(&neighbour, "deploy"), b""))
        .await
        .unwrap();
    store.reset_steps(&id, vec!["deploy".into()]).await.unwrap();
    assert_eq!(store.steps_of(&neighbour).await.unwrap().len(), 1);

    let ghost = format!("ghost-{}", new_run_id());
    let r = store.reset_steps(&ghost, vec!["deploy".into()]).await;
    assert!(matches!(r, Err(StoreError::NotFound { .. })), "{r:?}");
    assert_eq!(store.get_run(&ghost).await.unwrap(), None);
}

/// A run's history keeps every entry, in order, with its actor, action and detail; `seq`s
/// are increasing and shared with the run's signals.
pub async fn history_is_kept_in_order(store: Arc<dyn Store>) {
    let workflow = unique_workflow("history");
    let id = new_run_id();
    store
        .create_run(new_run(&id, &workflow, b""))
        .await
        .unwrap();
    assert!(store.history_of(&id).await.unwrap().is_empty());
    let entry = |action: &str| NewHistory {
        actor: "web 127.0.0.1".into(),
        action: action.into(),
        detail: format!("{action} <b>detail</b>"),
    };
    let first = store.record_history(&id, entry("cancel")).await.unwrap();
    let signal = store
        .send_signal(&id, "approve", b"1".to_vec())
        .await
        .unwrap();
    let second = store.record_history(&id, entry("restart")).await.unwrap();
    assert!(
        first < signal && signal < second,
        "{first} {signal} {second}"
    );
    let history = store.history_of(&id).await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].seq, first);
    assert_eq!(history[0].run, id);
    assert_eq!(history[0].actor, "web 127.0.0.1");
    assert_eq!(history[0].action, "cancel");
    assert_eq!(history[0].detail, "cancel <b>detail</b>");
    assert!(history[0].at_ms > 0);
    assert_eq!(history[1].action, "restart");
    assert!(history[1].at_ms >= history[0].at_ms);
    let missing = store.record_history("no-such-run", entry("cancel")).await;
    assert!(
        matches!(missing, Err(StoreError::NotFound { .. })),
        "{missing:?}"
    );
    assert!(store.history_of("no-such-run").await.unwrap().is_empty());
}

/// `newest_first` lists the same runs in reverse, paged with the same cursors.
pub async fn list_runs_newest_first(store: Arc<dyn Store>) {
    let workflow = unique_workflow("newest");
    let mut ids = Vec::new();
    for _ in 0..5 {
        let id = new_run_id();
        store
            .create_run(new_run(&id, &workflow, b""))
            .await
            .unwrap();
        ids.push(id);
    }
    ids.sort();
    ids.reverse();
    let mut paged = Vec::new();
    let mut after = None;
    for _ in 0..10 {
        let page = store
            .list_runs(RunFilter {
                workflow: Some(workflow.clone()),
                limit: 2,
                after: after.clone(),
                newest_first: true,
                ..RunFilter::default()
            })
            .await
            .unwrap();
        assert!(page.runs.len() <= 2);
        paged.extend(page.runs.into_iter().map(|r| r.id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(paged, ids, "every run once, newest first");
}

fn claim(worker: &str, queue: &str, max: u32, lease: Duration) -> Claim {
    Claim {
        worker: worker.into(),
        queue: queue.into(),
        options: QueueOptions::default(),
        max,
        lease,
    }
}

async fn enqueue(store: &Arc<dyn Queue>, queue: &str, priority: i32) -> String {
    let id = new_run_id();
    let mut e = Enqueue::new(new_run(&id, queue, b"q"), queue);
    e.priority = priority;
    let created = store.enqueue(e).await.unwrap();
    assert!(created.created);
    assert_eq!(created.run.status, RunStatus::Pending);
    assert_eq!(created.run.queue.as_deref(), Some(queue));
    assert_eq!(created.run.lease, None);
    id
}

/// Enqueued runs are claimed by priority (lower first), then age; a claimed run is not
/// claimed again while its lease holds; enqueueing an id twice is idempotent; runs started
/// in place (not enqueued) are never claimed.
pub async fn enqueued_runs_are_claimed_once_by_priority(store: Arc<dyn Queue>) {
    let queue = unique_workflow("queue-order");
    let low = enqueue(&store, &queue, 5).await;
    let first = enqueue(&store, &queue, 0).await;
    let second = enqueue(&store, &queue, 0).await;
    let urgent = enqueue(&store, &queue, -1).await;
    // Same id again: the first run, not a second one.
    let again = store
        .enqueue(Enqueue::new(new_run(&first, &queue, b"other"), &queue))
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.run.input, b"q");
    // A run created in place, under the queue's name as workflow: not on any queue.
    store
        .create_run(new_run(&new_run_id(), &queue, b""))
        .await
        .unwrap();

    let lease = Duration::from_secs(60);
    let got = store.claim(claim("w1", &queue, 3, lease)).await.unwrap();
    let ids: Vec<&str> = got.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, [urgent.as_str(), first.as_str(), second.as_str()]);
    for r in &got {
        let l = r.lease.as_ref().expect("a claimed run has its lease");
        assert_eq!(l.worker, "w1");
        assert_eq!(l.epoch, 1);
        assert!(l.until_ms >= super::now_ms() + 50_000, "{l:?}");
        assert_eq!(
            store.get_run(&r.id).await.unwrap().unwrap().lease.as_ref(),
            Some(l)
        );
    }
    let rest = store.claim(claim("w2", &queue, 10, lease)).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].id, low);
    assert!(
        store
            .claim(claim("w3", &queue, 10, lease))
            .await
            .unwrap()
            .is_empty()
    );
    // Another queue sees none of them.
    let other = unique_workflow("queue-other");
    assert!(
        store
            .claim(claim("w1", &other, 10, lease))
            .await
            .unwrap()
            .is_empty()
    );
    // A finished run is not claimable, even with its lease expired.
    let fenced = store.clone().fenced(&low, 1);
    fenced
        .set_status(&low, RunStatus::Completed, Some(b"1".to_vec()))
        .await
        .unwrap();
    assert_eq!(
        store.get_run(&low).await.unwrap().unwrap().lease,
        None,
        "finishing ends the lease"
    );
}

/// Eight workers claiming at once from one queue of 40 runs take each run exactly once.
pub async fn claims_race_without_sharing_a_run(store: Arc<dyn Queue>) {
    let queue = unique_workflow("queue-race");
    let mut ids = Vec::new();
    for _ in 0..40 {
        ids.push(enqueue(&store, &queue, 0).await);
    }
    let tasks: Vec<_> = (0..8)
        .map(|w| {
            let store = store.clone();
            let queue = queue.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let got = store
                        .claim(claim(&format!("w{w}"), &queue, 3, Duration::from_secs(60)))
                        .await
                        .unwrap();
                    if got.is_empty() {
                        return mine;
                    }
                    mine.extend(got.into_iter().map(|r| r.id));
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    ids.sort();
    assert_eq!(all, ids, "every run claimed exactly once");
}

/// A lease that expires is taken over by the next claim with a higher epoch; from then on
/// every write of the old holder for that run fails with `LeaseLost` and writes nothing,
/// while the new holder's writes go through. Writes for other runs are not fenced.
pub async fn expired_leases_are_taken_over_and_fenced(store: Arc<dyn Queue>) {
    let queue = unique_workflow("queue-fence");
    let id = enqueue(&store, &queue, 0).await;
    let got = store
        .claim(claim("old", &queue, 1, Duration::from_millis(1)))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    let old = store.clone().fenced(&id, 1);
    old.set_status(&id, RunStatus::Running, None).await.unwrap();
    old.commit_step(completed(StepKey::new(&id, "launch_nodes"), b"1"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;

    let taken = store
        .claim(claim("new", &queue, 1, Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(taken.len(), 1, "an expired lease is claimable");
    let lease = taken[0].lease.clone().unwrap();
    assert_eq!((lease.worker.as_str(), lease.epoch), ("new", 2));
    assert_eq!(
        taken[0].status,
        RunStatus::Running,
        "a takeover keeps the run's status"
    );

    let lost = |r: Result<_, StoreError>| matches!(r, Err(StoreError::LeaseLost { ref run, epoch: 1 }) if *run == id);
    let key = StepKey::new(&id, "wait_healthy");
    assert!(lost(
        old.commit_step(completed(key.clone(), b"stale"))
            .await
            .map(drop)
    ));
    assert!(lost(
        old.save_progress(StepProgress {
            key: key.clone(),
            attempt: None,
            retry: RetryState::default(),
        })
        .await
    ));
    assert!(lost(
        old.set_status(&id, RunStatus::Completed, Some(b"x".to_vec()))
            .await
            .map(drop)
    ));
    assert!(lost(
        old.update_compensations(
            &id,
            vec![CompensationOp::Push {
                node: "launch_nodes".into(),
                occurrence: 0,
                item: None,
                undo: b"u".to_vec(),
            }]
        )
        .await
        .map(drop)
    ));
    store.send_signal(&id, "go", b"1".to_vec()).await.unwrap();
    assert!(lost(old.take_signal(&id, "go").await.map(drop)));
    assert!(lost(
        old.take_signal_into_step(&id, "go", key.clone())
            .await
            .map(drop)
    ));
    // Nothing of the stale writes is there.
    assert_eq!(store.get_step(&key).await.unwrap(), None);
    assert!(store.compensations_of(&id).await.unwrap().is_empty());
    assert_eq!(
        store.get_run(&id).await.unwrap().unwrap().status,
        RunStatus::Running
    );
    // Reads through the stale handle still work, and other runs are not fenced by it.
    assert_eq!(old.steps_of(&id).await.unwrap().len(), 1);
    let other = new_run_id();
    old.create_run(new_run(&other, &queue, b"")).await.unwrap();
    old.commit_step(completed(StepKey::new(&other, "launch_nodes"), b"1"))
        .await
        .unwrap();

    // The new holder writes.
    let new = store.clone().fenced(&id, 2);
    assert!(
        new.take_signal_into_step(&id, "go", key.clone())
            .await
            .unwrap()
            .is_some()
    );
    new.set_status(&id, RunStatus::Completed, Some(b"done".to_vec()))
        .await
        .unwrap();
    let run = store.get_run(&id).await.unwrap().unwrap();
    assert_eq!(
        (run.status, run.output),
        (RunStatus::Completed, Some(b"done".to_vec()))
    );
}

/// Renewing extends a held lease and reports a lost one; releasing makes the run claimable
/// at once, and a stale release changes nothing.
pub async fn renew_and_release(store: Arc<dyn Queue>) {
    let queue = unique_workflow("queue-renew");
    let a = enqueue(&store, &queue, 0).await;
    let b = enqueue(&store, &queue, 1).await;
    let got = store
        .claim(claim("w1", &queue, 2, Duration::from_millis(300)))
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    let held = store
        .renew(
            "w1",
            vec![(a.clone(), 1), (b.clone(), 1), (b.clone(), 7)],
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(held, [true, true, false]);
    // Another worker cannot renew what it does not hold.
    assert_eq!(
        store
            .renew("w2", vec![(a.clone(), 1)], Duration::from_secs(60))
            .await
            .unwrap(),
        [false]
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Renewed past the first expiry: not claimable.
    assert!(
        store
            .claim(claim("w2", &queue, 2, Duration::from_secs(60)))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        !store.release(&a, 9, None).await.unwrap(),
        "a stale release"
    );
    assert!(store.release(&a, 1, None).await.unwrap());
    assert_eq!(store.get_run(&a).await.unwrap().unwrap().lease, None);
    let again = store
        .claim(claim("w2", &queue, 2, Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, a);
    assert_eq!(again[0].lease.as_ref().unwrap().epoch, 2);
    // The first worker's lease on `a` is gone.
    assert_eq!(
        store
            .renew("w1", vec![(a.clone(), 1)], Duration::from_secs(60))
            .await
            .unwrap(),
        [false]
    );
    // Released with a due time (parked for a backoff): claimable from then on, not before.
    let due = super::now_ms() + 400;
    assert!(store.release(&b, 1, Some(due)).await.unwrap());
    assert!(
        store
            .claim(claim("w3", &queue, 2, Duration::from_secs(60)))
            .await
            .unwrap()
            .is_empty(),
        "parked until its due time"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let woken = store
        .claim(claim("w3", &queue, 2, Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(woken.len(), 1);
    assert_eq!(woken[0].id, b);
}

/// A queue's concurrency limit counts the runs under unexpired leases on every worker; its
/// rate limit counts first starts in the window, not takeovers.
pub async fn queue_concurrency_and_rate_limits(store: Arc<dyn Queue>) {
    let queue = unique_workflow("queue-limits");
    for _ in 0..6 {
        enqueue(&store, &queue, 0).await;
    }
    let limited = |worker: &str, max: u32| Claim {
        options: QueueOptions {
            concurrency: Some(3),
            rate: None,
        },
        ..claim(worker, &queue, max, Duration::from_secs(60))
    };
    assert_eq!(store.claim(limited("w1", 2)).await.unwrap().len(), 2);
    let more = store.claim(limited("w2", 10)).await.unwrap();
    assert_eq!(more.len(), 1, "three in flight on all workers");
    assert!(store.claim(limited("w3", 10)).await.unwrap().is_empty());
    // One finishes: one slot.
    let done = &more[0];
    store
        .clone()
        .fenced(&done.id, done.lease.as_ref().unwrap().epoch)
        .set_status(&done.id, RunStatus::Completed, Some(Vec::new()))
        .await
        .unwrap();
    assert_eq!(store.claim(limited("w3", 10)).await.unwrap().len(), 1);

    let rated = unique_workflow("queue-rate");
    for _ in 0..5 {
        enqueue(&store, &rated, 0).await;
    }
    let rate = |worker: &str, lease: Duration| Claim {
        options: QueueOptions {
            concurrency: None,
            rate: Some(Rate {
                starts: 2,
                per: Duration::from_secs(3600),
            }),
        },
        ..claim(worker, &rated, 10, lease)
    };
    let started = store
        .claim(rate("w1", Duration::from_millis(1)))
        .await
        .unwrap();
    assert_eq!(started.len(), 2, "two starts an hour");
    tokio::time::sleep(Duration::from_millis(20)).await;
    // The two leases expired: taking them over is not a new start, the other three wait.
    let again = store
        .claim(rate("w2", Duration::from_secs(60)))
        .await
        .unwrap();
    let mut a: Vec<_> = again.iter().map(|r| r.id.clone()).collect();
    let mut b: Vec<_> = started.iter().map(|r| r.id.clone()).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
}

/// A deduplication key is held by its run until the run finishes.
pub async fn dedup_keys_hold_while_in_flight(store: Arc<dyn Queue>) {
    let queue = unique_workflow("queue-dedup");
    let key = unique_workflow("key");
    let with_key = |id: &str| {
        let mut e = Enqueue::new(new_run(id, &queue, b""), &queue);
        e.dedup_key = Some(key.clone());
        e
    };
    let first = new_run_id();
    assert!(store.enqueue(with_key(&first)).await.unwrap().created);
    // The same id again is the same run, not a duplicate.
    assert!(!store.enqueue(with_key(&first)).await.unwrap().created);
    let second = new_run_id();
    match store.enqueue(with_key(&second)).await {
        Err(StoreError::Duplicate { key: k, run }) => {
            assert_eq!((k, run), (key.clone(), first.clone()));
        }
        other => panic!("expected Duplicate, got {other:?}"),
    }
    assert_eq!(
        store.get_run(&second).await.unwrap(),
        None,
        "nothing created"
    );
    store
        .set_status(&first, RunStatus::Cancelled, None)
        .await
        .unwrap();
    assert!(store.enqueue(with_key(&second)).await.unwrap().created);
}

/// A run enqueued with `not_before_ms` in the future is not claimed before then.
pub async fn not_before_delays_a_claim(store: Arc<dyn Queue>) {
    let queue = unique_workflow("queue-later");
    let id = new_run_id();
    let mut e = Enqueue::new(new_run(&id, &queue, b""), &queue);
    e.not_before_ms = Some(super::now_ms() + 300);
    store.enqueue(e).await.unwrap();
    assert!(
        store
            .claim(claim("w", &queue, 1, Duration::from_secs(60)))
            .await
            .unwrap()
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        store
            .claim(claim("w", &queue, 1, Duration::from_secs(60)))
            .await
            .unwrap()
            .len(),
        1
    );
}

/// A worker waiting for work wakes when a run is enqueued, well before its timeout.
pub async fn waiting_for_work_wakes_on_enqueue(store: Arc<dyn Queue>) {
    let queue = unique_workflow("queue-wake");
    let waiter = {
        let store = store.clone();
        let queue = queue.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            store.wait_for_work(&queue, Duration::from_secs(20)).await;
            started.elapsed()
        })
    };
    // Let the waiter start listening.
    tokio::time::sleep(Duration::from_millis(300)).await;
    enqueue(&store, &queue, 0).await;
    let waited = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter woke")
        .unwrap();
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    // With nothing enqueued, it waits for its timeout.
    let started = std::time::Instant::now();
    store
        .wait_for_work(&queue, Duration::from_millis(200))
        .await;
    assert!(started.elapsed() >= Duration::from_millis(150));
}
