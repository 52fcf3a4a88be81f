//! The graph of a `flow` workflow: nodes, edges, and renderings as Mermaid and Graphviz DOT.
//!
//! Shared by the runtime (where every workflow's graph is a `Graph<'static>` the macros emit
//! as a `static`) and the macros (which render the same picture into the generated type's
//! rustdoc at expansion time), so the picture is drawn by one piece of code. Use it through
//! the `flow` crate. Node `0` is always the start node and node `1` the end node.

use core::fmt::Write as _;

/// Index of a node in its [`Graph`]: a step's identity, fixed at compile time.
///
/// ```
/// # use flow_graph::{Edge, EdgeKind, Graph, Node, NodeId, NodeKind};
/// # const fn node(name: &'static str, kind: NodeKind, policy: &'static str) -> Node<'static> {
/// #     Node { name, key: name, fingerprint: 0, kind, policy, parent: None }
/// # }
/// # const fn edge(from: u32, to: u32) -> Edge<'static> {
/// #     Edge { from, to, kind: EdgeKind::Sequence, label: "" }
/// # }
/// # // What `flow! { name = "deploy"; build -> test }` emits, `build` retried.
/// # static DEPLOY: Graph<'static> = Graph { name: "deploy", fingerprint: 7, nodes: &[
/// #     node("start", NodeKind::Start, ""), node("end", NodeKind::End, ""),
/// #     node("build", NodeKind::Step, "retry(max_attempts = 3)"), node("test", NodeKind::Step, "")],
/// #     edges: &[edge(0, 2), edge(2, 3), edge(3, 1)] };
/// assert_eq!(DEPLOY.find("build"), Some(NodeId(2)));
/// assert_eq!(DEPLOY.name_of(NodeId::START), "start");
/// assert_eq!(DEPLOY.node(NodeId::END).map(|n| n.kind), Some(NodeKind::End));
/// assert!(NodeId(2) < NodeId(3)); // ids are indexes into `Graph::nodes`
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

impl NodeId {
    /// The start node.
    pub const START: NodeId = NodeId(0);
    /// The end node.
    pub const END: NodeId = NodeId(1);
}

/// What a node is.
///
/// ```
/// # use flow_graph::{Edge, EdgeKind, Graph, Node, NodeId, NodeKind};
/// # const fn node(name: &'static str, kind: NodeKind, policy: &'static str) -> Node<'static> {
/// #     Node { name, key: name, fingerprint: 0, kind, policy, parent: None }
/// # }
/// # const fn edge(from: u32, to: u32) -> Edge<'static> {
/// #     Edge { from, to, kind: EdgeKind::Sequence, label: "" }
/// # }
/// # // What `flow! { name = "deploy"; build -> test }` emits, `build` retried.
/// # static DEPLOY: Graph<'static> = Graph { name: "deploy", fingerprint: 7, nodes: &[
/// #     node("start", NodeKind::Start, ""), node("end", NodeKind::End, ""),
/// #     node("build", NodeKind::Step, "retry(max_attempts = 3)"), node("test", NodeKind::Step, "")],
/// #     edges: &[edge(0, 2), edge(2, 3), edge(3, 1)] };
/// let kinds: Vec<NodeKind> = DEPLOY.nodes.iter().map(|n| n.kind).collect();
/// assert_eq!(kinds, [NodeKind::Start, NodeKind::End, NodeKind::Step, NodeKind::Step]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// Where every run starts.
    Start,
    /// Where every run ends.
    End,
    /// A step: one awaited call.
    Step,
    /// A group whose branches run concurrently.
    Parallel,
    /// A group that runs its body once per item of a collection.
    Map,
    /// A choice between arms.
    Branch,
    /// A step that recovers from a caught failure.
    Recovery,
    /// A loop (`for`, `while`, `loop` in a `#[workflow]` body): its members run once per
    /// iteration.
    Loop,
    /// A wait for a named message from outside the run (a signal).
    Signal,
}

