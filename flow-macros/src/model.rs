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
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum EdgeKind {
    Sequence,
    Parallel,
    Map,
    Branch,
    Catch,
}

pub(crate) struct NodeDef {
    pub(crate) name: String,
    pub(crate) kind: Kind,
    pub(crate) policy: String,
    pub(crate) parent: Option<u32>,
    /// Whether the node is a state of the state machine (a variant of the state enum).
    pub(crate) is_state: bool,
    pub(crate) variant: Option<Ident>,
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
        });
        id
    }

    pub(crate) fn edge(&mut self, from: u32, to: u32, kind: EdgeKind, label: String) {
        self.edges.push(EdgeDef {
            from,
            to,
            kind,
            label,
        });
    }

    /// Edges from every node of `frontier` to `to`.
    pub(crate) fn edges_from(&mut self, frontier: &[u32], to: u32, kind: EdgeKind) {
        for &f in frontier {
            self.edge(f, to, kind, String::new());
        }
    }

    /// Gives every state node a unique UpperCamelCase variant name.
    pub(crate) fn name_variants(&mut self) {
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

    /// FNV-1a over a canonical description of the graph: names, kinds, policies and edges.
    /// Formatting and comments never reach it.
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
        let nodes = self.nodes.iter().map(|n| {
            let name = &n.name;
            let kind = format_ident!("{}", kind_name(n.kind));
            let policy = &n.policy;
            let parent = match n.parent {
                Some(p) => quote!(::core::option::Option::Some(#p)),
                None => quote!(::core::option::Option::None),
            };
            quote!(#krate::Node { name: #name, kind: #krate::NodeKind::#kind, policy: #policy, parent: #parent })
        });
        let edges = self.edges.iter().map(|e| {
            let (from, to, label) = (e.from, e.to, &e.label);
            let kind = format_ident!("{}", edge_kind_name(e.kind));
            quote!(#krate::Edge { from: #from, to: #to, kind: #krate::EdgeKind::#kind, label: #label })
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

    /// The Mermaid text of the graph, for docs. Mirrors `Graph::to_mermaid` in the runtime.
    pub(crate) fn state_variants(&self) -> impl Iterator<Item = (u32, &Ident)> {
        self.nodes.iter().enumerate().filter_map(|(i, n)| {
            n.variant
                .as_ref()
                .map(|v| (u32::try_from(i).unwrap_or(u32::MAX), v))
        })
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
    }
}

fn edge_kind_name(k: EdgeKind) -> &'static str {
    match k {
        EdgeKind::Sequence => "Sequence",
        EdgeKind::Parallel => "Parallel",
        EdgeKind::Map => "Map",
        EdgeKind::Branch => "Branch",
        EdgeKind::Catch => "Catch",
    }
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
}
