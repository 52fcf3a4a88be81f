//! The static graph of a workflow: nodes, edges, and renderings as Mermaid and Graphviz DOT.
//!
//! Both macros emit a `static` [`Graph`] for every workflow, so the shape of a flow is known
//! without running it. Node `0` is always the start node and node `1` the end node.

use core::fmt::Write as _;

/// Index of a node in its [`Graph`]: a step's identity, fixed at compile time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

impl NodeId {
    /// The start node.
    pub const START: NodeId = NodeId(0);
    /// The end node.
    pub const END: NodeId = NodeId(1);
}

/// What a node is.
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
}

/// The kind of an edge.
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
}

/// A node of a workflow graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Node {
    /// The step's name as written (`launch_nodes`), or the group's kind.
    pub name: &'static str,
    /// What the node is.
    pub kind: NodeKind,
    /// The node's policies as written, for display (`retry(max_attempts = 3), timeout = "2s"`);
    /// empty when it has none.
    pub policy: &'static str,
    /// The group (parallel, map or branch node) this node belongs to.
    pub parent: Option<u32>,
}

/// An edge of a workflow graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edge {
    /// Source node index.
    pub from: u32,
    /// Target node index.
    pub to: u32,
    /// The kind of edge.
    pub kind: EdgeKind,
    /// A label: the pattern of a branch arm, or empty.
    pub label: &'static str,
}

/// The static description of a workflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Graph {
    /// The workflow's name.
    pub name: &'static str,
    /// Every node; `nodes[0]` is the start and `nodes[1]` the end.
    pub nodes: &'static [Node],
    /// Every edge.
    pub edges: &'static [Edge],
    /// A hash of the graph's shape and steps, computed at compile time.
    pub fingerprint: u64,
}

impl Graph {
    /// The node with this id.
    pub fn node(&self, id: NodeId) -> Option<&'static Node> {
        self.nodes.get(id.0 as usize)
    }

    /// The name of the node with this id, or `"?"` for an id not in this graph.
    pub fn name_of(&self, id: NodeId) -> &'static str {
        self.node(id).map_or("?", |n| n.name)
    }

    /// The step nodes, in id order.
    pub fn steps(&self) -> impl Iterator<Item = (NodeId, &'static Node)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| matches!(n.kind, NodeKind::Step | NodeKind::Recovery))
            .map(|(i, n)| (NodeId(i as u32), n))
    }

    /// Renders the graph as a Mermaid `flowchart`.
    pub fn to_mermaid(&self) -> String {
        let mut out = String::from("flowchart TD\n");
        for (i, n) in self.nodes.iter().enumerate() {
            let label = node_label(n, "<br/>");
            let _ = match n.kind {
                NodeKind::Start | NodeKind::End => writeln!(out, "    n{i}([\"{label}\"])"),
                NodeKind::Branch => writeln!(out, "    n{i}{{\"{label}\"}}"),
                NodeKind::Parallel | NodeKind::Map => writeln!(out, "    n{i}[[\"{label}\"]]"),
                NodeKind::Step | NodeKind::Recovery => writeln!(out, "    n{i}[\"{label}\"]"),
            };
        }
        for e in self.edges {
            let arrow = match e.kind {
                EdgeKind::Catch => "-.->",
                _ => "-->",
            };
            if e.label.is_empty() {
                let _ = writeln!(out, "    n{} {arrow} n{}", e.from, e.to);
            } else {
                let label = escape(e.label);
                let _ = writeln!(out, "    n{} {arrow}|\"{label}\"| n{}", e.from, e.to);
            }
        }
        out
    }

    /// Renders the graph as Graphviz DOT.
    pub fn to_dot(&self) -> String {
        let mut out = format!("digraph \"{}\" {{\n    rankdir=TB;\n", escape(self.name));
        for (i, n) in self.nodes.iter().enumerate() {
            let shape = match n.kind {
                NodeKind::Start | NodeKind::End => "oval",
                NodeKind::Branch => "diamond",
                NodeKind::Parallel | NodeKind::Map => "box3d",
                NodeKind::Step | NodeKind::Recovery => "box",
            };
            let label = node_label(n, "\\n");
            let _ = writeln!(out, "    n{i} [label=\"{label}\", shape={shape}];");
        }
        for e in self.edges {
            let style = if e.kind == EdgeKind::Catch {
                ", style=dashed"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "    n{} -> n{} [label=\"{}\"{style}];",
                e.from,
                e.to,
                escape(e.label)
            );
        }
        out.push_str("}\n");
        out
    }
}

fn node_label(n: &Node, newline: &str) -> String {
    if n.policy.is_empty() {
        escape(n.name)
    } else {
        format!("{}{newline}{}", escape(n.name), escape(n.policy))
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "'")
}

#[cfg(test)]
mod tests {
    use super::*;

    static G: Graph = Graph {
        name: "demo",
        nodes: &[
            Node {
                name: "start",
                kind: NodeKind::Start,
                policy: "",
                parent: None,
            },
            Node {
                name: "end",
                kind: NodeKind::End,
                policy: "",
                parent: None,
            },
            Node {
                name: "fetch",
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
            G.to_mermaid(),
            "flowchart TD\n    n0([\"start\"])\n    n1([\"end\"])\n    n2[\"fetch<br/>retry(max_attempts = 3)\"]\n    n0 --> n2\n    n2 --> n1\n"
        );
        let dot = G.to_dot();
        assert!(dot.starts_with("digraph \"demo\" {"));
        assert!(dot.contains("n2 [label=\"fetch\\nretry(max_attempts = 3)\", shape=box];"));
        assert!(dot.contains("n0 -> n2 [label=\"\"];"));
        assert_eq!(G.name_of(NodeId(2)), "fetch");
        assert_eq!(G.name_of(NodeId(9)), "?");
        assert_eq!(G.steps().count(), 1);
    }
}
