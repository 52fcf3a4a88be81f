//! Retry and per-attempt timeout semantics, checked exactly on tokio's paused clock.

mod common;

use core::time::Duration;
use std::collections::BTreeSet;

use common::{Act, Collect, E, Script, after, flow, is_busy, ms, steps, within};
use flow_runtime::__private::StepPolicy;
use flow_runtime::error::GaveUp;
use flow_runtime::policy::{Backoff, Jitter, On, Retry};
use flow_runtime::{Error, ErrorKind, EventKind, Failure, NodeId, Runtime, StepError, Workflow};
use tokio::time::Instant;

/// A flow of one step, `fetch` (node 2), run under `rules` and `timeout`.
fn one_step(
    script: &Script,
    rules: Vec<Retry<E>>,
    timeout: Option<Duration>,
) -> impl Workflow<Input = (), Output = u32, Error = E> + 'static {
    let s = script.clone();
    flow(steps("one_step", &["fetch"]), None, move |ctx, ()| {
        let s = s.clone();
        let rules = rules.clone();
        async move {
            let policy = StepPolicy {
                retry: &rules,
                timeout,
            };
            let v = ctx.step_with(NodeId(2), policy, || s.attempt()).await?;
            Ok(v)
        }
    })
}

/// Runs `one_step` with a fixed seed; returns the result and the virtual time it took.
async fn run_one(
    script: &Script,
    rules: Vec<Retry<E>>,
    timeout: Option<Duration>,
) -> (Result<u32, Error<E>>, Duration) {
    let wf = one_step(script, rules, timeout);
    let t0 = Instant::now();
    let r = within(Runtime::new().with_seed(1).run(&wf, ())).await;
    (r, t0.elapsed())
}

fn step_error(r: Result<u32, Error<E>>) -> StepError<E> {
    match r.expect_err("the run should fail").into_kind() {
        ErrorKind::Step(s) => s,
        other => panic!("expected a step failure, got {other:?}"),
    }
}

/// The attempts' numbers and failures, for exact comparison.
fn attempts(e: &StepError<E>) -> Vec<(u32, String)> {
    e.attempts()
        .iter()
        .map(|a| (a.number, format!("{:?}", a.failure)))
        .collect()
}

fn ms_list(v: &[u64]) -> Vec<Duration> {
    v.iter().map(|&n| ms(n)).collect()
}

#[tokio::test(start_paused = true)]
async fn exponential_delays_double() {
    let s = Script::new([
        Act::Err(E::Busy),
        Act::Err(E::Busy),
        Act::Err(E::Busy),
        Act::Ok(7),
    ]);
    let rule = Retry::new(4).with_backoff(Backoff::exponential(ms(200), 2.0));
    let (r, took) = run_one(&s, vec![rule], None).await;
    assert_eq!(r.unwrap(), 7);
    // Attempt n+1 starts delay(n) after attempt n failed: 200, 400, 800.
    assert_eq!(s.starts(), ms_list(&[0, 200, 600, 1400]));
    assert_eq!(took, ms(1400));
    assert_eq!(s.calls(), 4);
}

#[tokio::test(start_paused = true)]
async fn delays_are_capped_at_max_delay() {
    let s = Script::new([Act::Err(E::Busy)]);
    let rule =
        Retry::new(5).with_backoff(Backoff::exponential(ms(200), 2.0).with_max_delay(ms(500)));
    let (r, took) = run_one(&s, vec![rule], None).await;
    // Delays 200, 400, 500, 500.
    assert_eq!(s.starts(), ms_list(&[0, 200, 600, 1100, 1600]));
    assert_eq!(took, ms(1600));
    let e = step_error(r);
    assert_eq!(e.gave_up(), GaveUp::RetriesExhausted);
    assert_eq!(e.attempts().len(), 5);
}

#[tokio::test(start_paused = true)]
async fn max_attempts_counts_the_first_attempt() {
    let s = Script::new([Act::Err(E::Busy)]);
    let rule = Retry::new(3).with_backoff(Backoff::constant(ms(100)));
    let (r, took) = run_one(&s, vec![rule], None).await;
    assert_eq!(s.calls(), 3);
    assert_eq!(took, ms(200));
    let e = step_error(r);
    assert_eq!(e.step(), "fetch");
    assert_eq!(e.node(), NodeId(2));
    assert_eq!(e.gave_up(), GaveUp::RetriesExhausted);
    assert_eq!(
        attempts(&e),
        [
            (1, "Error(Busy)".to_owned()),
            (2, "Error(Busy)".to_owned()),
            (3, "Error(Busy)".to_owned()),
        ]
    );
    assert!(
        e.attempts()
            .iter()
            .all(|a| a.elapsed == Some(Duration::ZERO))
    );
    assert_eq!(e.error(), Some(&E::Busy));

    // max_attempts = 1: no retry at all, but it is still "exhausted", not "not retried".
    let s = Script::new([Act::Err(E::Busy)]);
    let (r, took) = run_one(
        &s,
        vec![Retry::new(1).with_backoff(Backoff::constant(ms(100)))],
        None,
    )
    .await;
    assert_eq!((s.calls(), took), (1, Duration::ZERO));
    assert_eq!(step_error(r).gave_up(), GaveUp::RetriesExhausted);
}

