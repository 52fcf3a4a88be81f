//! Provision a local database cluster with a `#[workflow]`: the README's main example.
//!
//! The procedure reads like a `main` that calls functions, but every awaited call is a step
//! of a typed state machine with a static graph, exact retry/timeout semantics, compensation
//! and observable events:
//!
//! 1. launch N real node processes (compensated by tearing them down if a later step fails),
//! 2. wait until every node answers a TCP `PING` (retried with exponential backoff and
//!    jitter, each attempt bounded by a timeout),
//! 3. create the schema exactly once, on node 0, and show that a second `INIT_SCHEMA`
//!    answers `EXISTS` (the race a per-node init would lose),
//! 4. seed two tables in parallel (`flow::join!`),
//! 5. verify the row counts on every node,
//! 6. tear the cluster down.
//!
//! Run it:
//!
//! ```text
//! cargo run --example provision_cluster                      # 3 healthy nodes
//! cargo run --example provision_cluster -- --nodes 5
//! cargo run --example provision_cluster -- --fault slow-start  # retries, then success
//! cargo run --example provision_cluster -- --fault dead-node   # retries exhausted, compensation, exit 1
//! cargo run --example provision_cluster -- --graph mermaid     # print the graph and exit
//! cargo run --example provision_cluster -- --graph dot         # ... as Graphviz DOT (| dot -Tsvg)
//! cargo run --example provision_cluster -- --trace run.json    # write the run's trace (Perfetto)
//! cargo run --example provision_cluster -- --store runs.db      # a durable run: kill it, run it again
//! ```
//!
//! With `--store PATH` the run is durable (`#[workflow(durable)]`, recorded in an embedded
//! SQLite file): kill the process mid-run (Ctrl-C, `kill -9`) and run the same command again:
//! it says it resumes, does not launch the nodes again (it finds them, by the ports and pids
//! its first step recorded: with `--store` the nodes outlive the controller), and finishes the
//! cluster. Run it once more and it prints the stored result without running a step.
//!
//! ```text
//! ```
//!
//! On a terminal the run is drawn live (`flow::ProgressObserver`); otherwise every event is
//! printed as a line.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/provision.rs"]
mod provision;

use std::fmt;
use std::io::{self, IsTerminal as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;

use flow::prelude::*;
use futures_util::future::join_all;

use cluster::{ClusterProcs, Fault};
use provision::{ProvisionDurable, StoredSpec};

/// What to provision.
#[derive(Debug, Clone)]
struct ClusterSpec {
    nodes: usize,
    fault: Fault,
    /// Scratch directory holding every node's data (and the cluster-wide schema marker).
    dir: PathBuf,
    users: u64,
    orders: u64,
}

/// What a successful run returns.
#[derive(Debug)]
struct ClusterReport {
    nodes: usize,
    schema_created_on: usize,
    users_per_node: u64,
    orders_per_node: u64,
    stopped: usize,
}

/// Everything that can make provisioning fail.
#[derive(Debug)]
enum ProvisionError {
    /// Process, socket or file trouble (the message names the node and request).
    Io(io::Error),
    /// Some nodes did not answer `PING`.
    NodesDown(Vec<String>),
    /// The schema was not created by our single `INIT_SCHEMA`, or was created twice.
    Schema(String),
    /// A node holds the wrong number of rows.
    Count {
        node: usize,
        table: &'static str,
        expected: u64,
        found: u64,
    },
}

impl fmt::Display for ProvisionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProvisionError::Io(e) => write!(f, "{e}"),
            ProvisionError::NodesDown(down) => {
                write!(f, "{} node(s) not up: {}", down.len(), down.join("; "))
            }
            ProvisionError::Schema(msg) => write!(f, "schema: {msg}"),
            ProvisionError::Count {
                node,
                table,
                expected,
                found,
            } => write!(
                f,
                "node {node}: table {table} has {found} rows, expected {expected}"
            ),
        }
    }
}

impl std::error::Error for ProvisionError {}

impl From<io::Error> for ProvisionError {
    fn from(e: io::Error) -> Self {
        ProvisionError::Io(e)
    }
}

/// The live progress display, when stdout is a terminal: lines are printed above it.
static PROGRESS: OnceLock<flow::ProgressObserver> = OnceLock::new();

/// Prints a line (above the live progress, if it is drawn).
macro_rules! say {
    ($($arg:tt)*) => {
        match PROGRESS.get() {
            Some(p) => p.println(format!($($arg)*)),
            None => println!($($arg)*),
        }
    };
}

