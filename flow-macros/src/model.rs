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
    /// The step's callee as canonical tokens (`cluster :: launch`, `. wait_up`), hashed into
    /// the fingerprint; empty for groups.
    pub(crate) call: String,
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
        });
        id
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
// rustdoc. `to_mermaid` mirrors `flow_runtime::Graph::to_mermaid` line for line (a test in
// this file renders both and compares them).
// ---------------------------------------------------------------------------------------

impl Model {
    /// The Mermaid `flowchart` of the graph, identical to the runtime's `Graph::to_mermaid`.
    pub(crate) fn to_mermaid(&self) -> String {
        use core::fmt::Write as _;
        let tree = Tree::new(&self.nodes);
        let mut out = format!("%% workflow {}\nflowchart TD\n", self.name);
        for &r in &tree.roots {
            self.mermaid_node(&tree, r, 1, &mut out);
        }
        for e in &self.edges {
            let arrow = if e.kind == EdgeKind::Catch {
                "-.->"
            } else {
                "-->"
            };
            let label = edge_label(e.kind, &e.label);
            if label.is_empty() {
                let _ = writeln!(out, "    n{} {arrow} n{}", e.from, e.to);
            } else {
                let label = mermaid_escape(label);
                let _ = writeln!(out, "    n{} {arrow}|\"{label}\"| n{}", e.from, e.to);
            }
        }
        out.push_str(MERMAID_CLASSES);
        out
    }

    fn mermaid_node(&self, tree: &Tree, i: usize, depth: usize, out: &mut String) {
        use core::fmt::Write as _;
        let n = &self.nodes[i];
        let pad = "    ".repeat(depth);
        let label = label_lines(n)
            .iter()
            .map(|l| mermaid_escape(l))
            .collect::<Vec<_>>()
            .join("<br/>");
        let (open, close) = match n.kind {
            Kind::Start | Kind::End => ("([", "])"),
            Kind::Step => ("[", "]"),
            Kind::Recovery => ("(", ")"),
            Kind::Parallel => ("[[", "]]"),
            Kind::Map => ("[/", "/]"),
            Kind::Branch => ("{", "}"),
        };
        let children = &tree.children[i];
        if children.is_empty() {
            let _ = writeln!(out, "{pad}n{i}{open}\"{label}\"{close}:::{}", class_of(n));
            return;
        }
        let _ = writeln!(out, "{pad}subgraph g{i} [\"{}\"]", group_title(n.kind));
        let _ = writeln!(
            out,
            "{pad}    n{i}{open}\"{label}\"{close}:::{}",
            class_of(n)
        );
        for &c in children {
            self.mermaid_node(tree, c, depth + 1, out);
        }
        let _ = writeln!(out, "{pad}end");
    }