/// Runs a step that fails once then succeeds, under `jitter` on a 800 ms delay, for seeds
/// 0..200; returns each seed's observed sleep and the delay the runtime announced.
async fn jittered_delays(jitter: Jitter) -> Vec<(Duration, Duration)> {
    let d = ms(800);
    let mut out = Vec::new();
    for seed in 0..200 {
        let s = Script::new([Act::Err(E::Busy), Act::Ok(1)]);
        let wf = one_step(
            &s,
            vec![
                Retry::new(2)
                    .with_backoff(Backoff::constant(d))
                    .with_jitter(jitter),
            ],
            None,
        );
        let events = Collect::default();
        let r = within(
            Runtime::new()
                .with_seed(seed)
                .with_observer(events.observer())
                .run(&wf, ()),
        )
        .await;
        assert_eq!(r.unwrap(), 1);
        let starts = s.starts();
        assert_eq!(starts.len(), 2);
        let observed = starts[1] - starts[0];
        let announced = events
            .events()
            .iter()
            .find_map(|e| match e.kind {
                EventKind::AttemptFailed { retry_in, .. } => retry_in,
                _ => None,
            })
            .expect("an AttemptFailed event with a delay");
        // tokio's timer has millisecond ticks: a sleep ends on the first tick at or after its
        // deadline.
        assert!(
            observed >= announced && observed < announced + ms(1),
            "seed {seed}: slept {observed:?} for a delay of {announced:?}"
        );
        out.push((observed, announced));
    }
    out
}

#[tokio::test(start_paused = true)]
async fn full_jitter_stays_within_zero_and_d() {
    let d = ms(800);
    let got = jittered_delays(Jitter::Full).await;
    for &(observed, announced) in &got {
        assert!(
            announced <= d && observed <= d,
            "{observed:?} / {announced:?}"
        );
    }
    let distinct: BTreeSet<_> = got.iter().map(|p| p.1).collect();
    assert!(
        distinct.len() > 150,
        "only {} distinct delays",
        distinct.len()
    );
    let min = got.iter().map(|p| p.0).min().unwrap();
    let max = got.iter().map(|p| p.0).max().unwrap();
    // 200 uniform draws on [0, 800]: the chance of none below 200 (or above 600) is 0.75^200.
    assert!(min < ms(200) && max > ms(600), "min {min:?}, max {max:?}");
}

#[tokio::test(start_paused = true)]
async fn equal_jitter_stays_within_half_d_and_d() {
    let d = ms(800);
    let got = jittered_delays(Jitter::Equal).await;
    for &(observed, announced) in &got {
        assert!(announced >= d / 2 && announced <= d, "{announced:?}");
        assert!(observed >= d / 2 && observed <= d, "{observed:?}");
    }
    let distinct: BTreeSet<_> = got.iter().map(|p| p.1).collect();
    assert!(
        distinct.len() > 150,
        "only {} distinct delays",
        distinct.len()
    );
    let min = got.iter().map(|p| p.0).min().unwrap();
    let max = got.iter().map(|p| p.0).max().unwrap();
    assert!(min < ms(500) && max > ms(700), "min {min:?}, max {max:?}");
}

#[tokio::test(start_paused = true)]
async fn same_seed_same_jitter() {
    let mut seen = Vec::new();
    for _ in 0..2 {
        let s = Script::new([Act::Err(E::Busy), Act::Err(E::Busy), Act::Ok(1)]);
        let wf = one_step(
            &s,
            vec![
                Retry::new(3)
                    .with_backoff(Backoff::exponential(ms(1000), 2.0))
                    .with_jitter(Jitter::Full),
            ],
            None,
        );
        Runtime::new().with_seed(99).run(&wf, ()).await.unwrap();
        seen.push(s.starts());
    }
    assert_eq!(seen[0], seen[1]);
}

