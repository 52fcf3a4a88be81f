//! The intermediate flow model that both front ends (`#[workflow]`, `flow!`) build: the graph's
//! nodes and edges, each node's state-variant name, and the fingerprint. The expander turns it
//! into the `static` graph, the state enum and its `WorkflowState` impl.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote};
use syn::Ident;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Start,
    End,
    Step,
    Parallel,
    Map,
    Branch,
    Recovery,
    Loop,
    Signal,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum EdgeKind {
    Sequence,
    Parallel,
    Map,
    Branch,
    Catch,
    Loop,
    Exit,
}

pub(crate) struct NodeDef {
    pub(crate) name: String,
    pub(crate) kind: Kind,
    pub(crate) policy: String,
    pub(crate) parent: Option<u32>,
    /// Whether the node is a state of the state machine (a variant of the state enum).
    pub(crate) is_state: bool,
    pub(crate) variant: Option<Ident>,
    /// The step's callee as canonical tokens (`cluster :: launch`, `. wait_up`), hashed into
    /// the fingerprint; empty for groups.
    pub(crate) call: String,
    /// The node's stable identity (`name`, or `name#2` for the second node of that name),
    /// filled by [`Model::assign_keys`].
    pub(crate) key: String,
    /// Where the node sits in the control flow: the branch arms and loops around it, outermost
    /// first (`if healthy / for node in nodes`). Part of the node's own fingerprint.
    pub(crate) scope: String,
}

pub(crate) struct EdgeDef {
    pub(crate) from: u32,
    pub(crate) to: u32,
    pub(crate) kind: EdgeKind,
    pub(crate) label: String,
}

pub(crate) struct Model {
    pub(crate) name: String,
    pub(crate) nodes: Vec<NodeDef>,
    pub(crate) edges: Vec<EdgeDef>,
}

pub(crate) const START: u32 = 0;
pub(crate) const END: u32 = 1;

impl Model {
    pub(crate) fn new(name: String) -> Self {
        let mut m = Model {
            name,
            nodes: Vec::new(),
            edges: Vec::new(),
        };
        m.add("start", Kind::Start, String::new(), None, true);
        m.add("end", Kind::End, String::new(), None, false);
        m
    }

    pub(crate) fn add(
        &mut self,
        name: &str,
        kind: Kind,
        policy: String,
        parent: Option<u32>,
        is_state: bool,
    ) -> u32 {
        let id = u32::try_from(self.nodes.len()).unwrap_or(u32::MAX);
        self.nodes.push(NodeDef {
            name: name.to_owned(),
            kind,
            policy,
            parent,
            is_state,
            variant: None,
            call: String::new(),
            key: String::new(),
            scope: String::new(),
        });
        id
    }

    /// Records where node `id` sits in the control flow (see [`NodeDef::scope`]).
    pub(crate) fn set_scope(&mut self, id: u32, scope: &str) {
        if let Some(n) = self.nodes.get_mut(id as usize) {
            n.scope = scope.to_owned();
        }
    }

    /// Gives every node its stable identity: its name, and for the k-th node (k >= 2, in
    /// source order) of a name already taken, `name#k`. Depends only on the nodes that share
    /// the name, so adding, removing or reordering other steps leaves a key unchanged.
    pub(crate) fn assign_keys(&mut self) {
        let mut seen: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
        for n in &mut self.nodes {
            let k = seen.entry(n.name.clone()).or_insert(0);
            *k += 1;
            n.key = if *k == 1 {
                n.name.clone()
            } else {
                format!("{}#{k}", n.name)
            };
        }
    }

    /// The fingerprint of one node: its key, kind, callee, policies and place in the control
    /// flow (not its neighbours: a step added before it leaves it unchanged).
    pub(crate) fn node_fingerprint(&self, id: usize) -> u64 {
        let Some(n) = self.nodes.get(id) else {
            return 0;
        };
        let parent = n
            .parent
            .and_then(|p| self.nodes.get(p as usize))
            .map_or("", |p| p.key.as_str());
        fnv(&[
            &n.key,
            kind_name(n.kind),
            &n.call,
            &n.policy,
            &n.scope,
            parent,
        ])
    }

    /// Records the callee of step `id` (its path, or `.method` for a method call), so that
    /// calling another function under the same step name changes the fingerprint.
    pub(crate) fn set_call(&mut self, id: u32, callee: &TokenStream) {
        if let Some(n) = self.nodes.get_mut(id as usize) {
            n.call = canonical_tokens(callee);
        }
    }

    pub(crate) fn edge(&mut self, from: u32, to: u32, kind: EdgeKind, label: String) {
        self.edges.push(EdgeDef {
            from,
            to,
            kind,
            label,
        });
    }

