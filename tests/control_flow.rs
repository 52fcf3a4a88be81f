//! Control flow in a `#[workflow]` body is part of the model: `if`/`else`, `if let`, `match`,
//! loops, early returns and `?` exits appear in the graph (and so in the pictures and the
//! fingerprint) as the code runs them; `flow::map!` is a dynamic fan-out; each step has a
//! stable identity.
//!
//! `FLOW_GOLDEN=overwrite cargo test --test control_flow` rewrites the golden files.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use common::Recorder;
use flow::graph::{EdgeKind, NodeKind};
use flow::prelude::*;
use flow::{Graph, NodeId};

fn golden(name: &str, actual: &str) {
    common::golden("control_flow", name, actual);
}

// ---------------------------------------------------------------- a remediation workflow

/// A node's health, as a new user would model it.
#[derive(Clone, Copy, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum Health {
    Healthy,
    Degraded { lag: u32 },
    Dead,
}

/// What the fake cluster does, and what the steps did (in order).
#[derive(Clone, Default)]
pub struct Cluster {
    health: Arc<Mutex<Vec<Health>>>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Cluster {
    fn with(health: &[Health]) -> Self {
        Cluster {
            health: Arc::new(Mutex::new(health.to_vec())),
            log: Arc::default(),
        }
    }
    fn did(&self, what: impl Into<String>) {
        self.log.lock().unwrap().push(what.into());
    }
    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

async fn probe(c: Cluster, node: u32) -> Result<Health, String> {
    c.did(format!("probe {node}"));
    Ok(c.health
        .lock()
        .unwrap()
        .get(node as usize)
        .copied()
        .unwrap_or(Health::Dead))
}
async fn rejoin(c: Cluster, node: u32) -> Result<(), String> {
    c.did(format!("rejoin {node}"));
    Ok(())
}
async fn rebalance(c: Cluster) -> Result<u32, String> {
    c.did("rebalance");
    Ok(3)
}
async fn throttle(c: Cluster, lag: u32) -> Result<(), String> {
    c.did(format!("throttle {lag}"));
    Ok(())
}
async fn replace(c: Cluster, node: u32) -> Result<u32, String> {
    c.did(format!("replace {node}"));
    if node == 99 {
        return Err("no spare".into());
    }
    Ok(node + 100)
}
async fn fail_remediation(c: Cluster, node: u32) -> Result<(), String> {
    c.did(format!("fail {node}"));
    Ok(())
}
async fn drain(c: Cluster, shard: u32) -> Result<u32, String> {
    c.did(format!("drain {shard}"));
    Ok(shard)
}
async fn check(c: Cluster, node: u32) -> Result<bool, String> {
    c.did(format!("check {node}"));
    Ok(node.is_multiple_of(2))
}
async fn report(c: Cluster, moved: u32) -> Result<u32, String> {
    c.did(format!("report {moved}"));
    Ok(moved)
}

#[workflow]
pub async fn remediate(c: Cluster, node: u32, healthy: bool) -> Result<u32, String> {
    if healthy {
        rejoin(c.clone(), node).await?;
        rebalance(c.clone()).await?;
    } else {
        fail_remediation(c.clone(), node).await?;
    }
    let mut moved = 0;
    match probe(c.clone(), node).await? {
        Health::Healthy => {}
        Health::Degraded { lag } if lag > 5 => throttle(c.clone(), lag).await?,
        Health::Degraded { .. } => return Ok(0),
        Health::Dead => {
            moved = replace(c.clone(), node).await?;
        }
    }
    for shard in 0..2u32 {
        if shard == 1 && moved == 0 {
            continue;
        }
        drain(c.clone(), shard).await?;
    }
    if let Some(n) = (moved > 0).then_some(moved) {
        let checked = flow::map!(vec![n, n + 1], |m| check(c.clone(), m), concurrency = 2).await?;
        moved += u32::from(checked.iter().filter(|ok| **ok).count() as u8);
    }
    report(c, moved).await
}

/// The names of the nodes that edges out of `from` go to, with their labels.
fn out_edges(g: &Graph, from: &str) -> BTreeSet<(String, String, &'static str)> {
    let from = g.find(from).unwrap_or_else(|| panic!("no node `{from}`"));
    g.edges
        .iter()
        .filter(|e| e.from == from.0)
        .map(|e| {
            (
                g.key_of(NodeId(e.to)).to_owned(),
                e.label.to_owned(),
                match e.kind {
                    EdgeKind::Sequence => "seq",
                    EdgeKind::Branch => "branch",
                    EdgeKind::Loop => "loop",
                    EdgeKind::Exit => "exit",
                    EdgeKind::Map => "map",
                    EdgeKind::Parallel => "parallel",
                    EdgeKind::Catch => "catch",
                },
            )
        })
        .collect()
}

fn set(items: &[(&str, &str, &'static str)]) -> BTreeSet<(String, String, &'static str)> {
    items
        .iter()
        .map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), *c))
        .collect()
}

#[test]
fn if_else_is_two_arms_not_a_chain() {
    let g = Remediate::GRAPH;
    // The `if` is a branch node with an arm per outcome, labelled with the condition.
    assert_eq!(
        g.node(g.find("if").unwrap()).unwrap().kind,
        NodeKind::Branch
    );
    assert_eq!(
        out_edges(g, "if"),
        set(&[
            ("rejoin", "healthy", "branch"),
            ("fail_remediation", "else", "branch")
        ])
    );
    // rejoin -> rebalance; neither arm runs into the other.
    assert_eq!(
        out_edges(g, "rejoin"),
        set(&[("rebalance", "", "seq"), ("end", "?", "exit")])
    );
    assert!(
        !out_edges(g, "rebalance")
            .iter()
            .any(|e| e.0 == "fail_remediation")
    );
    // Both arms lead to the probe.
    assert!(out_edges(g, "rebalance").contains(&("probe".into(), String::new(), "seq")));
    assert!(out_edges(g, "fail_remediation").contains(&("probe".into(), String::new(), "seq")));
}

#[test]
fn match_arms_are_labelled_with_their_patterns_and_early_returns_exit() {
    let g = Remediate::GRAPH;
    let m = "match probe(c.clone(), node).await?";
    assert!(
        g.find(m).is_some(),
        "{:?}",
        g.nodes.iter().map(|n| n.key).collect::<Vec<_>>()
    );
    let edges = out_edges(g, m);
    assert!(edges.contains(&(
        "throttle".into(),
        "Health::Degraded { lag } if lag > 5".into(),
        "branch"
    )));
    assert!(edges.contains(&("replace".into(), "Health::Dead".into(), "branch")));
    // `Health::Degraded { .. } => return Ok(0)` exits; `Health::Healthy => {}` goes on to the loop.
    assert!(edges.contains(&(
        "end".into(),
        "Health::Degraded { .. }: return".into(),
        "exit"
    )));
    assert!(edges.contains(&(
        "for shard in 0..2u32".into(),
        "Health::Healthy".into(),
        "branch"
    )));
}

#[test]
fn a_loop_is_drawn_around_its_steps_with_a_back_edge() {
    let g = Remediate::GRAPH;
    let l = g.find("for shard in 0..2u32").unwrap();
    assert_eq!(g.node(l).unwrap().kind, NodeKind::Loop);
    let drain = g.find("drain").unwrap();
    assert_eq!(g.node(drain).unwrap().parent, Some(l.0));
    // drain goes back to the loop head; `continue` skips it (a back edge from the head to
    // itself: the `if` around the `continue` has no step, so it draws no node).
    assert_eq!(
        out_edges(g, "drain"),
        set(&[("for shard in 0..2u32", "", "loop"), ("end", "?", "exit")])
    );
    // Into the body, back from a `continue`, and when the loop is done, the `if let`.
    assert_eq!(
        out_edges(g, "for shard in 0..2u32"),
        set(&[
            ("drain", "", "seq"),
            ("for shard in 0..2u32", "", "loop"),
            ("if#2", "done", "seq")
        ])
    );
}

#[test]
fn map_in_a_workflow_is_a_map_node_with_its_step() {
    let g = Remediate::GRAPH;
    let map = g.find("map").unwrap();
    assert_eq!(g.node(map).unwrap().kind, NodeKind::Map);
    assert_eq!(g.node(map).unwrap().policy, "concurrency = 2");
    assert_eq!(
        g.node(g.find("check").unwrap()).unwrap().parent,
        Some(map.0)
    );
    assert_eq!(
        out_edges(g, "if#2"),
        set(&[
            (
                "map",
                "let Some(n) = (moved > 0).then_some(moved)",
                "branch"
            ),
            ("report", "else", "branch")
        ])
    );
}

#[test]
fn remediate_golden() {
    golden("remediate.mmd", &Remediate::GRAPH.to_mermaid());
    golden("remediate.dot", &Remediate::GRAPH.to_dot());
}

/// Runs the workflow and returns the stable keys of the steps it entered, in order.
async fn walk(
    c: &Cluster,
    node: u32,
    healthy: bool,
) -> (Result<u32, flow::Error<String>>, Vec<String>) {
    let rec = Recorder::default();
    let rt = Runtime::new().with_observer(rec.observer());
    let r = rt.run(&Remediate, (c.clone(), node, healthy)).await;
    let g = Remediate::GRAPH;
    let keys = rec
        .events()
        .iter()
        .filter(|e| e.kind == EventKind::Entered)
        .map(|e| g.key_of(e.node).to_owned())
        .collect();
    (r, keys)
}

/// Every pair of consecutive entered steps must be joined in the graph by a path through
/// nodes that are never entered (branch and loop heads): the picture shows each path taken.
fn assert_path_in_graph(keys: &[String]) {
    let g = Remediate::GRAPH;
    let structural = |id: u32| {
        matches!(
            g.nodes[id as usize].kind,
            NodeKind::Branch | NodeKind::Loop | NodeKind::Start
        )
    };
    let reach = |from: NodeId, to: NodeId| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.0];
        while let Some(n) = stack.pop() {
            for e in g.edges.iter().filter(|e| e.from == n) {
                if e.to == to.0 {
                    return true;
                }
                if structural(e.to) && seen.insert(e.to) {
                    stack.push(e.to);
                }
            }
        }
        false
    };
    let mut prev = NodeId::START;
    for k in keys {
        let id = g.find(k).unwrap();
        // Members of a map are entered from the map node.
        if g.nodes[id.0 as usize]
            .parent
            .is_some_and(|p| g.nodes[p as usize].kind == NodeKind::Map)
        {
            continue;
        }
        assert!(
            reach(prev, id),
            "the graph has no edge for {} -> {k} (path {keys:?})",
            g.key_of(prev)
        );
        prev = id;
    }
}