#[tokio::test(start_paused = true)]
async fn timed_out_attempt_is_retried() {
    let s = Script::new([Act::Hang, Act::Ok(5)]);
    let rule = Retry::new(3).with_backoff(Backoff::constant(ms(200)));
    let (r, took) = run_one(&s, vec![rule], Some(ms(1000))).await;
    assert_eq!(r.unwrap(), 5);
    // The first attempt times out at 1000 ms, then the 200 ms delay.
    assert_eq!(s.starts(), ms_list(&[0, 1200]));
    assert_eq!(took, ms(1200));
    assert_eq!(s.dropped(), 1, "the timed-out attempt is dropped");
}

#[tokio::test(start_paused = true)]
async fn timeout_without_retry_fails_the_step() {
    let s = Script::new([Act::Hang]);
    let (r, took) = run_one(&s, vec![], Some(ms(1000))).await;
    assert_eq!(took, ms(1000));
    let e = step_error(r);
    assert!(e.is_timeout());
    assert_eq!(e.gave_up(), GaveUp::NotRetried);
    assert_eq!(attempts(&e), [(1, "TimedOut(1s)".to_owned())]);
    assert_eq!(e.attempts()[0].elapsed, Some(ms(1000)));
    assert_eq!(s.dropped(), 1);

    // An attempt that finishes before its timeout is not affected by it.
    let s = Script::new([after(999, Act::Ok(3))]);
    let (r, took) = run_one(&s, vec![], Some(ms(1000))).await;
    assert_eq!((r.unwrap(), took), (3, ms(999)));
}

#[tokio::test(start_paused = true)]
async fn max_elapsed_stops_early() {
    // Each attempt takes 100 ms and fails; 300 ms between attempts; budget 1 s.
    // Attempt 1: 0-100, retry at 400 <= 1000. Attempt 2: 400-500, retry at 800.
    // Attempt 3: 800-900, a retry would start at 1200 > 1000: give up at 900.
    let s = Script::new([after(100, Act::Err(E::Busy))]);
    let rule = Retry::new(10)
        .with_backoff(Backoff::constant(ms(300)))
        .with_max_elapsed(ms(1000));
    let (r, took) = run_one(&s, vec![rule], None).await;
    assert_eq!(s.starts(), ms_list(&[0, 400, 800]));
    assert_eq!(took, ms(900));
    let e = step_error(r);
    assert_eq!(e.gave_up(), GaveUp::BudgetExhausted);
    assert_eq!(e.attempts().len(), 3);
    assert!(e.attempts().iter().all(|a| a.elapsed == Some(ms(100))));

    // A retry that would start exactly at the budget is still made.
    let s = Script::new([after(100, Act::Err(E::Busy))]);
    let rule = Retry::new(10)
        .with_backoff(Backoff::constant(ms(300)))
        .with_max_elapsed(ms(1200));
    let (r, took) = run_one(&s, vec![rule], None).await;
    assert_eq!(s.starts(), ms_list(&[0, 400, 800, 1200]));
    assert_eq!(took, ms(1300));
    assert_eq!(step_error(r).gave_up(), GaveUp::BudgetExhausted);
}

fn two_rules() -> Vec<Retry<E>> {
    vec![
        Retry::new(3)
            .when(is_busy)
            .with_backoff(Backoff::exponential(ms(100), 2.0)),
        Retry::new(2)
            .on(On::Timeouts)
            .with_backoff(Backoff::exponential(ms(50), 3.0)),
    ]
}

