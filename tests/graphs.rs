//! The static graph as pictures: golden Mermaid and DOT of representative workflows (the
//! `provision_cluster` example's, and a `flow!` pipeline using every construct), the DOT
//! rendered to SVG by Graphviz, and the fingerprint's stability.
//!
//! `FLOW_GOLDEN=overwrite cargo test --test graphs` rewrites the golden files.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use flow::Graph;
use flow::graph::NodeKind;
use flow::prelude::*;

// ---------------------------------------------------------------- provision_cluster's workflow

/// The same workflow as `examples/provision_cluster.rs` (steps stubbed: only the graph matters).
mod provision {
    use super::*;

    pub struct Spec;
    #[derive(Clone)]
    pub struct Procs;
    pub type Nodes = Vec<u32>;

    async fn launch_cluster(_: &Spec) -> Result<Procs, String> {
        Ok(Procs)
    }
    async fn teardown_cluster(_: Procs) -> Result<(), String> {
        Ok(())
    }
    async fn wait_until_up(_: &Procs) -> Result<Nodes, String> {
        Ok(vec![0])
    }
    async fn create_schema(_: u32) -> Result<usize, String> {
        Ok(0)
    }
    async fn confirm_schema_once(_: &[u32]) -> Result<(), String> {
        Ok(())
    }
    async fn seed_users(_: &[u32], n: u64) -> Result<u64, String> {
        Ok(n)
    }
    async fn seed_orders(_: &[u32], n: u64) -> Result<u64, String> {
        Ok(n)
    }
    async fn verify_counts(_: &[u32], _: u64, _: u64) -> Result<(), String> {
        Ok(())
    }
    async fn shutdown_cluster(_: &Procs) -> Result<usize, String> {
        Ok(0)
    }

    #[workflow(timeout = "30s")]
    pub async fn provision(spec: Spec) -> Result<usize, String> {
        #[compensate(teardown_cluster)]
        let procs = launch_cluster(&spec).await?;

        #[retry(max_attempts = 6, backoff = exponential("200ms", 2.0), max_delay = "2s", jitter = equal)]
        #[timeout("1s")]
        let nodes = wait_until_up(&procs).await?;

        let _ = create_schema(nodes[0]).await?;
        confirm_schema_once(&nodes).await?;

        let (users, orders) =
            flow::join!(seed_users(&nodes, 100), seed_orders(&nodes, 250)).await?;
        verify_counts(&nodes, users, orders).await?;
        shutdown_cluster(&procs).await
    }
}

// ---------------------------------------------------------------- every flow! construct

#[derive(Clone, Debug)]
struct Account {
    mailboxes: Vec<u32>,
}

async fn validate(n: u32) -> Result<Account, String> {
    Ok(Account {
        mailboxes: (0..n).collect(),
    })
}
async fn create_account(a: Account) -> Result<Account, String> {
    Ok(a)
}
async fn reserve_quota(a: Account) -> Result<u32, String> {
    Ok(a.mailboxes.len() as u32)
}
async fn merge(pair: (Account, u32)) -> Result<Vec<u32>, String> {
    Ok(pair.0.mailboxes)
}
async fn provision_mailbox(n: u32) -> Result<u32, String> {
    Ok(n)
}
async fn count(v: Vec<u32>) -> Result<u32, String> {
    Ok(v.len() as u32)
}
async fn welcome(n: u32) -> Result<u32, String> {
    Ok(n)
}
async fn assign_manager(n: u32) -> Result<u32, String> {
    Ok(n)
}
async fn notify(n: u32) -> Result<u32, String> {
    Ok(n)
}
async fn revoke(_: u32) -> Result<(), String> {
    Ok(())
}
async fn notify_later(_: flow::StepError<String>) -> Result<u32, String> {
    Ok(0)
}

fn onboard_graph() -> &'static Graph {
    let onboard = flow! {
        name = "onboard";
        validate
          -> (create_account & reserve_quota)
          -> merge
          -> map(provision_mailbox, concurrency = 4)
          -> count
          -> branch(|n: &u32| *n > 1) { true => assign_manager -> welcome, false => welcome }
          -> notify [retry(max_attempts = 3), timeout = "2s", compensate = revoke, catch(notify_later)]
    };
    onboard.graph()
}

