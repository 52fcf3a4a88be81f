//! A run's life: its events, cancellation through a handle, and the workflow time limit.

mod common;

use core::time::Duration;

use common::{Act, Collect, E, Log, Script, flow, ms, steps, within};
use flow_runtime::__private::{Ctx, StepPolicy};
use flow_runtime::graph::{Edge, EdgeKind, Node, NodeKind};
use flow_runtime::policy::{Backoff, Retry};
use flow_runtime::{
    ErrorKind, Event, EventKind, Flow, Graph, NodeId, RunId, Runtime, StateView, Status, Workflow,
    WorkflowState,
};
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// A flow built exactly as the macros build one: a static graph, a state enum with one variant
// per node, and a driver that moves from state to state.

static PIPELINE: Graph = Graph {
    name: "pipeline",
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
            name: "load",
            key: "load",
            fingerprint: 0,
            kind: NodeKind::Step,
            policy: "",
            parent: None,
        },
        Node {
            name: "save",
            key: "save",
            fingerprint: 0,
            kind: NodeKind::Step,
            policy: "retry(max_attempts = 2, backoff = constant(\"100ms\"))",
            parent: None,
        },
    ],
    edges: &[
        Edge {
            from: 0,
            to: 2,
            kind: EdgeKind::Sequence,
            label: "",
        },
        Edge {
            from: 2,
            to: 3,
            kind: EdgeKind::Sequence,
            label: "",
        },
        Edge {
            from: 3,
            to: 1,
            kind: EdgeKind::Sequence,
            label: "",
        },
    ],
    fingerprint: 0x5EED,
};

/// The pipeline's states; each carries the value on its incoming edge.
enum Pipeline {
    Start(u32),
    Load(u32),
    Save(u32),
    End(u32),
}

impl WorkflowState for Pipeline {
    fn node(&self) -> NodeId {
        match self {
            Pipeline::Start(_) => NodeId::START,
            Pipeline::End(_) => NodeId::END,
            Pipeline::Load(_) => NodeId(2),
            Pipeline::Save(_) => NodeId(3),
        }
    }
}

async fn load(x: u32) -> Result<u32, E> {
    tokio::time::sleep(ms(10)).await;
    Ok(x + 1)
}

/// `load -> save`; `save` follows `script` and is retried once after 100 ms.
fn pipeline(
    save: &Script,
) -> impl Workflow<Input = u32, Output = u32, Error = E, State = Pipeline> + 'static {
    let save = save.clone();
    Flow::new(
        &PIPELINE,
        Pipeline::Start,
        None,
        move |ctx: Ctx<E>, state| {
            let save = save.clone();
            async move {
                const RULES: &[Retry<E>] =
                    &[Retry::new(2).with_backoff(Backoff::constant(ms(100)))];
                let mut state = state;
                loop {
                    state = match state {
                        Pipeline::Start(x) => Pipeline::Load(x),
                        Pipeline::Load(x) => Pipeline::Save(ctx.step(NodeId(2), load(x)).await?),
                        Pipeline::Save(x) => {
                            let policy = StepPolicy {
                                retry: RULES,
                                timeout: None,
                            };
                            let y = ctx.step_with(NodeId(3), policy, || save.attempt()).await?;
                            Pipeline::End(x + y)
                        }
                        Pipeline::End(x) => return Ok(x),
                    }
                }
            }
        },
    )
}

/// What the tests compare: where, when, what.
fn summary(events: &[Event]) -> Vec<(NodeId, &'static str, Duration, EventKind)> {
    events
        .iter()
        .map(|e| (e.node, e.step, e.at, e.kind.clone()))
        .collect()
}

fn ok_run_events() -> Vec<(NodeId, &'static str, Duration, EventKind)> {
    use EventKind::*;
    let (start, end, load, save) = (NodeId(0), NodeId(1), NodeId(2), NodeId(3));
    vec![
        (start, "start", ms(0), RunStarted),
        (load, "load", ms(0), Entered),
        (load, "load", ms(0), AttemptStarted { attempt: 1 }),
        (
            load,
            "load",
            ms(10),
            StepSucceeded {
                attempt: 1,
                elapsed: ms(10),
            },
        ),
        (save, "save", ms(10), Entered),
        (save, "save", ms(10), AttemptStarted { attempt: 1 }),
        (
            save,
            "save",
            ms(40),
            StepSucceeded {
                attempt: 1,
                elapsed: ms(30),
            },
        ),
        (end, "end", ms(40), RunCompleted),
    ]
}