// ---------------------------------------------------------------------------------------
// Steps: plain async functions doing real work.
// ---------------------------------------------------------------------------------------

/// Spawns the node processes.
async fn launch_cluster(spec: &ClusterSpec) -> Result<ClusterProcs, io::Error> {
    let procs = cluster::launch(spec.nodes, &spec.dir, spec.fault).await?;
    let pids = procs.pids();
    say!(
        "    launched {} node(s); {} process(es) running (pids {pids:?}); data in {}",
        procs.len(),
        pids.len(),
        spec.dir.display()
    );
    Ok(procs)
}

/// Compensation of `launch_cluster`: stops every node that is still running.
async fn teardown_cluster(procs: ClusterProcs) -> Result<(), io::Error> {
    let nodes = procs.nodes();
    let pids = procs.pids();
    let stopped = cluster::teardown(&procs).await?;
    say!(
        "    compensation: stopped and reaped {stopped} node process(es) {:?} (pids {pids:?})",
        nodes.iter().map(|(id, _)| *id).collect::<Vec<_>>()
    );
    Ok(())
}

/// Pings every node concurrently; fails (naming them) unless all of them answer.
async fn wait_until_up(procs: &ClusterProcs) -> Result<Vec<(usize, SocketAddr)>, ProvisionError> {
    let nodes = procs.nodes();
    let pings = nodes.iter().map(|&(id, addr)| async move {
        cluster::ping(addr)
            .await
            .map_err(|e| format!("node {id}: {e}"))
    });
    let mut down = Vec::new();
    for result in join_all(pings).await {
        if let Err(e) = result {
            down.push(e);
        }
    }
    if down.is_empty() {
        say!("    all {} node(s) answered PING", nodes.len());
        Ok(nodes)
    } else {
        Err(ProvisionError::NodesDown(down))
    }
}

/// Creates the cluster-wide schema with one `INIT_SCHEMA`, on one node.
async fn create_schema(node: (usize, SocketAddr)) -> Result<usize, ProvisionError> {
    let (id, addr) = node;
    if cluster::init_schema(addr).await? {
        say!("    node {id}: INIT_SCHEMA -> CREATED");
        Ok(id)
    } else {
        Err(ProvisionError::Schema(format!(
            "node {id} answered EXISTS: the schema was already there before this run"
        )))
    }
}

/// Shows why the schema is created once: any later `INIT_SCHEMA`, on any node, says `EXISTS`.
/// A per-node init racing on every node would have had exactly one winner and N-1 "failures".
async fn confirm_schema_once(nodes: &[(usize, SocketAddr)]) -> Result<(), ProvisionError> {
    let Some(&(id, addr)) = nodes.last() else {
        return Ok(());
    };
    if cluster::init_schema(addr).await? {
        return Err(ProvisionError::Schema(format!(
            "node {id} created the schema a second time"
        )));
    }
    say!("    node {id}: second INIT_SCHEMA -> EXISTS (a per-node init would race and lose here)");
    Ok(())
}

/// Seeds `rows` rows of `table` on every node, all nodes concurrently.
async fn seed_table(
    nodes: &[(usize, SocketAddr)],
    table: &'static str,
    rows: u64,
) -> Result<u64, ProvisionError> {
    let seeds = nodes
        .iter()
        .map(|&(_, addr)| async move { cluster::seed(addr, table, rows).await });
    for total in join_all(seeds).await {
        total?;
    }
    say!(
        "    seeded {rows} {table} row(s) on {} node(s)",
        nodes.len()
    );
    Ok(rows)
}

async fn seed_users(nodes: &[(usize, SocketAddr)], rows: u64) -> Result<u64, ProvisionError> {
    seed_table(nodes, "users", rows).await
}

async fn seed_orders(nodes: &[(usize, SocketAddr)], rows: u64) -> Result<u64, ProvisionError> {
    seed_table(nodes, "orders", rows).await
}

/// Counts both tables on every node.
async fn verify_counts(
    nodes: &[(usize, SocketAddr)],
    users: u64,
    orders: u64,
) -> Result<(), ProvisionError> {
    for &(id, addr) in nodes {
        for (table, expected) in [("users", users), ("orders", orders)] {
            let found = cluster::count(addr, table).await?;
            if found != expected {
                return Err(ProvisionError::Count {
                    node: id,
                    table,
                    expected,
                    found,
                });
            }
        }
    }
    say!("    every node holds {users} users and {orders} orders",);
    Ok(())
}

