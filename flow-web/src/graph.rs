//! A workflow's graph as the runtime stores it (`flow::durable::graph_json`), each node's
//! state in a run, and the graph laid out and drawn as SVG on the server.
//!
//! The layout: nodes in layers by their longest path from the start (loop back edges left
//! out), each layer ordered by where its predecessors are; the members of a group (parallel,
//! map, loop, branch) boxed around with their head; edges as curves, a loop's back edge
//! around the right side.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use flow_runtime::store::{
    CompensationRecord, CompensationStatus, RunRecord, RunStatus, StepOutcome, StepRecord,
};
use maud::{Markup, html};

/// The suffix of an undo's node key (`<key>~undo`).
pub const UNDO_SUFFIX: &str = "~undo";

/// An edge of a stored graph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEdge {
    /// The node it leaves.
    pub from: usize,
    /// The node it enters.
    pub to: usize,
    /// `sequence`, `parallel`, `map`, `branch`, `catch`, `loop` or `exit`.
    pub kind: String,
    /// The arm's pattern, `next`, `?`, ... (may be empty).
    pub label: String,
}

/// A workflow's graph as the runtime stored it (`flow::durable::graph_json`).
#[derive(Clone, Debug)]
pub struct StoredGraph {
    /// The workflow's name.
    pub workflow: String,
    /// The workflow's fingerprint, as 16 hex digits.
    pub fingerprint: String,
    /// Node keys by index.
    pub keys: Vec<String>,
    /// Node names by index.
    pub names: Vec<String>,
    /// Node kinds by index (`start`, `end`, `step`, `parallel`, `map`, `branch`, `recovery`,
    /// `loop`, `signal`).
    pub kinds: Vec<String>,
    /// Each node's group (the index of the group's head), by index.
    pub parents: Vec<Option<usize>>,
    /// Each node's fingerprint (16 hex digits), by index.
    pub fingerprints: Vec<String>,
    /// The edges (those naming a node that does not exist are dropped).
    pub edges: Vec<StoredEdge>,
    /// The Mermaid picture (node `i` is `n<i>`).
    pub mermaid: String,
}

