//! Signals through the macros: a `#[workflow]` that waits for an approval, and a `flow!`
//! signal stage; the wait is a node of the graph and a state of the run.

use std::time::Duration;

use flow::Status;
use flow::graph::NodeKind;
use flow::prelude::*;

/// What an operator sends to let a release go on.
#[derive(Debug, Clone, PartialEq)]
pub struct Approval {
    by: &'static str,
}

async fn deploy_canary(version: u32) -> Result<u32, String> {
    Ok(version)
}
async fn promote(version: u32, by: &'static str) -> Result<String, String> {
    Ok(format!("v{version} promoted, approved by {by}"))
}

#[workflow]
async fn release(version: u32) -> Result<String, String> {
    let canary = deploy_canary(version).await?;
    let ok: Approval = flow::signal("approve").timeout("1h").await?;
    promote(canary, ok.by).await
}

#[tokio::test(start_paused = true)]
async fn a_workflow_waits_for_its_approval() {
    let g = Release::GRAPH;
    let wait = g.find("approve").unwrap();
    assert_eq!(g.node(wait).unwrap().kind, NodeKind::Signal);
    assert_eq!(g.node(wait).unwrap().policy, "timeout = 1h");

    let handle = Runtime::new().spawn(Release, (7,));
    tokio::time::sleep(Duration::from_secs(60)).await;
    // Waiting at the signal's node, a state of the workflow.
    assert_eq!(handle.state().name, "approve");
    assert_eq!(handle.state().status, Status::Running);
    assert_eq!(handle.typed_state(), Some(ReleaseState::Approve));
    handle.signal("approve", Approval { by: "ops" }).unwrap();
    assert_eq!(handle.await.unwrap(), "v7 promoted, approved by ops");
}

#[tokio::test(start_paused = true)]
async fn an_approval_that_never_comes_times_out_exactly() {
    let started = tokio::time::Instant::now();
    let err = Runtime::new().spawn(Release, (7,)).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_secs(3600));
    assert_eq!(err.step(), Some("approve"));
    assert!(err.to_string().contains("timed out"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_message_sent_early_is_kept_and_a_wrong_type_is_a_clear_error() {
    let handle = Runtime::new().spawn(Release, (1,));
    handle.signal("approve", Approval { by: "early" }).unwrap();
    assert_eq!(handle.await.unwrap(), "v1 promoted, approved by early");

    let handle = Runtime::new().spawn(Release, (2,));
    handle.signal("approve", "yes").unwrap();
    let err = handle.await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("approve") && text.contains("&str") && text.contains("Approval"),
        "{text}"
    );
}

async fn check(version: u32) -> Result<u32, String> {
    Ok(version)
}

#[tokio::test(start_paused = true)]
async fn a_flow_signal_stage_outputs_its_input_and_the_message() {
    let f = flow! {
        check -> signal("approve", timeout = "10m") -> |version, ok: Approval| promote(version, ok.by)
    };
    assert_eq!(
        f.graph()
            .node(f.graph().find("approve").unwrap())
            .unwrap()
            .kind,
        NodeKind::Signal
    );
    let handle = Runtime::new().spawn(f, 3);
    handle.signal("approve", Approval { by: "lead" }).unwrap();
    assert_eq!(handle.await.unwrap(), "v3 promoted, approved by lead");
}

#[workflow]
async fn release_until(version: u32, patience: Duration) -> Result<String, String> {
    let ok: Approval = flow::signal("approve").timeout(patience).await?;
    promote(version, ok.by).await
}

#[tokio::test(start_paused = true)]
async fn a_timeout_can_be_computed_at_run_time() {
    let started = tokio::time::Instant::now();
    let err = release_until(1, Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert_eq!(err.step(), Some("approve"));
}