/// The last step on success: stop every node.
async fn shutdown_cluster(procs: &ClusterProcs) -> Result<usize, io::Error> {
    let pids = procs.pids();
    let stopped = cluster::teardown(procs).await?;
    say!("    shut down {stopped} node process(es) (pids {pids:?})");
    Ok(stopped)
}

// ---------------------------------------------------------------------------------------
// The workflow.
// ---------------------------------------------------------------------------------------

#[workflow(timeout = "30s")]
async fn provision(spec: ClusterSpec) -> Result<ClusterReport, ProvisionError> {
    #[compensate(teardown_cluster)]
    let procs = launch_cluster(&spec).await?;

    #[retry(max_attempts = 6, backoff = exponential("200ms", 2.0), max_delay = "2s", jitter = equal)]
    #[timeout("1s")]
    let nodes = wait_until_up(&procs).await?;

    // Once, on one node: no race between nodes.
    let schema_created_on = create_schema(nodes[0]).await?;
    confirm_schema_once(&nodes).await?;

    let (users, orders) = flow::join!(
        seed_users(&nodes, spec.users),
        seed_orders(&nodes, spec.orders)
    )
    .await?;
    verify_counts(&nodes, users, orders).await?;

    let stopped = shutdown_cluster(&procs).await?;
    Ok(ClusterReport {
        nodes: nodes.len(),
        schema_created_on,
        users_per_node: users,
        orders_per_node: orders,
        stopped,
    })
}

// ---------------------------------------------------------------------------------------
// The durable variant (`--store PATH`): the same procedure, with values that can be stored
// (`ProvisionDurable`, in support/provision.rs, which the `workers` example runs too).
// ---------------------------------------------------------------------------------------