#[tokio::test(start_paused = true)]
async fn events_follow_the_graph_through_a_handle() {
    let save = Script::new([common::after(30, Act::Ok(100))]);
    let mut h = Runtime::new().spawn(pipeline(&save), 1);
    let run = h.run_id();
    let mut events = Vec::new();
    while let Some(e) = within(h.events().next()).await {
        events.push(e);
    }
    assert_eq!(summary(&events), ok_run_events());
    assert!(
        events
            .iter()
            .all(|e| e.run == run && e.parent.is_none() && e.workflow == "pipeline")
    );
    // The stream stays ended.
    assert_eq!(within(h.events().next()).await, None);
    assert_eq!(h.events().try_next(), None);
    assert_eq!(within(&mut h).await.unwrap(), 102);
    assert_eq!(
        h.state(),
        StateView {
            node: NodeId::END,
            name: "end",
            status: Status::Completed
        }
    );
}

#[tokio::test(start_paused = true)]
async fn events_reach_an_observer_and_a_late_reader() {
    let save = Script::new([common::after(30, Act::Ok(100))]);
    let seen = Collect::default();
    let runtime = Runtime::new().with_observer(seen.observer());
    assert_eq!(within(runtime.run(&pipeline(&save), 1)).await.unwrap(), 102);
    assert_eq!(summary(&seen.events()), ok_run_events());

    // Through a handle subscribed at spawn and read only after the run ended: nothing is
    // missed, and the observer gets the same events.
    let seen = Collect::default();
    let save = Script::new([common::after(30, Act::Ok(100))]);
    let mut h = Runtime::new()
        .with_observer(seen.observer())
        .spawn_with_events(pipeline(&save), 1);
    assert_eq!(within(&mut h).await.unwrap(), 102);
    let mut events = Vec::new();
    while let Some(e) = within(h.events().next()).await {
        events.push(e);
    }
    assert_eq!(events, seen.events());
    assert_eq!(summary(&events), ok_run_events());
}

#[tokio::test(start_paused = true)]
async fn events_of_a_failed_run() {
    use EventKind::*;
    let save = Script::new([Act::Err(E::Busy)]);
    let mut h = Runtime::new().spawn(pipeline(&save), 1);
    let mut events = Vec::new();
    while let Some(e) = within(h.events().next()).await {
        events.push(e);
    }
    let e = within(&mut h).await.unwrap_err();
    let msg = "workflow `pipeline` failed: step `save` failed after 2 attempts (retries \
               exhausted); last: busy";
    assert_eq!(e.to_string(), msg);
    let (load, save, end) = (NodeId(2), NodeId(3), NodeId(1));
    assert_eq!(
        summary(&events)[4..],
        [
            (save, "save", ms(10), Entered),
            (save, "save", ms(10), AttemptStarted { attempt: 1 }),
            (
                save,
                "save",
                ms(10),
                AttemptFailed {
                    attempt: 1,
                    error: "busy".into(),
                    retry_in: Some(ms(100))
                }
            ),
            (save, "save", ms(110), AttemptStarted { attempt: 2 }),
            (
                save,
                "save",
                ms(110),
                AttemptFailed {
                    attempt: 2,
                    error: "busy".into(),
                    retry_in: None
                }
            ),
            (
                save,
                "save",
                ms(110),
                StepFailed {
                    attempts: 2,
                    error: "busy".into()
                }
            ),
            (end, "end", ms(110), RunFailed { error: msg.into() }),
        ]
    );
    assert_eq!(events[3].node, load);
    assert_eq!(h.state().status, Status::Failed);
}

// ---------------------------------------------------------------------------------------------
// cancellation

