//! Exact timelines, written for the mutants of `flow-runtime/src/timeline.rs` that the other
//! tests (tests/observe.rs at the root, which checks a few slices of one run) let survive
//! (`cargo mutants`, see MUTANTS.md): two steps retrying at the same time in one run (so an
//! attempt or a failure must be matched to its own step, not to whichever is open), a failed
//! run with its compensation, and the exact slices, Chrome trace and Mermaid gantt drawn
//! from them.

mod common;

use core::time::Duration;

use common::{Act, E, Script, after, flow, graph, ms, steps, within};
use flow_runtime::__private::StepPolicy;
use flow_runtime::__private::{join, run_nested, try_join};
use flow_runtime::graph::NodeKind;
use flow_runtime::policy::{Backoff, Retry};
use flow_runtime::timeline::{Slice, SliceKind, SliceOutcome};
use flow_runtime::{EventKind, NodeId, RunId, Runtime, Timeline};

/// Runs `a`, then `left` and `right` in parallel, both retrying at once, then `c` with
/// `last`; `a` has a compensation taking 5 ms.
///
/// - `left` (node 3): fails at 0, waits 30 ms, succeeds at 40 (attempt 2 takes 10 ms);
/// - `right` (node 4): fails at 0, 10, 20 (10 ms apart), its 4th attempt fails at 35 (it
///   took 5 ms, while `left`'s 2nd attempt was open), its 5th succeeds at 45.
async fn run(last: Act) -> (Timeline, RunId) {
    let timeline = Timeline::new();
    let run = run_on(&timeline, last).await;
    (timeline, run)
}

/// [`run`], recorded by `timeline`; returns the run's id.
async fn run_on(timeline: &Timeline, last: Act) -> RunId {
    let g = steps("timeline", &["a", "left", "right", "c"]);
    let left = Script::new([Act::Err(E::Busy), after(10, Act::Ok(1))]);
    let right = Script::new([
        Act::Err(E::Busy),
        Act::Err(E::Busy),
        Act::Err(E::Busy),
        after(5, Act::Err(E::Busy)),
        Act::Ok(2),
    ]);
    let last = Script::new([last]);
    let wf = flow(g, None, move |ctx, ()| {
        let (left, right, last) = (left.clone(), right.clone(), last.clone());
        async move {
            let r = ctx.step(NodeId(2), async { Ok::<u32, E>(1) }).await;
            let a = ctx.compensate(NodeId(2), r, |_| async {
                tokio::time::sleep(ms(5)).await;
                Ok::<(), E>(())
            })?;
            let slow = [Retry::new(2).with_backoff(Backoff::constant(ms(30)))];
            let fast = [Retry::new(5).with_backoff(Backoff::constant(ms(10)))];
            let (l, r) = try_join(
                ctx.step_with(
                    NodeId(3),
                    StepPolicy {
                        retry: &slow,
                        timeout: None,
                    },
                    || left.attempt(),
                ),
                ctx.step_with(
                    NodeId(4),
                    StepPolicy {
                        retry: &fast,
                        timeout: None,
                    },
                    || right.attempt(),
                ),
            )
            .await?;
            let c = ctx.step(NodeId(5), last.attempt()).await?;
            Ok(a + l + r + c)
        }
    });
    let rt = Runtime::new().with_observer(timeline.clone());
    let _ = within(rt.run(&wf, ())).await;
    timeline.events().last().unwrap().1.run
}

/// `(kind, label, start ms, end ms, outcome)` of every slice.
fn summary(slices: &[Slice]) -> Vec<(SliceKind, String, u128, u128, SliceOutcome)> {
    slices
        .iter()
        .map(|s| {
            (
                s.kind,
                s.label(),
                s.start.as_millis(),
                s.end.as_millis(),
                s.outcome.clone(),
            )
        })
        .collect()
}

fn failed(e: &str) -> SliceOutcome {
    SliceOutcome::Failed(e.into())
}