// ---------------------------------------------------------------- golden files

fn golden(name: &str, actual: &str) {
    common::golden("graphs", name, actual);
}

#[test]
fn provision_golden() {
    let g = provision::Provision::GRAPH;
    golden("provision.mmd", &g.to_mermaid());
    golden("provision.dot", &g.to_dot());
}

#[test]
fn onboard_golden() {
    let g = onboard_graph();
    golden("onboard.mmd", &g.to_mermaid());
    golden("onboard.dot", &g.to_dot());
}

#[test]
fn pictures_draw_what_the_flow_is() {
    let m = provision::Provision::GRAPH.to_mermaid();
    // Policies under the step's name, one per line.
    assert!(
        m.contains("n2[\"launch_cluster<br/>compensate = teardown_cluster\"]"),
        "{m}"
    );
    assert!(m.contains("<br/>timeout = 1s\"]"), "{m}");
    // The join as a group with its branches inside.
    assert!(m.contains("subgraph g6 [\"parallel\"]"), "{m}");

    let g = onboard_graph();
    let m = g.to_mermaid();
    let d = g.to_dot();
    let id = |name: &str, kind: NodeKind| {
        g.nodes
            .iter()
            .position(|n| n.name == name && n.kind == kind)
            .unwrap()
    };
    let branch = id("branch", NodeKind::Branch);
    let map = id("map", NodeKind::Map);
    let recovery = id("notify_later", NodeKind::Recovery);
    let notify = id("notify", NodeKind::Step);
    // Branch: a rhombus, edges labelled with the case.
    assert!(m.contains(&format!("n{branch}{{\"branch\"}}")), "{m}");
    assert!(m.contains(&format!("n{branch} -->|\"true\"| n")), "{m}");
    assert!(
        d.contains(&format!("n{branch} -> n")) && d.contains("[label=\"false\"]"),
        "{d}"
    );
    // Map: a parallelogram in its own subgraph / cluster.
    assert!(
        m.contains(&format!("subgraph g{map} [\"map: once per item\"]")),
        "{m}"
    );
    assert!(
        m.contains(&format!("n{map}[/\"map<br/>concurrency = 4\"/]")),
        "{m}"
    );
    assert!(d.contains(&format!("subgraph cluster_g{map} {{")), "{d}");
    // Catch: dashed.
    assert!(
        m.contains(&format!("n{notify} -.->|\"on failure\"| n{recovery}")),
        "{m}"
    );
    assert!(
        d.contains(&format!(
            "n{notify} -> n{recovery} [label=\"on failure\", style=dashed"
        )),
        "{d}"
    );
}

// ---------------------------------------------------------------- DOT rendered by Graphviz

#[test]
fn dot_renders_to_svg() {
    let have_dot = Command::new("dot")
        .arg("-V")
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have_dot {
        assert!(
            std::env::var_os("CI").is_none(),
            "Graphviz `dot` is missing on CI: .ci/run installs it"
        );
        eprintln!(
            "note: Graphviz `dot` is not installed: the DOT is not rendered (apt-get install graphviz)"
        );
        return;
    }
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    for (name, dot) in [
        ("provision", provision::Provision::GRAPH.to_dot()),
        ("onboard", onboard_graph().to_dot()),
        (
            "nested",
            nested::Outer::GRAPH.to_dot_nested(&[("inner", nested::Inner::GRAPH)]),
        ),
    ] {
        let svg = out_dir.join(format!("{name}.svg"));
        let mut child = Command::new("dot")
            .args(["-Tsvg", "-o"])
            .arg(&svg)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(dot.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "dot failed on {name}: {warnings}");
        assert!(
            warnings.trim().is_empty(),
            "dot warned on {name}: {warnings}"
        );
        let svg = std::fs::read_to_string(&svg).unwrap();
        assert!(svg.contains("<svg"), "{svg}");
        for step in dot
            .lines()
            .filter_map(|l| l.split("<b>").nth(1)?.split("</b>").next())
        {
            assert!(svg.contains(step), "{name}.svg lacks {step}");
        }
    }
}

// ---------------------------------------------------------------- nested workflows

mod nested {
    use super::*;