/// `a` (10 ms, compensated) then `b` (an hour, or `b_script`).
fn two_steps(
    log: &Log,
    b: &Script,
    limit: Option<Duration>,
) -> impl Workflow<Input = (), Output = u32, Error = E> + 'static {
    let (log, b) = (log.clone(), b.clone());
    flow(steps("two_steps", &["a", "b"]), limit, move |ctx, ()| {
        let (log, b) = (log.clone(), b.clone());
        async move {
            let r = ctx
                .step(NodeId(2), async {
                    tokio::time::sleep(ms(10)).await;
                    Ok::<u32, E>(1)
                })
                .await;
            let l2 = log.clone();
            let a = ctx.compensate(NodeId(2), r, move |v| async move {
                l2.push_at(&format!("undo a({v})"));
                Ok::<(), E>(())
            })?;
            let rules = [Retry::new(5).with_backoff(Backoff::constant(ms(500)))];
            let policy = StepPolicy {
                retry: &rules,
                timeout: None,
            };
            let b = ctx
                .step_with(NodeId(3), policy, || {
                    let (log, b) = (log.clone(), b.clone());
                    async move {
                        let probe = log.probe("b");
                        let r = b.attempt().await;
                        probe.done();
                        r
                    }
                })
                .await?;
            Ok(a + b)
        }
    })
}

#[tokio::test(start_paused = true)]
async fn cancel_drops_the_step_in_flight_and_compensates() {
    let log = Log::new();
    let b = Script::new([Act::Hang]);
    let mut h = Runtime::new().spawn_with_events(two_steps(&log, &b, None), ());
    tokio::time::sleep(ms(1000)).await;
    assert_eq!(
        h.state(),
        StateView {
            node: NodeId(3),
            name: "b",
            status: Status::Running
        }
    );
    h.cancel();
    let e = within(&mut h).await.unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Cancelled { step: Some("b") }));
    assert!(e.is_cancelled());
    assert_eq!(
        e.to_string(),
        "workflow `two_steps` was cancelled during step `b`"
    );
    assert_eq!(h.state().status, Status::Cancelled);
    // The step in flight is dropped before the compensations run.
    assert_eq!(log.entries(), ["b dropped @1000", "undo a(1) @1000"]);
    assert_eq!(b.calls(), 1);
    let mut last = None;
    while let Some(e) = within(h.events().next()).await {
        last = Some(e.kind);
    }
    assert_eq!(last, Some(EventKind::RunCancelled));
}

#[tokio::test(start_paused = true)]
async fn cancel_during_a_retry_delay() {
    let log = Log::new();
    let b = Script::new([Act::Err(E::Busy)]);
    let mut h = Runtime::new().spawn(two_steps(&log, &b, None), ());
    // b fails at 10, 510 and 1010; cancel at 1200, during the third delay.
    tokio::time::sleep(ms(1200)).await;
    h.cancel();
    let e = within(&mut h).await.unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Cancelled { step: Some("b") }));
    assert_eq!(b.calls(), 3);
    assert_eq!(b.starts(), [ms(10), ms(510), ms(1010)]);
    assert_eq!(log.entries().last().unwrap(), "undo a(1) @1200");
}

#[tokio::test(start_paused = true)]
async fn cancel_before_the_first_step() {
    let log = Log::new();
    let b = Script::new([Act::Ok(1)]);
    let mut h = Runtime::new().spawn(two_steps(&log, &b, None), ());
    h.cancel();
    let e = within(&mut h).await.unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Cancelled { step: None }));
    assert_eq!(h.state().status, Status::Cancelled);
    assert!(log.entries().is_empty());
}