#[tokio::test(start_paused = true)]
async fn concurrent_retries_are_matched_to_their_own_step() {
    let (timeline, run) = run(Act::Ok(4)).await;
    use SliceKind::*;
    use SliceOutcome::Ok as Done;
    let run_label = format!("timeline {run}");
    assert_eq!(
        summary(&timeline.slices()),
        [
            (Run, run_label, 0, 45, Done),
            (Step, "a".into(), 0, 0, Done),
            (Step, "left".into(), 0, 40, Done),
            (Attempt, "left #1".into(), 0, 0, failed("busy")),
            (Backoff, "backoff before left #2".into(), 0, 30, Done),
            (Step, "right".into(), 0, 45, Done),
            (Attempt, "right #1".into(), 0, 0, failed("busy")),
            (Backoff, "backoff before right #2".into(), 0, 10, Done),
            (Attempt, "right #2".into(), 10, 10, failed("busy")),
            (Backoff, "backoff before right #3".into(), 10, 20, Done),
            (Attempt, "right #3".into(), 20, 20, failed("busy")),
            (Backoff, "backoff before right #4".into(), 20, 30, Done),
            (Attempt, "left #2".into(), 30, 40, Done),
            (Attempt, "right #4".into(), 30, 35, failed("busy")),
            (Backoff, "backoff before right #5".into(), 35, 45, Done),
            (Attempt, "right #5".into(), 45, 45, Done),
            (Step, "c".into(), 45, 45, Done),
        ]
    );
    // A step's slice carries its last attempt.
    let slices = timeline.slices();
    let attempt = |name: &str| {
        slices
            .iter()
            .find(|s| s.kind == Step && s.name == name)
            .unwrap()
            .attempt
    };
    assert_eq!((attempt("a"), attempt("left"), attempt("right")), (1, 2, 5));
}