#[tokio::test]
async fn the_graph_shows_every_path_the_code_takes() {
    // healthy, degraded a lot: throttle, both shards skipped? (moved == 0: shard 1 skipped)
    let c = Cluster::with(&[Health::Degraded { lag: 9 }]);
    let (r, keys) = walk(&c, 0, true).await;
    assert_eq!(r.unwrap(), 0);
    assert_eq!(
        keys,
        [
            "rejoin",
            "rebalance",
            "probe",
            "throttle",
            "drain",
            "report"
        ]
    );
    assert_eq!(
        c.log(),
        [
            "rejoin 0",
            "rebalance",
            "probe 0",
            "throttle 9",
            "drain 0",
            "report 0"
        ]
    );
    assert_path_in_graph(&keys);

    // not healthy, dead: replace, both shards, the map over the replacement.
    let c = Cluster::with(&[Health::Dead]);
    let (r, keys) = walk(&c, 0, false).await;
    assert_eq!(r.unwrap(), 101);
    assert_eq!(
        keys,
        [
            "fail_remediation",
            "probe",
            "replace",
            "drain",
            "drain",
            "map",
            "check",
            "check",
            "report"
        ]
    );
    assert_path_in_graph(&keys);

    // degraded a little: the early return.
    let c = Cluster::with(&[Health::Degraded { lag: 1 }]);
    let (r, keys) = walk(&c, 0, true).await;
    assert_eq!(r.unwrap(), 0);
    assert_eq!(keys, ["rejoin", "rebalance", "probe"]);
    assert_path_in_graph(&keys);
    let g = Remediate::GRAPH;
    assert!(g.edges.iter().any(|e| e.from
        == g.find("match probe(c.clone(), node).await?").unwrap().0
        && e.to == NodeId::END.0
        && e.kind == EdgeKind::Exit));

    // A failing step exits through `?`: the graph has that exit.
    let c = Cluster::with(&[]);
    let (r, keys) = walk(&c, 99, false).await;
    assert_eq!(r.unwrap_err().step(), Some("replace"));
    assert_eq!(keys, ["fail_remediation", "probe", "replace"]);
    assert!(out_edges(g, "replace").contains(&("end".into(), "?".into(), "exit")));
}