    /// An edge, unless the same edge is already there.
    pub(crate) fn edge_once(&mut self, from: u32, to: u32, kind: EdgeKind, label: String) {
        if !self
            .edges
            .iter()
            .any(|e| e.from == from && e.to == to && e.kind == kind && e.label == label)
        {
            self.edge(from, to, kind, label);
        }
    }

    /// Edges from every node of `frontier` to `to`.
    pub(crate) fn edges_from(&mut self, frontier: &[u32], to: u32, kind: EdgeKind) {
        for &f in frontier {
            self.edge(f, to, kind, String::new());
        }
    }

    /// Gives every state node a unique UpperCamelCase variant name.
    pub(crate) fn name_variants(&mut self) {
        self.assign_keys();
        let mut used: Vec<String> = vec!["Completed".into(), "Failed".into(), "Cancelled".into()];
        for (i, n) in self.nodes.iter_mut().enumerate() {
            if !n.is_state {
                continue;
            }
            let base = if i == START as usize {
                "Start".to_owned()
            } else {
                upper_camel(&n.name)
            };
            let mut name = base.clone();
            let mut k = 2;
            while used.contains(&name) {
                name = format!("{base}{k}");
                k += 1;
            }
            used.push(name.clone());
            n.variant = Some(Ident::new(&name, Span::call_site()));
        }
    }

