//! The saga never loses an undo: abandoned attempts are undone before the next one, completed
//! child runs are undone when their parent fails later, and compensations outlive cancellation,
//! time limits and dropped futures; hung undos are bounded. On tokio's paused clock.

mod common;

use core::future::Future;
use core::time::Duration;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use common::{Act, Collect, E, Log, Script, after, flow, ms, steps, within};
use flow_runtime::__private::{Ctx, StepPolicy};
use flow_runtime::__private::{run_nested, try_join};
use flow_runtime::error::CompensationOutcome;
use flow_runtime::policy::{Backoff, CompensationPolicy, Retry};
use flow_runtime::{Error, EventKind, Failure, Graph, NodeId, Runtime, Workflow};

/// A workflow with its own compensation budget and drop behaviour.
struct Tuned<W> {
    inner: W,
    budget: Duration,
    on_drop: bool,
}

impl<W: Workflow> Workflow for Tuned<W> {
    type Input = W::Input;
    type Output = W::Output;
    type Error = W::Error;
    type State = W::State;

    fn graph(&self) -> &'static Graph {
        self.inner.graph()
    }

    fn timeout(&self) -> Option<Duration> {
        self.inner.timeout()
    }

    fn compensation_timeout(&self) -> Duration {
        self.budget
    }

    fn compensate_on_drop(&self) -> bool {
        self.on_drop
    }

    fn execute(
        &self,
        ctx: Ctx<Self::Error>,
        input: Self::Input,
    ) -> impl Future<Output = Result<Self::Output, Error<Self::Error>>> + Send {
        self.inner.execute(ctx, input)
    }
}

/// An undo that logs `"undo {what}"` (with the time) after `delay` ms, failing when `fail`.
fn undo(
    log: &Log,
    what: &'static str,
    delay: u64,
    fail: bool,
) -> impl FnOnce(u32) -> std::pin::Pin<Box<dyn Future<Output = Result<(), E>> + Send>> + Send + 'static
{
    let log = log.clone();
    move |v| {
        Box::pin(async move {
            if delay > 0 {
                tokio::time::sleep(ms(delay)).await;
            }
            log.push_at(&format!("undo {what}({v})"));
            if fail { Err(E::Undo(what)) } else { Ok(()) }
        })
    }
}

/// A child workflow `child`: `c1` and `c2`, each compensated (logging `undo c1(v)`), then
/// `c3` doing `last`. Its undos take `undo_ms`.
fn child(
    log: &Log,
    last: Act,
    undo_ms: u64,
) -> impl Workflow<Input = u32, Output = u32, Error = E> + 'static {
    let g = steps("child", &["c1", "c2", "c3"]);
    let log = log.clone();
    let last = Script::new([last]);
    flow(g, None, move |ctx: Ctx<E>, v: u32| {
        let log = log.clone();
        let last = last.clone();
        async move {
            let r = ctx.step(NodeId(2), async move { Ok::<u32, E>(v) }).await;
            let a = ctx.compensate(NodeId(2), r, undo(&log, "c1", undo_ms, false))?;
            let r = ctx.step(NodeId(3), async move { Ok::<u32, E>(a) }).await;
            let b = ctx.compensate(NodeId(3), r, undo(&log, "c2", undo_ms, false))?;
            ctx.step(NodeId(4), last.attempt()).await?;
            Ok(b)
        }
    })
}