// ---------------------------------------------------------------- while, loop, break

async fn ready(c: Cluster, round: u32) -> Result<bool, String> {
    c.did(format!("ready? {round}"));
    Ok(round >= 2)
}
async fn nudge(c: Cluster, round: u32) -> Result<(), String> {
    c.did(format!("nudge {round}"));
    Ok(())
}
async fn settle_down(c: Cluster) -> Result<u32, String> {
    c.did("settle");
    Ok(7)
}

#[workflow]
pub async fn converge(c: Cluster) -> Result<u32, String> {
    let mut round = 0;
    while !ready(c.clone(), round).await? {
        nudge(c.clone(), round).await?;
        round += 1;
    }
    loop {
        let n = settle_down(c.clone()).await?;
        if n > 5 {
            break;
        }
    }
    Ok(round)
}

#[test]
fn converge_golden() {
    golden("converge.mmd", &Converge::GRAPH.to_mermaid());
    golden("converge.dot", &Converge::GRAPH.to_dot());
}

#[tokio::test]
async fn while_and_loop_run_as_drawn() {
    let g = Converge::GRAPH;
    let w = "while !ready(c.clone(), round).await?";
    assert_eq!(g.node(g.find(w).unwrap()).unwrap().kind, NodeKind::Loop);
    // The condition's step runs inside the loop, every iteration.
    assert_eq!(
        g.node(g.find("ready").unwrap()).unwrap().parent,
        g.find(w).map(|n| n.0)
    );
    assert_eq!(
        out_edges(g, w),
        set(&[("ready", "", "seq"), ("loop", "done", "seq")])
    );
    assert_eq!(
        out_edges(g, "nudge"),
        set(&[(w, "", "loop"), ("end", "?", "exit")])
    );
    // `loop` ends only through its `break`, which comes from the step before it.
    assert_eq!(
        out_edges(g, "settle_down"),
        set(&[
            ("loop", "", "loop"),
            ("end", "", "seq"),
            ("end", "?", "exit")
        ])
    );
    assert!(!out_edges(g, "loop").iter().any(|e| e.1 == "done"));

    let c = Cluster::default();
    assert_eq!(
        Runtime::new().run(&Converge, (c.clone(),)).await.unwrap(),
        2
    );
    assert_eq!(
        c.log(),
        [
            "ready? 0", "nudge 0", "ready? 1", "nudge 1", "ready? 2", "settle"
        ]
    );
}