    /// FNV-1a over a canonical description of the graph: names, kinds, policies, the steps'
    /// callees (as canonical tokens) and edges. Formatting and comments never reach it.
    pub(crate) fn fingerprint(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |s: &str| {
            for b in s.bytes().chain(core::iter::once(0xff)) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        feed(&self.name);
        for n in &self.nodes {
            feed(&n.name);
            feed(kind_name(n.kind));
            feed(&n.policy);
            feed(&n.call);
            feed(&n.parent.map_or_else(String::new, |p| p.to_string()));
        }
        for e in &self.edges {
            feed(&format!(
                "{}>{}:{}:{}",
                e.from,
                e.to,
                edge_kind_name(e.kind),
                e.label
            ));
        }
        h
    }

    /// `&'static Graph` expression.
    pub(crate) fn graph_tokens(&self, krate: &TokenStream) -> TokenStream {
        let name = &self.name;
        let fp = self.fingerprint();
        let nodes = self.nodes.iter().enumerate().map(|(i, n)| {
            let name = &n.name;
            let kind = format_ident!("{}", kind_name(n.kind));
            let policy = &n.policy;
            let key = &n.key;
            let nfp = self.node_fingerprint(i);
            let parent = match n.parent {
                Some(p) => quote!(::core::option::Option::Some(#p)),
                None => quote!(::core::option::Option::None),
            };
            quote!(#krate::graph::Node { name: #name, key: #key, fingerprint: #nfp, kind: #krate::graph::NodeKind::#kind, policy: #policy, parent: #parent })
        });
        let edges = self.edges.iter().map(|e| {
            let (from, to, label) = (e.from, e.to, &e.label);
            let kind = format_ident!("{}", edge_kind_name(e.kind));
            quote!(#krate::graph::Edge { from: #from, to: #to, kind: #krate::graph::EdgeKind::#kind, label: #label })
        });
        quote! {
            &#krate::Graph {
                name: #name,
                nodes: &[#(#nodes),*],
                edges: &[#(#edges),*],
                fingerprint: #fp,
            }
        }
    }

    /// The state nodes and their variant names.
    pub(crate) fn state_variants(&self) -> impl Iterator<Item = (u32, &Ident)> {
        self.nodes.iter().enumerate().filter_map(|(i, n)| {
            n.variant
                .as_ref()
                .map(|v| (u32::try_from(i).unwrap_or(u32::MAX), v))
        })
    }
}

/// The callee of a step call, for the fingerprint: the called expression (`cluster::launch`),
/// or `.method::<T>` for a method call.
pub(crate) fn callee(call: &crate::step::Call<'_>) -> TokenStream {
    match call {
        crate::step::Call::Func { func, .. } | crate::step::Call::Input { func, .. } => {
            quote!(#func)
        }
        crate::step::Call::Method {
            method, turbofish, ..
        } => quote!(. #method #turbofish),
    }
}

/// Tokens as text with one space between tokens, whatever the source's spacing: `a::b`,
/// `a :: b` and `a ::b` all give `a : : b`.
pub(crate) fn canonical_tokens(ts: &TokenStream) -> String {
    fn walk(ts: TokenStream, out: &mut String) {
        for tt in ts {
            if !out.is_empty() {
                out.push(' ');
            }
            match tt {
                proc_macro2::TokenTree::Group(g) => {
                    let (open, close) = match g.delimiter() {
                        proc_macro2::Delimiter::Parenthesis => ("(", ")"),
                        proc_macro2::Delimiter::Brace => ("{", "}"),
                        proc_macro2::Delimiter::Bracket => ("[", "]"),
                        proc_macro2::Delimiter::None => ("", ""),
                    };
                    out.push_str(open);
                    walk(g.stream(), out);
                    out.push(' ');
                    out.push_str(close);
                }
                proc_macro2::TokenTree::Ident(i) => out.push_str(&i.to_string()),
                proc_macro2::TokenTree::Punct(p) => out.push(p.as_char()),
                proc_macro2::TokenTree::Literal(l) => out.push_str(&l.to_string()),
            }
        }
    }
    let mut out = String::new();
    walk(ts.clone(), &mut out);
    out
}

// ---------------------------------------------------------------------------------------
// Docs: the Mermaid text and the step table that `#[workflow]` puts in the generated type's
// rustdoc, drawn by the same `flow-graph` code that renders `Provision::GRAPH` at run time.
// ---------------------------------------------------------------------------------------

impl Model {
    /// Renders through a `flow_graph::Graph` borrowing this model.
    fn with_graph<R>(&self, f: impl FnOnce(&flow_graph::Graph<'_>) -> R) -> R {
        let nodes: Vec<flow_graph::Node<'_>> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| flow_graph::Node {
                name: &n.name,
                key: &n.key,
                fingerprint: self.node_fingerprint(i),
                kind: graph_kind(n.kind),
                policy: &n.policy,
                parent: n.parent,
            })
            .collect();
        let edges: Vec<flow_graph::Edge<'_>> = self
            .edges
            .iter()
            .map(|e| flow_graph::Edge {
                from: e.from,
                to: e.to,
                kind: graph_edge_kind(e.kind),
                label: &e.label,
            })
            .collect();
        f(&flow_graph::Graph {
            name: &self.name,
            nodes: &nodes,
            edges: &edges,
            fingerprint: self.fingerprint(),
        })
    }

    /// The Mermaid `flowchart` of the graph: what `GRAPH.to_mermaid()` gives at run time.
    pub(crate) fn to_mermaid(&self) -> String {
        self.with_graph(|g| g.to_mermaid())
    }

    /// A Markdown table of the steps, for the rustdoc.
    pub(crate) fn steps_table(&self) -> String {
        self.with_graph(|g| g.steps_table())
    }
}

fn graph_kind(k: Kind) -> flow_graph::NodeKind {
    match k {
        Kind::Start => flow_graph::NodeKind::Start,
        Kind::End => flow_graph::NodeKind::End,
        Kind::Step => flow_graph::NodeKind::Step,
        Kind::Parallel => flow_graph::NodeKind::Parallel,
        Kind::Map => flow_graph::NodeKind::Map,
        Kind::Branch => flow_graph::NodeKind::Branch,
        Kind::Recovery => flow_graph::NodeKind::Recovery,
        Kind::Loop => flow_graph::NodeKind::Loop,
        Kind::Signal => flow_graph::NodeKind::Signal,
    }
}

fn graph_edge_kind(k: EdgeKind) -> flow_graph::EdgeKind {
    match k {
        EdgeKind::Sequence => flow_graph::EdgeKind::Sequence,
        EdgeKind::Parallel => flow_graph::EdgeKind::Parallel,
        EdgeKind::Map => flow_graph::EdgeKind::Map,
        EdgeKind::Branch => flow_graph::EdgeKind::Branch,
        EdgeKind::Catch => flow_graph::EdgeKind::Catch,
        EdgeKind::Loop => flow_graph::EdgeKind::Loop,
        EdgeKind::Exit => flow_graph::EdgeKind::Exit,
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Start => "Start",
        Kind::End => "End",
        Kind::Step => "Step",
        Kind::Parallel => "Parallel",
        Kind::Map => "Map",
        Kind::Branch => "Branch",
        Kind::Recovery => "Recovery",
        Kind::Loop => "Loop",
        Kind::Signal => "Signal",
    }
}

fn edge_kind_name(k: EdgeKind) -> &'static str {
    match k {
        EdgeKind::Sequence => "Sequence",
        EdgeKind::Parallel => "Parallel",
        EdgeKind::Map => "Map",
        EdgeKind::Branch => "Branch",
        EdgeKind::Catch => "Catch",
        EdgeKind::Loop => "Loop",
        EdgeKind::Exit => "Exit",
    }
}

/// FNV-1a over `parts`, each followed by a separator byte.
pub(crate) fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for s in parts {
        for b in s.bytes().chain(core::iter::once(0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// `launch_nodes` -> `LaunchNodes`; anything that is not a letter or digit separates words.
pub(crate) fn upper_camel(s: &str) -> String {
    let mut out = String::new();
    let mut up = true;
    for c in s.chars() {
        if c.is_alphanumeric() && syn::parse_str::<Ident>(&format!("_x{c}")).is_ok() {
            if up {
                out.extend(c.to_uppercase());
            } else {
                out.push(c);
            }
            up = false;
        } else {
            up = true;
        }
    }
    if out.is_empty() || syn::parse_str::<Ident>(&out).is_err() {
        out.insert(0, 'S');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camel() {
        assert_eq!(upper_camel("launch_nodes"), "LaunchNodes");
        assert_eq!(upper_camel("r#type"), "RType");
        assert_eq!(upper_camel("9lives"), "S9lives");
    }

    #[test]
    fn variants_are_unique() {
        let mut m = Model::new("w".into());
        m.add("fetch", Kind::Step, String::new(), None, true);
        m.add("fetch", Kind::Step, String::new(), None, true);
        m.add("completed", Kind::Step, String::new(), None, true);
        m.name_variants();
        let names: Vec<String> = m.state_variants().map(|(_, v)| v.to_string()).collect();
        assert_eq!(names, ["Start", "Fetch", "Fetch2", "Completed2"]);
    }

    #[test]
    fn fingerprint_changes_with_shape() {
        let mut a = Model::new("w".into());
        let s = a.add("fetch", Kind::Step, String::new(), None, true);
        a.edge(START, s, EdgeKind::Sequence, String::new());
        let fa = a.fingerprint();
        a.add("store", Kind::Step, String::new(), None, true);
        assert_ne!(fa, a.fingerprint());
    }

    /// The runtime's `Graph` with the same content as `m` (leaked: a test only).
    #[test]
    fn docs_draw_the_model() {
        let mut m = Model::new("Every\"Kind".into());
        let a = m.add(
            "fetch",
            Kind::Step,
            "retry(max_attempts = 3, backoff = exponential(200ms, 2)), timeout = 2s, compensate = undo, catch(recover)".into(),
            None,
            true,
        );
        m.edge(START, a, EdgeKind::Sequence, String::new());
        let r = m.add("recover", Kind::Recovery, String::new(), None, true);
        m.edge(a, r, EdgeKind::Catch, String::new());
        let p = m.add("parallel", Kind::Parallel, "settle".into(), None, true);
        m.edges_from(&[a, r], p, EdgeKind::Sequence);
        let mp = m.add("map", Kind::Map, "concurrency = 4".into(), Some(p), false);
        m.edge(p, mp, EdgeKind::Parallel, String::new());
        let body = m.add("resize<img>", Kind::Step, String::new(), Some(mp), false);
        m.edge(mp, body, EdgeKind::Map, String::new());
        let other = m.add("count", Kind::Step, String::new(), Some(p), false);
        m.edge(p, other, EdgeKind::Parallel, String::new());
        let b = m.add("branch", Kind::Branch, String::new(), None, true);
        m.edges_from(&[body, other], b, EdgeKind::Sequence);
        let x = m.add("free", Kind::Step, String::new(), None, true);
        let y = m.add("pro", Kind::Step, String::new(), None, true);
        m.edge(b, x, EdgeKind::Branch, "Plan::Free".into());
        m.edge(
            b,
            y,
            EdgeKind::Branch,
            "Plan::Pro { seats } if seats > 1 # \"vip\"".into(),
        );
        m.edges_from(&[x, y], END, EdgeKind::Sequence);
        let doc = m.to_mermaid();
        assert!(doc.contains("subgraph g4 [\"parallel\"]"), "{doc}");
        assert!(doc.contains("n2 -.->|\"on failure\"| n3"), "{doc}");
        let table = m.steps_table();
        assert!(
            table.contains(
                "| 5 | `map` | map, in `parallel` (node 4) | `concurrency = 4` | `resize<img>` |"
            ),
            "{table}"
        );
    }

    #[test]
    fn canonical_tokens_ignore_spacing() {
        let a: TokenStream = syn::parse_str("cluster::launch::<u8>").unwrap_or_default();
        let b: TokenStream = syn::parse_str("cluster ::\n launch :: < u8 >").unwrap_or_default();
        assert_eq!(canonical_tokens(&a), canonical_tokens(&b));
        assert_eq!(canonical_tokens(&a), "cluster : : launch : : < u8 >");
        let c: TokenStream = syn::parse_str("other::launch").unwrap_or_default();
        assert_ne!(canonical_tokens(&a), canonical_tokens(&c));
    }
}