    /// A Markdown table of the steps (rendered by rustdoc offline, where the Mermaid block
    /// is shown as text): each node's name, kind, group, policies and successors.
    pub(crate) fn steps_table(&self) -> String {
        use core::fmt::Write as _;
        let mut out = String::from(
            "| node | step | kind | policies | next |\n| ---: | --- | --- | --- | --- |\n",
        );
        let cell = |s: &str| s.replace('|', "\\|").replace('`', "'");
        for (i, n) in self.nodes.iter().enumerate() {
            if matches!(n.kind, Kind::Start | Kind::End) {
                continue;
            }
            let mut kind = match n.kind {
                Kind::Step => "step".to_owned(),
                Kind::Recovery => "recovery step".to_owned(),
                Kind::Parallel => "parallel group".to_owned(),
                Kind::Map => "map".to_owned(),
                Kind::Branch => "branch".to_owned(),
                Kind::Start | Kind::End => String::new(),
            };
            if let Some(g) = n.parent.and_then(|p| self.nodes.get(p as usize)) {
                let _ = write!(kind, ", in `{}` (node {})", g.name, n.parent.unwrap_or(0));
            }
            let policies = split_policies(&n.policy)
                .iter()
                .map(|p| format!("`{}`", cell(p)))
                .collect::<Vec<_>>()
                .join("<br>");
            let next = self
                .edges
                .iter()
                .filter(|e| e.from as usize == i)
                .map(|e| {
                    let to = self
                        .nodes
                        .get(e.to as usize)
                        .map_or("?", |t| t.name.as_str());
                    let label = edge_label(e.kind, &e.label);
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
                cell(&n.name)
            );
        }
        out
    }
}

const MERMAID_CLASSES: &str = "    classDef terminal fill:#eceff1,stroke:#546e7a
    classDef step fill:#e3f2fd,stroke:#1565c0
    classDef policy fill:#fff8e1,stroke:#f57f17
    classDef group fill:#f3e5f5,stroke:#6a1b9a
    classDef recovery fill:#fbe9e7,stroke:#bf360c,stroke-dasharray:4 3
";

struct Tree {
    roots: Vec<usize>,
    children: Vec<Vec<usize>>,
}

impl Tree {
    fn new(nodes: &[NodeDef]) -> Tree {
        let mut roots = Vec::new();
        let mut children = vec![Vec::new(); nodes.len()];
        for (i, n) in nodes.iter().enumerate() {
            match n.parent.map(|p| p as usize) {
                Some(p) if p < i => children[p].push(i),
                _ => roots.push(i),
            }
        }
        Tree { roots, children }
    }
}

fn label_lines(n: &NodeDef) -> Vec<String> {
    let mut lines = vec![n.name.clone()];
    lines.extend(split_policies(&n.policy));
    if n.kind == Kind::Parallel && !n.policy.contains("settle") {
        lines.push("fail fast".to_owned());
    }
    lines
}

fn split_policies(policy: &str) -> Vec<String> {
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

fn class_of(n: &NodeDef) -> &'static str {
    match n.kind {
        Kind::Start | Kind::End => "terminal",
        Kind::Step if n.policy.is_empty() => "step",
        Kind::Step => "policy",
        Kind::Recovery => "recovery",
        Kind::Parallel | Kind::Map | Kind::Branch => "group",
    }
}

fn group_title(kind: Kind) -> &'static str {
    match kind {
        Kind::Parallel => "parallel",
        Kind::Map => "map: once per item",
        Kind::Branch => "branch",
        _ => "group",
    }
}

fn edge_label(kind: EdgeKind, label: &str) -> &str {
    match kind {
        EdgeKind::Catch if label.is_empty() => "on failure",
        _ => label,
    }
}

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

    /// The runtime's `Graph` with the same content as `m` (leaked: a test only).
    fn runtime_graph(m: &Model) -> &'static flow_runtime::Graph {
        let leak = |s: &str| -> &'static str { Box::leak(s.to_owned().into_boxed_str()) };
        let kind = |k: Kind| match k {
            Kind::Start => flow_runtime::NodeKind::Start,
            Kind::End => flow_runtime::NodeKind::End,
            Kind::Step => flow_runtime::NodeKind::Step,
            Kind::Parallel => flow_runtime::NodeKind::Parallel,
            Kind::Map => flow_runtime::NodeKind::Map,
            Kind::Branch => flow_runtime::NodeKind::Branch,
            Kind::Recovery => flow_runtime::NodeKind::Recovery,
        };
        let ekind = |k: EdgeKind| match k {
            EdgeKind::Sequence => flow_runtime::EdgeKind::Sequence,
            EdgeKind::Parallel => flow_runtime::EdgeKind::Parallel,
            EdgeKind::Map => flow_runtime::EdgeKind::Map,
            EdgeKind::Branch => flow_runtime::EdgeKind::Branch,
            EdgeKind::Catch => flow_runtime::EdgeKind::Catch,
        };
        let nodes: Vec<flow_runtime::Node> = m
            .nodes
            .iter()
            .map(|n| flow_runtime::Node {
                name: leak(&n.name),
                kind: kind(n.kind),
                policy: leak(&n.policy),
                parent: n.parent,
            })
            .collect();
        let edges: Vec<flow_runtime::Edge> = m
            .edges
            .iter()
            .map(|e| flow_runtime::Edge {
                from: e.from,
                to: e.to,
                kind: ekind(e.kind),
                label: leak(&e.label),
            })
            .collect();
        Box::leak(Box::new(flow_runtime::Graph {
            name: leak(&m.name),
            nodes: Box::leak(nodes.into_boxed_slice()),
            edges: Box::leak(edges.into_boxed_slice()),
            fingerprint: m.fingerprint(),
        }))
    }

    #[test]
    fn doc_mermaid_is_the_runtime_mermaid() {
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
        assert_eq!(doc, runtime_graph(&m).to_mermaid());
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
