//! Catch, map, parallel and compensation semantics, on tokio's paused clock.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Act, Collect, E, Log, Script, after, flow, graph, is_busy, ms, steps, within};
use flow_runtime::__private::StepPolicy;
use flow_runtime::__private::{join, try_join};
use flow_runtime::error::GaveUp;
use flow_runtime::graph::NodeKind;
use flow_runtime::policy::{Backoff, Retry};
use flow_runtime::{ErrorKind, EventKind, Failure, NodeId, Runtime, Status, StepError};
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// catch

#[tokio::test(start_paused = true)]
async fn catch_routes_to_a_recovery_step_after_retries() {
    let g = graph(
        "catching",
        &[("fetch", NodeKind::Step), ("fallback", NodeKind::Recovery)],
    );
    let s = Script::new([Act::Err(E::Busy)]);
    let recovered = Log::new();
    let (s2, log) = (s.clone(), recovered.clone());
    let wf = flow(g, None, move |ctx, ()| {
        let (s, log) = (s2.clone(), log.clone());
        async move {
            let rules = [Retry::new(3).with_backoff(Backoff::constant(ms(100)))];
            let policy = StepPolicy {
                retry: &rules,
                timeout: None,
            };
            let r = ctx.step_with(NodeId(2), policy, || s.attempt()).await;
            let v = ctx
                .catch(
                    r,
                    |e| e.error().is_some_and(is_busy),
                    NodeId(3),
                    |e: StepError<E>| async move {
                        log.push_at(&format!("recover after {} attempts", e.attempts().len()));
                        Ok::<u32, E>(42)
                    },
                )
                .await?;
            Ok(v)
        }
    });
    let seen = Collect::default();
    let r = Runtime::new()
        .with_observer(seen.observer())
        .run(&wf, ())
        .await;
    assert_eq!(r.unwrap(), 42);
    assert_eq!(s.calls(), 3, "the catch applies after the step's retries");
    assert_eq!(recovered.entries(), ["recover after 3 attempts @200"]);
    let tail: Vec<_> = seen.events()[8..]
        .iter()
        .map(|e| (e.step, e.kind.clone()))
        .collect();
    let fetch_error = "step `fetch` failed after 3 attempts (retries exhausted); last: busy";
    assert_eq!(
        tail,
        [
            (
                "fetch",
                EventKind::StepFailed {
                    attempts: 3,
                    error: "busy".into()
                }
            ),
            (
                "fetch",
                EventKind::Caught {
                    error: fetch_error.into()
                }
            ),
            ("fallback", EventKind::Entered),
            ("fallback", EventKind::AttemptStarted { attempt: 1 }),
            (
                "fallback",
                EventKind::StepSucceeded {
                    attempt: 1,
                    elapsed: ms(0)
                }
            ),
            ("end", EventKind::RunCompleted),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_failure_the_catch_rejects_passes_through() {
    let g = graph(
        "catching",
        &[("fetch", NodeKind::Step), ("fallback", NodeKind::Recovery)],
    );
    let s = Script::new([Act::Err(E::Broken)]);
    let recovered = Arc::new(AtomicUsize::new(0));
    let (s2, n) = (s.clone(), Arc::clone(&recovered));
    let wf = flow(g, None, move |ctx, ()| {
        let (s, n) = (s2.clone(), Arc::clone(&n));
        async move {
            let r = ctx.step(NodeId(2), s.attempt()).await;
            let v = ctx
                .catch(
                    r,
                    |e| e.error().is_some_and(is_busy),
                    NodeId(3),
                    |_| async move {
                        n.fetch_add(1, Ordering::SeqCst);
                        Ok::<u32, E>(42)
                    },
                )
                .await?;
            Ok(v)
        }
    });
    let e = within(Runtime::new().run(&wf, ())).await.unwrap_err();
    assert_eq!(recovered.load(Ordering::SeqCst), 0);
    assert_eq!(e.step(), Some("fetch"));
    assert_eq!(e.error(), Some(&E::Broken));
    assert_eq!(e.step_error().unwrap().gave_up(), GaveUp::NotRetried);
}

#[tokio::test(start_paused = true)]
async fn a_failing_recovery_step_is_reported_as_itself() {
    let g = graph(
        "catching",
        &[("fetch", NodeKind::Step), ("fallback", NodeKind::Recovery)],
    );
    let wf = flow(g, None, move |ctx, ()| async move {
        let r = ctx.step(NodeId(2), async { Err::<u32, E>(E::Busy) }).await;
        let v = ctx
            .catch(
                r,
                |_| true,
                NodeId(3),
                |_| async { Err::<u32, E>(E::Broken) },
            )
            .await?;
        Ok(v)
    });
    let e = within(Runtime::new().run(&wf, ())).await.unwrap_err();
    assert_eq!(e.step(), Some("fallback"));
    assert_eq!(e.error(), Some(&E::Broken));
}

// ---------------------------------------------------------------------------------------------
// map

/// Counts bodies in flight and the most ever in flight at once.
#[derive(Clone, Default)]
struct Gauge {
    now: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
}

impl Gauge {
    fn enter(&self) -> GaugeGuard {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
        GaugeGuard(Arc::clone(&self.now))
    }

    fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

/// Leaves the gauge when the body completes or is dropped.
struct GaugeGuard(Arc<AtomicUsize>);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A map over `items` (each: how long it takes, in ms) with `limit`; each body is step
/// `item` (node 3) and returns its index times ten. Logs `"done {i} @{ms}"`.
async fn run_map(
    items: Vec<u64>,
    limit: usize,
    gauge: &Gauge,
    log: &Log,
) -> Result<Vec<u32>, flow_runtime::Error<E>> {
    let g = graph(
        "mapping",
        &[("each", NodeKind::Map), ("item", NodeKind::Step)],
    );
    let (gauge, log) = (gauge.clone(), log.clone());
    let wf = flow(g, None, move |ctx, items: Vec<u64>| {
        let (gauge, log) = (gauge.clone(), log.clone());
        async move {
            let out = ctx
                .map(
                    NodeId(2),
                    items.into_iter().enumerate(),
                    limit,
                    |(i, took)| {
                        let (ctx, gauge, log) = (ctx.clone(), gauge.clone(), log.clone());
                        async move {
                            ctx.step(NodeId(3), async move {
                                let _in = gauge.enter();
                                tokio::time::sleep(ms(took)).await;
                                log.push_at(&format!("done {i}"));
                                Ok::<u32, E>(i as u32 * 10)
                            })
                            .await
                        }
                    },
                )
                .await?;
            Ok(out)
        }
    });
    within(Runtime::new().run(&wf, items)).await
}

#[tokio::test(start_paused = true)]
async fn map_limits_concurrency_and_keeps_input_order() {
    let (gauge, log) = (Gauge::default(), Log::new());
    // Items finish out of order: later items are quicker.
    let items = vec![80, 70, 60, 50, 40, 30, 20, 10, 15, 5];
    let out = run_map(items, 4, &gauge, &log).await.unwrap();
    assert_eq!(out, [0, 10, 20, 30, 40, 50, 60, 70, 80, 90]);
    assert_eq!(gauge.max(), 4);
    // With at most 4 in flight, a freed slot is taken at once by the next item: 0-3 start at
    // 0; 3 ends at 50 (4 starts, ends at 90), 2 at 60 (5 starts, ends at 90), 1 at 70 (6), 0 at
    // 80 (7); at 90, 8 and 9 start.
    assert_eq!(
        log.entries(),
        [
            "done 3 @50",
            "done 2 @60",
            "done 1 @70",
            "done 0 @80",
            "done 4 @90",
            "done 5 @90",
            "done 6 @90",
            "done 7 @90",
            "done 9 @95",
            "done 8 @105",
        ]
    );
    assert_eq!(log.elapsed(), ms(105));
}

#[tokio::test(start_paused = true)]
async fn map_runs_in_waves_of_the_limit() {
    let (gauge, log) = (Gauge::default(), Log::new());
    let out = run_map(vec![100; 8], 4, &gauge, &log).await.unwrap();
    assert_eq!(out.len(), 8);
    assert_eq!(gauge.max(), 4);
    assert_eq!(log.elapsed(), ms(200));

    // A limit of 0: no limit.
    let (gauge, log) = (Gauge::default(), Log::new());
    run_map(vec![100; 8], 0, &gauge, &log).await.unwrap();
    assert_eq!(gauge.max(), 8);
    assert_eq!(log.elapsed(), ms(100));

    // A limit of 1: one at a time.
    let (gauge, log) = (Gauge::default(), Log::new());
    run_map(vec![10; 5], 1, &gauge, &log).await.unwrap();
    assert_eq!(gauge.max(), 1);
    assert_eq!(log.elapsed(), ms(50));

    // Nothing to map.
    let (gauge, log) = (Gauge::default(), Log::new());
    assert_eq!(
        run_map(vec![], 4, &gauge, &log).await.unwrap(),
        Vec::<u32>::new()
    );
}

/// A map whose items fail when `fails[i]` is true; item `i` takes `took[i]` ms. Returns the
/// outcome, how many bodies started and how many were dropped unfinished.
async fn run_tolerant(
    took: Vec<u64>,
    fails: Vec<bool>,
    limit: usize,
    tolerate: Option<usize>,
    log: &Log,
) -> (Result<Vec<Result<u32, E>>, flow_runtime::Error<E>>, usize) {
    let g = graph(
        "mapping",
        &[("each", NodeKind::Map), ("item", NodeKind::Step)],
    );
    let started = Arc::new(AtomicUsize::new(0));
    let (log, n) = (log.clone(), Arc::clone(&started));
    let wf = flow(g, None, move |ctx, items: Vec<(u64, bool)>| {
        let (log, n) = (log.clone(), Arc::clone(&n));
        async move {
            let body = |(i, (took, fail)): (usize, (u64, bool))| {
                let (ctx, log, n) = (ctx.clone(), log.clone(), Arc::clone(&n));
                async move {
                    ctx.step(NodeId(3), async move {
                        n.fetch_add(1, Ordering::SeqCst);
                        let probe = log.probe(["i0", "i1", "i2", "i3", "i4", "i5", "i6", "i7"][i]);
                        tokio::time::sleep(ms(took)).await;
                        probe.done();
                        if fail {
                            Err(E::Item(i as u32))
                        } else {
                            Ok(i as u32)
                        }
                    })
                    .await
                }
            };
            let items = items.into_iter().enumerate();
            Ok(match tolerate {
                None => ctx
                    .map(NodeId(2), items, limit, body)
                    .await?
                    .into_iter()
                    .map(Ok)
                    .collect(),
                Some(k) => ctx
                    .map_tolerant(NodeId(2), items, limit, k, body)
                    .await?
                    .into_iter()
                    .map(|r| r.map_err(|e| e.into_error().unwrap()))
                    .collect(),
            })
        }
    });
    let input = took.into_iter().zip(fails).collect();
    let r = within(Runtime::new().run(&wf, input)).await;
    (r, started.load(Ordering::SeqCst))
}

#[tokio::test(start_paused = true)]
async fn map_fails_fast_and_drops_the_bodies_in_flight() {
    let log = Log::new();
    let took = vec![100, 10, 100, 100, 100, 100];
    let fails = vec![false, true, false, false, false, false];
    let (r, started) = run_tolerant(took, fails, 4, None, &log).await;
    let e = r.unwrap_err();
    assert_eq!(e.error(), Some(&E::Item(1)));
    assert_eq!(e.step(), Some("item"));
    assert_eq!(started, 4, "items after the failure never start");
    assert_eq!(log.elapsed(), ms(10));
    let mut entries = log.entries();
    entries.sort();
    assert_eq!(
        entries,
        [
            "i0 dropped @10",
            "i1 done @10",
            "i2 dropped @10",
            "i3 dropped @10"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn map_tolerant_tolerates_k_failures() {
    let took = vec![30, 10, 30, 30, 20, 30];
    let fails = vec![false, true, false, false, true, false];
    let log = Log::new();
    let (r, started) = run_tolerant(took.clone(), fails.clone(), 0, Some(2), &log).await;
    assert_eq!(
        r.unwrap(),
        [Ok(0), Err(E::Item(1)), Ok(2), Ok(3), Err(E::Item(4)), Ok(5)]
    );
    assert_eq!(started, 6);
    assert_eq!(log.elapsed(), ms(30));

    // One failure more than tolerated fails the map at that failure and drops the rest.
    let log = Log::new();
    let (r, started) = run_tolerant(took.clone(), fails.clone(), 0, Some(1), &log).await;
    let e = r.unwrap_err();
    assert_eq!(e.error(), Some(&E::Item(4)));
    assert_eq!(started, 6);
    assert_eq!(log.elapsed(), ms(20));
    assert_eq!(
        log.entries()
            .iter()
            .filter(|e| e.contains("dropped @20"))
            .count(),
        4
    );

    // Tolerating none behaves as `map`.
    let log = Log::new();
    let (r, _) = run_tolerant(took, fails, 0, Some(0), &log).await;
    assert_eq!(r.unwrap_err().error(), Some(&E::Item(1)));
    assert_eq!(log.elapsed(), ms(10));
}

// ---------------------------------------------------------------------------------------------
// parallel

#[tokio::test(start_paused = true)]
async fn parallel_fails_fast_and_drops_the_sibling() {
    let g = steps("parallel", &["left", "right"]);
    let log = Log::new();
    let l = log.clone();
    let wf = flow(g, None, move |ctx, ()| {
        let log = l.clone();
        async move {
            let left = ctx.step(NodeId(2), async {
                tokio::time::sleep(ms(10)).await;
                Err::<u32, E>(E::Broken)
            });
            let right = ctx.step(NodeId(3), async {
                let probe = log.probe("right");
                tokio::time::sleep(ms(1000)).await;
                probe.done();
                Ok::<u32, E>(2)
            });
            let (a, b) = try_join(left, right).await?;
            Ok(a + b)
        }
    });
    let t0 = Instant::now();
    let e = within(Runtime::new().run(&wf, ())).await.unwrap_err();
    let took = t0.elapsed();
    // The sibling was dropped when the first failure arrived, before the run returned.
    assert_eq!(log.entries(), ["right dropped @10"]);
    assert_eq!(took, ms(10));
    assert_eq!(e.step(), Some("left"));
    assert_eq!(e.error(), Some(&E::Broken));
}

#[tokio::test(start_paused = true)]
async fn parallel_settle_collects_every_result() {
    let g = steps("settle", &["left", "right"]);
    let wf = flow(g, None, move |ctx, ()| async move {
        let left = ctx.step(NodeId(2), async {
            tokio::time::sleep(ms(10)).await;
            Err::<u32, E>(E::Broken)
        });
        let right = ctx.step(NodeId(3), async {
            tokio::time::sleep(ms(100)).await;
            Ok::<u32, E>(2)
        });
        Ok(join(left, right).await)
    });
    let t0 = Instant::now();
    let (a, b) = within(Runtime::new().run(&wf, ())).await.unwrap();
    assert_eq!(t0.elapsed(), ms(100));
    let a = a.unwrap_err();
    assert_eq!((a.step(), a.error()), ("left", Some(&E::Broken)));
    assert_eq!(b.unwrap(), 2);
}

#[tokio::test(start_paused = true)]
async fn parallel_branches_retry_independently() {
    let g = steps("parallel_retry", &["left", "right"]);
    let (sl, sr) = (
        Script::new([Act::Err(E::Busy), Act::Ok(1)]),
        Script::new([after(50, Act::Err(E::Busy)), Act::Ok(2)]),
    );
    let (l, r) = (sl.clone(), sr.clone());
    let wf = flow(g, None, move |ctx, ()| {
        let (l, r) = (l.clone(), r.clone());
        async move {
            let rules = [Retry::new(2).with_backoff(Backoff::constant(ms(100)))];
            let p = StepPolicy {
                retry: &rules,
                timeout: None,
            };
            let (a, b) = try_join(
                ctx.step_with(NodeId(2), p, || l.attempt()),
                ctx.step_with(NodeId(3), p, || r.attempt()),
            )
            .await?;
            Ok(a + b)
        }
    });
    let t0 = Instant::now();
    assert_eq!(within(Runtime::new().run(&wf, ())).await.unwrap(), 3);
    assert_eq!(sl.starts(), [ms(0), ms(100)]);
    assert_eq!(sr.starts(), [ms(0), ms(150)]);
    assert_eq!(t0.elapsed(), ms(150));
}

// ---------------------------------------------------------------------------------------------
// compensation

/// Steps `a` (2) and `b` (3) succeed with compensations, then `c` (4) does `last`.
/// `undo_a` says how a's compensation ends. Returns the run's error and the log.
async fn compensated(last: Act, undo_a: Act) -> (flow_runtime::Error<E>, Log) {
    let g = steps("compensated", &["a", "b", "c"]);
    let log = Log::new();
    let l = log.clone();
    let last = Script::new([last]);
    let undo_a = Script::new([undo_a]);
    let wf = flow(g, None, move |ctx, ()| {
        let (log, last, undo_a) = (l.clone(), last.clone(), undo_a.clone());
        async move {
            let r = ctx.step(NodeId(2), async { Ok::<u32, E>(1) }).await;
            let l2 = log.clone();
            let a = ctx.compensate(NodeId(2), r, move |v| async move {
                tokio::time::sleep(ms(5)).await;
                l2.push_at(&format!("undo a({v})"));
                undo_a.attempt().await.map(drop)
            })?;
            let r = ctx.step(NodeId(3), async { Ok::<u32, E>(a + 1) }).await;
            let l2 = log.clone();
            let b = ctx.compensate(NodeId(3), r, move |v| async move {
                tokio::time::sleep(ms(5)).await;
                l2.push_at(&format!("undo b({v})"));
                Ok::<(), E>(())
            })?;
            log.push_at("before c");
            let c = ctx.step(NodeId(4), last.attempt()).await?;
            Ok(b + c)
        }
    });
    let e = within(Runtime::new().run(&wf, ())).await.unwrap_err();
    (e, log)
}

#[tokio::test(start_paused = true)]
async fn compensations_run_in_reverse_order_after_a_failure() {
    let (e, log) = compensated(Act::Err(E::Broken), Act::Ok(0)).await;
    assert_eq!(
        log.entries(),
        ["before c @0", "undo b(2) @5", "undo a(1) @10"]
    );
    assert_eq!(e.step(), Some("c"));
    assert_eq!(e.error(), Some(&E::Broken));
    assert!(e.compensation_failures().is_empty());
}

#[tokio::test(start_paused = true)]
async fn compensations_run_after_a_panic() {
    let (e, log) = compensated(Act::Panic("oops"), Act::Ok(0)).await;
    assert_eq!(
        log.entries(),
        ["before c @0", "undo b(2) @5", "undo a(1) @10"]
    );
    let s = e.step_error().unwrap();
    assert_eq!(s.step(), "c");
    assert!(matches!(s.failure(), Failure::Panicked(m) if m == "oops"));
}

#[tokio::test(start_paused = true)]
async fn a_failing_compensation_is_reported_and_keeps_the_original_error() {
    let (e, log) = compensated(Act::Err(E::Broken), Act::Err(E::Undo("a"))).await;
    assert_eq!(
        log.entries(),
        ["before c @0", "undo b(2) @5", "undo a(1) @10"]
    );
    match e.kind() {
        ErrorKind::Step(s) => {
            assert_eq!(s.step(), "c");
            assert_eq!(s.error(), Some(&E::Broken));
        }
        other => panic!("{other:?}"),
    }
    let failures = e.compensation_failures();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].step, "a");
    assert!(matches!(failures[0].failure, Failure::Error(E::Undo("a"))));
    assert_eq!(
        e.to_string(),
        "workflow `compensated` failed: step `c` failed: broken; compensation of step `a` also \
         failed: undo of a failed"
    );

    // A panicking compensation is reported the same way.
    let (e, _) = compensated(Act::Err(E::Broken), Act::Panic("undo exploded")).await;
    assert_eq!(e.error(), Some(&E::Broken));
    let failures = e.compensation_failures();
    assert_eq!(failures.len(), 1);
    assert!(matches!(&failures[0].failure, Failure::Panicked(m) if m == "undo exploded"));
}

#[tokio::test(start_paused = true)]
async fn no_compensation_runs_when_the_run_succeeds_or_the_step_failed() {
    let g = steps("compensated", &["a", "b"]);
    let log = Log::new();
    let l = log.clone();
    let wf = flow(g, None, move |ctx, fail_b: bool| {
        let log = l.clone();
        async move {
            let l2 = log.clone();
            let r = ctx.step(NodeId(2), async { Ok::<u32, E>(1) }).await;
            ctx.compensate(NodeId(2), r, move |_| async move {
                l2.push("undo a");
                Ok::<(), E>(())
            })?;
            let l2 = log.clone();
            let r = ctx
                .step(NodeId(3), async move {
                    if fail_b { Err(E::Broken) } else { Ok(2) }
                })
                .await;
            // A failed step registers nothing.
            ctx.compensate(NodeId(3), r, move |_| async move {
                l2.push("undo b");
                Ok::<(), E>(())
            })?;
            Ok(())
        }
    });
    within(Runtime::new().run(&wf, false)).await.unwrap();
    assert!(log.entries().is_empty());
    within(Runtime::new().run(&wf, true)).await.unwrap_err();
    assert_eq!(log.entries(), ["undo a"]);
}

#[tokio::test(start_paused = true)]
async fn status_is_compensating_while_compensations_run() {
    let g = steps("compensated", &["a", "b"]);
    let wf = flow(g, None, move |ctx, ()| async move {
        let r = ctx.step(NodeId(2), async { Ok::<u32, E>(1) }).await;
        ctx.compensate(NodeId(2), r, |_| async {
            tokio::time::sleep(ms(100)).await;
            Ok::<(), E>(())
        })?;
        ctx.step(NodeId(3), async { Err::<u32, E>(E::Broken) })
            .await?;
        Ok(())
    });
    let mut h = Runtime::new().spawn(wf, ());
    tokio::time::sleep(ms(50)).await;
    assert_eq!(h.state().status, Status::Compensating);
    assert_eq!(h.state().name, "b");
    let e = within(&mut h).await.unwrap_err();
    assert_eq!(e.step(), Some("b"));
    assert_eq!(h.state().status, Status::Failed);
    assert_eq!(h.state().node, NodeId::END);
}