/// The kind of an edge.
///
/// ```
/// # use flow_graph::{Edge, EdgeKind, Graph, Node, NodeId, NodeKind};
/// # const fn node(name: &'static str, kind: NodeKind, policy: &'static str) -> Node<'static> {
/// #     Node { name, key: name, fingerprint: 0, kind, policy, parent: None }
/// # }
/// # const fn edge(from: u32, to: u32) -> Edge<'static> {
/// #     Edge { from, to, kind: EdgeKind::Sequence, label: "" }
/// # }
/// # // What `flow! { name = "deploy"; build -> test }` emits, `build` retried.
/// # static DEPLOY: Graph<'static> = Graph { name: "deploy", fingerprint: 7, nodes: &[
/// #     node("start", NodeKind::Start, ""), node("end", NodeKind::End, ""),
/// #     node("build", NodeKind::Step, "retry(max_attempts = 3)"), node("test", NodeKind::Step, "")],
/// #     edges: &[edge(0, 2), edge(2, 3), edge(3, 1)] };
/// let into_test = DEPLOY.edges.iter().find(|e| e.to == 3).unwrap();
/// assert_eq!((into_test.from, into_test.kind), (2, EdgeKind::Sequence));
/// assert!(DEPLOY.edges.iter().all(|e| e.kind != EdgeKind::Catch)); // nothing is caught
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EdgeKind {
    /// One node after another.
    Sequence,
    /// Into or out of a branch of a parallel group.
    Parallel,
    /// Into or out of the body of a map.
    Map,
    /// Into an arm of a branch; the label is the arm's pattern.
    Branch,
    /// From a step to its recovery step, when a failure is caught.
    Catch,
    /// Back to a loop's head: the next iteration.
    Loop,
    /// An early exit to the end node: a `return`, or a `?` that returns an error.
    Exit,
}

/// A node of a workflow graph.
///
/// ```
/// # use flow_graph::{Edge, EdgeKind, Graph, Node, NodeId, NodeKind};
/// # const fn node(name: &'static str, kind: NodeKind, policy: &'static str) -> Node<'static> {
/// #     Node { name, key: name, fingerprint: 0, kind, policy, parent: None }
/// # }
/// # const fn edge(from: u32, to: u32) -> Edge<'static> {
/// #     Edge { from, to, kind: EdgeKind::Sequence, label: "" }
/// # }
/// # // What `flow! { name = "deploy"; build -> test }` emits, `build` retried.
/// # static DEPLOY: Graph<'static> = Graph { name: "deploy", fingerprint: 7, nodes: &[
/// #     node("start", NodeKind::Start, ""), node("end", NodeKind::End, ""),
/// #     node("build", NodeKind::Step, "retry(max_attempts = 3)"), node("test", NodeKind::Step, "")],
/// #     edges: &[edge(0, 2), edge(2, 3), edge(3, 1)] };
/// let build: &Node = DEPLOY.node(DEPLOY.find("build").unwrap()).unwrap();
/// assert_eq!((build.name, build.kind), ("build", NodeKind::Step));
/// assert_eq!((build.policy, build.parent), ("retry(max_attempts = 3)", None));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Node<'a> {
    /// The step's name as written (`launch_nodes`), or the group's kind.
    pub name: &'a str,
    /// The node's stable identity: its name (function name or label), plus `#2`, `#3`, ...
    /// for later nodes of the same name. Unlike the [`NodeId`] (an index into
    /// [`Graph::nodes`]), adding, removing or reordering other steps leaves it unchanged.
    pub key: &'a str,
    /// A hash of what the node does: its kind, callee, policies and position in the control
    /// flow (the branches and loops around it), computed at compile time.
    pub fingerprint: u64,
    /// What the node is.
    pub kind: NodeKind,
    /// The node's policies as written, for display (`retry(max_attempts = 3), timeout = "2s"`);
    /// empty when it has none.
    pub policy: &'a str,
    /// The group (parallel, map or branch node) this node belongs to.
    pub parent: Option<u32>,
}

/// An edge of a workflow graph.
///
/// ```
/// # use flow_graph::{Edge, EdgeKind, Graph, Node, NodeId, NodeKind};
/// # const fn node(name: &'static str, kind: NodeKind, policy: &'static str) -> Node<'static> {
/// #     Node { name, key: name, fingerprint: 0, kind, policy, parent: None }
/// # }
/// # const fn edge(from: u32, to: u32) -> Edge<'static> {
/// #     Edge { from, to, kind: EdgeKind::Sequence, label: "" }
/// # }
/// # // What `flow! { name = "deploy"; build -> test }` emits, `build` retried.
/// # static DEPLOY: Graph<'static> = Graph { name: "deploy", fingerprint: 7, nodes: &[
/// #     node("start", NodeKind::Start, ""), node("end", NodeKind::End, ""),
/// #     node("build", NodeKind::Step, "retry(max_attempts = 3)"), node("test", NodeKind::Step, "")],
/// #     edges: &[edge(0, 2), edge(2, 3), edge(3, 1)] };
/// let path: Vec<(u32, u32)> = DEPLOY.edges.iter().map(|e: &Edge| (e.from, e.to)).collect();
/// assert_eq!(path, [(0, 2), (2, 3), (3, 1)]); // start -> build -> test -> end
/// assert!(DEPLOY.edges.iter().all(|e| e.label.is_empty()));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edge<'a> {
    /// Source node index.
    pub from: u32,
    /// Target node index.
    pub to: u32,
    /// The kind of edge.
    pub kind: EdgeKind,
    /// A label: the pattern of a branch arm, or empty.
    pub label: &'a str,
}

