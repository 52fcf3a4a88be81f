//! The model tells the truth: panics anywhere in a run, arithmetic at the limits, bounded
//! memory, events nobody asked for, and the exact identity of the node behind each event.

mod common;

use core::time::Duration;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use common::{Act, Collect, E, Log, Script, flow, ms, steps, within};
use flow_runtime::__private::select;
use flow_runtime::__private::{Ctx, StepPolicy};
use flow_runtime::error::GaveUp;
use flow_runtime::graph::{Edge, EdgeKind, Node, NodeKind};
use flow_runtime::policy::{Backoff, Jitter, Retry};
use flow_runtime::{ErrorKind, Event, EventKind, Graph, NodeId, Runtime, Status};

// ---------------------------------------------------------------------------------------------
// Panics

#[tokio::test(start_paused = true)]
async fn a_panic_in_the_body_fails_the_run_at_its_node_and_compensates() {
    let log = Log::new();
    let g = steps("buggy", &["a", "b"]);
    let l = log.clone();
    let wf = flow(g, None, move |ctx: Ctx<E>, bug: bool| {
        let l = l.clone();
        async move {
            let r = ctx.step(NodeId(2), async { Ok::<u32, E>(1) }).await;
            let l2 = l.clone();
            ctx.compensate(NodeId(2), r, move |_| async move {
                l2.push("undo a");
                Ok::<(), E>(())
            })?;
            if bug {
                panic!("body bug");
            }
            ctx.step(NodeId(3), async { Ok::<u32, E>(2) }).await?;
            Ok(())
        }
    });
    let mut h = Runtime::new().spawn_with_events(wf, true);
    let e = within(&mut h).await.unwrap_err();
    match e.kind() {
        ErrorKind::Panicked { step, message } => {
            assert_eq!(*step, Some("a"));
            assert_eq!(message, "body bug");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(e.to_string(), "workflow `buggy` panicked at `a`: body bug");
    assert_eq!(log.entries(), ["undo a"]);
    assert_eq!(h.state().status, Status::Failed);
    let mut last = None;
    while let Some(e) = within(h.events().next()).await {
        last = Some(e.kind);
    }
    assert!(matches!(last, Some(EventKind::RunFailed { .. })));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_selector_or_predicate_fails_the_run_at_its_node() {
    // A `branch` selector.
    let g = steps("branchy", &["a", "pick"]);
    let wf = flow(g, None, |ctx: Ctx<E>, ()| async move {
        let v = ctx.step(NodeId(2), async { Ok::<u32, E>(1) }).await?;
        ctx.enter(NodeId(3));
        let k: u32 = select(&v, |_| -> u32 { panic!("selector bug") });
        Ok(k)
    });
    let e = within(Runtime::new().run(&wf, ())).await.unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::Panicked { step: Some("pick"), message } if message == "selector bug")
    );

    // A retry `when` predicate.
    fn bad_when(_: &E) -> bool {
        panic!("predicate bug")
    }
    let g = steps("retrying", &["s"]);
    let wf = flow(g, None, |ctx: Ctx<E>, ()| async move {
        const RULES: &[Retry<E>] = &[Retry::new(3).when(bad_when)];
        let policy = StepPolicy {
            retry: RULES,
            timeout: None,
        };
        ctx.step_with(NodeId(2), policy, || async { Err::<(), E>(E::Busy) })
            .await?;
        Ok(())
    });
    let e = within(Runtime::new().run(&wf, ())).await.unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::Panicked { step: Some("s"), message } if message == "predicate bug")
    );

    // A catch predicate, in a spawned run: the handle returns the error, never the panic.
    let g = steps("catching", &["s", "recover"]);
    let wf = flow(g, None, |ctx: Ctx<E>, ()| async move {
        let r = ctx.step(NodeId(2), async { Err::<u32, E>(E::Busy) }).await;
        let v = ctx
            .catch(
                r,
                |_| panic!("catch bug"),
                NodeId(3),
                |_| async { Ok::<u32, E>(0) },
            )
            .await?;
        Ok(v)
    });
    let e = within(Runtime::new().spawn(wf, ())).await.unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::Panicked { step: Some("s"), message } if message == "catch bug")
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_observer_is_removed_from_the_run_and_reported() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    let bad = move |e: &Event| {
        c.fetch_add(1, Ordering::SeqCst);
        if matches!(e.kind, EventKind::AttemptStarted { .. }) {
            panic!("observer bug");
        }
    };
    let seen = Collect::default();
    let runtime = Runtime::new()
        .with_observer(bad)
        .with_observer(seen.observer());
    let g = steps("observed", &["a", "b"]);
    let wf = flow(g, None, |ctx: Ctx<E>, ()| async move {
        ctx.step(NodeId(2), async { Ok::<u32, E>(1) }).await?;
        ctx.step(NodeId(3), async { Ok::<u32, E>(2) }).await?;
        Ok(7)
    });
    let report = within(runtime.run_report(&wf, ())).await;
    assert_eq!(report.result.unwrap(), 7);
    assert_eq!(report.observer_panics, ["observer bug"]);
    // RunStarted, Entered, AttemptStarted (panics): then never called again.
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let kinds: Vec<_> = seen.events().into_iter().map(|e| e.kind).collect();
    assert!(kinds.contains(&EventKind::ObserverPanicked {
        message: "observer bug".into()
    }));
    assert_eq!(kinds.last(), Some(&EventKind::RunCompleted));
}

