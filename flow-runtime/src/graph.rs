//! The static graph of a workflow (the types and their Mermaid / DOT renderings live in the
//! `flow-graph` crate, which the macros use too).
//!
//! Both macros emit a `static` [`Graph`] for every workflow, so the shape of a flow is known
//! without running it. Node `0` is always the start node and node `1` the end node.

pub use flow_graph::{EdgeKind, NodeId, NodeKind};

/// A workflow's static graph (see [`flow_graph::Graph`] for its fields and renderings).
///
/// ```
/// # use flow_runtime::{Error, Graph, NodeId, Workflow};
/// # use flow_runtime::__private::{Ctx, StepPolicy};
/// # use flow_runtime::dynamic::DynState;
/// # use flow_runtime::graph::{Node, NodeKind};
/// # const fn node(name: &'static str, kind: NodeKind) -> Node {
/// #     Node { name, key: name, fingerprint: 0, kind, policy: "", parent: None }
/// # }
/// # static GRAPH: Graph = Graph { name: "order", fingerprint: 1, edges: &[], nodes: &[
/// #     node("start", NodeKind::Start), node("end", NodeKind::End),
/// #     node("reserve", NodeKind::Step), node("charge", NodeKind::Step)] };
/// # /// `reserve` (undone if `charge` fails; the undo of 7 fails), then `charge` (3 attempts,
/// # /// declined for odd numbers).
/// # struct Order;
/// # impl Workflow for Order {
/// #     type Input = u32; type Output = u32; type Error = String; type State = DynState;
/// #     fn graph(&self) -> &'static Graph { &GRAPH }
/// #     async fn execute(&self, ctx: Ctx<String>, n: u32) -> Result<u32, Error<String>> {
/// #         let r = ctx.step(NodeId(2), async move { Ok::<u32, String>(n) }).await;
/// #         let id = ctx.compensate(NodeId(2), r, |id: u32| async move {
/// #             if id == 7 { Err(format!("cannot release {id}")) } else { Ok(()) }
/// #         })?;
/// #         let retry = [flow_runtime::policy::Retry::new(3)];
/// #         let policy = StepPolicy { retry: &retry, timeout: None };
/// #         Ok(ctx.step_with(NodeId(3), policy, || async move {
/// #             if id % 2 == 1 { Err(format!("card declined for {id}")) } else { Ok(id * 10) }
/// #         }).await?)
/// #     }
/// # }
/// let graph: &'static Graph = Order.graph();
/// assert_eq!(graph.name, "order");
/// assert_eq!(graph.find("charge"), Some(NodeId(3)));
/// assert_eq!(graph.steps().count(), 2);
/// assert_eq!(graph.node(NodeId::START).unwrap().kind, NodeKind::Start);
/// ```
pub type Graph = flow_graph::Graph<'static>;
/// A node of a workflow's static graph.
///
/// ```
/// # use flow_runtime::{Error, Graph, NodeId, Workflow};
/// # use flow_runtime::__private::{Ctx, StepPolicy};
/// # use flow_runtime::dynamic::DynState;
/// # use flow_runtime::graph::{Node, NodeKind};
/// # const fn node(name: &'static str, kind: NodeKind) -> Node {
/// #     Node { name, key: name, fingerprint: 0, kind, policy: "", parent: None }
/// # }
/// # static GRAPH: Graph = Graph { name: "order", fingerprint: 1, edges: &[], nodes: &[
/// #     node("start", NodeKind::Start), node("end", NodeKind::End),
/// #     node("reserve", NodeKind::Step), node("charge", NodeKind::Step)] };
/// # /// `reserve` (undone if `charge` fails; the undo of 7 fails), then `charge` (3 attempts,
/// # /// declined for odd numbers).
/// # struct Order;
/// # impl Workflow for Order {
/// #     type Input = u32; type Output = u32; type Error = String; type State = DynState;
/// #     fn graph(&self) -> &'static Graph { &GRAPH }
/// #     async fn execute(&self, ctx: Ctx<String>, n: u32) -> Result<u32, Error<String>> {
/// #         let r = ctx.step(NodeId(2), async move { Ok::<u32, String>(n) }).await;
/// #         let id = ctx.compensate(NodeId(2), r, |id: u32| async move {
/// #             if id == 7 { Err(format!("cannot release {id}")) } else { Ok(()) }
/// #         })?;
/// #         let retry = [flow_runtime::policy::Retry::new(3)];
/// #         let policy = StepPolicy { retry: &retry, timeout: None };
/// #         Ok(ctx.step_with(NodeId(3), policy, || async move {
/// #             if id % 2 == 1 { Err(format!("card declined for {id}")) } else { Ok(id * 10) }
/// #         }).await?)
/// #     }
/// # }
/// let charge: &Node = Order.graph().node(NodeId(3)).unwrap();
/// assert_eq!((charge.name, charge.key, charge.kind), ("charge", "charge", NodeKind::Step));
/// ```
pub type Node = flow_graph::Node<'static>;
/// An edge of a workflow's static graph.
///
/// ```
/// use flow_runtime::graph::{Edge, EdgeKind};
/// // `a -> b`, from node 2 to node 3:
/// let edge: Edge = Edge { from: 2, to: 3, kind: EdgeKind::Sequence, label: "" };
/// assert_eq!((edge.from, edge.to), (2, 3));
/// ```
pub type Edge = flow_graph::Edge<'static>;