// ---------------------------------------------------------------- map in a workflow

async fn slow_square(gauge: Arc<Mutex<(u32, u32)>>, n: u32) -> Result<u32, String> {
    /// Counts the item out however it ends: done, or dropped (cancelled).
    struct InFlight(Arc<Mutex<(u32, u32)>>);
    impl Drop for InFlight {
        fn drop(&mut self) {
            self.0.lock().unwrap().0 -= 1;
        }
    }
    {
        let mut g = gauge.lock().unwrap();
        g.0 += 1;
        g.1 = g.1.max(g.0);
    }
    let _in_flight = InFlight(gauge);
    tokio::time::sleep(std::time::Duration::from_millis(u64::from(10 * (5 - n)))).await;
    if n == 4 {
        return Err(format!("item {n} failed"));
    }
    Ok(n * n)
}

#[workflow]
async fn squares(
    items: Vec<u32>,
    limit: usize,
    gauge: Arc<Mutex<(u32, u32)>>,
) -> Result<Vec<u32>, String> {
    let out = flow::map!(
        items,
        |n| slow_square(gauge.clone(), n),
        concurrency = limit
    )
    .await?;
    Ok(out)
}

#[workflow]
async fn squares_tolerant(items: Vec<u32>, gauge: Arc<Mutex<(u32, u32)>>) -> Result<usize, String> {
    let out = flow::map!(items, |n| slow_square(gauge.clone(), n), tolerate = 1).await?;
    Ok(out.iter().filter(|r| r.is_ok()).count())
}

