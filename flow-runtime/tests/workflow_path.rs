//! The `#[workflow]` path: `Ctx::surface` hands a step's error back to the ordinary async body,
//! `Ctx::finish` turns the body's result into the run's result.

mod common;

use core::time::Duration;

use common::{Act, E, Log, Script, flow, ms, steps, within};
use flow_runtime::__private::StepPolicy;
use flow_runtime::error::GaveUp;
use flow_runtime::policy::{Backoff, Retry};
use flow_runtime::{Error, ErrorKind, Failure, NodeId, Runtime, Workflow};
use tokio::time::Instant;

/// What the body does with the first step's error.
#[derive(Clone, Copy)]
enum Body {
    /// `?`: propagate it.
    Propagate,
    /// Propagate a different error made from it (`map_err(..)?`).
    Convert,
    /// Handle it (use a default) and go on to the second step, which fails with `Broken`
    /// (another step's failure).
    HandleThenFailStep,
    /// Handle it, go on to the second step (which succeeds), then return its own error.
    HandleThenOwnError,
    /// Handle it and return its own error without running another step.
    HandleThenOwnErrorAtOnce,
}

/// `#[workflow] async fn w() -> Result<u32, E>` with a retried `first` (node 2) and `second`
/// (node 3), as the macro would expand it.
fn workflow(
    first: &Script,
    timeout: Option<Duration>,
    body: Body,
    log: &Log,
) -> impl Workflow<Input = (), Output = u32, Error = E> + 'static {
    let (first, log) = (first.clone(), log.clone());
    flow(steps("w", &["first", "second"]), None, move |ctx, ()| {
        let (first, log) = (first.clone(), log.clone());
        async move {
            let rules = [Retry::new(3).with_backoff(Backoff::constant(ms(100)))];
            // The user's body, with each step call routed through the context.
            let user_body = async {
                let policy = StepPolicy {
                    retry: &rules,
                    timeout,
                };
                let r = ctx.step_with(NodeId(2), policy, || first.attempt()).await;
                let r = ctx.surface(r).await;
                log.push_at("body resumed");
                let x = match body {
                    Body::Propagate => r?,
                    Body::Convert => r.map_err(|_| E::Item(7))?,
                    Body::HandleThenFailStep => {
                        let x = r.unwrap_or(0);
                        let r = ctx
                            .step(NodeId(3), async { Err::<u32, E>(E::Broken) })
                            .await;
                        x + ctx.surface(r).await?
                    }
                    Body::HandleThenOwnError => {
                        let x = r.unwrap_or(0);
                        let r = ctx.step(NodeId(3), async { Ok::<u32, E>(1) }).await;
                        ctx.surface(r).await?;
                        return Err(E::Item(x));
                    }
                    Body::HandleThenOwnErrorAtOnce => {
                        r.unwrap_or(0);
                        return Err(E::Item(0));
                    }
                };
                Ok(x)
            };
            ctx.finish(user_body.await)
        }
    })
}

async fn run(
    first: &Script,
    timeout: Option<Duration>,
    body: Body,
    log: &Log,
) -> Result<u32, Error<E>> {
    within(Runtime::new().run(&workflow(first, timeout, body, log), ())).await
}