impl StoredGraph {
    /// Reads the JSON the runtime stores. Never panics on damaged input: a node or edge that
    /// makes no sense is dropped or left without its group.
    pub fn parse(bytes: &[u8]) -> Result<StoredGraph, String> {
        let v: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| format!("the stored graph is damaged: {e}"))?;
        let nodes = v["nodes"]
            .as_array()
            .ok_or("the stored graph has no nodes")?;
        let s = |n: &serde_json::Value, k: &str| n[k].as_str().unwrap_or_default().to_owned();
        let count = nodes.len();
        let index = |x: &serde_json::Value| {
            x.as_u64()
                .and_then(|i| usize::try_from(i).ok())
                .filter(|&i| i < count)
        };
        let edges = v["edges"]
            .as_array()
            .map(|es| {
                es.iter()
                    .filter_map(|e| {
                        Some(StoredEdge {
                            from: index(&e["from"])?,
                            to: index(&e["to"])?,
                            kind: s(e, "kind"),
                            label: s(e, "label"),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut parents: Vec<Option<usize>> = nodes.iter().map(|n| index(&n["parent"])).collect();
        // A group chain that loops back on itself is damage: cut it.
        for i in 0..count {
            let (mut at, mut steps) = (i, 0);
            while let Some(p) = parents[at] {
                steps += 1;
                if steps > count {
                    parents[i] = None;
                    break;
                }
                at = p;
            }
        }
        Ok(StoredGraph {
            workflow: v["workflow"].as_str().unwrap_or_default().to_owned(),
            fingerprint: v["fingerprint"].as_str().unwrap_or_default().to_owned(),
            keys: nodes.iter().map(|n| s(n, "key")).collect(),
            names: nodes.iter().map(|n| s(n, "name")).collect(),
            kinds: nodes.iter().map(|n| s(n, "kind")).collect(),
            parents,
            fingerprints: nodes.iter().map(|n| s(n, "fingerprint")).collect(),
            edges,
            mermaid: v["mermaid"].as_str().unwrap_or_default().to_owned(),
        })
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the graph has no node.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether node `i` is the start or the end (not a step).
    pub fn is_terminal(&self, i: usize) -> bool {
        matches!(self.kinds[i].as_str(), "start" | "end")
    }

    /// The node named `step` (by key, or by name when one node has it).
    pub fn find(&self, step: &str) -> Result<usize, String> {
        if let Some(i) = self.keys.iter().position(|k| k == step) {
            return Ok(i);
        }
        let by_name: Vec<usize> = (0..self.names.len())
            .filter(|&i| self.names[i] == step)
            .collect();
        match by_name[..] {
            [i] => Ok(i),
            [] => Err(format!(
                "step `{step}` is not in its graph (its steps: {})",
                self.step_keys().join(", ")
            )),
            _ => Err(format!(
                "several steps are named `{step}`: give one's key ({})",
                by_name
                    .iter()
                    .map(|&i| self.keys[i].as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// The keys of the nodes that are steps (not the start or the end).
    pub fn step_keys(&self) -> Vec<&str> {
        (0..self.keys.len())
            .filter(|&i| !self.is_terminal(i))
            .map(|i| self.keys[i].as_str())
            .collect()
    }

    /// The keys of step `step` and of every node after it (reachable by edges, and the
    /// members of groups reached).
    pub fn after(&self, step: &str) -> Result<BTreeSet<String>, String> {
        let start = self.find(step)?;
        if self.is_terminal(start) {
            return Err(format!("`{step}` is not a step"));
        }
        let mut seen = BTreeSet::from([start]);
        let mut todo = vec![start];
        while let Some(n) = todo.pop() {
            let next = self
                .edges
                .iter()
                .filter(|e| e.from == n)
                .map(|e| e.to)
                .chain((0..self.parents.len()).filter(|&c| self.parents[c] == Some(n)));
            for t in next.collect::<Vec<_>>() {
                if seen.insert(t) {
                    todo.push(t);
                }
            }
        }
        Ok(seen.into_iter().map(|i| self.keys[i].clone()).collect())
    }

    /// Whether node `i` heads a group (some node has it as parent).
    fn is_group(&self, i: usize) -> bool {
        self.parents.contains(&Some(i))
    }
}

/// What a run did at a node, as its page colours it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeState {
    /// No record: the run has not reached it (or took another path).
    NotReached,
    /// Completed (every occurrence and item recorded so far).
    Done,
    /// Completed, then undone: its undo (`<key>~undo`) completed.
    Compensated,
    /// Failed after its retries.
    Failed,
    /// A failed attempt, and the next one is due at `wake_at_ms` (a backoff is pending).
    Retrying,
    /// An attempt started and has not ended (or a wait, for a signal, in progress).
    Running,
}

impl NodeState {
    /// The state's CSS class and word: `done`, `failed`, `running`, `retrying`,
    /// `notreached`, `compensated`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::NotReached => "notreached",
            NodeState::Done => "done",
            NodeState::Compensated => "compensated",
            NodeState::Failed => "failed",
            NodeState::Retrying => "retrying",
            NodeState::Running => "running",
        }
    }

    /// The state of one step record.
    pub fn of_step(s: &StepRecord) -> NodeState {
        match &s.outcome {
            Some(StepOutcome::Completed(_)) => NodeState::Done,
            Some(StepOutcome::Failed(_)) => NodeState::Failed,
            None => {
                let last = s.attempts.iter().max_by_key(|a| a.number);
                match last {
                    Some(a) if a.ended_ms.is_some() && s.retry.wake_at_ms.is_some() => {
                        NodeState::Retrying
                    }
                    _ => NodeState::Running,
                }
            }
        }
    }
}

/// What the run did at one node: its state, and how many times it ran.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeSummary {
    /// The state shown.
    pub state: Option<NodeState>,
    /// The loop iterations recorded (the highest occurrence + 1).
    pub occurrences: u32,
    /// The distinct map items recorded.
    pub items: u32,
    /// Attempts recorded, over every occurrence and item.
    pub attempts: u32,
}

/// Each node's summary in a run, by node index; groups take their members' state.
pub fn node_states(
    graph: &StoredGraph,
    run: &RunRecord,
    steps: &[StepRecord],
    compensations: &[CompensationRecord],
) -> Vec<NodeSummary> {
    // Per node key: its state, occurrences, map items and attempts.
    type Tally = (NodeState, BTreeSet<u32>, BTreeSet<u32>, u32);
    let mut by_key: BTreeMap<&str, Tally> = BTreeMap::new();
    let mut undone: BTreeSet<&str> = compensations
        .iter()
        .filter(|c| c.status == CompensationStatus::Done)
        .map(|c| c.node.as_str())
        .collect();
    for s in steps {
        if let Some(base) = s.key.node.strip_suffix(UNDO_SUFFIX) {
            if matches!(s.outcome, Some(StepOutcome::Completed(_))) {
                undone.insert(base);
            }
            continue;
        }
        let state = NodeState::of_step(s);
        let slot = by_key.entry(&s.key.node).or_insert((
            NodeState::NotReached,
            BTreeSet::new(),
            BTreeSet::new(),
            0,
        ));
        // Running beats retrying beats failed beats done (a loop's later iteration, a map's
        // other items).
        slot.0 = slot.0.max(state);
        slot.1.insert(s.key.occurrence);
        if let Some(i) = s.key.item {
            slot.2.insert(i);
        }
        slot.3 += u32::try_from(s.attempts.len()).unwrap_or(u32::MAX);
    }
    let mut out: Vec<NodeSummary> = (0..graph.len())
        .map(|i| {
            let key = graph.keys[i].as_str();
            match graph.kinds[i].as_str() {
                "start" => NodeSummary {
                    state: Some(if run.status == RunStatus::Pending && steps.is_empty() {
                        NodeState::NotReached
                    } else {
                        NodeState::Done
                    }),
                    ..NodeSummary::default()
                },
                "end" => NodeSummary {
                    state: Some(match run.status {
                        RunStatus::Completed => NodeState::Done,
                        RunStatus::Failed | RunStatus::Cancelled => NodeState::Failed,
                        _ => NodeState::NotReached,
                    }),
                    ..NodeSummary::default()
                },
                _ => match by_key.get(key) {
                    Some((state, occ, items, attempts)) => NodeSummary {
                        state: Some(if *state == NodeState::Done && undone.contains(key) {
                            NodeState::Compensated
                        } else {
                            *state
                        }),
                        occurrences: occ.iter().max().map_or(0, |m| m + 1),
                        items: u32::try_from(items.len()).unwrap_or(u32::MAX),
                        attempts: *attempts,
                    },
                    None => NodeSummary {
                        state: Some(NodeState::NotReached),
                        ..NodeSummary::default()
                    },
                },
            }
        })
        .collect();
    // A group with no record of its own is as far as its members got (innermost first: a
    // member's index is above its head's).
    for g in (0..out.len()).rev() {
        if out[g].state != Some(NodeState::NotReached) {
            continue;
        }
        let best = (0..graph.len())
            .filter(|&c| graph.parents[c] == Some(g))
            .filter_map(|c| out[c].state)
            .max();
        if let Some(best) = best {
            out[g].state = Some(best);
        }
    }
    out
}

const NODE_W: f64 = 176.0;
const NODE_H: f64 = 46.0;
const GAP_X: f64 = 34.0;
const GAP_Y: f64 = 52.0;
const MARGIN: f64 = 24.0;
const PAD: f64 = 10.0;

/// Where each node is drawn: its top-left corner.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Top-left corner of each node, by index.
    pub at: Vec<(f64, f64)>,
    /// The layer of each node (its longest path from the start).
    pub layer: Vec<usize>,
    /// The picture's width.
    pub width: f64,
    /// The picture's height.
    pub height: f64,
}

/// Lays `graph` out in layers (see the module documentation).
pub fn layout(graph: &StoredGraph) -> Layout {
    let n = graph.len();
    let forward: Vec<&StoredEdge> = graph
        .edges
        .iter()
        .filter(|e| e.kind != "loop" && e.from != e.to)
        .collect();
    // Longest path by Kahn's order; nodes left in a cycle (damage) keep what they have.
    let mut indegree = vec![0usize; n];
    for e in &forward {
        indegree[e.to] += 1;
    }
    let mut layer = vec![0usize; n];
    let mut queue: Vec<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut head = 0;
    while head < queue.len() {
        let u = queue[head];
        head += 1;
        for e in forward.iter().filter(|e| e.from == u) {
            layer[e.to] = layer[e.to].max(layer[u] + 1);
            indegree[e.to] -= 1;
            if indegree[e.to] == 0 {
                queue.push(e.to);
            }
        }
    }
    // The end node goes below everything.
    let deepest = layer.iter().copied().max().unwrap_or(0);
    for (l, kind) in layer.iter_mut().zip(&graph.kinds) {
        if kind == "end" {
            *l = deepest.max(1);
        }
    }
    let layers = layer.iter().copied().max().map_or(0, |m| m + 1);
    let mut rows: Vec<Vec<usize>> = vec![Vec::new(); layers];
    let mut pos = vec![0f64; n];
    for (l, row) in rows.iter_mut().enumerate() {
        let mut members: Vec<(f64, usize)> = (0..n)
            .filter(|&i| layer[i] == l)
            .map(|i| {
                let preds: Vec<f64> = forward
                    .iter()
                    .filter(|e| e.to == i && layer[e.from] < l)
                    .map(|e| pos[e.from])
                    .collect();
                let bary = if preds.is_empty() {
                    i as f64
                } else {
                    preds.iter().sum::<f64>() / preds.len() as f64
                };
                (bary, i)
            })
            .collect();
        members.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        for (slot, &(_, i)) in members.iter().enumerate() {
            pos[i] = slot as f64;
        }
        *row = members.into_iter().map(|(_, i)| i).collect();
    }
    let widest = rows.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let full = widest as f64 * (NODE_W + GAP_X) - GAP_X;
    let mut at = vec![(0.0, 0.0); n];
    for (l, row) in rows.iter().enumerate() {
        let w = row.len() as f64 * (NODE_W + GAP_X) - GAP_X;
        let x0 = MARGIN + PAD * 2.0 + (full - w) / 2.0;
        for (slot, &i) in row.iter().enumerate() {
            at[i] = (
                x0 + slot as f64 * (NODE_W + GAP_X),
                MARGIN + PAD * 2.0 + l as f64 * (NODE_H + GAP_Y),
            );
        }
    }
    Layout {
        at,
        layer,
        // Room on the right for loop back edges.
        width: full + 2.0 * (MARGIN + PAD * 2.0) + 60.0,
        height: layers as f64 * (NODE_H + GAP_Y) - GAP_Y + 2.0 * (MARGIN + PAD * 2.0),
    }
}

fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

fn f(x: f64) -> String {
    format!("{x:.1}")
}

/// The graph as SVG: each node a `<g class="node state-… kind-…" data-key="…">`, clickable
/// (the page's script picks the step to restart from). `states` is empty for a graph shown
/// without a run.
pub fn svg(graph: &StoredGraph, states: &[NodeSummary]) -> Markup {
    let lay = layout(graph);
    let n = graph.len();
    // Group boxes, outermost first: the head and all its descendants.
    let depth = |mut i: usize| {
        let mut d = 0;
        while let Some(p) = graph.parents[i] {
            d += 1;
            i = p;
        }
        d
    };
    // (depth, head, (x, y, width, height)).
    type GroupBox = (usize, usize, (f64, f64, f64, f64));
    let mut groups: Vec<GroupBox> = Vec::new();
    for g in (0..n).filter(|&g| graph.is_group(g)) {
        let mut members = vec![g];
        let mut i = 0;
        while i < members.len() {
            let m = members[i];
            members.extend((0..n).filter(|&c| graph.parents[c] == Some(m)));
            i += 1;
        }
        let inner = |d: usize| PAD * (1.0 + d as f64 * 0.0);
        let (mut x0, mut y0, mut x1, mut y1) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
        for &m in &members {
            let (x, y) = lay.at[m];
            // Nested boxes: the deeper a member, the more room around it.
            let pad = inner(0) + (depth(m) - depth(g)) as f64 * 6.0;
            x0 = x0.min(x - pad);
            y0 = y0.min(y - pad);
            x1 = x1.max(x + NODE_W + pad);
            y1 = y1.max(y + NODE_H + pad);
        }
        groups.push((depth(g), g, (x0, y0, x1 - x0, y1 - y0)));
    }
    groups.sort_by_key(|&(d, g, _)| (d, g));
    let edge_path = |e: &StoredEdge| -> String {
        let (sx, sy) = lay.at[e.from];
        let (tx, ty) = lay.at[e.to];
        if e.kind == "loop" || lay.layer[e.to] <= lay.layer[e.from] {
            // Around the right side, back up to the head.
            let (x1, y1) = (sx + NODE_W, sy + NODE_H / 2.0);
            let (x2, y2) = (tx + NODE_W, ty + NODE_H / 2.0);
            let bulge = x1.max(x2) + 46.0;
            format!(
                "M{} {} C{} {} {} {} {} {}",
                f(x1),
                f(y1),
                f(bulge),
                f(y1),
                f(bulge),
                f(y2),
                f(x2),
                f(y2)
            )
        } else {
            let (x1, y1) = (sx + NODE_W / 2.0, sy + NODE_H);
            let (x2, y2) = (tx + NODE_W / 2.0, ty);
            let mid = (y2 - y1) / 2.0;
            format!(
                "M{} {} C{} {} {} {} {} {}",
                f(x1),
                f(y1),
                f(x1),
                f(y1 + mid.min(60.0)),
                f(x2),
                f(y2 - mid.min(60.0)),
                f(x2),
                f(y2)
            )
        }
    };
    let label_at = |e: &StoredEdge| -> (f64, f64) {
        let (sx, sy) = lay.at[e.from];
        let (tx, ty) = lay.at[e.to];
        if e.kind == "loop" || lay.layer[e.to] <= lay.layer[e.from] {
            ((sx.max(tx)) + NODE_W + 40.0, (sy + ty) / 2.0 + NODE_H / 2.0)
        } else {
            (
                (sx + tx) / 2.0 + NODE_W / 2.0 + 4.0,
                (sy + NODE_H + ty) / 2.0 + 4.0,
            )
        }
    };
    let state_of = |i: usize| {
        states
            .get(i)
            .and_then(|s| s.state)
            .map_or("plain", NodeState::as_str)
    };
    html! {
        svg class="graph" xmlns="http://www.w3.org/2000/svg" width=(f(lay.width)) height=(f(lay.height))
            viewBox={ "0 0 " (f(lay.width)) " " (f(lay.height)) } role="img"
            aria-label={ "graph of workflow " (graph.workflow) } {
            defs {
                marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse" {
                    path d="M0 0 L10 5 L0 10 z" class="arrowhead" {}
                }
            }
            g class="groups" {
                @for (_, g, (x, y, w, h)) in &groups {
                    rect class={ "group kind-" (graph.kinds[*g]) " state-" (state_of(*g)) } x=(f(*x)) y=(f(*y)) width=(f(*w)) height=(f(*h)) rx="10" {}
                }
            }
            g class="edges" {
                @for e in &graph.edges {
                    path class={ "edge edge-" (e.kind) } d=(edge_path(e)) marker-end="url(#arrow)" {}
                    @if !e.label.is_empty() && e.kind != "exit" {
                        @let (lx, ly) = label_at(e);
                        text class="edge-label" x=(f(lx)) y=(f(ly)) { (short(&e.label, 22)) }
                    }
                }
            }
            g class="nodes" {
                @for i in 0..n {
                    @let (x, y) = lay.at[i];
                    @let st = state_of(i);
                    @let summary = states.get(i).cloned().unwrap_or_default();
                    @let restartable = !graph.is_terminal(i);
                    g class={ "node kind-" (graph.kinds[i]) " state-" (st) @if restartable { " pickable" } }
                        data-key=(graph.keys[i]) data-name=(graph.names[i]) data-state=(st)
                        transform={ "translate(" (f(x)) "," (f(y)) ")" }
                        tabindex=[restartable.then_some("0")] {
                        title {
                            (graph.names[i]) " (" (graph.kinds[i]) ", key " (graph.keys[i]) "): " (st)
                            @if summary.attempts > 0 { ", " (summary.attempts) " attempt(s)" }
                        }
                        rect class="box" width=(f(NODE_W)) height=(f(NODE_H)) rx=(if graph.is_terminal(i) { "23" } else { "7" }) {}
                        text class="name" x=(f(NODE_W / 2.0)) y=(if summary.occurrences > 1 || summary.items > 0 { "19" } else { "28" }) {
                            (short(&graph.names[i], 24))
                        }
                        @if summary.occurrences > 1 || summary.items > 0 {
                            text class="count" x=(f(NODE_W / 2.0)) y="36" {
                                @if summary.occurrences > 1 { "×" (summary.occurrences) " iterations" }
                                @if summary.occurrences > 1 && summary.items > 0 { " · " }
                                @if summary.items > 0 { (summary.items) " items" }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The legend of node states, in the colours of [`svg`].
pub fn legend() -> Markup {
    html! {
        ul class="legend" {
            @for s in [NodeState::Done, NodeState::Running, NodeState::Retrying, NodeState::Failed, NodeState::Compensated, NodeState::NotReached] {
                li { span class={ "swatch state-" (s.as_str()) } {} (s.as_str().replace("notreached", "not reached")) }
            }
        }
    }
}

/// A duration in ms as `850 ms`, `3.2 s`, `4m 05s`, `2h 03m`.
pub fn duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m {:02}s", ms / 60_000, ms / 1000 % 60)
    } else {
        format!("{}h {:02}m", ms / 3_600_000, ms / 60_000 % 60)
    }
}

/// At most this many steps are drawn in a timeline.
pub const TIMELINE_ROWS: usize = 300;

/// The timeline (Gantt) of a run's attempts and backoffs, on one time axis: a row per step
/// record (by the start of its first attempt), a bar per attempt coloured by how it ended,
/// and a hatched bar for each backoff wait (between a failed attempt and the next, or until
/// `wake_at_ms` of a pending retry). A running attempt's bar ends at `now_ms`.
pub fn timeline(steps: &[StepRecord], now_ms: u64) -> Markup {
    // A step that succeeded at its first attempt (or a signal taken from the store) has no
    // attempt recorded: it is drawn as a mark at its commit.
    let mut rows: Vec<&StepRecord> = steps
        .iter()
        .filter(|s| !s.attempts.is_empty() || s.outcome.is_some())
        .collect();
    let first = |s: &StepRecord| {
        s.attempts
            .iter()
            .map(|a| a.started_ms)
            .min()
            .unwrap_or(s.updated_ms)
    };
    rows.sort_by_key(|s| (first(s), s.key.clone()));
    let cut = rows.len().saturating_sub(TIMELINE_ROWS);
    rows.truncate(TIMELINE_ROWS);
    if rows.is_empty() {
        return html! { p class="empty" { "No attempt recorded yet." } };
    }
    let t0 = rows.iter().map(|s| first(s)).min().unwrap_or(now_ms);
    let mut t1 = t0 + 1;
    for s in &rows {
        t1 = t1.max(s.updated_ms);
        for a in &s.attempts {
            t1 = t1.max(a.ended_ms.unwrap_or(now_ms.max(a.started_ms)));
        }
        if s.outcome.is_none()
            && let Some(w) = s.retry.wake_at_ms
        {
            t1 = t1.max(w);
        }
    }
    let (label_w, track_w, row_h) = (220.0, 760.0, 22.0);
    let span = (t1 - t0) as f64;
    let x = |t: u64| label_w + (t.saturating_sub(t0)) as f64 / span * track_w;
    let height = rows.len() as f64 * row_h + 30.0;
    let ticks: Vec<u64> = (0..=4).map(|k| t0 + (t1 - t0) * k / 4).collect();
    html! {
        svg class="timeline" xmlns="http://www.w3.org/2000/svg" width=(f(label_w + track_w + 20.0)) height=(f(height))
            viewBox={ "0 0 " (f(label_w + track_w + 20.0)) " " (f(height)) } role="img" aria-label="timeline of attempts" {
            defs {
                pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)" {
                    rect width="3" height="6" class="hatch" {}
                }
            }
            @for t in &ticks {
                line class="tick" x1=(f(x(*t))) x2=(f(x(*t))) y1="0" y2=(f(height - 16.0)) {}
                text class="tick-label" x=(f(x(*t))) y=(f(height - 4.0)) { "+" (duration(t - t0)) }
            }
            @for (r, s) in rows.iter().enumerate() {
                @let y = r as f64 * row_h + 4.0;
                text class="row-label" x="4" y=(f(y + 13.0)) { (short(&step_label(s), 30)) }
                @if s.attempts.is_empty() {
                    rect class="bar bar-commit" x=(f(x(s.updated_ms) - 3.0)) y=(f(y + 2.0)) width="6" height="12" rx="1" {
                        title { (step_label(s)) ": committed at " (crate::utc(s.updated_ms)) " UTC (it succeeded at its first attempt, recorded by its commit alone)" }
                    }
                }
                @for bar in bars(s, now_ms) {
                    @if bar.class == "backoff" {
                        rect class="bar bar-backoff" x=(f(x(bar.from))) y=(f(y + 3.0)) width=(f((x(bar.to) - x(bar.from)).max(1.0))) height="10" {
                            title { (bar.title) }
                        }
                    } @else {
                        rect class={ "bar bar-" (bar.class) } x=(f(x(bar.from))) y=(f(y)) width=(f((x(bar.to) - x(bar.from)).max(2.0))) height="16" rx="2" {
                            title { (bar.title) }
                        }
                    }
                }
            }
        }
        @if cut > 0 { p class="note" { (cut) " more steps not drawn (the first " (TIMELINE_ROWS) " are)." } }
    }
}

/// A step's label: `key@occurrence`, with `[item]` in a map.
pub fn step_label(s: &StepRecord) -> String {
    let mut l = format!("{}@{}", s.key.node, s.key.occurrence);
    if let Some(i) = s.key.item {
        let _ = write!(l, "[{i}]");
    }
    l
}

/// One bar of a timeline row.
struct Bar {
    from: u64,
    to: u64,
    /// `done`, `failed`, `running` or `backoff`.
    class: &'static str,
    title: String,
}

/// The bars of one step: its attempts, and the backoff waits after its failed ones.
fn bars(s: &StepRecord, now_ms: u64) -> Vec<Bar> {
    let mut attempts = s.attempts.clone();
    attempts.sort_by_key(|a| a.number);
    let mut out = Vec::new();
    for (k, a) in attempts.iter().enumerate() {
        let end = a.ended_ms.unwrap_or(now_ms.max(a.started_ms));
        let class = if a.ended_ms.is_none() {
            "running"
        } else if a.failure.is_some() {
            "failed"
        } else {
            "done"
        };
        let mut title = format!(
            "{} attempt {}: {class}, {}",
            step_label(s),
            a.number,
            duration(end.saturating_sub(a.started_ms))
        );
        if let Some(fail) = &a.failure {
            let _ = write!(title, " \u{2014} {fail}");
        }
        out.push(Bar {
            from: a.started_ms,
            to: end,
            class,
            title,
        });
        let next = match attempts.get(k + 1) {
            Some(n) => Some(n.started_ms),
            None if s.outcome.is_none() => s.retry.wake_at_ms,
            None => None,
        };
        if let (Some(ended), Some(next), Some(_)) = (a.ended_ms, next, &a.failure)
            && next > ended
        {
            out.push(Bar {
                from: ended,
                to: next,
                class: "backoff",
                title: format!(
                    "{}: backoff {} before attempt {}",
                    step_label(s),
                    duration(next - ended),
                    a.number + 1
                ),
            });
        }
    }
    out
}