#[tokio::test(start_paused = true)]
async fn a_failed_run_ends_its_steps_and_runs_its_compensation() {
    let (timeline, run) = run(after(3, Act::Err(E::Broken))).await;
    let all = summary(&timeline.slices());
    let tail = &all[all.len() - 2..];
    assert_eq!(
        tail,
        [
            (SliceKind::Step, "c".into(), 45, 48, failed("broken")),
            (
                SliceKind::Compensation,
                "compensate a".into(),
                48,
                53,
                SliceOutcome::Ok
            ),
        ]
    );
    let (kind, label, start, end, outcome) = &all[0];
    assert_eq!(
        (*kind, label.as_str(), *start),
        (SliceKind::Run, &*format!("timeline {run}"), 0)
    );
    assert_eq!(*end, 53, "the run ends after its compensation");
    assert!(
        matches!(outcome, SliceOutcome::Failed(e) if e.contains("broken")),
        "{outcome:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn events_are_kept_in_order_and_clear_forgets_them() {
    let (timeline, run) = run(Act::Ok(4)).await;
    let events = timeline.events();
    assert_eq!(events[0].0, Duration::ZERO);
    assert_eq!(events[0].1.kind, EventKind::RunStarted);
    assert!(events.iter().all(|(_, e)| e.run == run));
    assert!(events.windows(2).all(|w| w[0].0 <= w[1].0));
    let (at, last) = events.last().unwrap();
    assert_eq!((*at, &last.kind), (ms(45), &EventKind::RunCompleted));

    timeline.clear();
    assert!(timeline.events().is_empty());
    assert!(timeline.slices().is_empty());
    // A cleared timeline starts its clock again at its next event.
    tokio::time::sleep(ms(100)).await;
    let second = run_on(&timeline, Act::Ok(4)).await;
    let again = timeline.events();
    assert_eq!(again[0].0, Duration::ZERO);
    assert_eq!(again[0].1.run, second);
    assert_eq!(again.len(), events.len());
}

/// The Mermaid gantt of the failed run: a bar per step (per attempt for retried steps), failed
/// ones `crit`, a zero-length bar drawn 1 ms long, the compensation last.
#[tokio::test(start_paused = true)]
async fn gantt_of_the_failed_run() {
    let (timeline, run) = run(after(3, Act::Err(E::Broken))).await;
    let expected = format!(
        "gantt
    title flow timeline
    dateFormat x
    axisFormat %M:%S.%L
    section timeline {run}
    a :done, s0, 0, 1
    left attempt 1 :crit, s1, 0, 1
    right attempt 1 :crit, s2, 0, 1
    right attempt 2 :crit, s3, 10, 11
    right attempt 3 :crit, s4, 20, 21
    left attempt 2 :done, s5, 30, 40
    right attempt 4 :crit, s6, 30, 35
    right attempt 5 :done, s7, 45, 46
    c :crit, s8, 45, 48
    compensate a :done, s9, 48, 53
"
    );
    assert_eq!(timeline.to_mermaid_gantt(), expected);
}

/// The Chrome trace of the failed run: every slice's `B` event exactly (track, time, name,
/// category, arguments), and an `E` event for each on the same track at the slice's end.
#[tokio::test(start_paused = true)]
async fn chrome_trace_of_the_failed_run() {
    let (timeline, run) = run(after(3, Act::Err(E::Broken))).await;
    let json = timeline.to_chrome_trace();
    let n = run.0;
    assert!(json.starts_with("{\"traceEvents\":[\n{\"ph\":\"M\",\"pid\":1,\"tid\":0,\"name\":\"process_name\",\"args\":{\"name\":\"flow\"}},\n"), "{json}");
    assert!(
        json.ends_with("\n],\"displayTimeUnit\":\"ms\"}\n"),
        "{json}"
    );
    let lines: Vec<&str> = json.lines().map(|l| l.trim_end_matches(',')).collect();
    let tracks: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("thread_name"))
        .collect();
    assert_eq!(
        tracks,
        [
            r#"{"ph":"M","pid":1,"tid":1,"name":"thread_name","args":{"name":"track 1"}}"#,
            r#"{"ph":"M","pid":1,"tid":2,"name":"thread_name","args":{"name":"track 2"}}"#,
        ]
    );
    let step = |tid: u32, ts: u32, name: &str, attempt: u32, outcome: &str| {
        format!(
            r#"{{"ph":"B","pid":1,"tid":{tid},"ts":{ts},"name":"{name}","cat":"step","args":{{"run":{n},"workflow":"timeline","step":"{name}","attempt":{attempt},"outcome":{outcome}}}}}"#
        )
    };
    let attempt = |tid: u32, ts: u32, name: &str, attempt: u32, outcome: &str| {
        format!(
            r#"{{"ph":"B","pid":1,"tid":{tid},"ts":{ts},"name":"{name} #{attempt}","cat":"attempt","args":{{"run":{n},"workflow":"timeline","step":"{name}","attempt":{attempt},"outcome":{outcome}}}}}"#
        )
    };
    let backoff = |tid: u32, ts: u32, name: &str, next: u32| {
        format!(
            r#"{{"ph":"B","pid":1,"tid":{tid},"ts":{ts},"name":"backoff before {name} #{next}","cat":"backoff","args":{{"run":{n},"workflow":"timeline","step":"{name}","outcome":"ok"}}}}"#
        )
    };
    let busy = r#""failed","error":"busy""#;
    let ok = r#""ok""#;
    let begins: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains(r#""ph":"B""#))
        .collect();
    assert_eq!(
        begins,
        [
            format!(
                r#"{{"ph":"B","pid":1,"tid":1,"ts":0,"name":"timeline {run}","cat":"workflow","args":{{"run":{n},"workflow":"timeline","outcome":"failed","error":"workflow `timeline` failed: step `c` failed: broken"}}}}"#
            ),
            step(1, 0, "a", 1, ok),
            step(1, 0, "left", 2, ok),
            attempt(1, 0, "left", 1, busy),
            backoff(1, 0, "left", 2),
            step(2, 0, "right", 5, ok),
            attempt(2, 0, "right", 1, busy),
            backoff(2, 0, "right", 2),
            attempt(2, 10_000, "right", 2, busy),
            backoff(2, 10_000, "right", 3),
            attempt(2, 20_000, "right", 3, busy),
            backoff(2, 20_000, "right", 4),
            attempt(1, 30_000, "left", 2, ok),
            attempt(2, 30_000, "right", 4, busy),
            backoff(2, 35_000, "right", 5),
            attempt(2, 45_000, "right", 5, ok),
            step(1, 45_000, "c", 1, r#""failed","error":"broken""#),
            format!(
                r#"{{"ph":"B","pid":1,"tid":1,"ts":48000,"name":"compensate a","cat":"compensation","args":{{"run":{n},"workflow":"timeline","step":"a","outcome":"ok"}}}}"#
            ),
        ]
    );
    // One `E` per slice, on its track, at its end (in µs), in time order.
    let mut ends: Vec<(u32, u32)> = lines
        .iter()
        .filter(|l| l.contains(r#""ph":"E""#))
        .map(|l| {
            let v: Vec<u32> = l
                .split(|c: char| !c.is_ascii_digit())
                .filter(|d| !d.is_empty())
                .map(|d| d.parse().unwrap())
                .collect();
            (v[1], v[2]) // pid, tid, ts
        })
        .collect();
    assert!(ends.windows(2).all(|w| w[0].1 <= w[1].1), "{json}");
    ends.sort_unstable();
    let mut expected: Vec<(u32, u32)> = vec![
        (1, 53_000), // run
        (1, 0),      // a
        (1, 40_000), // left
        (1, 0),      // left #1
        (1, 30_000), // backoff
        (2, 45_000), // right
        (2, 0),
        (2, 10_000),
        (2, 10_000),
        (2, 20_000),
        (2, 20_000),
        (2, 30_000),
        (1, 40_000), // left #2
        (2, 35_000),
        (2, 45_000),
        (2, 45_000),
        (1, 48_000), // c
        (1, 53_000), // compensate a
    ];
    expected.sort_unstable();
    assert_eq!(ends, expected);
}

// ---------------------------------------------------------------- other endings

/// `a` (whose compensation fails after 7 ms), then `b`, which hangs; cancelled at 100 ms.
#[tokio::test(start_paused = true)]
async fn a_cancelled_run_with_a_failing_compensation() {
    let g = steps("cancelled", &["a", "b"]);
    let wf = flow(g, None, |ctx, ()| async move {
        let r = ctx.step(NodeId(2), async { Ok::<u32, E>(1) }).await;
        let a = ctx.compensate(NodeId(2), r, |_| async {
            tokio::time::sleep(ms(7)).await;
            Err::<(), E>(E::Undo("a"))
        })?;
        let b = ctx
            .step(NodeId(3), Script::new([Act::Hang]).attempt())
            .await?;
        Ok(a + b)
    });
    let timeline = Timeline::new();
    let h = Runtime::new().with_observer(timeline.clone()).spawn(wf, ());
    tokio::time::sleep(ms(100)).await;
    h.cancel();
    let _ = within(h).await;
    let run = timeline.events()[0].1.run;
    assert_eq!(
        summary(&timeline.slices()),
        [
            (
                SliceKind::Run,
                format!("cancelled {run}"),
                0,
                107,
                SliceOutcome::Cancelled
            ),
            (SliceKind::Step, "a".into(), 0, 0, SliceOutcome::Ok),
            // Dropped by the cancellation: it ends with its run, unfinished.
            (
                SliceKind::Step,
                "b".into(),
                0,
                107,
                SliceOutcome::Unfinished
            ),
            (
                SliceKind::Compensation,
                "compensate a".into(),
                100,
                107,
                failed("undo of a failed")
            ),
        ]
    );
    let json = timeline.to_chrome_trace();
    let n = run.0;
    for line in [
        format!(
            r#"{{"ph":"B","pid":1,"tid":1,"ts":0,"name":"cancelled {run}","cat":"workflow","args":{{"run":{n},"workflow":"cancelled","outcome":"cancelled"}}}}"#
        ),
        format!(
            r#"{{"ph":"B","pid":1,"tid":1,"ts":0,"name":"b","cat":"step","args":{{"run":{n},"workflow":"cancelled","step":"b","attempt":1,"outcome":"unfinished"}}}}"#
        ),
        format!(
            r#"{{"ph":"B","pid":1,"tid":2,"ts":100000,"name":"compensate a","cat":"compensation","args":{{"run":{n},"workflow":"cancelled","step":"a","outcome":"failed","error":"undo of a failed"}}}}"#
        ),
    ] {
        assert!(json.contains(&line), "{line}\nnot in\n{json}");
    }
    let gantt = timeline.to_mermaid_gantt();
    assert!(gantt.ends_with(&format!(
        "    section cancelled {run}\n    a :done, s0, 0, 1\n    b :active, s1, 0, 107\n    compensate a :crit, s2, 100, 107\n"
    )), "{gantt}");
}

/// Settled parallel branches: `right` fails at once while `left` is still running, so its
/// failure must end `right`, not the first open step with the same attempt number.
#[tokio::test(start_paused = true)]
async fn a_settled_branch_failure_is_matched_to_its_step() {
    let g = steps("settled", &["left", "right"]);
    let wf = flow(g, None, |ctx, ()| async move {
        let (l, r) = join(
            ctx.step(NodeId(2), Script::new([after(20, Act::Ok(1))]).attempt()),
            ctx.step(NodeId(3), Script::new([Act::Err(E::Broken)]).attempt()),
        )
        .await;
        Ok(l.map_or(0, |v| v) + r.map_or(0, |v| v))
    });
    let timeline = Timeline::new();
    let _ = within(Runtime::new().with_observer(timeline.clone()).run(&wf, ())).await;
    let run = timeline.events()[0].1.run;
    assert_eq!(
        summary(&timeline.slices()),
        [
            (
                SliceKind::Run,
                format!("settled {run}"),
                0,
                20,
                SliceOutcome::Ok
            ),
            (SliceKind::Step, "left".into(), 0, 20, SliceOutcome::Ok),
            (SliceKind::Step, "right".into(), 0, 0, failed("broken")),
        ]
    );
}

/// Two runs one after the other on one timeline keep their own ends; a run still in flight
/// when the timeline is read ends, unfinished, at the last event.
#[tokio::test(start_paused = true)]
async fn runs_keep_their_own_ends_and_an_unfinished_run_ends_at_the_last_event() {
    let timeline = Timeline::new();
    let first = run_on(&timeline, Act::Ok(4)).await;
    tokio::time::sleep(ms(5)).await;
    let second = run_on(&timeline, Act::Ok(4)).await;
    let g = steps("hanging", &["wait"]);
    let wf = flow(g, None, |ctx, ()| async move {
        let v = ctx
            .step(NodeId(2), Script::new([Act::Hang]).attempt())
            .await?;
        Ok(v)
    });
    let h = Runtime::new().with_observer(timeline.clone()).spawn(wf, ());
    tokio::time::sleep(ms(10)).await;
    let third = timeline.events().last().unwrap().1.run;
    let runs: Vec<_> = summary(&timeline.slices())
        .into_iter()
        .filter(|s| s.0 == SliceKind::Run || s.1 == "wait")
        .collect();
    assert_eq!(
        runs,
        [
            (
                SliceKind::Run,
                format!("timeline {first}"),
                0,
                45,
                SliceOutcome::Ok
            ),
            (
                SliceKind::Run,
                format!("timeline {second}"),
                50,
                95,
                SliceOutcome::Ok
            ),
            (
                SliceKind::Run,
                format!("hanging {third}"),
                95,
                95,
                SliceOutcome::Unfinished
            ),
            (
                SliceKind::Step,
                "wait".into(),
                95,
                95,
                SliceOutcome::Unfinished
            ),
        ]
    );
    h.cancel();
}

/// A child run drawn inside the step of its parent that ran it, and a caught failure drawn
/// as an instant event on the run's track.
#[tokio::test(start_paused = true)]
async fn a_nested_run_and_a_caught_failure() {
    let child = flow(steps("child", &["inner"]), None, |ctx, ()| async move {
        let v = ctx
            .step(NodeId(2), Script::new([after(4, Act::Ok(1))]).attempt())
            .await?;
        Ok(v)
    });
    let child = std::sync::Arc::new(child);
    let g = graph(
        "parent",
        &[
            ("outer", NodeKind::Step),
            ("fetch", NodeKind::Step),
            ("fallback", NodeKind::Recovery),
        ],
    );
    let wf = flow(g, None, move |ctx, ()| {
        let child = child.clone();
        async move {
            let r = ctx
                .step(NodeId(2), async move {
                    run_nested(&*child, ()).await.map_err(|_| E::Broken)
                })
                .await;
            let v = r?;
            let r = ctx
                .step(
                    NodeId(3),
                    Script::new([after(2, Act::Err(E::Busy))]).attempt(),
                )
                .await;
            let w = ctx
                .catch(r, |_| true, NodeId(4), |_| async { Ok::<u32, E>(10) })
                .await?;
            Ok(v + w)
        }
    });
    let timeline = Timeline::new();
    let out = within(Runtime::new().with_observer(timeline.clone()).run(&wf, ())).await;
    assert_eq!(out.unwrap(), 11);
    let slices = timeline.slices();
    let (parent, child) = (slices[0].run, slices[2].run);
    assert_eq!(slices[2].parent, Some(parent));
    assert_eq!(
        summary(&slices),
        [
            (
                SliceKind::Run,
                format!("parent {parent}"),
                0,
                6,
                SliceOutcome::Ok
            ),
            (SliceKind::Step, "outer".into(), 0, 4, SliceOutcome::Ok),
            (
                SliceKind::Run,
                format!("child {child}"),
                0,
                4,
                SliceOutcome::Ok
            ),
            (SliceKind::Step, "inner".into(), 0, 4, SliceOutcome::Ok),
            (SliceKind::Step, "fetch".into(), 4, 6, failed("busy")),
            (SliceKind::Step, "fallback".into(), 6, 6, SliceOutcome::Ok),
        ]
    );
    // One track: the child run nests in `outer`, its step in the child run.
    let json = timeline.to_chrome_trace();
    let (p, c) = (parent.0, child.0);
    let expected = format!(
        r#"{{"traceEvents":[
{{"ph":"M","pid":1,"tid":0,"name":"process_name","args":{{"name":"flow"}}}},
{{"ph":"M","pid":1,"tid":1,"name":"thread_name","args":{{"name":"track 1"}}}},
{{"ph":"B","pid":1,"tid":1,"ts":0,"name":"parent {parent}","cat":"workflow","args":{{"run":{p},"workflow":"parent","outcome":"ok"}}}},
{{"ph":"B","pid":1,"tid":1,"ts":0,"name":"outer","cat":"step","args":{{"run":{p},"workflow":"parent","step":"outer","attempt":1,"outcome":"ok"}}}},
{{"ph":"B","pid":1,"tid":1,"ts":0,"name":"child {child}","cat":"workflow","args":{{"run":{c},"workflow":"child","outcome":"ok"}}}},
{{"ph":"B","pid":1,"tid":1,"ts":0,"name":"inner","cat":"step","args":{{"run":{c},"workflow":"child","step":"inner","attempt":1,"outcome":"ok"}}}},
{{"ph":"E","pid":1,"tid":1,"ts":4000}},
{{"ph":"E","pid":1,"tid":1,"ts":4000}},
{{"ph":"E","pid":1,"tid":1,"ts":4000}},
{{"ph":"B","pid":1,"tid":1,"ts":4000,"name":"fetch","cat":"step","args":{{"run":{p},"workflow":"parent","step":"fetch","attempt":1,"outcome":"failed","error":"busy"}}}},
{{"ph":"E","pid":1,"tid":1,"ts":6000}},
{{"ph":"E","pid":1,"tid":1,"ts":6000}},
{{"ph":"B","pid":1,"tid":1,"ts":6000,"name":"fallback","cat":"step","args":{{"run":{p},"workflow":"parent","step":"fallback","attempt":1,"outcome":"ok"}}}},
{{"ph":"E","pid":1,"tid":1,"ts":6000}},
{{"ph":"i","s":"t","pid":1,"tid":1,"ts":6000,"name":"caught: fetch","args":{{"error":"step `fetch` failed: busy"}}}}
],"displayTimeUnit":"ms"}}
"#
    );
    assert_eq!(json, expected);
    assert_eq!(
        timeline.to_mermaid_gantt(),
        format!(
            "gantt
    title flow timeline
    dateFormat x
    axisFormat %M:%S.%L
    section parent {parent}
    outer :done, s0, 0, 4
    fetch :crit, s1, 4, 6
    fallback :done, s2, 6, 7
    section child {child}
    inner :done, s3, 0, 4
"
        )
    );
}

// ---------------------------------------------------------------- two runs side by side

/// A one-step run of `name` whose step `step` does `acts` (with `retry` rules).
fn one_step_run(
    name: &'static str,
    step: &'static str,
    acts: Vec<Act>,
    retry: Vec<Retry<E>>,
) -> impl flow_runtime::Workflow<Input = (), Output = u32, Error = E> + 'static {
    let script = Script::new(acts);
    flow(steps(name, &[step]), None, move |ctx, ()| {
        let (script, retry) = (script.clone(), retry.clone());
        async move {
            let policy = StepPolicy {
                retry: &retry,
                timeout: None,
            };
            let v = ctx
                .step_with(NodeId(2), policy, || script.attempt())
                .await?;
            Ok(v)
        }
    })
}