#[tokio::test(start_paused = true)]
async fn workflow_map_keeps_order_and_its_limit() {
    let gauge = Arc::new(Mutex::new((0, 0)));
    let out = squares(vec![0, 1, 2, 3], 2, gauge.clone()).await.unwrap();
    assert_eq!(out, [0, 1, 4, 9], "results in input order");
    assert_eq!(gauge.lock().unwrap().1, 2, "at most 2 at a time");

    let gauge = Arc::new(Mutex::new((0, 0)));
    let err = squares(vec![0, 4, 1], 0, gauge.clone()).await.unwrap_err();
    assert_eq!(err.step(), Some("slow_square"));
    assert_eq!(gauge.lock().unwrap().1, 3, "no limit: all at once");
    assert_eq!(
        gauge.lock().unwrap().0,
        0,
        "the others were cancelled, not left running"
    );

    let gauge = Arc::new(Mutex::new((0, 0)));
    assert_eq!(squares_tolerant(vec![1, 4, 2], gauge).await.unwrap(), 2);
    let gauge = Arc::new(Mutex::new((0, 0)));
    assert!(squares_tolerant(vec![4, 4], gauge).await.is_err());
}

// ---------------------------------------------------------------- join members are states

async fn gate(rx: Arc<tokio::sync::Notify>, n: u32) -> Result<u32, String> {
    rx.notified().await;
    Ok(n)
}
async fn quick(n: u32) -> Result<u32, String> {
    Ok(n)
}

#[workflow]
async fn fan(rx: Arc<tokio::sync::Notify>) -> Result<u32, String> {
    let (a, b) = flow::join!(quick(1), gate(rx, 2)).await?;
    Ok(a + b)
}

#[tokio::test]
async fn each_call_inside_join_has_its_state() {
    let rx = Arc::new(tokio::sync::Notify::new());
    let handle = Runtime::new().spawn(Fan, (rx.clone(),));
    // Let the run reach the gate.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(handle.typed_state(), Some(FanState::Gate));
    rx.notify_one();
    assert_eq!(handle.await.unwrap(), 3);
    // Every step of the group is a variant of the state enum.
    let _ = [FanState::Join, FanState::Quick, FanState::Gate];
}

// ---------------------------------------------------------------- labels

#[workflow]
async fn twice(c: Cluster) -> Result<u32, String> {
    #[label(before)]
    probe(c.clone(), 0).await?;
    rebalance(c.clone()).await?;
    #[label(after)]
    #[retry(max_attempts = 2)]
    probe(c.clone(), 0).await?;
    Ok(1)
}