/// The static description of a workflow.
///
/// ```
/// # use flow_graph::{Edge, EdgeKind, Graph, Node, NodeId, NodeKind};
/// # const fn node(name: &'static str, kind: NodeKind, policy: &'static str) -> Node<'static> {
/// #     Node { name, key: name, fingerprint: 0, kind, policy, parent: None }
/// # }
/// # const fn edge(from: u32, to: u32) -> Edge<'static> {
/// #     Edge { from, to, kind: EdgeKind::Sequence, label: "" }
/// # }
/// # // What `flow! { name = "deploy"; build -> test }` emits, `build` retried.
/// # static DEPLOY: Graph<'static> = Graph { name: "deploy", fingerprint: 7, nodes: &[
/// #     node("start", NodeKind::Start, ""), node("end", NodeKind::End, ""),
/// #     node("build", NodeKind::Step, "retry(max_attempts = 3)"), node("test", NodeKind::Step, "")],
/// #     edges: &[edge(0, 2), edge(2, 3), edge(3, 1)] };
/// let build = DEPLOY.find("build").unwrap();
/// assert_eq!((DEPLOY.key_of(build), DEPLOY.name_of(NodeId(99))), ("build", "?"));
/// let steps: Vec<&str> = DEPLOY.steps().map(|(_, n)| n.name).collect();
/// assert_eq!(steps, ["build", "test"]);
/// assert!(DEPLOY.to_mermaid().starts_with("%% workflow deploy\nflowchart TD"));
/// assert!(DEPLOY.to_dot().starts_with("digraph"));
/// assert!(DEPLOY.steps_table().contains("retry(max_attempts = 3)"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Graph<'a> {
    /// The workflow's name.
    pub name: &'a str,
    /// Every node; `nodes[0]` is the start and `nodes[1]` the end.
    pub nodes: &'a [Node<'a>],
    /// Every edge.
    pub edges: &'a [Edge<'a>],
    /// A hash of the graph's shape and steps, computed at compile time.
    pub fingerprint: u64,
}

impl<'a> Graph<'a> {
    /// The node with this id.
    pub fn node(&self, id: NodeId) -> Option<&'a Node<'a>> {
        self.nodes.get(id.0 as usize)
    }

    /// The node whose stable identity ([`Node::key`]) is `key`.
    pub fn find(&self, key: &str) -> Option<NodeId> {
        self.nodes
            .iter()
            .position(|n| n.key == key)
            .and_then(|i| u32::try_from(i).ok())
            .map(NodeId)
    }