    #[workflow]
    pub async fn inner(n: u32) -> Result<u32, String> {
        let a = step_one(n).await?;
        step_two(a).await
    }

    impl From<flow::Error<String>> for Wrapped {
        fn from(e: flow::Error<String>) -> Self {
            Wrapped(e.to_string())
        }
    }
    #[derive(Debug)]
    pub struct Wrapped(pub String);
    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl From<String> for Wrapped {
        fn from(e: String) -> Self {
            Wrapped(e)
        }
    }

    #[workflow]
    pub async fn outer(n: u32) -> Result<u32, Wrapped> {
        let a = step_one(n).await?;
        let b = inner(a).await?;
        step_two(b).await
    }
}

#[test]
fn a_nested_workflow_is_drawn_inside_the_step_that_runs_it() {
    let plain = nested::Outer::GRAPH.to_mermaid();
    assert!(!plain.contains("workflow Inner"), "not nested unless asked");
    let m = nested::Outer::GRAPH.to_mermaid_nested(&[("inner", nested::Inner::GRAPH)]);
    // The `inner` step (node 3 of Outer) becomes a subgraph holding Inner's own graph, its
    // nodes prefixed so they cannot collide with the outer ones.
    assert!(m.contains("subgraph g3 [\"inner: workflow Inner\"]"), "{m}");
    assert!(m.contains("s3_n2[\"step_one\"]"), "{m}");
    assert!(m.contains("s3_n0 --> s3_n2"), "{m}");
    assert!(m.contains("n3 -.->|\"runs\"| s3_n0"), "{m}");
    let d = nested::Outer::GRAPH.to_dot_nested(&[("inner", nested::Inner::GRAPH)]);
    assert!(d.contains("subgraph cluster_g3 {"), "{d}");
    assert!(d.contains("s3_n2 -> s3_n3;"), "{d}");
    assert!(
        d.contains("n3 -> s3_n0 [style=dotted, label=\"runs\"];"),
        "{d}"
    );
}

// ---------------------------------------------------------------- fingerprint

async fn step_one(n: u32) -> Result<u32, String> {
    Ok(n + 1)
}
async fn step_two(n: u32) -> Result<u32, String> {
    Ok(n * 2)
}
mod elsewhere {
    pub async fn step_one(n: u32) -> Result<u32, String> {
        Ok(n)
    }
}

mod written {
    use super::*;
    #[workflow(name = "Fp")]
    pub async fn fp(n: u32) -> Result<u32, String> {
        #[retry(max_attempts = 3, backoff = constant("1s"))]
        let a = step_one(n).await?;
        step_two(a).await
    }
}

mod reformatted {
    use super::*;
    #[workflow(name = "Fp")]
    pub async fn fp(n: u32) -> Result<u32, String> {
        // The same flow, laid out differently and commented.
        #[retry( max_attempts=3,
                 backoff = constant( "1s" ) )]
        let a = step_one(n).await?;
        /* then */
        step_two(a).await
    }
}

mod one_more_step {
    use super::*;
    #[workflow(name = "Fp")]
    pub async fn fp(n: u32) -> Result<u32, String> {
        #[retry(max_attempts = 3, backoff = constant("1s"))]
        let a = step_one(n).await?;
        let a = step_two(a).await?;
        step_two(a).await
    }
}

mod other_policy {
    use super::*;
    #[workflow(name = "Fp")]
    pub async fn fp(n: u32) -> Result<u32, String> {
        #[retry(max_attempts = 4, backoff = constant("1s"))]
        let a = step_one(n).await?;
        step_two(a).await
    }
}

mod other_callee {
    use super::*;
    #[workflow(name = "Fp")]
    pub async fn fp(n: u32) -> Result<u32, String> {
        #[retry(max_attempts = 3, backoff = constant("1s"))]
        let a = elsewhere::step_one(n).await?;
        step_two(a).await
    }
}

/// A compile-time constant: usable in a `const`.
const FP: u64 = written::Fp::FINGERPRINT;