fn failures(e: &Error<E>) -> Vec<String> {
    e.step_error()
        .expect("a step error")
        .attempts()
        .iter()
        .map(|a| format!("{}: {:?}", a.number, a.failure))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_propagated_step_error_keeps_all_attempts() {
    let log = Log::new();
    let s = Script::new([Act::Err(E::Busy)]);
    let e = run(&s, None, Body::Propagate, &log).await.unwrap_err();
    assert_eq!(s.calls(), 3);
    assert_eq!(log.entries(), ["body resumed @200"]);
    assert_eq!(e.workflow(), "w");
    let ErrorKind::Step(step) = e.kind() else {
        panic!("{e:?}")
    };
    assert_eq!(step.step(), "first");
    assert_eq!(step.gave_up(), GaveUp::RetriesExhausted);
    assert_eq!(
        failures(&e),
        ["1: Error(Busy)", "2: Error(Busy)", "3: Error(Busy)"]
    );
    assert_eq!(
        e.to_string(),
        "workflow `w` failed: step `first` failed after 3 attempts (retries exhausted); last: busy"
    );
}

#[tokio::test(start_paused = true)]
async fn a_converted_step_error_is_still_the_steps() {
    let log = Log::new();
    let s = Script::new([Act::Err(E::Busy)]);
    let e = run(&s, None, Body::Convert, &log).await.unwrap_err();
    assert_eq!(e.step(), Some("first"));
    assert_eq!(
        failures(&e),
        ["1: Error(Busy)", "2: Error(Busy)", "3: Error(Item(7))"]
    );
    assert_eq!(e.error(), Some(&E::Item(7)));
}

#[tokio::test(start_paused = true)]
async fn a_handled_error_is_not_attributed_to_its_step() {
    // The next step's failure is that step's.
    let log = Log::new();
    let s = Script::new([Act::Err(E::Busy)]);
    let e = run(&s, None, Body::HandleThenFailStep, &log)
        .await
        .unwrap_err();
    assert_eq!(e.step(), Some("second"));
    assert_eq!(failures(&e), ["1: Error(Broken)"]);

    // An error the body returns after another step ran is the workflow's own.
    let s = Script::new([Act::Err(E::Busy)]);
    let e = run(&s, None, Body::HandleThenOwnError, &log)
        .await
        .unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Workflow(E::Item(0))), "{e:?}");
    assert_eq!(e.step(), None);
    assert_eq!(e.to_string(), "workflow `w` failed: item 0 failed");

    // Without a step in between, the last failure the body saw is the step's: documented as
    // attributed to it.
    let s = Script::new([Act::Err(E::Busy)]);
    let e = run(&s, None, Body::HandleThenOwnErrorAtOnce, &log)
        .await
        .unwrap_err();
    assert_eq!(e.step(), Some("first"));
    assert_eq!(
        failures(&e),
        ["1: Error(Busy)", "2: Error(Busy)", "3: Error(Item(0))"]
    );

    // A step that succeeds leaves nothing to attribute.
    let s = Script::new([Act::Ok(5)]);
    let e = run(&s, None, Body::HandleThenOwnErrorAtOnce, &log)
        .await
        .unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Workflow(E::Item(0))), "{e:?}");
}

#[tokio::test(start_paused = true)]
async fn success_passes_through() {
    let log = Log::new();
    let s = Script::new([Act::Err(E::Busy), Act::Ok(5)]);
    assert_eq!(run(&s, None, Body::Propagate, &log).await.unwrap(), 5);
    assert_eq!(log.entries(), ["body resumed @100"]);
}

#[tokio::test(start_paused = true)]
async fn a_timeout_aborts_the_run_with_the_step_error() {
    let log = Log::new();
    let s = Script::new([Act::Hang]);
    let t0 = Instant::now();
    let e = run(&s, Some(ms(1000)), Body::Propagate, &log)
        .await
        .unwrap_err();
    // Three attempts of 1 s, two delays of 100 ms; the body never resumes.
    assert_eq!(t0.elapsed(), ms(3200));
    assert!(log.entries().is_empty(), "{:?}", log.entries());
    let ErrorKind::Step(step) = e.kind() else {
        panic!("{e:?}")
    };
    assert!(step.is_timeout());
    assert_eq!(step.step(), "first");
    assert_eq!(step.gave_up(), GaveUp::RetriesExhausted);
    assert_eq!(
        failures(&e),
        ["1: TimedOut(1s)", "2: TimedOut(1s)", "3: TimedOut(1s)"]
    );

    // A panic, too, ends the run instead of reaching the body.
    let log = Log::new();
    let s = Script::new([Act::Panic("kaput")]);
    let e = run(&s, None, Body::HandleThenOwnErrorAtOnce, &log)
        .await
        .unwrap_err();
    assert!(log.entries().is_empty());
    assert!(matches!(e.step_error().unwrap().failure(), Failure::Panicked(m) if m == "kaput"));
}

#[tokio::test(start_paused = true)]
async fn an_aborted_run_compensates() {
    let log = Log::new();
    let l = log.clone();
    let wf = flow(steps("w", &["a", "b"]), None, move |ctx, ()| {
        let log = l.clone();
        async move {
            let body = async {
                let r = ctx.step(NodeId(2), async { Ok::<u32, E>(1) }).await;
                let r = ctx.compensate(NodeId(2), r, move |v| async move {
                    log.push_at(&format!("undo a({v})"));
                    Ok::<(), E>(())
                });
                let a = ctx.surface(r).await?;
                let policy = StepPolicy {
                    retry: &[],
                    timeout: Some(ms(50)),
                };
                let r = ctx
                    .step_with(NodeId(3), policy, || {
                        core::future::pending::<Result<u32, E>>()
                    })
                    .await;
                Ok(a + ctx.surface(r).await?)
            };
            ctx.finish(body.await)
        }
    });
    let e = within(Runtime::new().run(&wf, ())).await.unwrap_err();
    assert_eq!(e.step(), Some("b"));
    assert!(e.step_error().unwrap().is_timeout());
    assert_eq!(log.entries(), ["undo a(1) @50"]);
}