    /// The stable identity of the node with this id, or `"?"` for an id not in this graph.
    pub fn key_of(&self, id: NodeId) -> &'a str {
        self.node(id).map_or("?", |n| n.key)
    }

    /// The name of the node with this id, or `"?"` for an id not in this graph.
    pub fn name_of(&self, id: NodeId) -> &'a str {
        self.node(id).map_or("?", |n| n.name)
    }

    /// The step nodes, in id order.
    pub fn steps(&self) -> impl Iterator<Item = (NodeId, &'a Node<'a>)> + use<'a> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| matches!(n.kind, NodeKind::Step | NodeKind::Recovery))
            .map(|(i, n)| (NodeId(i as u32), n))
    }

    /// Renders the graph as a Mermaid `flowchart`.
    ///
    /// Steps are boxes labelled with their name and, one per line, their policies (retry,
    /// timeout, compensation, catch); a parallel group is a subroutine box, a map a
    /// parallelogram and a branch a rhombus whose outgoing edges carry the arm's pattern.
    /// The members of a group ([`Node::parent`]) are drawn inside a subgraph with the group's
    /// node; a catch edge (to a recovery step) is dashed. The output is deterministic (node
    /// order), so it can be kept in golden files.
    pub fn to_mermaid(&self) -> String {
        self.to_mermaid_nested(&[])
    }

    /// As [`to_mermaid`](Self::to_mermaid), with the graphs of nested workflows drawn inside
    /// the steps that run them: `subflows` pairs a step's name with the graph of the
    /// workflow it calls (`&[("provision", Provision::GRAPH)]`). The macros cannot see that a
    /// called function is a workflow, so the nesting is named here.
    pub fn to_mermaid_nested(&self, subflows: &[(&str, &Graph<'_>)]) -> String {
        let mut out = format!("%% workflow {}\nflowchart TD\n", self.name);
        self.write_mermaid("", subflows, 1, &mut out);
        out.push_str(MERMAID_CLASSES);
        out
    }

    fn write_mermaid(
        &self,
        prefix: &str,
        subflows: &[(&str, &Graph<'_>)],
        depth: usize,
        out: &mut String,
    ) {
        let tree = Tree::new(self.nodes.len(), |i| self.nodes[i].parent);
        for &r in &tree.roots {
            self.mermaid_node(&tree, r, depth, prefix, subflows, out);
        }
        let pad = "    ".repeat(depth);
        for e in self.edges {
            let arrow = match e.kind {
                EdgeKind::Catch | EdgeKind::Exit => "-.->",
                _ => "-->",
            };
            let label = edge_label(e.kind, e.label);
            if label.is_empty() {
                let _ = writeln!(out, "{pad}{prefix}n{} {arrow} {prefix}n{}", e.from, e.to);
            } else {
                let label = mermaid_escape(label);
                let _ = writeln!(
                    out,
                    "{pad}{prefix}n{} {arrow}|\"{label}\"| {prefix}n{}",
                    e.from, e.to
                );
            }
        }
    }

    fn mermaid_node(
        &self,
        tree: &Tree,
        i: usize,
        depth: usize,
        prefix: &str,
        subflows: &[(&str, &Graph<'_>)],
        out: &mut String,
    ) {
        let n = &self.nodes[i];
        let pad = "    ".repeat(depth);
        let label = label_lines(n)
            .iter()
            .map(|l| mermaid_escape(l))
            .collect::<Vec<_>>()
            .join("<br/>");
        let (open, close) = match n.kind {
            NodeKind::Start | NodeKind::End => ("([", "])"),
            NodeKind::Step => ("[", "]"),
            NodeKind::Recovery => ("(", ")"),
            NodeKind::Parallel => ("[[", "]]"),
            NodeKind::Map => ("[/", "/]"),
            NodeKind::Branch => ("{", "}"),
            NodeKind::Loop => ("{{", "}}"),
            NodeKind::Signal => (">", "]"),
        };
        let line = format!("{prefix}n{i}{open}\"{label}\"{close}:::{}", class_of(n));
        let sub = subflow_of(n, subflows);
        let children = &tree.children[i];
        if children.is_empty() && sub.is_none() {
            let _ = writeln!(out, "{pad}{line}");
            return;
        }
        let title = match sub {
            Some(g) => format!(
                "{}: workflow {}",
                mermaid_escape(n.name),
                mermaid_escape(g.name)
            ),
            None => group_title(n.kind).to_owned(),
        };
        let _ = writeln!(out, "{pad}subgraph {prefix}g{i} [\"{title}\"]");
        let _ = writeln!(out, "{pad}    {line}");
        for &c in children {
            self.mermaid_node(tree, c, depth + 1, prefix, subflows, out);
        }
        if let Some(g) = sub {
            let inner = format!("{prefix}s{i}_");
            g.write_mermaid(&inner, &[], depth + 1, out);
            let _ = writeln!(out, "{pad}    {prefix}n{i} -.->|\"runs\"| {inner}n0");
        }
        let _ = writeln!(out, "{pad}end");
    }

    /// A Markdown table of the nodes (id, name, kind, group, policies, successors): renders
    /// anywhere, rustdoc included, without a diagram viewer.
    pub fn steps_table(&self) -> String {
        let mut out = String::from(
            "| node | step | kind | policies | next |\n| ---: | --- | --- | --- | --- |\n",
        );
        let cell = |s: &str| s.replace('|', "\\|").replace('`', "'");
        for (i, n) in self.nodes.iter().enumerate() {
            if matches!(n.kind, NodeKind::Start | NodeKind::End) {
                continue;
            }
            let mut kind = match n.kind {
                NodeKind::Step => "step".to_owned(),
                NodeKind::Recovery => "recovery step".to_owned(),
                NodeKind::Parallel => "parallel group".to_owned(),
                NodeKind::Map => "map".to_owned(),
                NodeKind::Branch => "branch".to_owned(),
                NodeKind::Loop => "loop".to_owned(),
                NodeKind::Signal => "signal".to_owned(),
                NodeKind::Start | NodeKind::End => String::new(),
            };
            if let Some(p) = n.parent
                && let Some(g) = self.nodes.get(p as usize)
            {
                let _ = write!(kind, ", in `{}` (node {p})", g.name);
            }
            let policies = split_policies(n.policy)
                .iter()
                .map(|p| format!("`{}`", cell(p)))
                .collect::<Vec<_>>()
                .join("<br>");
            let next = self
                .edges
                .iter()
                .filter(|e| e.from as usize == i)
                .map(|e| {
                    let to = self.nodes.get(e.to as usize).map_or("?", |t| t.name);
                    let label = edge_label(e.kind, e.label);
                    if label.is_empty() {
                        format!("`{}`", cell(to))
                    } else {
                        format!("`{}` ({})", cell(to), cell(label))
                    }
                })
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                out,
                "| {i} | `{}` | {kind} | {policies} | {next} |",
                cell(n.name)
            );
        }
        out
    }

    /// Renders the graph as Graphviz DOT (`dot -Tsvg` draws it).
    ///
    /// The same picture as [`to_mermaid`](Self::to_mermaid): shapes by node kind, policies
    /// under the step's name, groups as clusters, branch edges labelled with their case,
    /// catch edges dashed.
    pub fn to_dot(&self) -> String {
        self.to_dot_nested(&[])
    }

    /// As [`to_dot`](Self::to_dot), with nested workflows drawn inside the steps that run
    /// them (see [`to_mermaid_nested`](Self::to_mermaid_nested)).
    pub fn to_dot_nested(&self, subflows: &[(&str, &Graph<'_>)]) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "digraph \"{}\" {{", dot_escape(self.name));
        let _ = writeln!(
            out,
            "    graph [rankdir=TB, fontname=\"Helvetica\", label=\"{}\", labelloc=t, fontsize=14];",
            dot_escape(self.name)
        );
        out.push_str(
            "    node [fontname=\"Helvetica\", fontsize=11, style=\"filled\", penwidth=1.2];\n",
        );
        out.push_str("    edge [fontname=\"Helvetica\", fontsize=10];\n");
        self.write_dot("", subflows, 1, &mut out);
        out.push_str("}\n");
        out
    }

    fn write_dot(
        &self,
        prefix: &str,
        subflows: &[(&str, &Graph<'_>)],
        depth: usize,
        out: &mut String,
    ) {
        let tree = Tree::new(self.nodes.len(), |i| self.nodes[i].parent);
        for &r in &tree.roots {
            self.dot_node(&tree, r, depth, prefix, subflows, out);
        }
        let pad = "    ".repeat(depth);
        for e in self.edges {
            let mut attrs = Vec::new();
            let label = edge_label(e.kind, e.label);
            if !label.is_empty() {
                attrs.push(format!("label=\"{}\"", dot_escape(label)));
            }
            match e.kind {
                EdgeKind::Catch => {
                    attrs.push("style=dashed".to_owned());
                    attrs.push("color=\"#bf360c\"".to_owned());
                }
                EdgeKind::Exit => {
                    attrs.push("style=dashed".to_owned());
                    attrs.push("color=\"#546e7a\"".to_owned());
                }
                EdgeKind::Loop => attrs.push("constraint=false".to_owned()),
                _ => {}
            }
            if attrs.is_empty() {
                let _ = writeln!(out, "{pad}{prefix}n{} -> {prefix}n{};", e.from, e.to);
            } else {
                let _ = writeln!(
                    out,
                    "{pad}{prefix}n{} -> {prefix}n{} [{}];",
                    e.from,
                    e.to,
                    attrs.join(", ")
                );
            }
        }
    }

    fn dot_node(
        &self,
        tree: &Tree,
        i: usize,
        depth: usize,
        prefix: &str,
        subflows: &[(&str, &Graph<'_>)],
        out: &mut String,
    ) {
        let n = &self.nodes[i];
        let pad = "    ".repeat(depth);
        let lines = label_lines(n);
        let mut label = format!("<b>{}</b>", html_escape(&lines[0]));
        for l in &lines[1..] {
            let _ = write!(
                label,
                "<br/><font point-size=\"9\">{}</font>",
                html_escape(l)
            );
        }
        let (shape, fill, extra) = match n.kind {
            NodeKind::Start | NodeKind::End => ("oval", "#eceff1", ""),
            NodeKind::Step if n.policy.is_empty() => {
                ("box", "#e3f2fd", ", style=\"rounded,filled\"")
            }
            NodeKind::Step => ("box", "#fff8e1", ", style=\"rounded,filled\""),
            NodeKind::Recovery => ("box", "#fbe9e7", ", style=\"rounded,filled,dashed\""),
            NodeKind::Parallel => ("box3d", "#f3e5f5", ""),
            NodeKind::Map => ("parallelogram", "#f3e5f5", ""),
            NodeKind::Branch => ("diamond", "#f3e5f5", ""),
            NodeKind::Loop => ("hexagon", "#f3e5f5", ""),
            NodeKind::Signal => ("cds", "#e8f5e9", ""),
        };
        let children = &tree.children[i];
        let line =
            format!("{prefix}n{i} [label=<{label}>, shape={shape}, fillcolor=\"{fill}\"{extra}];");
        let sub = subflow_of(n, subflows);
        if children.is_empty() && sub.is_none() {
            let _ = writeln!(out, "{pad}{line}");
            return;
        }
        let title = match sub {
            Some(g) => format!("{}: workflow {}", n.name, g.name),
            None => group_title(n.kind).to_owned(),
        };
        let _ = writeln!(out, "{pad}subgraph cluster_{prefix}g{i} {{");
        let _ = writeln!(
            out,
            "{pad}    label=\"{}\"; style=\"rounded,dashed\"; color=\"#6a1b9a\"; fontsize=10;",
            dot_escape(&title)
        );
        let _ = writeln!(out, "{pad}    {line}");
        for &c in children {
            self.dot_node(tree, c, depth + 1, prefix, subflows, out);
        }
        if let Some(g) = sub {
            let inner = format!("{prefix}s{i}_");
            g.write_dot(&inner, &[], depth + 1, out);
            let _ = writeln!(
                out,
                "{pad}    {prefix}n{i} -> {inner}n0 [style=dotted, label=\"runs\"];"
            );
        }
        let _ = writeln!(out, "{pad}}}");
    }
}

/// The graph of the workflow a step runs, when the caller named it.
fn subflow_of<'s, 'g>(n: &Node<'_>, subflows: &[(&str, &'s Graph<'g>)]) -> Option<&'s Graph<'g>> {
    if n.kind != NodeKind::Step {
        return None;
    }
    subflows
        .iter()
        .find(|(name, _)| *name == n.name)
        .map(|(_, g)| *g)
}

/// The Mermaid `classDef`s that [`Graph::to_mermaid`] refers to.
const MERMAID_CLASSES: &str = "    classDef terminal fill:#eceff1,stroke:#546e7a
    classDef step fill:#e3f2fd,stroke:#1565c0
    classDef policy fill:#fff8e1,stroke:#f57f17
    classDef group fill:#f3e5f5,stroke:#6a1b9a
    classDef recovery fill:#fbe9e7,stroke:#bf360c,stroke-dasharray:4 3
    classDef signal fill:#e8f5e9,stroke:#2e7d32
";

/// The nodes of a graph arranged by group: `children[g]` are the members of group `g`.
struct Tree {
    roots: Vec<usize>,
    children: Vec<Vec<usize>>,
}

impl Tree {
    fn new(len: usize, parent: impl Fn(usize) -> Option<u32>) -> Tree {
        let mut roots = Vec::new();
        let mut children = vec![Vec::new(); len];
        for i in 0..len {
            // A parent that is not an earlier node (never produced by the macros) would make a
            // cycle: such a node is drawn at the top level instead.
            match parent(i).map(|p| p as usize) {
                Some(p) if p < i => children[p].push(i),
                _ => roots.push(i),
            }
        }
        Tree { roots, children }
    }
}

/// The lines of a node's label: its name, then one line per policy.
fn label_lines(n: &Node<'_>) -> Vec<String> {
    let mut lines = vec![n.name.to_owned()];
    lines.extend(split_policies(n.policy));
    if n.kind == NodeKind::Parallel && !n.policy.contains("settle") {
        lines.push("fail fast".to_owned());
    }
    lines
}

/// Splits `retry(max_attempts = 3, ..), timeout = 2s` at the commas outside parentheses.
/// A node's policy text split into one line per policy (at top-level commas).
pub fn split_policies(policy: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    for c in policy.chars() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(core::mem::take(&mut cur).trim().to_owned());
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    let last = cur.trim();
    if !last.is_empty() {
        parts.push(last.to_owned());
    }
    parts.retain(|p| !p.is_empty());
    parts
}

fn class_of(n: &Node<'_>) -> &'static str {
    match n.kind {
        NodeKind::Start | NodeKind::End => "terminal",
        NodeKind::Step if n.policy.is_empty() => "step",
        NodeKind::Step => "policy",
        NodeKind::Recovery => "recovery",
        NodeKind::Parallel | NodeKind::Map | NodeKind::Branch | NodeKind::Loop => "group",
        NodeKind::Signal => "signal",
    }
}

fn group_title(kind: NodeKind) -> &'static str {
    match kind {
        NodeKind::Parallel => "parallel",
        NodeKind::Map => "map: once per item",
        NodeKind::Branch => "branch",
        NodeKind::Loop => "loop: once per iteration",
        _ => "group",
    }
}

/// The label an edge is drawn with: a branch arm's pattern, "on failure" for a catch edge.
pub fn edge_label(kind: EdgeKind, label: &str) -> &str {
    match kind {
        EdgeKind::Catch if label.is_empty() => "on failure",
        EdgeKind::Loop if label.is_empty() => "next",
        _ => label,
    }
}

/// Escapes text for a quoted Mermaid label (entity codes, so `"`, `<`, `>` and `#` survive).
fn mermaid_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '#' => out.push_str("#35;"),
            '"' => out.push_str("#quot;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            '&' => out.push_str("#amp;"),
            '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Escapes text for a double-quoted DOT string.
fn dot_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes text for a Graphviz HTML-like label.
fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    static G: Graph = Graph {
        name: "demo",
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
                key: "fetch",
                fingerprint: 0,
                kind: NodeKind::Step,
                policy: "retry(max_attempts = 3)",
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
                to: 1,
                kind: EdgeKind::Sequence,
                label: "",
            },
        ],
        fingerprint: 1,
    };

    #[test]
    fn mermaid_and_dot() {
        assert_eq!(
            G.to_mermaid().lines().take(5).collect::<Vec<_>>(),
            [
                "%% workflow demo",
                "flowchart TD",
                "    n0([\"start\"]):::terminal",
                "    n1([\"end\"]):::terminal",
                "    n2[\"fetch<br/>retry(max_attempts = 3)\"]:::policy",
            ]
        );
        assert!(G.to_mermaid().contains("    n0 --> n2\n    n2 --> n1\n"));
        let dot = G.to_dot();
        assert!(dot.starts_with("digraph \"demo\" {"));
        assert!(dot.contains(
            "n2 [label=<<b>fetch</b><br/><font point-size=\"9\">retry(max_attempts = 3)</font>>, shape=box"
        ));
        assert!(dot.contains("    n0 -> n2;\n"));
        assert_eq!(G.name_of(NodeId(2)), "fetch");
        assert_eq!(G.name_of(NodeId(9)), "?");
        assert_eq!(G.steps().count(), 1);
    }

    #[test]
    fn policies_split_at_top_level_commas() {
        assert_eq!(
            split_policies("retry(max_attempts = 3, backoff = exponential(1s, 2)), timeout = 2s"),
            [
                "retry(max_attempts = 3, backoff = exponential(1s, 2))",
                "timeout = 2s"
            ]
        );
        assert!(split_policies("").is_empty());
    }

    #[test]
    fn escaping() {
        assert_eq!(
            mermaid_escape("a \"b\" <c> #1"),
            "a #quot;b#quot; #lt;c#gt; #35;1"
        );
        assert_eq!(dot_escape("a \"b\" \\"), "a \\\"b\\\" \\\\");
        assert_eq!(html_escape("<a & \"b\">"), "&lt;a &amp; &quot;b&quot;&gt;");
    }
}