async fn run_child(log: &Log, last: Act, undo_ms: u64, v: u32) -> Result<u32, E> {
    let wf = child(log, last, undo_ms);
    run_nested(&wf, v).await.map_err(|_| E::Broken)
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_attempt_is_undone_before_the_next_attempt_starts() {
    let log = Log::new();
    let g = steps("parent", &["provision"]);
    let l = log.clone();
    let parent = flow(g, None, move |ctx: Ctx<E>, ()| {
        let l = l.clone();
        async move {
            const RULES: &[Retry<E>] = &[Retry::new(2)];
            let policy = StepPolicy {
                retry: RULES,
                timeout: Some(ms(100)),
            };
            let n = AtomicU32::new(0);
            let v = ctx
                .step_with(NodeId(2), policy, || {
                    let l = l.clone();
                    let n = n.fetch_add(1, Ordering::SeqCst) + 1;
                    async move {
                        l.push_at(&format!("attempt {n}"));
                        // Attempt 1's child hangs in `c3` and is abandoned by the timeout.
                        let last = if n == 1 { Act::Hang } else { Act::Ok(0) };
                        run_child(&l, last, 0, n).await
                    }
                })
                .await?;
            Ok(v)
        }
    });
    let report = within(Runtime::new().run_report(&parent, ())).await;
    assert_eq!(report.result.unwrap(), 2);
    assert_eq!(
        log.entries(),
        [
            "attempt 1 @0",
            "undo c2(1) @100",
            "undo c1(1) @100",
            "attempt 2 @100"
        ]
    );
    // The successful run's report lists the undoing of the abandoned attempt.
    let undone: Vec<_> = report
        .compensations
        .iter()
        .map(|r| (r.workflow, r.step, r.outcome.clone()))
        .collect();
    assert_eq!(
        undone,
        [
            ("child", "c2", CompensationOutcome::Succeeded),
            ("child", "c1", CompensationOutcome::Succeeded)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_undo_of_abandoned_work_is_reported_by_a_successful_run() {
    let log = Log::new();
    let child_g = steps("child", &["reserve", "wait"]);
    let parent_g = steps("parent", &["provision"]);
    let l = log.clone();
    let parent = flow(parent_g, None, move |ctx: Ctx<E>, ()| {
        let l = l.clone();
        async move {
            const RULES: &[Retry<E>] = &[Retry::new(2)];
            let policy = StepPolicy {
                retry: RULES,
                timeout: Some(ms(100)),
            };
            let n = AtomicU32::new(0);
            ctx.step_with(NodeId(2), policy, || {
                let l = l.clone();
                let n = n.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    let wf = flow(child_g, None, move |ctx: Ctx<E>, v: u32| {
                        let l = l.clone();
                        async move {
                            let r = ctx.step(NodeId(2), async move { Ok::<u32, E>(v) }).await;
                            ctx.compensate(NodeId(2), r, undo(&l, "reserve", 0, true))?;
                            if v == 1 {
                                ctx.step(NodeId(3), core::future::pending::<()>()).await?;
                            }
                            Ok(v)
                        }
                    });
                    run_nested(&wf, n).await.map_err(|_| E::Broken)
                }
            })
            .await?;
            Ok(())
        }
    });
    let seen = Collect::default();
    let report = within(
        Runtime::new()
            .with_observer(seen.observer())
            .run_report(&parent, ()),
    )
    .await;
    assert!(report.result.is_ok());
    assert_eq!(report.compensations.len(), 1);
    let r = &report.compensations[0];
    assert_eq!((r.workflow, r.step, r.key), ("child", "reserve", "reserve"));
    assert_eq!(
        r.outcome,
        CompensationOutcome::Failed(Failure::Error("undo of reserve failed".into()))
    );
    // Events on the child's step node, in the child run.
    let events = seen.events();
    let parent_run = events[0].run;
    let comp: Vec<_> = events
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::CompensationStarted | EventKind::CompensationFailed { .. }
            )
        })
        .map(|e| (e.workflow, e.step, e.parent == Some(parent_run)))
        .collect();
    assert_eq!(
        comp,
        [("child", "reserve", true), ("child", "reserve", true)]
    );
}