// ---------------------------------------------------------------------------------------------
// Limits and arithmetic

#[tokio::test(start_paused = true)]
async fn a_huge_backoff_factor_with_a_budget_gives_up_instead_of_overflowing() {
    let g = steps("huge", &["s"]);
    let wf = flow(g, None, |ctx: Ctx<E>, ()| async move {
        const RULES: &[Retry<E>] = &[Retry::new(10)
            .with_backoff(Backoff::exponential(ms(1), 1e300))
            .with_jitter(Jitter::Spread(0.5))
            .with_max_elapsed(Duration::from_secs(10))];
        let policy = StepPolicy {
            retry: RULES,
            timeout: None,
        };
        ctx.step_with(NodeId(2), policy, || async { Err::<(), E>(E::Busy) })
            .await?;
        Ok(())
    });
    let e = within(Runtime::new().run(&wf, ())).await.unwrap_err();
    let s = e.step_error().unwrap();
    assert_eq!(s.gave_up(), GaveUp::BudgetExhausted);
    assert_eq!(s.attempt_count(), 2);
}

#[test]
fn jitter_at_the_ends_of_its_range_saturates() {
    let rng = flow_runtime::policy::SplitMix64::new(3);
    for j in [
        Jitter::Spread(0.0),
        Jitter::Spread(0.5),
        Jitter::Spread(1.0),
        Jitter::Full,
        Jitter::Equal,
    ] {
        let d = j.apply(Duration::MAX, &rng);
        assert!(d <= Duration::MAX);
        let _ = j.apply(Duration::from_nanos(1), &rng);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn zero_delay_retries_let_other_tasks_run() {
    let flag = Arc::new(AtomicBool::new(false));
    let f = Arc::clone(&flag);
    tokio::spawn(async move { f.store(true, Ordering::SeqCst) });
    let saw = Arc::new(AtomicU32::new(0));
    let g = steps("spin", &["s"]);
    let (fl, sw) = (Arc::clone(&flag), Arc::clone(&saw));
    let wf = flow(g, None, move |ctx: Ctx<E>, ()| {
        let (fl, sw) = (Arc::clone(&fl), Arc::clone(&sw));
        async move {
            const RULES: &[Retry<E>] = &[Retry::new(1000)];
            let policy = StepPolicy {
                retry: RULES,
                timeout: None,
            };
            ctx.step_with(NodeId(2), policy, || {
                if fl.load(Ordering::SeqCst) {
                    sw.fetch_add(1, Ordering::SeqCst);
                }
                async { Err::<(), E>(E::Busy) }
            })
            .await?;
            Ok(())
        }
    });
    let started = std::time::Instant::now();
    let e = Runtime::new().run(&wf, ()).await.unwrap_err();
    assert_eq!(e.step_error().unwrap().attempt_count(), 1000);
    // The other task ran while the step was retrying, and no timer was involved (1000
    // millisecond ticks would take a second).
    assert!(saw.load(Ordering::SeqCst) > 0);
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[tokio::test(start_paused = true)]
async fn a_step_error_keeps_a_bounded_number_of_attempts() {
    let g = steps("many", &["s"]);
    let wf = flow(g, None, |ctx: Ctx<E>, ()| async move {
        const RULES: &[Retry<E>] = &[Retry::new(100)];
        let policy = StepPolicy {
            retry: RULES,
            timeout: None,
        };
        ctx.step_with(NodeId(2), policy, || async { Err::<(), E>(E::Busy) })
            .await?;
        Ok(())
    });
    let e = within(Runtime::new().run(&wf, ())).await.unwrap_err();
    let s = e.step_error().unwrap();
    assert_eq!(s.attempt_count(), 100);
    let kept: Vec<u32> = s.attempts().iter().map(|a| a.number).collect();
    let mut expected = vec![1];
    expected.extend(85..=100);
    assert_eq!(kept, expected);
    assert_eq!(kept.len(), 1 + flow_runtime::error::KEPT_LAST_ATTEMPTS);
    assert!(s.to_string().contains("after 100 attempts"));
}

/// An iterator that claims to be endless.
struct Liar(u32);

impl Iterator for Liar {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        (self.0 > 0).then(|| {
            self.0 -= 1;
            self.0
        })
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::MAX, None)
    }
}

#[tokio::test(start_paused = true)]
async fn map_does_not_trust_size_hint() {
    let g = steps("mapped", &["map", "item"]);
    let wf = flow(g, None, |ctx: Ctx<E>, ()| async move {
        let c = &ctx;
        let all = ctx
            .map(NodeId(2), Liar(3), 0, |x| async move {
                c.step(NodeId(3), async move { Ok::<u32, E>(x) }).await
            })
            .await?;
        let tolerant = ctx
            .map_tolerant(NodeId(2), Liar(2), 0, 0, |x| async move {
                c.step(NodeId(3), async move { Ok::<u32, E>(x) }).await
            })
            .await?;
        Ok((all, tolerant.len()))
    });
    let (all, n) = within(Runtime::new().run(&wf, ())).await.unwrap();
    assert_eq!(all, [2, 1, 0]);
    assert_eq!(n, 2);
}

#[tokio::test(start_paused = true)]
async fn an_unsubscribed_spawned_run_builds_no_events() {
    let observed_at_start = Arc::new(AtomicBool::new(true));
    let o = Arc::clone(&observed_at_start);
    let a = Script::new([common::after(100, Act::Ok(1))]);
    let g = steps("quiet", &["a", "b"]);
    let wf = flow(g, None, move |ctx: Ctx<E>, ()| {
        let o = Arc::clone(&o);
        let a = a.clone();
        async move {
            o.store(ctx.observed(), Ordering::SeqCst);
            ctx.step(NodeId(2), a.attempt()).await?;
            ctx.step(NodeId(3), async { Ok::<u32, E>(2) }).await?;
            Ok(())
        }
    });
    let mut h = Runtime::new().spawn(wf, ());
    tokio::time::sleep(ms(50)).await;
    // Nobody subscribed: the run takes the unobserved path.
    assert!(!observed_at_start.load(Ordering::SeqCst));
    let events = h.events();
    let mut seen = Vec::new();
    while let Some(e) = within(events.next()).await {
        seen.push((e.step, e.kind));
    }
    // Only what happened after subscribing.
    assert_eq!(
        seen,
        [
            ("b", EventKind::Entered),
            ("b", EventKind::AttemptStarted { attempt: 1 }),
            (
                "b",
                EventKind::StepSucceeded {
                    attempt: 1,
                    elapsed: Duration::ZERO
                }
            ),
            ("end", EventKind::RunCompleted),
        ]
    );
    within(h).await.unwrap();

    // Subscribing after the run ended: the stream ends at once.
    let g = steps("over", &["a"]);
    let wf = flow(g, None, |ctx: Ctx<E>, ()| async move {
        ctx.step(NodeId(2), async { Ok::<u32, E>(1) }).await?;
        Ok(())
    });
    let mut h = Runtime::new().spawn(wf, ());
    tokio::time::sleep(ms(10)).await;
    assert_eq!(h.state().status, Status::Completed);
    assert!(within(h.events().next()).await.is_none());
}

// ---------------------------------------------------------------------------------------------
// Event identity

static KEYED: Graph = Graph {
    name: "keyed",
    nodes: &[
        Node {
            name: "start",
            key: "start",
            fingerprint: 0,
            kind: NodeKind::Start,
            policy: "",
            parent: None,
        },
        Node {
            name: "end",
            key: "end",
            fingerprint: 0,
            kind: NodeKind::End,
            policy: "",
            parent: None,
        },
        Node {
            name: "fetch",
            key: "fetch#2",
            fingerprint: 0,
            kind: NodeKind::Step,
            policy: "",
            parent: None,
        },
        Node {
            name: "map",
            key: "map",
            fingerprint: 0,
            kind: NodeKind::Map,
            policy: "",
            parent: None,
        },
        Node {
            name: "load",
            key: "load",
            fingerprint: 0,
            kind: NodeKind::Step,
            policy: "",
            parent: Some(3),
        },
    ],
    edges: &[Edge {
        from: 0,
        to: 2,
        kind: EdgeKind::Sequence,
        label: "",
    }],
    fingerprint: 0,
};

#[tokio::test(start_paused = true)]
async fn events_carry_the_nodes_key_iteration_and_map_item() {
    let wf = flow(&KEYED, None, |ctx: Ctx<E>, ()| async move {
        for i in 0..3 {
            ctx.step(NodeId(2), async move { Ok::<u32, E>(i) }).await?;
        }
        let c = &ctx;
        let v = ctx
            .map(NodeId(3), [10u32, 20, 30], 2, |x| async move {
                tokio::time::sleep(ms(u64::from(x))).await;
                c.step(NodeId(4), async move { Ok::<u32, E>(x) }).await
            })
            .await?;
        Ok(v)
    });
    let seen = Collect::default();
    let runtime = Runtime::new().with_observer(seen.observer());
    within(runtime.run(&wf, ())).await.unwrap();
    let events = seen.events();
    let fetch: Vec<_> = events
        .iter()
        .filter(|e| e.node == NodeId(2) && e.kind == EventKind::Entered)
        .map(|e| (e.key, e.iteration, e.item))
        .collect();
    assert_eq!(
        fetch,
        [
            ("fetch#2", 1, None),
            ("fetch#2", 2, None),
            ("fetch#2", 3, None)
        ]
    );
    let load: Vec<_> = events
        .iter()
        .filter(|e| e.node == NodeId(4) && matches!(e.kind, EventKind::StepSucceeded { .. }))
        .map(|e| (e.iteration, e.item))
        .collect();
    assert_eq!(load, [(1, Some(0)), (2, Some(1)), (3, Some(2))]);
    let shown: Vec<String> = events
        .iter()
        .filter(|e| e.node == NodeId(4) && e.kind == EventKind::Entered)
        .map(|e| e.to_string())
        .collect();
    assert!(shown[1].contains("keyed load#2[1]: entered"), "{shown:?}");
    assert!(shown[0].contains("keyed load[0]: entered"), "{shown:?}");
    // Run-level events carry no item.
    assert!(
        events
            .iter()
            .all(|e| e.node != NodeId::END || e.item.is_none())
    );
}

#[cfg(feature = "tracing")]
#[tokio::test(start_paused = true)]
async fn tracing_spans_are_keyed_by_item_and_freed_with_the_run() {
    use flow_runtime::TracingObserver;
    let tracer = Arc::new(TracingObserver::new());
    let t = Arc::clone(&tracer);
    let runtime = Runtime::new().with_observer(move |e: &Event| t.on_event_for_test(e));
    // Two items run `load` at once; item 1 ends first: exactly its span closes.
    let wf = flow(&KEYED, None, |ctx: Ctx<E>, ()| async move {
        let c = &ctx;
        let v = ctx
            .map(NodeId(3), [100u64, 50], 0, |d| async move {
                c.step(NodeId(4), async move {
                    tokio::time::sleep(ms(d)).await;
                    Ok::<u64, E>(d)
                })
                .await
            })
            .await?;
        Ok(v)
    });
    let run = tokio::spawn(async move { runtime.run(&wf, ()).await });
    tokio::time::sleep(ms(10)).await;
    assert_eq!(tracer.open_runs(), 1, "the run in flight has its spans");
    assert_eq!(tracer.open_steps(), [(4, 1, Some(0)), (4, 2, Some(1))]);
    tokio::time::sleep(ms(50)).await;
    assert_eq!(tracer.open_steps(), [(4, 1, Some(0))]);
    within(run).await.unwrap().unwrap();
    assert_eq!(tracer.open_runs(), 0);

    // A run whose future is dropped mid-run frees its spans too.
    let t = Arc::clone(&tracer);
    let runtime = Runtime::new().with_observer(move |e: &Event| t.on_event_for_test(e));
    let g = steps("dropped", &["a"]);
    let wf = flow(g, None, |ctx: Ctx<E>, ()| async move {
        ctx.step(NodeId(2), core::future::pending::<()>()).await?;
        Ok(())
    });
    assert!(
        tokio::time::timeout(ms(10), runtime.run(&wf, ()))
            .await
            .is_err()
    );
    assert_eq!(tracer.open_runs(), 0);
    assert!(tracer.open_steps().is_empty());
}

#[cfg(feature = "tracing")]
trait ForTest {
    fn on_event_for_test(&self, e: &Event);
}

#[cfg(feature = "tracing")]
impl ForTest for flow_runtime::TracingObserver {
    fn on_event_for_test(&self, e: &Event) {
        flow_runtime::Observer::on_event(self, e);
    }
}

#[cfg(feature = "progress")]
#[tokio::test(start_paused = true)]
async fn a_progress_line_ends_only_the_execution_that_ended() {
    use flow_runtime::ProgressObserver;
    let progress = ProgressObserver::hidden();
    let runtime = Runtime::new().with_observer(progress.clone());
    // Item 1 fails at 50 ms (tolerated) while item 0 runs until 100 ms.
    let wf = flow(&KEYED, None, |ctx: Ctx<E>, ()| async move {
        let c = &ctx;
        let v = ctx
            .map_tolerant(NodeId(3), [100u64, 50], 0, 1, |d| async move {
                c.step(NodeId(4), async move {
                    tokio::time::sleep(ms(d)).await;
                    if d == 50 { Err(E::Item(1)) } else { Ok(d) }
                })
                .await
            })
            .await?;
        Ok(v.len())
    });
    let run = tokio::spawn(async move { runtime.run(&wf, ()).await });
    tokio::time::sleep(ms(75)).await;
    let load = |lines: Vec<String>| lines.into_iter().find(|l| l.contains("load")).unwrap();
    let at_75 = load(progress.lines());
    assert!(at_75.contains("running"), "{at_75}");
    within(run).await.unwrap().unwrap();
    let at_end = load(progress.lines());
    assert!(at_end.contains("failed after 1 attempt"), "{at_end}");
    assert!(!at_end.contains("running"), "{at_end}");
}
