//! The durable provisioning workflow (`ProvisionDurable`), shared by two examples:
//! `provision_cluster --store PATH` runs it in one process on SQLite and resumes it after a
//! crash; `workers` enqueues it on PostgreSQL and lets three worker processes execute it.
//!
//! Include it beside `support/cluster.rs` (its steps use the cluster's processes):
//!
//! ```ignore
//! #[path = "support/cluster.rs"]
//! mod cluster;
//! #[path = "support/provision.rs"]
//! mod provision;
//! ```
//!
//! The steps print what they did (launched, pinged, seeded ...) on stdout, or through the
//! printer an example sets with [`print_with`] (a live progress display prints above its
//! lines).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;

use flow::prelude::*;

use crate::cluster::{self, Fault};

/// Where the steps' lines go, when not to stdout.
static PRINTER: OnceLock<Box<dyn Fn(String) + Send + Sync>> = OnceLock::new();

/// Sends the steps' lines to `print` instead of stdout (once per process; later calls are
/// ignored).
#[allow(dead_code, reason = "`workers` prints the steps' lines on stdout")]
pub fn print_with(print: impl Fn(String) + Send + Sync + 'static) {
    let _ = PRINTER.set(Box::new(print));
}

/// Prints a step's line.
fn say(line: String) {
    match PRINTER.get() {
        Some(print) => print(line),
        None => println!("{line}"),
    }
}

/// What to provision, as stored with the run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StoredSpec {
    /// How many nodes.
    pub nodes: usize,
    /// The fault injected into the last node: `none`, `slow-start` or `dead-node`.
    pub fault: String,
    /// The cluster's scratch directory (every node's data, the schema marker).
    pub dir: PathBuf,
    /// Rows of `users` on every node.
    pub users: u64,
    /// Rows of `orders` on every node.
    pub orders: u64,
}

/// A durable run's error: its message (stored with the run).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Failed(pub String);

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<io::Error> for Failed {
    fn from(e: io::Error) -> Self {
        Failed(e.to_string())
    }
}

/// What a durable run returns.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StoredReport {
    /// Nodes that answered `PING`.
    pub nodes: usize,
    /// The node that created the schema.
    pub schema_created_on: usize,
    /// Rows of `users` on every node.
    pub users_per_node: u64,
    /// Rows of `orders` on every node.
    pub orders_per_node: u64,
    /// Node processes the last step stopped.
    pub stopped: usize,
    /// The cluster's scratch directory (for the caller to remove).
    pub dir: PathBuf,
}

/// Launches the nodes detached (they outlive the process that launched them); its output
/// (ports and pids) is recorded, so a resumed run finds them instead of launching new ones.
async fn launch_nodes(spec: StoredSpec) -> Result<Vec<cluster::Detached>, Failed> {
    let fault: Fault = spec.fault.parse().map_err(Failed)?;
    let nodes = cluster::launch_detached(spec.nodes, &spec.dir, fault).await?;
    say(format!(
        "    launched {} node(s) (pids {:?}); data in {}",
        nodes.len(),
        nodes.iter().map(|n| n.pid).collect::<Vec<_>>(),
        spec.dir.display()
    ));
    Ok(nodes)
}

/// Compensation of `launch_nodes`: stops every node still running.
async fn stop_nodes(nodes: Vec<cluster::Detached>) -> Result<(), Failed> {
    let mut stopped = 0;
    for n in nodes {
        stopped += usize::from(cluster::stop_detached(n).await?);
    }
    say(format!(
        "    compensation: stopped {stopped} node process(es)"
    ));
    Ok(())
}

fn addrs(nodes: &[cluster::Detached]) -> Vec<(usize, SocketAddr)> {
    nodes.iter().map(|n| (n.id, n.addr)).collect()
}

/// `PING`s every node; fails, naming them, unless all of them answer.
async fn ping_nodes(nodes: Vec<cluster::Detached>) -> Result<Vec<(usize, SocketAddr)>, Failed> {
    let mut down = Vec::new();
    for (id, addr) in addrs(&nodes) {
        if let Err(e) = cluster::ping(addr).await {
            down.push(format!("node {id}: {e}"));
        }
    }
    if down.is_empty() {
        say(format!("    all {} node(s) answered PING", nodes.len()));
        Ok(addrs(&nodes))
    } else {
        Err(Failed(format!(
            "{} node(s) not up: {}",
            down.len(),
            down.join("; ")
        )))
    }
}

/// `INIT_SCHEMA` on one node. At least once: run again after a restart, it finds the schema
/// this run created (the cluster's directory is this run's own), which is success.
async fn init_schema(node: (usize, SocketAddr)) -> Result<usize, Failed> {
    let (id, addr) = node;
    let created = cluster::init_schema(addr).await?;
    say(format!(
        "    node {id}: INIT_SCHEMA -> {}",
        if created {
            "CREATED"
        } else {
            "EXISTS (created before a restart)"
        }
    ));
    Ok(id)
}

/// Seeds `table` up to `rows` rows on every node: idempotent (a step run again after a
/// restart adds only what is missing).
async fn seed_up_to(
    nodes: Vec<(usize, SocketAddr)>,
    table: String,
    rows: u64,
) -> Result<u64, Failed> {
    for &(_, addr) in &nodes {
        let have = cluster::count(addr, &table).await?;
        if have < rows {
            cluster::seed(addr, &table, rows - have).await?;
        }
    }
    say(format!(
        "    {table}: {rows} row(s) on {} node(s)",
        nodes.len()
    ));
    Ok(rows)
}

/// Counts both tables on every node.
async fn check_counts(
    nodes: Vec<(usize, SocketAddr)>,
    users: u64,
    orders: u64,
) -> Result<(), Failed> {
    for &(id, addr) in &nodes {
        for (table, expected) in [("users", users), ("orders", orders)] {
            let found = cluster::count(addr, table).await?;
            if found != expected {
                return Err(Failed(format!(
                    "node {id}: table {table} has {found} rows, expected {expected}"
                )));
            }
        }
    }
    say(format!(
        "    every node holds {users} users and {orders} orders"
    ));
    Ok(())
}

/// The last step on success: stops every node.
async fn stop_cluster(nodes: Vec<cluster::Detached>) -> Result<usize, Failed> {
    let mut stopped = 0;
    for n in nodes {
        stopped += usize::from(cluster::stop_detached(n).await?);
    }
    say(format!("    shut down {stopped} node process(es)"));
    Ok(stopped)
}

/// The provisioning procedure, durable: each step's outcome is recorded, so a run resumed by
/// another process (or another worker) goes on from its last committed step.
#[workflow(durable, timeout = "60s")]
pub async fn provision_durable(spec: StoredSpec) -> Result<StoredReport, Failed> {
    #[compensate(stop_nodes)]
    let nodes = launch_nodes(spec.clone()).await?;

    #[retry(max_attempts = 6, backoff = exponential("200ms", 2.0), max_delay = "2s")]
    #[timeout("1s")]
    let up = ping_nodes(nodes.clone()).await?;

    let schema_created_on = init_schema(up[0]).await?;
    let (users, orders) = flow::join!(
        seed_up_to(up.clone(), "users".to_owned(), spec.users),
        seed_up_to(up.clone(), "orders".to_owned(), spec.orders)
    )
    .await?;
    check_counts(up.clone(), users, orders).await?;
    let stopped = stop_cluster(nodes).await?;
    Ok(StoredReport {
        nodes: up.len(),
        schema_created_on,
        users_per_node: users,
        orders_per_node: orders,
        stopped,
        dir: spec.dir,
    })
}