/// `p1` (compensated), `child` (a child run whose `c1`, `c2` are compensated), `p3`
/// (compensated), then `p4` doing `last`. `own_undo`: the `child` step has its own undo.
fn parent_with_child(
    log: &Log,
    own_undo: bool,
    child_step_fails: bool,
    last: Act,
) -> impl Workflow<Input = (), Output = (), Error = E> + 'static {
    let g = steps("parent", &["p1", "child", "p3", "p4"]);
    let log = log.clone();
    let last = Script::new([last]);
    flow(g, None, move |ctx: Ctx<E>, ()| {
        let log = log.clone();
        let last = last.clone();
        async move {
            let r = ctx.step(NodeId(2), async { Ok::<u32, E>(1) }).await;
            ctx.compensate(NodeId(2), r, undo(&log, "p1", 0, false))?;
            let l = log.clone();
            let r = ctx
                .step(NodeId(3), async move {
                    let v = run_child(&l, Act::Ok(0), 0, 2).await?;
                    if child_step_fails {
                        return Err(E::Broken);
                    }
                    Ok(v)
                })
                .await;
            if own_undo {
                ctx.compensate(NodeId(3), r, undo(&log, "child-step", 0, false))?;
            } else {
                r?;
            }
            let r = ctx.step(NodeId(4), async { Ok::<u32, E>(3) }).await;
            ctx.compensate(NodeId(4), r, undo(&log, "p3", 0, false))?;
            ctx.step(NodeId(5), last.attempt()).await?;
            Ok(())
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_completed_child_is_undone_in_reverse_when_its_parent_fails_later() {
    let log = Log::new();
    let wf = parent_with_child(&log, false, false, Act::Err(E::Broken));
    let e = within(Runtime::new().run(&wf, ())).await.unwrap_err();
    // The child's entry runs at its position in the stack, its own undos in reverse.
    assert_eq!(
        log.entries(),
        [
            "undo p3(3) @0",
            "undo c2(2) @0",
            "undo c1(2) @0",
            "undo p1(1) @0"
        ]
    );
    let order: Vec<_> = e
        .compensations()
        .iter()
        .map(|r| (r.workflow, r.step))
        .collect();
    assert_eq!(
        order,
        [
            ("parent", "p3"),
            ("child", "c2"),
            ("child", "c1"),
            ("parent", "p1")
        ]
    );
    assert!(e.compensations().iter().all(|r| r.succeeded()));

    // A successful parent keeps them: nothing is undone.
    let log = Log::new();
    let wf = parent_with_child(&log, false, false, Act::Ok(0));
    let report = within(Runtime::new().run_report(&wf, ())).await;
    assert!(report.result.is_ok());
    assert!(log.entries().is_empty());
    assert!(report.compensations.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_step_with_its_own_undo_takes_over_its_childs_undos() {
    let log = Log::new();
    let wf = parent_with_child(&log, true, false, Act::Err(E::Broken));
    within(Runtime::new().run(&wf, ())).await.unwrap_err();
    assert_eq!(
        log.entries(),
        ["undo p3(3) @0", "undo child-step(2) @0", "undo p1(1) @0"]
    );

    // The step fails after its child completed: the child is undone as abandoned work.
    let log = Log::new();
    let wf = parent_with_child(&log, true, true, Act::Ok(0));
    let e = within(Runtime::new().run(&wf, ())).await.unwrap_err();
    assert_eq!(e.step(), Some("child"));
    assert_eq!(
        log.entries(),
        ["undo c2(2) @0", "undo c1(2) @0", "undo p1(1) @0"]
    );
}

/// `a` (compensated: the undo sends on `tx`) then `b`, which hangs.
fn hangs_after_a(
    tx: tokio::sync::mpsc::UnboundedSender<&'static str>,
) -> impl Workflow<Input = (), Output = (), Error = E> + 'static {
    let g = steps("hangs", &["a", "b"]);
    flow(g, None, move |ctx: Ctx<E>, ()| {
        let tx = tx.clone();
        async move {
            let r = ctx.step(NodeId(2), async { Ok::<u32, E>(1) }).await;
            ctx.compensate(NodeId(2), r, move |_| async move {
                let _ = tx.send("undo a");
                Ok::<(), E>(())
            })?;
            ctx.step(NodeId(3), core::future::pending::<()>()).await?;
            Ok(())
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_dropped_run_future_compensates_on_a_task_of_its_own() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let seen = Collect::default();
    let runtime = Runtime::new().with_observer(seen.observer());
    let wf = hangs_after_a(tx);
    let dropped = tokio::time::timeout(ms(50), runtime.run(&wf, ())).await;
    assert!(dropped.is_err());
    assert_eq!(within(rx.recv()).await, Some("undo a"));
    tokio::time::sleep(ms(1)).await;
    // The dropped run still ends with a final event.
    assert_eq!(
        seen.events().last().map(|e| e.kind.clone()),
        Some(EventKind::RunCancelled)
    );

    // Opting out, through the runtime or the workflow.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let wf = hangs_after_a(tx);
    let runtime = Runtime::new().compensate_on_drop(false);
    assert!(
        tokio::time::timeout(ms(50), runtime.run(&wf, ()))
            .await
            .is_err()
    );
    let (tx2, mut rx2) = tokio::sync::mpsc::unbounded_channel();
    let wf2 = Tuned {
        inner: hangs_after_a(tx2),
        budget: Duration::from_secs(1),
        on_drop: false,
    };
    assert!(
        tokio::time::timeout(ms(50), Runtime::new().run(&wf2, ()))
            .await
            .is_err()
    );
    tokio::time::sleep(ms(1000)).await;
    assert!(rx.try_recv().is_err());
    assert!(rx2.try_recv().is_err());
}

#[tokio::test(start_paused = true)]
async fn a_directly_awaited_workflow_dropped_mid_run_compensates() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let wf = hangs_after_a(tx);
    // What awaiting a `#[workflow]` function outside any run does.
    let dropped = tokio::time::timeout(ms(50), run_nested(&wf, ())).await;
    assert!(dropped.is_err());
    assert_eq!(within(rx.recv()).await, Some("undo a"));
}

/// `a` and `b` compensated (undos take 100 ms each and send on `tx`), then `c` fails.
fn slow_undos(
    log: &Log,
    tx: tokio::sync::mpsc::UnboundedSender<&'static str>,
) -> impl Workflow<Input = (), Output = (), Error = E> + 'static {
    let g = steps("slow_undos", &["a", "b", "c"]);
    let log = log.clone();
    flow(g, None, move |ctx: Ctx<E>, ()| {
        let log = log.clone();
        let tx = tx.clone();
        async move {
            for (node, what) in [(2, "a"), (3, "b")] {
                let r = ctx.step(NodeId(node), async { Ok::<u32, E>(node) }).await;
                let (log, tx) = (log.clone(), tx.clone());
                ctx.compensate(NodeId(node), r, move |_| async move {
                    tokio::time::sleep(ms(100)).await;
                    log.push_at(&format!("undo {what}"));
                    let _ = tx.send(what);
                    Ok::<(), E>(())
                })?;
            }
            ctx.step(NodeId(4), async { Err::<(), E>(E::Broken) })
                .await?;
            Ok(())
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_run_dropped_while_compensating_finishes_its_undos() {
    let log = Log::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let wf = slow_undos(&log, tx);
    // Dropped 50 ms into undoing `b`.
    let dropped = tokio::time::timeout(ms(50), Runtime::new().run(&wf, ())).await;
    assert!(dropped.is_err());
    assert_eq!(within(rx.recv()).await, Some("b"));
    assert_eq!(within(rx.recv()).await, Some("a"));
    assert_eq!(log.entries(), ["undo b @100", "undo a @200"]);
}

#[tokio::test(start_paused = true)]
async fn a_child_dropped_while_compensating_keeps_undoing() {
    // Branch 1 runs a child whose `c3` fails at 10 ms: the child undoes `c2` and `c1` (100 ms
    // each). Branch 2 fails at 50 ms: the group fails fast and drops branch 1, mid-undo.
    let log = Log::new();
    let g = steps("parent", &["group", "child", "other"]);
    let l = log.clone();
    let wf = flow(g, None, move |ctx: Ctx<E>, ()| {
        let l = l.clone();
        async move {
            ctx.enter(NodeId(2));
            let b1 = ctx.step(
                NodeId(3),
                run_child(&l, after(10, Act::Err(E::Broken)), 100, 7),
            );
            let b2 = ctx.step(
                NodeId(4),
                Script::new([after(50, Act::Err(E::Busy))]).attempt(),
            );
            try_join(b1, b2).await?;
            Ok(())
        }
    });
    let e = within(Runtime::new().run(&wf, ())).await.unwrap_err();
    assert_eq!(e.step(), Some("other"));
    assert_eq!(log.entries(), ["undo c2(7) @110", "undo c1(7) @210"]);
    let undone: Vec<_> = e
        .compensations()
        .iter()
        .map(|r| (r.workflow, r.step, r.succeeded()))
        .collect();
    assert_eq!(undone, [("child", "c2", true), ("child", "c1", true)]);
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_parent_while_its_child_compensates_does_not_abort_the_undos() {
    let log = Log::new();
    let g = steps("parent", &["child"]);
    let l = log.clone();
    let wf = flow(g, None, move |ctx: Ctx<E>, ()| {
        let l = l.clone();
        async move {
            ctx.step(
                NodeId(2),
                run_child(&l, after(10, Act::Err(E::Broken)), 100, 5),
            )
            .await?;
            Ok(())
        }
    });
    let h = Runtime::new().spawn(wf, ());
    tokio::time::sleep(ms(50)).await;
    h.cancel();
    let e = within(h).await.unwrap_err();
    assert!(e.is_cancelled());
    assert_eq!(log.entries(), ["undo c2(5) @110", "undo c1(5) @210"]);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_undo_is_bounded_by_the_compensation_budget() {
    let log = Log::new();
    let g = steps("hung", &["a", "b", "c"]);
    let l = log.clone();
    let inner = flow(g, None, move |ctx: Ctx<E>, ()| {
        let l = l.clone();
        async move {
            let r = ctx.step(NodeId(2), async { Ok::<u32, E>(1) }).await;
            ctx.compensate(NodeId(2), r, undo(&l, "a", 0, false))?;
            let r = ctx.step(NodeId(3), async { Ok::<u32, E>(2) }).await;
            ctx.compensate(NodeId(3), r, |_| core::future::pending::<Result<(), E>>())?;
            ctx.step(NodeId(4), async { Err::<(), E>(E::Broken) })
                .await?;
            Ok(())
        }
    });
    let wf = Tuned {
        inner,
        budget: Duration::from_secs(1),
        on_drop: true,
    };
    let e = within(Runtime::new().run(&wf, ())).await.unwrap_err();
    assert_eq!(e.error(), Some(&E::Broken));
    let outcomes: Vec<_> = e
        .compensations()
        .iter()
        .map(|r| (r.step, r.outcome.clone()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("b", CompensationOutcome::TimedOut(Duration::from_secs(1))),
            // Still polled once after the budget is spent: a quick undo still succeeds.
            ("a", CompensationOutcome::Succeeded)
        ]
    );
    assert_eq!(log.entries(), ["undo a(1) @1000"]);
    assert_eq!(e.compensation_failures().len(), 1);
    assert!(e.compensation_failures()[0].failure.is_timeout());
    assert_eq!(
        flow_runtime::policy::DEFAULT_COMPENSATION_TIMEOUT,
        Duration::from_secs(300)
    );
}

#[tokio::test(start_paused = true)]
async fn an_undo_has_its_own_timeout_and_retries() {
    let log = Log::new();
    let g = steps("policied", &["a", "b", "c"]);
    let l = log.clone();
    let wf = flow(g, None, move |ctx: Ctx<E>, ()| {
        let l = l.clone();
        async move {
            const RETRY_A: &[Retry<E>] = &[Retry::new(3).with_backoff(Backoff::constant(ms(100)))];
            const RETRY_B: &[Retry<E>] = &[Retry::new(2)];
            let r = ctx.step(NodeId(2), async { Ok::<u32, E>(1) }).await;
            let tries = Arc::new(AtomicU32::new(0));
            let la = l.clone();
            ctx.compensate_with(
                NodeId(2),
                r,
                move |_| {
                    let n = tries.fetch_add(1, Ordering::SeqCst) + 1;
                    let la = la.clone();
                    async move {
                        la.push_at(&format!("undo a try {n}"));
                        if n == 1 { Err(E::Busy) } else { Ok(()) }
                    }
                },
                CompensationPolicy {
                    timeout: None,
                    retry: RETRY_A,
                },
            )?;
            let r = ctx.step(NodeId(3), async { Ok::<u32, E>(2) }).await;
            ctx.compensate_with(
                NodeId(3),
                r,
                |_| core::future::pending::<Result<(), E>>(),
                CompensationPolicy {
                    timeout: Some(Duration::from_secs(1)),
                    retry: RETRY_B,
                },
            )?;
            ctx.step(NodeId(4), async { Err::<(), E>(E::Broken) })
                .await?;
            Ok(())
        }
    });
    let e = within(Runtime::new().run(&wf, ())).await.unwrap_err();
    let outcomes: Vec<_> = e
        .compensations()
        .iter()
        .map(|r| (r.step, r.attempts, r.outcome.clone()))
        .collect();
    assert_eq!(
        outcomes,
        [
            (
                "b",
                2,
                CompensationOutcome::TimedOut(Duration::from_secs(1))
            ),
            ("a", 2, CompensationOutcome::Succeeded)
        ]
    );
    assert_eq!(log.entries(), ["undo a try 1 @2000", "undo a try 2 @2100"]);
}

#[tokio::test(start_paused = true)]
async fn a_child_completed_by_a_failed_attempt_is_undone_before_the_retry() {
    let log = Log::new();
    let g = steps("parent", &["provision"]);
    let l = log.clone();
    let parent = flow(g, None, move |ctx: Ctx<E>, ()| {
        let l = l.clone();
        async move {
            const RULES: &[Retry<E>] = &[Retry::new(2)];
            let policy = StepPolicy {
                retry: RULES,
                timeout: None,
            };
            let n = AtomicU32::new(0);
            let v = ctx
                .step_with(NodeId(2), policy, || {
                    let l = l.clone();
                    let n = n.fetch_add(1, Ordering::SeqCst) + 1;
                    async move {
                        l.push_at(&format!("attempt {n}"));
                        let v = run_child(&l, Act::Ok(0), 0, n).await?;
                        // Attempt 1 fails after its child completed.
                        if n == 1 { Err(E::Busy) } else { Ok(v) }
                    }
                })
                .await?;
            Ok(v)
        }
    });
    let report = within(Runtime::new().run_report(&parent, ())).await;
    assert_eq!(report.result.unwrap(), 2);
    assert_eq!(
        log.entries(),
        [
            "attempt 1 @0",
            "undo c2(1) @0",
            "undo c1(1) @0",
            "attempt 2 @0"
        ]
    );
    assert_eq!(report.compensations.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_handle_reports_every_compensation() {
    let log = Log::new();
    let wf = parent_with_child(&log, false, false, Act::Err(E::Broken));
    let report = within(Runtime::new().spawn(wf, ()).report()).await;
    assert!(report.result.is_err());
    let steps: Vec<_> = report.compensations.iter().map(|r| r.step).collect();
    assert_eq!(steps, ["p3", "c2", "c1", "p1"]);
    assert!(report.observer_panics.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_parent_timing_out_while_its_child_compensates_does_not_abort_the_undos() {
    let log = Log::new();
    let g = steps("parent", &["child"]);
    let l = log.clone();
    // The parent's limit (50 ms) falls while the child undoes `c2` (10 ms to 110 ms).
    let wf = flow(g, Some(ms(50)), move |ctx: Ctx<E>, ()| {
        let l = l.clone();
        async move {
            ctx.step(
                NodeId(2),
                run_child(&l, after(10, Act::Err(E::Broken)), 100, 4),
            )
            .await?;
            Ok(())
        }
    });
    let e = within(Runtime::new().run(&wf, ())).await.unwrap_err();
    assert!(matches!(
        e.kind(),
        flow_runtime::ErrorKind::TimedOut {
            step: Some("child"),
            ..
        }
    ));
    assert_eq!(log.entries(), ["undo c2(4) @110", "undo c1(4) @210"]);
    assert_eq!(e.compensations().len(), 2);
}
