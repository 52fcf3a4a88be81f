//! Signals: a run waits for a named, typed message from outside, with a timeout.

mod common;

use core::time::Duration;

use common::{Collect, E, Log, ms, steps, within};
use flow_runtime::{
    ErrorKind, EventKind, Failure, NodeId, RunId, Runtime, SignalError, Status, Workflow,
};

#[derive(Debug, PartialEq)]
struct Approval {
    by: &'static str,
}

async fn prepare(x: u32) -> Result<u32, E> {
    Ok(x + 1)
}

/// `prepare -> approve (signal) -> finish`: waits for `approve` carrying an `Approval`.
fn approval_flow(
    timeout: Option<Duration>,
) -> impl Workflow<Input = u32, Output = (u32, &'static str), Error = E> + 'static {
    common::flow(
        steps("approval", &["prepare", "approve", "finish"]),
        None,
        move |ctx, x: u32| async move {
            let x = ctx.step(NodeId(2), prepare(x)).await?;
            let ok: Approval = ctx.signal(NodeId(3), "approve", timeout).await?;
            let y = ctx.step(NodeId(4), prepare(x)).await?;
            Ok((y, ok.by))
        },
    )
}

#[tokio::test(start_paused = true)]
async fn wait_then_send() {
    let collect = Collect::default();
    let runtime = Runtime::default().with_observer(collect.observer());
    let h = runtime.spawn(approval_flow(None), 1);
    tokio::time::sleep(ms(50)).await;
    // The run waits at the signal's node.
    assert_eq!(h.state().name, "approve");
    assert_eq!(h.state().status, Status::Running);
    h.signal("approve", Approval { by: "ops" }).unwrap();
    assert_eq!(within(h).await.unwrap(), (3, "ops"));
    let kinds: Vec<_> = collect
        .events()
        .into_iter()
        .filter(|e| e.node == NodeId(3))
        .map(|e| (e.kind, e.at))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (EventKind::Entered, ms(0)),
            (EventKind::AttemptStarted { attempt: 1 }, ms(0)),
            (EventKind::SignalWaiting { name: "approve" }, ms(0)),
            (EventKind::SignalReceived { name: "approve" }, ms(50)),
            (
                EventKind::StepSucceeded {
                    attempt: 1,
                    elapsed: ms(50)
                },
                ms(50)
            ),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_message_sent_before_the_wait_is_kept() {
    let h = Runtime::new().spawn(approval_flow(None), 1);
    // Sent before the run was even polled.
    h.signal("approve", Approval { by: "early" }).unwrap();
    assert_eq!(within(h).await.unwrap(), (3, "early"));
}

#[tokio::test(start_paused = true)]
async fn no_message_in_time_is_a_timeout_of_that_step() {
    let started = tokio::time::Instant::now();
    let h = Runtime::new().spawn(approval_flow(Some(ms(1500))), 1);
    let e = within(h).await.unwrap_err();
    assert_eq!(started.elapsed(), ms(1500));
    let step = e.step_error().expect("a step error");
    assert_eq!(step.step(), "approve");
    assert_eq!(step.node(), NodeId(3));
    assert!(matches!(step.failure(), Failure::TimedOut(d) if *d == ms(1500)));
}

#[tokio::test(start_paused = true)]
async fn a_message_in_time_beats_the_timeout() {
    let h = Runtime::new().spawn(approval_flow(Some(ms(1500))), 1);
    tokio::time::sleep(ms(1499)).await;
    h.signal("approve", Approval { by: "late" }).unwrap();
    assert_eq!(within(h).await.unwrap(), (3, "late"));
}

#[tokio::test(start_paused = true)]
async fn a_message_of_the_wrong_type_fails_the_step() {
    let h = Runtime::new().spawn(approval_flow(None), 1);
    h.signal("approve", String::from("yes")).unwrap();
    let e = within(h).await.unwrap_err();
    let step = e.step_error().expect("a step error");
    assert_eq!(step.step(), "approve");
    assert_eq!(
        step.failure(),
        &Failure::Signal(SignalError::WrongType {
            name: "approve",
            sent: "alloc::string::String",
            expected: "signals::Approval",
        })
    );
    assert_eq!(
        step.failure().to_string(),
        "signal `approve` carried a `alloc::string::String`, but the workflow waits for a `signals::Approval`"
    );
    assert!(e.to_string().contains("carried a `alloc::string::String`"));
}

#[tokio::test(start_paused = true)]
async fn by_run_id_through_the_runtime() {
    let runtime = Runtime::new();
    let h = runtime.spawn(approval_flow(None), 1);
    let id = h.run_id();
    tokio::time::sleep(ms(10)).await;
    // A clone of the runtime finds the run too.
    runtime
        .clone()
        .signal(id, "approve", Approval { by: "by id" })
        .unwrap();
    assert_eq!(within(h).await.unwrap(), (3, "by id"));
    // Ended: no longer listed.
    assert_eq!(
        runtime.signal(id, "approve", Approval { by: "again" }),
        Err(SignalError::NoSuchRun(id))
    );
    // Another runtime does not see this runtime's runs.
    let other = Runtime::new();
    let h = runtime.spawn(approval_flow(None), 1);
    assert_eq!(
        other.signal(h.run_id(), "approve", Approval { by: "other" }),
        Err(SignalError::NoSuchRun(h.run_id()))
    );
    assert_eq!(
        runtime.signal(RunId(u64::MAX), "approve", 1u8),
        Err(SignalError::NoSuchRun(RunId(u64::MAX)))
    );
    h.cancel();
    let _ = within(h).await;
}

#[tokio::test(start_paused = true)]
async fn runs_of_run_are_listed_only_when_asked() {
    let runtime = Runtime::new().register_runs();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = std::sync::Mutex::new(Some(tx));
    let wf = common::flow(steps("listed", &["approve"]), None, move |ctx, (): ()| {
        // The run publishes its id (a step context would give it to a step).
        if let Some(tx) = tx.lock().unwrap().take() {
            let _ = tx.send(ctx.run_id());
        }
        async move {
            ctx.signal::<u32>(NodeId(2), "approve", None)
                .await
                .map_err(Into::into)
        }
    });
    let sender = runtime.clone();
    let send = tokio::spawn(async move {
        let id = rx.await.unwrap();
        sender.signal(id, "approve", 42u32)
    });
    assert_eq!(within(runtime.run(&wf, ())).await.unwrap(), 42);
    assert_eq!(send.await.unwrap(), Ok(()));
}

#[tokio::test(start_paused = true)]
async fn a_finished_run_refuses_messages() {
    let h = Runtime::new().spawn(approval_flow(None), 1);
    h.signal("approve", Approval { by: "ops" }).unwrap();
    let mut h = h;
    within(&mut h).await.unwrap();
    assert_eq!(h.state().status, Status::Completed);
    assert_eq!(
        h.signal("approve", Approval { by: "late" }),
        Err(SignalError::RunFinished)
    );
}

#[tokio::test(start_paused = true)]
async fn several_messages_are_received_in_order_per_name() {
    let wf = common::flow(
        steps("fifo", &["a", "b", "c", "other"]),
        None,
        |ctx, (): ()| async move {
            let other: &'static str = ctx.signal(NodeId(5), "other", None).await?;
            let a: u32 = ctx.signal(NodeId(2), "n", None).await?;
            let b: u32 = ctx.signal(NodeId(3), "n", None).await?;
            let c: u32 = ctx.signal(NodeId(4), "n", None).await?;
            Ok((other, vec![a, b, c]))
        },
    );
    let h = Runtime::new().spawn(wf, ());
    for n in [1u32, 2, 3] {
        h.signal("n", n).unwrap();
    }
    tokio::time::sleep(ms(5)).await;
    h.signal("other", "x").unwrap();
    assert_eq!(within(h).await.unwrap(), ("x", vec![1, 2, 3]));
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_run_waiting_on_a_signal_compensates() {
    let log = Log::new();
    let l = log.clone();
    let wf = common::flow(
        steps("undo", &["reserve", "approve"]),
        None,
        move |ctx, (): ()| {
            let l = l.clone();
            async move {
                let r = ctx.step(NodeId(2), async { Ok::<u32, E>(7) }).await;
                ctx.compensate(NodeId(2), r, move |v: u32| async move {
                    l.push(format!("released {v}"));
                    Ok::<(), E>(())
                })?;
                let ok: bool = ctx.signal(NodeId(3), "approve", None).await?;
                Ok(ok)
            }
        },
    );
    let h = Runtime::new().spawn(wf, ());
    tokio::time::sleep(ms(100)).await;
    assert_eq!(h.state().name, "approve");
    h.cancel();
    let e = within(h).await.unwrap_err();
    assert!(matches!(
        e.kind(),
        ErrorKind::Cancelled {
            step: Some("approve")
        }
    ));
    assert_eq!(log.entries(), vec!["released 7".to_owned()]);
}

/// A step function waits with the free function: the run's mailbox is found through the task.
async fn wait_in_step(limit: Option<Duration>) -> Result<String, SignalError> {
    let s = flow_runtime::signal::<String>("note");
    match limit {
        Some(d) => s.timeout(d).await,
        None => s.await,
    }
}

#[tokio::test(start_paused = true)]
async fn the_free_function_waits_inside_a_step() {
    let wf = |limit| {
        common::flow(
            steps("free", &["note"]),
            None,
            move |ctx, (): ()| async move {
                let r = ctx
                    .step(
                        NodeId(2),
                        async move { Ok::<_, E>(wait_in_step(limit).await) },
                    )
                    .await?;
                Ok(r.map_err(|e| e.to_string()))
            },
        )
    };
    // Outside a run.
    assert_eq!(wait_in_step(None).await, Err(SignalError::NotInARun));

    let collect = Collect::default();
    let runtime = Runtime::default().with_observer(collect.observer());
    let h = runtime.spawn(wf(None), ());
    tokio::time::sleep(ms(20)).await;
    h.signal("note", String::from("hello")).unwrap();
    assert_eq!(within(h).await.unwrap(), Ok("hello".to_owned()));
    let signal_events: Vec<_> = collect
        .events()
        .into_iter()
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::SignalWaiting { .. } | EventKind::SignalReceived { .. }
            )
        })
        .map(|e| (e.step, e.kind, e.at))
        .collect();
    assert_eq!(
        signal_events,
        vec![
            ("note", EventKind::SignalWaiting { name: "note" }, ms(0)),
            ("note", EventKind::SignalReceived { name: "note" }, ms(20)),
        ]
    );

    // A timeout, and a wrong type, are errors of the wait (the step decides what to do).
    let h = Runtime::new().spawn(wf(Some(ms(300))), ());
    assert_eq!(
        within(h).await.unwrap(),
        Err("no signal arrived within 300ms".to_owned())
    );
    let h = Runtime::new().spawn(wf(None), ());
    h.signal("note", 5u8).unwrap();
    assert_eq!(
        within(h).await.unwrap(),
        Err(
            "signal `note` carried a `u8`, but the workflow waits for a `alloc::string::String`"
                .to_owned()
        )
    );
}
