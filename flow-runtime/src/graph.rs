//! The static graph of a workflow (the types and their Mermaid / DOT renderings live in the
//! `flow-graph` crate, which the macros use too).
//!
//! Both macros emit a `static` [`Graph`] for every workflow, so the shape of a flow is known
//! without running it. Node `0` is always the start node and node `1` the end node.

pub use flow_graph::{EdgeKind, NodeId, NodeKind};

/// A workflow's static graph (see [`flow_graph::Graph`] for its fields and renderings).
pub type Graph = flow_graph::Graph<'static>;
/// A node of a workflow's static graph.
pub type Node = flow_graph::Node<'static>;
/// An edge of a workflow's static graph.
pub type Edge = flow_graph::Edge<'static>;