#[tokio::test(start_paused = true)]
async fn cancel_after_the_end_changes_nothing() {
    let log = Log::new();
    let b = Script::new([Act::Ok(1)]);
    let mut h = Runtime::new().spawn(two_steps(&log, &b, None), ());
    tokio::time::sleep(ms(100)).await;
    assert_eq!(h.state().status, Status::Completed);
    h.cancel();
    assert_eq!(within(&mut h).await.unwrap(), 2);
    assert_eq!(h.state().status, Status::Completed);
    assert_eq!(log.entries(), ["b done @10"]);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_handle_does_not_stop_the_run() {
    let log = Log::new();
    let b = Script::new([common::after(50, Act::Ok(1))]);
    drop(Runtime::new().spawn(two_steps(&log, &b, None), ()));
    tokio::time::sleep(ms(1000)).await;
    assert_eq!(log.entries(), ["b done @60"]);
}

// ---------------------------------------------------------------------------------------------
// workflow time limit

#[tokio::test(start_paused = true)]
async fn workflow_timeout_names_the_step_in_flight() {
    let log = Log::new();
    let b = Script::new([Act::Hang]);
    let t0 = Instant::now();
    let mut h = Runtime::new().spawn(two_steps(&log, &b, Some(ms(5000))), ());
    let e = within(&mut h).await.unwrap_err();
    assert_eq!(t0.elapsed(), ms(5000));
    assert!(
        matches!(e.kind(), ErrorKind::TimedOut { limit, step: Some("b") } if *limit == ms(5000)),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "workflow `two_steps` timed out after 5s during step `b`"
    );
    assert_eq!(log.entries(), ["b dropped @5000", "undo a(1) @5000"]);
    assert_eq!(h.state().status, Status::Failed);
}

#[tokio::test(start_paused = true)]
async fn workflow_timeout_counts_retry_delays() {
    // b fails at 10, 510, 1010, 1510: the limit of 1200 ms falls in the third delay.
    let log = Log::new();
    let b = Script::new([Act::Err(E::Busy)]);
    let t0 = Instant::now();
    let e = within(Runtime::new().run(&two_steps(&log, &b, Some(ms(1200))), ()))
        .await
        .unwrap_err();
    assert_eq!(t0.elapsed(), ms(1200));
    assert!(matches!(
        e.kind(),
        ErrorKind::TimedOut {
            step: Some("b"),
            ..
        }
    ));
    assert_eq!(b.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_run_within_its_limit_is_not_affected() {
    let log = Log::new();
    let b = Script::new([common::after(4990, Act::Ok(1))]);
    let t0 = Instant::now();
    let r = within(Runtime::new().run(&two_steps(&log, &b, Some(ms(5000))), ())).await;
    assert_eq!(r.unwrap(), 2);
    assert_eq!(t0.elapsed(), ms(5000));
}

#[tokio::test(start_paused = true)]
async fn run_ids_are_distinct() {
    let save = Script::new([Act::Ok(1)]);
    let a = Runtime::new().spawn(pipeline(&save), 1);
    let b = Runtime::new().spawn(pipeline(&save), 1);
    assert_ne!(a.run_id(), b.run_id());
    assert_ne!(a.run_id(), RunId(0));
    within(a).await.unwrap();
    within(b).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// A workflow implemented by hand, with only the items `Workflow` requires.

/// `load` once: its graph is `PIPELINE`'s (only node 2 is used), its state type carries data.
struct Bare;

impl Workflow for Bare {
    type Input = u32;
    type Output = u32;
    type Error = E;
    type State = Pipeline;

    fn graph(&self) -> &'static Graph {
        &PIPELINE
    }

    async fn execute(&self, ctx: Ctx<E>, x: u32) -> Result<u32, flow_runtime::Error<E>> {
        Ok(ctx.step(NodeId(2), load(x)).await?)
    }
}

/// The defaults of a workflow that says nothing: no time limit (a run that waits 10 ms is not
/// cut short), the five-minute compensation budget, undone when dropped, not durable, and no
/// typed state for a snapshot (its state type carries data).
#[tokio::test(start_paused = true)]
async fn a_workflow_that_says_nothing_gets_the_defaults() {
    assert_eq!(Bare.timeout(), None);
    assert_eq!(
        Bare.compensation_timeout(),
        flow_runtime::policy::DEFAULT_COMPENSATION_TIMEOUT
    );
    assert!(Bare.compensate_on_drop());
    let t0 = Instant::now();
    assert_eq!(Runtime::new().run(&Bare, 4).await.unwrap(), 5);
    assert_eq!(t0.elapsed(), ms(10));
    let handle = Runtime::new().spawn(Bare, 1);
    assert!(handle.typed_state().is_none());
    assert_eq!(handle.await.unwrap(), 2);
}