/// Runs `a` at 0 and `b` at 10 ms on one timeline; returns its Chrome trace's `B` events as
/// `(name, tid)`.
async fn side_by_side(
    a: impl flow_runtime::Workflow<Input = (), Output = u32, Error = E> + 'static,
    b: impl flow_runtime::Workflow<Input = (), Output = u32, Error = E> + 'static,
) -> Vec<(String, u64)> {
    let timeline = Timeline::new();
    let rt = Runtime::new().with_observer(timeline.clone());
    let ha = rt.spawn(a, ());
    tokio::time::sleep(ms(10)).await;
    let hb = rt.spawn(b, ());
    assert!(within(ha).await.is_ok());
    assert!(within(hb).await.is_ok());
    timeline
        .to_chrome_trace()
        .lines()
        .filter(|l| l.contains(r#""ph":"B""#))
        .map(|l| {
            let name = l.split(r#""name":""#).nth(1).unwrap();
            let name = name[..name.find('"').unwrap()].to_owned();
            let tid = l.split(r#""tid":"#).nth(1).unwrap();
            let tid = tid[..tid.find(',').unwrap()].parse().unwrap();
            // Run labels carry the run id, which depends on the other tests: keep the name.
            let name = name.split(" run-").next().unwrap().to_owned();
            (name, tid)
        })
        .collect()
}

/// An unrelated run that starts during a step of another run does not nest in it: it gets a
/// track of its own (only a child run nests in its parent's step).
#[tokio::test(start_paused = true)]
async fn an_unrelated_run_does_not_nest_in_another_runs_step() {
    let a = one_step_run("alpha", "long", vec![after(100, Act::Ok(1))], vec![]);
    let b = one_step_run("beta", "short", vec![after(20, Act::Ok(2))], vec![]);
    assert_eq!(
        side_by_side(a, b).await,
        [
            ("alpha".into(), 1),
            ("long".into(), 1),
            ("beta".into(), 2),
            ("short".into(), 2),
        ]
    );
}

/// The attempts of a retried step stay on their step's track even when a lower track has
/// become free (here: `alpha` ends at 15 ms, `beta` runs from 10 to 35, its second attempt
/// from 30).
#[tokio::test(start_paused = true)]
async fn attempts_stay_on_their_steps_track() {
    let a = one_step_run("alpha", "quick", vec![after(15, Act::Ok(1))], vec![]);
    let b = one_step_run(
        "beta",
        "x",
        vec![Act::Err(E::Busy), after(5, Act::Ok(2))],
        vec![Retry::new(2).with_backoff(Backoff::constant(ms(20)))],
    );
    assert_eq!(
        side_by_side(a, b).await,
        [
            ("alpha".into(), 1),
            ("quick".into(), 1),
            ("beta".into(), 2),
            ("x".into(), 2),
            ("x #1".into(), 2),
            ("backoff before x #2".into(), 2),
            // Track 1 is free since 15 ms, but the attempt goes on its step's track.
            ("x #2".into(), 2),
        ]
    );
}

/// Parallel branches: `right` succeeds at once while `left` (the first branch) is still in
/// its first attempt, so the success must end `right`, not the first open step.
#[tokio::test(start_paused = true)]
async fn a_branch_that_succeeds_first_is_matched_to_its_step() {
    let g = steps("racing", &["left", "right"]);
    let wf = flow(g, None, |ctx, ()| async move {
        let (l, r) = try_join(
            ctx.step(NodeId(2), Script::new([after(20, Act::Ok(1))]).attempt()),
            ctx.step(NodeId(3), Script::new([Act::Ok(2)]).attempt()),
        )
        .await?;
        Ok(l + r)
    });
    let timeline = Timeline::new();
    let out = within(Runtime::new().with_observer(timeline.clone()).run(&wf, ())).await;
    assert_eq!(out.unwrap(), 3);
    let run = timeline.events()[0].1.run;
    assert_eq!(
        summary(&timeline.slices()),
        [
            (
                SliceKind::Run,
                format!("racing {run}"),
                0,
                20,
                SliceOutcome::Ok
            ),
            (SliceKind::Step, "left".into(), 0, 20, SliceOutcome::Ok),
            (SliceKind::Step, "right".into(), 0, 0, SliceOutcome::Ok),
        ]
    );
}

/// A step executed twice in one run (a loop): retried the first time, not the second. The
/// gantt draws the first execution's attempts and the second execution as a step.
#[tokio::test(start_paused = true)]
async fn a_step_run_twice_is_drawn_twice() {
    let g = steps("looping", &["x"]);
    let first = Script::new([Act::Err(E::Busy), after(5, Act::Ok(1))]);
    let wf = flow(g, None, move |ctx, ()| {
        let first = first.clone();
        async move {
            let rules = [Retry::new(2)];
            let policy = StepPolicy {
                retry: &rules,
                timeout: None,
            };
            let a = ctx.step_with(NodeId(2), policy, || first.attempt()).await?;
            let b = ctx
                .step(NodeId(2), Script::new([after(3, Act::Ok(2))]).attempt())
                .await?;
            Ok(a + b)
        }
    });
    let timeline = Timeline::new();
    let out = within(Runtime::new().with_observer(timeline.clone()).run(&wf, ())).await;
    assert_eq!(out.unwrap(), 3);
    let run = timeline.events()[0].1.run;
    assert_eq!(
        timeline.to_mermaid_gantt(),
        format!(
            "gantt
    title flow timeline
    dateFormat x
    axisFormat %M:%S.%L
    section looping {run}
    x attempt 1 :crit, s0, 0, 1
    x attempt 2 :done, s1, 0, 5
    x :done, s2, 5, 8
"
        )
    );
}

/// A failure caught inside a parallel branch is drawn on its run's track (track 1), not on
/// the branch's.
#[tokio::test(start_paused = true)]
async fn a_caught_failure_in_a_branch_is_drawn_on_its_runs_track() {
    let g = graph(
        "branches",
        &[
            ("left", NodeKind::Step),
            ("right", NodeKind::Step),
            ("fallback", NodeKind::Recovery),
        ],
    );
    let wf = flow(g, None, |ctx, ()| async move {
        let left = ctx.step(NodeId(2), Script::new([after(10, Act::Ok(1))]).attempt());
        let right = async {
            let r = ctx
                .step(NodeId(3), Script::new([Act::Err(E::Busy)]).attempt())
                .await;
            ctx.catch(r, |_| true, NodeId(4), |_| async { Ok::<u32, E>(5) })
                .await
        };
        let (l, r) = try_join(left, right).await?;
        Ok(l + r)
    });
    let timeline = Timeline::new();
    let out = within(Runtime::new().with_observer(timeline.clone()).run(&wf, ())).await;
    assert_eq!(out.unwrap(), 6);
    let json = timeline.to_chrome_trace();
    let tracks: Vec<(String, String)> = json
        .lines()
        .filter(|l| l.contains(r#""ph":"B""#) || l.contains(r#""ph":"i""#))
        .map(|l| {
            let tid = l.split(r#""tid":"#).nth(1).unwrap();
            let name = l.split(r#""name":""#).nth(1).unwrap();
            (
                name[..name.find('"').unwrap()]
                    .split(" run-")
                    .next()
                    .unwrap()
                    .to_owned(),
                tid[..tid.find(',').unwrap()].to_owned(),
            )
        })
        .collect();
    let expect = |n: &str, t: &str| (n.to_owned(), t.to_owned());
    assert_eq!(
        tracks,
        [
            expect("branches", "1"),
            expect("left", "1"),
            expect("right", "2"),
            expect("fallback", "2"),
            expect("caught: right", "1"),
        ],
        "{json}"
    );
}