#[tokio::test]
async fn a_label_names_a_step_and_fixes_its_identity() {
    let g = Twice::GRAPH;
    let keys: Vec<&str> = g.nodes.iter().map(|n| n.key).collect();
    assert_eq!(keys, ["start", "end", "before", "rebalance", "after"]);
    assert_eq!(
        g.node(g.find("after").unwrap()).unwrap().policy,
        "retry(max_attempts = 2)"
    );
    let rec = Recorder::default();
    let c = Cluster::with(&[Health::Healthy]);
    Runtime::new()
        .with_observer(rec.observer())
        .run(&Twice, (c,))
        .await
        .unwrap();
    let entered: Vec<&str> = rec
        .events()
        .iter()
        .filter(|e| e.kind == EventKind::Entered)
        .map(|e| e.step)
        .collect();
    assert_eq!(entered, ["before", "rebalance", "after"]);
}

// ---------------------------------------------------------------- events in loops

async fn flaky_once(seen: Arc<Mutex<Vec<u32>>>, round: u32) -> Result<u32, String> {
    let mut s = seen.lock().unwrap();
    if s.contains(&round) {
        return Ok(round);
    }
    s.push(round);
    Err(format!("round {round}: busy"))
}

#[workflow]
async fn rounds(seen: Arc<Mutex<Vec<u32>>>) -> Result<u32, String> {
    let mut total = 0;
    for round in 0..2 {
        #[retry(max_attempts = 2)]
        let n = flaky_once(seen.clone(), round).await?;
        total += n;
    }
    Ok(total)
}

#[tokio::test]
async fn every_event_of_a_step_in_a_loop_says_which_iteration() {
    let rec = Recorder::default();
    Runtime::new()
        .with_observer(rec.observer())
        .run(&Rounds, (Arc::default(),))
        .await
        .unwrap();
    let failed: Vec<(u32, u32)> = rec
        .events()
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::AttemptFailed { attempt, .. } => Some((e.iteration, attempt)),
            _ => None,
        })
        .collect();
    // Iteration 1's first attempt failed, then iteration 2's.
    assert_eq!(failed, [(1, 1), (2, 1)]);
    let ok: Vec<u32> = rec
        .events()
        .iter()
        .filter(|e| matches!(e.kind, EventKind::StepSucceeded { .. }))
        .map(|e| e.iteration)
        .collect();
    assert_eq!(ok, [1, 2]);
}

#[tokio::test]
async fn a_state_reads_as_its_node_and_status() {
    let rx = Arc::new(tokio::sync::Notify::new());
    let handle = Runtime::new().spawn(Fan, (rx.clone(),));
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(handle.state().to_string(), "gate (running)");
    rx.notify_one();
    let mut handle = handle;
    (&mut handle).await.unwrap();
    assert_eq!(handle.state().to_string(), "end (completed)");
}

// ---------------------------------------------------------------- the current state in a group

async fn fails_then_waits(tries: Arc<Mutex<u32>>) -> Result<u32, String> {
    let n = {
        let mut t = tries.lock().unwrap();
        *t += 1;
        *t
    };
    if n == 1 {
        return Err("first attempt fails".into());
    }
    std::future::pending().await
}
async fn waits_forever(_: u32) -> Result<u32, String> {
    std::future::pending().await
}

#[workflow]
async fn group_state(tries: Arc<Mutex<u32>>) -> Result<u32, String> {
    let (a, b) = flow::join!(
        #[retry(max_attempts = 2, backoff = constant("1s"))]
        fails_then_waits(tries.clone()),
        waits_forever(0)
    )
    .await?;
    Ok(a + b)
}

#[tokio::test(start_paused = true)]
async fn a_retry_inside_a_group_is_the_current_state_again() {
    let tries = Arc::new(Mutex::new(0));
    let handle = Runtime::new().spawn(GroupState, (tries.clone(),));
    // Attempt 1 of the retried branch fails, then the other branch is entered and waits.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(*tries.lock().unwrap(), 1);
    assert_eq!(handle.state().name, "waits_forever");
    // After the backoff, attempt 2 runs: the run is at the retried step again.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(*tries.lock().unwrap(), 2);
    assert_eq!(handle.state().name, "fails_then_waits");
    handle.cancel();
    assert!(handle.await.unwrap_err().is_cancelled());
}