#[tokio::test(start_paused = true)]
async fn two_rules_have_separate_counters() {
    // busy (rule 1, n=1: 100 ms), timeout (rule 2, n=1: 50 ms), busy (rule 1, n=2: 200 ms),
    // timeout (rule 2, n=2 = its max: give up).
    let s = Script::new([Act::Err(E::Busy), Act::Hang, Act::Err(E::Busy), Act::Hang]);
    let (r, took) = run_one(&s, two_rules(), Some(ms(500))).await;
    assert_eq!(s.starts(), ms_list(&[0, 100, 650, 850]));
    assert_eq!(took, ms(1350));
    let e = step_error(r);
    assert_eq!(e.gave_up(), GaveUp::RetriesExhausted);
    assert_eq!(
        attempts(&e),
        [
            (1, "Error(Busy)".to_owned()),
            (2, "TimedOut(500ms)".to_owned()),
            (3, "Error(Busy)".to_owned()),
            (4, "TimedOut(500ms)".to_owned()),
        ]
    );

    // Four attempts in all, more than either rule's max, succeed: each rule counts its own.
    let s = Script::new([Act::Err(E::Busy), Act::Hang, Act::Err(E::Busy), Act::Ok(4)]);
    let (r, took) = run_one(&s, two_rules(), Some(ms(500))).await;
    assert_eq!(r.unwrap(), 4);
    assert_eq!(s.starts(), ms_list(&[0, 100, 650, 850]));
    assert_eq!(took, ms(850));

    // The third busy failure exhausts rule 1 although rule 2 has retries left.
    let s = Script::new([
        Act::Err(E::Busy),
        Act::Hang,
        Act::Err(E::Busy),
        Act::Err(E::Busy),
    ]);
    let (r, took) = run_one(&s, two_rules(), Some(ms(500))).await;
    assert_eq!(s.starts(), ms_list(&[0, 100, 650, 850]));
    assert_eq!(took, ms(850));
    let e = step_error(r);
    assert_eq!(e.gave_up(), GaveUp::RetriesExhausted);
    assert_eq!(e.attempts().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_failure_no_rule_matches_is_not_retried() {
    let s = Script::new([Act::Err(E::Broken)]);
    let (r, took) = run_one(&s, two_rules(), Some(ms(500))).await;
    assert_eq!((s.calls(), took), (1, Duration::ZERO));
    let e = step_error(r);
    assert_eq!(e.gave_up(), GaveUp::NotRetried);
    assert_eq!(e.error(), Some(&E::Broken));

    // After a retried failure, a non-matching one ends the step and keeps both attempts.
    let s = Script::new([Act::Err(E::Busy), Act::Err(E::Broken), Act::Ok(1)]);
    let (r, took) = run_one(&s, two_rules(), Some(ms(500))).await;
    assert_eq!((s.calls(), took), (2, ms(100)));
    let e = step_error(r);
    assert_eq!(e.gave_up(), GaveUp::NotRetried);
    assert_eq!(
        attempts(&e),
        [
            (1, "Error(Busy)".to_owned()),
            (2, "Error(Broken)".to_owned())
        ]
    );
}

fn plain_panic() -> Result<(), E> {
    panic!("plain")
}

fn other_panic() -> Result<(), E> {
    std::panic::panic_any(7_i32)
}

#[tokio::test(start_paused = true)]
async fn a_panic_is_caught_and_not_retried() {
    let s = Script::new([Act::Panic("disk on fire"), Act::Ok(1)]);
    let (r, took) = run_one(&s, vec![Retry::new(5)], None).await;
    assert_eq!((s.calls(), took), (1, Duration::ZERO));
    let e = step_error(r);
    assert!(e.is_panic());
    assert_eq!(e.gave_up(), GaveUp::NotRetried);
    assert!(matches!(e.failure(), Failure::Panicked(m) if m == "disk on fire"));
    assert_eq!(e.to_string(), "step `fetch` panicked: disk on fire");

    // A `&'static str` payload, and one that is not a string.
    let s = Script::new([Act::Ok(0)]);
    let wf = flow(
        steps("panics", &["a", "b"]),
        None,
        move |ctx, ()| async move {
            let a = ctx.step(NodeId(2), async { plain_panic() }).await;
            let b = ctx.step(NodeId(3), async { other_panic() }).await;
            Ok((a.unwrap_err(), b.unwrap_err()))
        },
    );
    let (a, b) = Runtime::new().run(&wf, ()).await.unwrap();
    assert!(matches!(a.failure(), Failure::Panicked(m) if m == "plain"));
    assert!(matches!(b.failure(), Failure::Panicked(m) if m == "<non-string panic payload>"));
    assert_eq!(s.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn zero_delay_retry_does_not_touch_the_clock() {
    let s = Script::new([
        Act::Err(E::Busy),
        Act::Err(E::Busy),
        Act::Err(E::Busy),
        Act::Err(E::Busy),
        Act::Ok(9),
    ]);
    // No backoff, and a jitter that has nothing to randomise.
    let rule = Retry::new(5).with_jitter(Jitter::Full);
    let (r, took) = run_one(&s, vec![rule], None).await;
    assert_eq!(r.unwrap(), 9);
    assert_eq!(s.calls(), 5);
    assert_eq!(s.starts(), vec![Duration::ZERO; 5]);
    assert_eq!(took, Duration::ZERO);
}

/// The same on a runtime without a timer: any sleep, even a zero one, would panic there
/// ("timers are disabled"), so this proves zero-delay retries never reach tokio's timer (which
/// rounds every sleep up to a 1 ms tick on a real clock).
#[test]
fn zero_delay_retry_needs_no_timer() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let s = Script::new([Act::Err(E::Busy), Act::Err(E::Busy), Act::Ok(9)]);
    let wf = one_step(&s, vec![Retry::new(3).with_jitter(Jitter::Equal)], None);
    let r = rt.block_on(Runtime::new().with_seed(3).run(&wf, ()));
    assert_eq!(r.unwrap(), 9);
    assert_eq!(s.calls(), 3);
}