#[test]
fn fingerprint_is_stable_under_reformatting_and_changes_with_the_flow() {
    assert_eq!(FP, written::Fp::GRAPH.fingerprint);
    assert_eq!(FP, reformatted::Fp::FINGERPRINT);
    assert_ne!(FP, one_more_step::Fp::FINGERPRINT);
    assert_ne!(FP, other_policy::Fp::FINGERPRINT);
    assert_ne!(FP, other_callee::Fp::FINGERPRINT);
    // Same picture for the same flow.
    assert_eq!(
        written::Fp::GRAPH.to_mermaid(),
        reformatted::Fp::GRAPH.to_mermaid()
    );
}

#[test]
fn flow_fingerprint_is_stable_under_reformatting() {
    let a = flow! { name = "f"; step_one -> step_two [retry(max_attempts = 2)] };
    let b = flow! {
        name = "f";
        // comment
        step_one
            ->   step_two [ retry( max_attempts = 2 ) ]
    };
    let c = flow! { name = "f"; step_one -> step_two [retry(max_attempts = 2)] -> step_one };
    assert_eq!(a.graph().fingerprint, b.graph().fingerprint);
    assert_ne!(a.graph().fingerprint, c.graph().fingerprint);
}

// ---------------------------------------------------------------- stable identity

async fn audit(n: u32) -> Result<u32, String> {
    Ok(n)
}

mod step_added_before {
    use super::*;
    #[workflow(name = "Fp")]
    pub async fn fp(n: u32) -> Result<u32, String> {
        let n = audit(n).await?;
        #[retry(max_attempts = 3, backoff = constant("1s"))]
        let a = step_one(n).await?;
        let a = audit(a).await?;
        step_two(a).await
    }
}

mod moved_into_a_branch {
    use super::*;
    #[workflow(name = "Fp")]
    pub async fn fp(n: u32) -> Result<u32, String> {
        #[retry(max_attempts = 3, backoff = constant("1s"))]
        let a = step_one(n).await?;
        if a > 3 {
            return step_two(a).await;
        }
        Ok(a)
    }
}

/// The key and the fingerprint of the node named `key`.
fn identity(g: &Graph, key: &str) -> (String, u64) {
    let id = g
        .find(key)
        .unwrap_or_else(|| panic!("no node `{key}` in {}", g.name));
    let n = g.node(id).unwrap();
    (n.key.to_owned(), n.fingerprint)
}

#[test]
fn a_step_keeps_its_identity_when_other_steps_are_added() {
    let before = written::Fp::GRAPH;
    let after = step_added_before::Fp::GRAPH;
    // Node ids (positions) moved...
    assert_ne!(before.find("step_one"), after.find("step_one"));
    // ...but each step's identity and its own fingerprint did not.
    for key in ["step_one", "step_two"] {
        assert_eq!(identity(before, key), identity(after, key), "{key}");
    }
    // The new steps: a name used twice gets a disambiguator, in source order.
    assert!(after.find("audit").is_some() && after.find("audit#2").is_some());
    // The workflow's fingerprint covers the whole graph, so it changed.
    assert_ne!(before.fingerprint, after.fingerprint);

    // A change to the step itself changes its fingerprint, not its key.
    let (k1, f1) = identity(before, "step_one");
    let (k2, f2) = identity(other_policy::Fp::GRAPH, "step_one");
    assert_eq!(k1, k2);
    assert_ne!(f1, f2);
    let (_, f3) = identity(other_callee::Fp::GRAPH, "step_one");
    assert_ne!(f1, f3);
    // So does its place in the control flow.
    let (_, f4) = identity(moved_into_a_branch::Fp::GRAPH, "step_two");
    assert_ne!(identity(before, "step_two").1, f4);
    // Every node of a graph has a distinct key.
    for g in [before, after, moved_into_a_branch::Fp::GRAPH] {
        let mut keys: Vec<&str> = g.nodes.iter().map(|n| n.key).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), g.nodes.len(), "{}", g.name);
    }
}

#[test]
fn flow_steps_have_stable_keys_too() {
    let a = flow! { step_one -> step_two -> step_one };
    let keys: Vec<&str> = a.graph().nodes.iter().map(|n| n.key).collect();
    assert_eq!(keys, ["start", "end", "step_one", "step_two", "step_one#2"]);
    let b = flow! { step_two -> step_one -> step_two -> step_one };
    let (k, f) = identity(a.graph(), "step_two");
    assert_eq!((k, f), identity(b.graph(), "step_two"));
}