/// `--store PATH`: resumes what a killed run left, or starts the run (id `cluster`), or
/// prints the stored result of a finished one.
async fn durable_main(store: PathBuf, cli: cluster::Cli) -> Result<(), Box<dyn std::error::Error>> {
    let sqlite = flow_store_sqlite::SqliteStore::open(&store)?;
    let mut runtime = flow::Runtime::new().with_store(sqlite);
    if io::stdout().is_terminal() {
        let progress = flow::ProgressObserver::new().with_graph(ProvisionDurable::GRAPH);
        runtime = runtime.with_observer(progress.clone());
        // The steps' lines, above the live progress.
        let lines = progress.clone();
        provision::print_with(move |line| lines.println(line));
        let _ = PROGRESS.set(progress);
    } else {
        runtime = runtime.with_observer(|e: &flow::Event| println!("{e}"));
    }
    let mut registry = flow::Registry::new();
    registry.register_durable(ProvisionDurable)?;
    let report = runtime.resume(&registry).await?;
    for run in &report.unknown {
        say!(
            "store {}: run `{}` of unknown workflow `{}` left as it is",
            store.display(),
            run.id,
            run.workflow
        );
    }
    for e in &report.incompatible {
        say!("cannot resume: {e}");
    }
    for r in report.resumed {
        say!(
            "resuming run `{}` from {} (steps already done are not run again)",
            r.id,
            store.display()
        );
        if let Err(e) = r.wait().await {
            say!("the resumed run failed: {e}");
        }
    }
    let spec = StoredSpec {
        nodes: cli.nodes,
        fault: cli.fault.to_string(),
        dir: cluster::scratch_dir("flow-provision")?,
        users: 100,
        orders: 250,
    };
    let fresh_dir = spec.dir.clone();
    let run = runtime.start(ProvisionDurable, "cluster", (spec,)).await?;
    if run.created() {
        say!(
            "provisioning a {}-node cluster (durable run `cluster` in {})",
            cli.nodes,
            store.display()
        );
    } else {
        // This invocation's scratch directory is not used: the stored run has its own.
        let _ = std::fs::remove_dir_all(&fresh_dir);
        say!(
            "run `cluster` is already in {}: its result",
            store.display()
        );
    }
    match run.await {
        Ok(report) => {
            let _ = std::fs::remove_dir_all(&report.dir);
            print_report(
                report.nodes,
                report.schema_created_on,
                report.users_per_node,
                report.orders_per_node,
                report.stopped,
            );
            Ok(())
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let argv: Vec<String> = std::env::args().collect();
    // Node mode first: the cluster's nodes are this binary, re-executed.
    if let Some(node) = cluster::node_args(&argv) {
        return Ok(cluster::node_main(&node).await?);
    }

    // Our own flags; the rest is the cluster's (`--nodes`, `--fault`).
    let mut graph = None;
    let mut trace = None;
    let mut store = None;
    let mut rest: Vec<String> = argv.first().cloned().into_iter().collect();
    let mut args = argv.into_iter().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--graph" => graph = Some(args.next().unwrap_or_else(|| "mermaid".into())),
            "--store" => match args.next() {
                Some(file) => store = Some(PathBuf::from(file)),
                None => usage("--store needs a file name"),
            },
            "--trace" => match args.next() {
                Some(file) => trace = Some(PathBuf::from(file)),
                None => usage("--trace needs a file name"),
            },
            _ => match (arg.strip_prefix("--graph="), arg.strip_prefix("--trace=")) {
                (Some(g), _) => graph = Some(g.to_owned()),
                (_, Some(t)) => trace = Some(PathBuf::from(t)),
                _ => rest.push(arg),
            },
        }
    }
    match graph.as_deref() {
        Some("mermaid") => {
            print!("{}", Provision::GRAPH.to_mermaid());
            return Ok(());
        }
        Some("dot") => {
            print!("{}", Provision::GRAPH.to_dot());
            return Ok(());
        }
        Some(other) => usage(&format!("unknown graph format {other:?}")),
        None => {}
    }
    let cli = match cluster::parse_cli(&rest) {
        Ok(cli) => cli,
        Err(msg) => usage(&msg),
    };

    if let Some(store) = store {
        return durable_main(store, cli).await;
    }

    let spec = ClusterSpec {
        nodes: cli.nodes,
        fault: cli.fault,
        dir: cluster::scratch_dir("flow-provision")?,
        users: 100,
        orders: 250,
    };
    let dir = spec.dir.clone();
    println!(
        "provisioning a {}-node cluster (fault: {})",
        spec.nodes, spec.fault
    );

    let mut runtime = flow::Runtime::new();
    if io::stdout().is_terminal() {
        // Drawn live: a line per step, pending / running / retrying / done / failed.
        let progress = flow::ProgressObserver::new().with_graph(Provision::GRAPH);
        runtime = runtime.with_observer(progress.clone());
        let _ = PROGRESS.set(progress);
    } else {
        runtime = runtime.with_observer(|e: &flow::Event| println!("{e}"));
    }
    let timeline = flow::Timeline::new();
    if trace.is_some() {
        runtime = runtime.with_observer(timeline.clone());
    }
    let mut handle = runtime.spawn(Provision, (spec,));
    // `&mut handle` so the handle is still there to show the final state.
    let result = (&mut handle).await;
    let state = handle.state();
    // `typed_state` is the same state as a variant of the generated `ProvisionState` enum.
    say!("final state: {state:?} = {:?}", handle.typed_state());
    if let Some(file) = &trace {
        std::fs::write(file, timeline.to_chrome_trace())?;
        say!(
            "trace written to {} (open it in ui.perfetto.dev or chrome://tracing)",
            file.display()
        );
    }

    if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!("warning: could not remove {}: {e}", dir.display());
    }

    match result {
        Ok(report) => {
            print_report(
                report.nodes,
                report.schema_created_on,
                report.users_per_node,
                report.orders_per_node,
                report.stopped,
            );
            Ok(())
        }
        Err(e) => {
            // Every attempt is in the events above; the error names the step and the count.
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

/// The last line of a provisioned cluster (both modes; CI looks for it).
fn print_report(nodes: usize, schema_on: usize, users: u64, orders: u64, stopped: usize) {
    println!(
        "cluster provisioned: {nodes} node(s), schema created once on node {schema_on}, \
         {users} users + {orders} orders on every node, {stopped} node process(es) stopped"
    );
}

/// Prints the usage (after `msg`) and exits with status 2.
fn usage(msg: &str) -> ! {
    eprintln!(
        "{msg}\n       <example> --graph mermaid|dot   (print the workflow graph and exit)\n       <example> --trace FILE          (write the run as Chrome trace-event JSON)\n       <example> --store FILE          (a durable run, recorded in FILE: kill it and run it again)"
    );
    std::process::exit(2);
}
