//! A local "database cluster" made of real OS processes.
//!
//! Plain tokio + std plumbing (no flow APIs) shared by the cluster examples.
//! Include it from an example with:
//!
//! ```ignore
//! #[path = "support/cluster.rs"]
//! mod cluster;
//! ```
//!
//! # Re-exec node mode
//!
//! Each database node is the *example binary itself*, re-executed as
//! `<current_exe> --node <id> --port <port> --data <dir> --shared <dir>
//! [--start-delay-ms N] [--die] [--watch-stdin]`. The example's `main` must
//! therefore check for node mode before doing anything else:
//!
//! ```ignore
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let argv: Vec<String> = std::env::args().collect();
//!     if let Some(node) = cluster::node_args(&argv) {
//!         return Ok(cluster::node_main(&node).await?);
//!     }
//!     let cli = cluster::parse_cli(&argv)?;
//!     // ... controller / workflow code ...
//! #   Ok(())
//! }
//! ```
//!
//! # Wire protocol
//!
//! One request per line, one reply line, over TCP on `127.0.0.1:<port>`:
//!
//! | request            | reply                                              |
//! |--------------------|----------------------------------------------------|
//! | `PING`             | `PONG <id>`                                        |
//! | `INIT_SCHEMA`      | `CREATED` (first caller cluster-wide) or `EXISTS`  |
//! | `SEED <table> <n>` | `OK <total rows>` or `ERR no schema`               |
//! | `COUNT <table>`    | `COUNT <n>`                                        |
//! | `SHUTDOWN`         | `BYE`, then the node process exits with status 0   |
//! | anything else      | `ERR unknown command`                              |
#![allow(dead_code)]

use std::fmt;
use std::fmt::Write as _;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

/// Boot delay given to the slow node under [`Fault::SlowStart`].
///
/// Long enough that a client retrying at 200 ms / 400 ms / 800 ms backoff needs
/// several attempts, short enough that it does come up.
pub const SLOW_START_DELAY: Duration = Duration::from_millis(700);

/// Upper bound on one controller-side request/reply exchange (connect excluded:
/// a refused loopback connect fails immediately).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`launch`] gives freshly spawned nodes to start listening before
/// it returns (it returns earlier once every node is up or has exited).
///
/// Without it, even healthy nodes would refuse the first connect for the few
/// milliseconds a process needs to boot. The slow node ([`SLOW_START_DELAY`])
/// and the dead node are still not up when `launch` returns.
pub const LAUNCH_GRACE: Duration = Duration::from_millis(300);

/// How long [`teardown`] waits for a node to exit after `SHUTDOWN` before it
/// kills the process.
pub const GRACEFUL_EXIT_TIMEOUT: Duration = Duration::from_secs(2);

/// Exit status of a node started with `--die`.
pub const DEAD_NODE_EXIT_CODE: i32 = 3;

/// Largest `n` accepted by `SEED` (keeps a typo from filling the disk).
const MAX_SEED_ROWS: u64 = 1_000_000;

/// File name of the cluster-wide schema marker inside the `--shared` directory.
pub const SCHEMA_MARKER: &str = "schema.lock";

// ---------------------------------------------------------------------------
// Node mode (runs inside the re-executed child process)
// ---------------------------------------------------------------------------

/// Detects node mode.
///
/// `argv` is the full argument vector (`std::env::args().collect()`, program
/// name included). Returns the node arguments (everything after the program
/// name, starting with `--node`) when this process was started as a cluster
/// node, `None` for a normal (controller) run.
pub fn node_args(argv: &[String]) -> Option<Vec<String>> {
    match argv.get(1) {
        Some(flag) if flag == "--node" => Some(argv[1..].to_vec()),
        _ => None,
    }
}

/// Parsed node-mode arguments.
#[derive(Debug)]
struct NodeConfig {
    id: usize,
    port: u16,
    data: PathBuf,
    shared: PathBuf,
    start_delay: Duration,
    die: bool,
    watch_stdin: bool,
}

fn parse_node_args(args: &[String]) -> Result<NodeConfig, String> {
    let mut id = None;
    let mut port = None;
    let mut data = None;
    let mut shared = None;
    let mut start_delay = Duration::ZERO;
    let mut die = false;
    let mut watch_stdin = false;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "--node" => {
                let v = value("--node")?;
                id = Some(
                    v.parse::<usize>()
                        .map_err(|e| format!("--node {v:?}: {e}"))?,
                );
            }
            "--port" => {
                let v = value("--port")?;
                port = Some(v.parse::<u16>().map_err(|e| format!("--port {v:?}: {e}"))?);
            }
            "--data" => data = Some(PathBuf::from(value("--data")?)),
            "--shared" => shared = Some(PathBuf::from(value("--shared")?)),
            "--start-delay-ms" => {
                let v = value("--start-delay-ms")?;
                let ms = v
                    .parse::<u64>()
                    .map_err(|e| format!("--start-delay-ms {v:?}: {e}"))?;
                start_delay = Duration::from_millis(ms);
            }
            "--die" => die = true,
            "--watch-stdin" => watch_stdin = true,
            other => return Err(format!("unknown node argument {other:?}")),
        }
    }
    let data = data.ok_or("missing --data")?;
    Ok(NodeConfig {
        id: id.ok_or("missing --node")?,
        port: port.ok_or("missing --port")?,
        // Default: the parent of the data dir is shared by the whole cluster.
        shared: match shared {
            Some(s) => s,
            None => data
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
        },
        data,
        start_delay,
        die,
        watch_stdin,
    })
}

/// Runs a database node until it receives `SHUTDOWN` (or its controller goes
/// away, with `--watch-stdin`).
///
/// `args` is what [`node_args`] returned. With `--die` the node prints a
/// message to stderr and exits with status [`DEAD_NODE_EXIT_CODE`] without
/// ever listening. Otherwise it sleeps `--start-delay-ms` (its boot time),
/// binds `127.0.0.1:<port>` and serves the line protocol described in the
/// module docs. `SHUTDOWN` replies `BYE` and exits the process with status 0,
/// so on success this function normally never returns.
pub async fn node_main(args: &[String]) -> io::Result<()> {
    let cfg = parse_node_args(args)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("node mode: {e}")))?;

    if cfg.die {
        eprintln!(
            "[node {}] fault injected: dying during boot (port {} will never listen)",
            cfg.id, cfg.port
        );
        std::process::exit(DEAD_NODE_EXIT_CODE);
    }

    if cfg.watch_stdin {
        // The controller holds our stdin pipe open; EOF means it is gone
        // (even if it was killed with SIGKILL), so do not linger as an orphan.
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = [0u8; 64];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => std::process::exit(0),
                    Ok(_) => {}
                }
            }
        });
    }

    tokio::fs::create_dir_all(&cfg.data).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "node {}: creating data dir {}: {e}",
                cfg.id,
                cfg.data.display()
            ),
        )
    })?;

    if !cfg.start_delay.is_zero() {
        tokio::time::sleep(cfg.start_delay).await;
    }

    let bind = SocketAddrV4::new(Ipv4Addr::LOCALHOST, cfg.port);
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("node {}: binding {bind}: {e}", cfg.id)))?;

    let state = Arc::new(NodeState {
        id: cfg.id,
        data: cfg.data,
        shared: cfg.shared,
        table_lock: tokio::sync::Mutex::new(()),
    });

    loop {
        let (stream, _peer) = listener.accept().await?;
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            // A broken client connection only ends that connection.
            let _ = serve_conn(stream, state).await;
        });
    }
}

struct NodeState {
    id: usize,
    data: PathBuf,
    shared: PathBuf,
    /// Serialises SEED/COUNT so a reply's total is consistent.
    table_lock: tokio::sync::Mutex<()>,
}

async fn serve_conn(stream: TcpStream, state: Arc<NodeState>) -> io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut lines = BufReader::new(rd).lines();
    while let Some(line) = lines.next_line().await? {
        let (reply, exit) = handle(&state, line.trim()).await;
        wr.write_all(format!("{reply}\n").as_bytes()).await?;
        wr.flush().await?;
        if exit {
            let _ = wr.shutdown().await;
            std::process::exit(0);
        }
    }
    Ok(())
}

fn valid_table(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Returns the reply line and whether the process should exit afterwards.
async fn handle(state: &NodeState, line: &str) -> (String, bool) {
    let mut words = line.split_whitespace();
    let cmd = words.next().unwrap_or("");
    let rest: Vec<&str> = words.collect();
    let reply = match (cmd, rest.as_slice()) {
        ("PING", []) => format!("PONG {}", state.id),
        ("SHUTDOWN", []) => return ("BYE".to_string(), true),
        ("INIT_SCHEMA", []) => init_schema_local(state).await,
        ("SEED", [table, _]) | ("COUNT", [table]) if !valid_table(table) => {
            "ERR bad table name".to_string()
        }
        ("SEED", [table, n]) => match n.parse::<u64>() {
            Ok(n) if n <= MAX_SEED_ROWS => seed_local(state, table, n).await,
            _ => format!("ERR bad row count (0..={MAX_SEED_ROWS})"),
        },
        ("COUNT", [table]) => {
            let _guard = state.table_lock.lock().await;
            match count_rows(&table_path(state, table)).await {
                Ok(n) => format!("COUNT {n}"),
                Err(e) => format!("ERR {e}"),
            }
        }
        _ => "ERR unknown command".to_string(),
    };
    (reply, false)
}

fn schema_path(state: &NodeState) -> PathBuf {
    state.shared.join(SCHEMA_MARKER)
}

fn table_path(state: &NodeState, table: &str) -> PathBuf {
    state.data.join(format!("{table}.rows"))
}

async fn init_schema_local(state: &NodeState) -> String {
    // `create_new` is an atomic O_CREAT|O_EXCL: exactly one node in the whole
    // cluster wins, however many race.
    let res = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(schema_path(state))
        .await;
    match res {
        Ok(mut f) => {
            let _ = f
                .write_all(format!("schema v1 created by node {}\n", state.id).as_bytes())
                .await;
            let _ = f.flush().await;
            "CREATED".to_string()
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => "EXISTS".to_string(),
        Err(e) => format!("ERR {e}"),
    }
}

async fn seed_local(state: &NodeState, table: &str, n: u64) -> String {
    match tokio::fs::try_exists(schema_path(state)).await {
        Ok(true) => {}
        Ok(false) => return "ERR no schema".to_string(),
        Err(e) => return format!("ERR {e}"),
    }
    let _guard = state.table_lock.lock().await;
    let path = table_path(state, table);
    let before = match count_rows(&path).await {
        Ok(c) => c,
        Err(e) => return format!("ERR {e}"),
    };
    let mut buf = String::new();
    for i in 0..n {
        let _ = writeln!(buf, "{table} row {} node {}", before + i + 1, state.id);
    }
    let res = async {
        let mut f = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await?;
        f.write_all(buf.as_bytes()).await?;
        f.flush().await
    }
    .await;
    match res {
        Ok(()) => format!("OK {}", before + n),
        Err(e) => format!("ERR {e}"),
    }
}

async fn count_rows(path: &Path) -> io::Result<u64> {
    match tokio::fs::read(path).await {
        Ok(bytes) => Ok(bytes.iter().filter(|&&b| b == b'\n').count() as u64),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

// ---------------------------------------------------------------------------
// Controller side
// ---------------------------------------------------------------------------

/// A fault injected into one node of a launched cluster (always the last
/// node, id `n - 1`; see [`Fault::faulty_node`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// All nodes boot normally.
    #[default]
    None,
    /// One node takes [`SLOW_START_DELAY`] (~700 ms) to start listening:
    /// connects are refused until then, so clients need a few retries.
    SlowStart,
    /// One node dies during boot (exit status [`DEAD_NODE_EXIT_CODE`]) and
    /// never listens: every connect is refused, retries never help.
    DeadNode,
}

impl Fault {
    /// Id of the node this fault applies to in an `n`-node cluster, if any.
    pub fn faulty_node(self, n: usize) -> Option<usize> {
        match self {
            Fault::None => None,
            Fault::SlowStart | Fault::DeadNode => n.checked_sub(1),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::None => "none",
            Fault::SlowStart => "slow-start",
            Fault::DeadNode => "dead-node",
        })
    }
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Fault::None),
            "slow-start" => Ok(Fault::SlowStart),
            "dead-node" => Ok(Fault::DeadNode),
            other => Err(format!(
                "invalid --fault {other:?}: expected one of none, slow-start, dead-node"
            )),
        }
    }
}

/// Controller command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cli {
    /// Number of nodes to launch (`--nodes N`, default 3, 1..=64).
    pub nodes: usize,
    /// Fault to inject (`--fault slow-start|dead-node|none`, default none).
    pub fault: Fault,
}

/// Usage text for the controller command line.
pub const USAGE: &str = "usage: <example> [--nodes N] [--fault slow-start|dead-node|none]";

/// Parses the controller command line.
///
/// `argv` is the full argument vector (program name first, as from
/// `std::env::args().collect()`). Accepts `--nodes N` / `--nodes=N` (default
/// 3, must be 1..=64) and `--fault KIND` / `--fault=KIND` (default none).
/// `--help` yields `Err(USAGE)`. Errors are human-readable messages that
/// already include the usage line.
pub fn parse_cli(argv: &[String]) -> Result<Cli, String> {
    let mut cli = Cli {
        nodes: 3,
        fault: Fault::None,
    };
    let mut it = argv.iter().skip(1);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = || match &inline {
            Some(v) => Ok(v.clone()),
            None => it
                .next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}")),
        };
        match flag {
            "--nodes" => {
                let v = value()?;
                cli.nodes = match v.parse::<usize>() {
                    Ok(n) if (1..=64).contains(&n) => n,
                    _ => {
                        return Err(format!(
                            "invalid --nodes {v:?}: expected a whole number from 1 to 64\n{USAGE}"
                        ));
                    }
                };
            }
            "--fault" => {
                let v = value()?;
                cli.fault = v.parse().map_err(|e| format!("{e}\n{USAGE}"))?;
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unexpected argument {other:?}\n{USAGE}")),
        }
    }
    Ok(cli)
}

/// One spawned node process.
pub struct NodeProc {
    /// Node id (0-based, also its data directory name `node-<id>`).
    pub id: usize,
    /// Loopback TCP port the node listens on (once booted).
    pub port: u16,
    /// `127.0.0.1:<port>`.
    pub addr: SocketAddr,
    /// The OS process. Its stdin pipe is kept open on purpose: the node exits
    /// when it sees EOF, i.e. when the controller is gone.
    child: Child,
}

impl std::fmt::Debug for NodeProc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeProc")
            .field("id", &self.id)
            .field("port", &self.port)
            .field("addr", &self.addr)
            .field("pid", &self.child.id())
            .finish()
    }
}

/// Shared handle to a launched cluster's processes.
///
/// Cheap to [`Clone`] (an `Arc`), so it can be moved into a compensation or
/// cleanup closure while the workflow keeps using it. [`teardown`] drains it.
#[derive(Debug, Clone, Default)]
pub struct ClusterProcs {
    inner: Arc<Mutex<Vec<NodeProc>>>,
}

impl ClusterProcs {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<NodeProc>> {
        // A poisoned lock only means another thread panicked mid-access; the
        // Vec itself is still valid, and we must still be able to reap.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Addresses of all nodes not yet torn down, in node-id order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.lock().iter().map(|n| n.addr).collect()
    }

    /// `(id, addr)` of all nodes not yet torn down.
    pub fn nodes(&self) -> Vec<(usize, SocketAddr)> {
        self.lock().iter().map(|n| (n.id, n.addr)).collect()
    }

    /// Number of nodes not yet torn down.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// `true` once every node has been torn down (or none were launched).
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// OS process ids of the node processes still running (a node that
    /// already exited on its own and was reaped, e.g. the dead node after
    /// [`launch`] noticed it, has no pid any more).
    pub fn pids(&self) -> Vec<u32> {
        self.lock().iter().filter_map(|n| n.child.id()).collect()
    }
}

/// Creates a fresh, empty scratch directory `<tmp>/<prefix>-<pid>-<nanos>`
/// for a cluster's data. The caller removes it when done
/// (`std::fs::remove_dir_all`).
pub fn scratch_dir(prefix: &str) -> io::Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", dir.display())))?;
    Ok(dir)
}

/// Reserves `n` distinct free loopback ports (bind port 0, read it back,
/// release). All listeners are held until every port is chosen so the same
/// port is never handed out twice.
fn free_ports(n: usize) -> io::Result<Vec<u16>> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| {
            io::Error::new(e.kind(), format!("reserving a free loopback port: {e}"))
        })?;
        held.push(l);
    }
    held.iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// Spawns an `n`-node cluster as child processes of this executable.
///
/// Node `i` gets data dir `<base_dir>/node-<i>`, shares `<base_dir>` (where
/// the schema marker lives) and listens on its own free loopback port. The
/// `fault` is applied to node `n - 1`. Children are `kill_on_drop(true)` and
/// also exit when this process goes away (stdin EOF).
///
/// Before returning, gives the nodes up to [`LAUNCH_GRACE`] (300 ms) to
/// start listening, returning as soon as every node accepts connections or
/// has exited, so healthy nodes answer the first [`ping`]. It does not treat
/// anything as an error: the slow node still refuses connections for another
/// ~400 ms and the dead node forever, which is for the caller to discover
/// with [`ping`] (and retries). If spawning any node fails, the
/// already-spawned ones are killed and reaped before the error is returned.
pub async fn launch(n: usize, base_dir: &Path, fault: Fault) -> io::Result<ClusterProcs> {
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "launch: cluster needs at least one node",
        ));
    }
    let exe = std::env::current_exe().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("launch: locating current executable: {e}"),
        )
    })?;
    std::fs::create_dir_all(base_dir).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("launch: creating {}: {e}", base_dir.display()),
        )
    })?;
    let ports = free_ports(n)?;
    let faulty = fault.faulty_node(n);
    let procs = ClusterProcs::default();

    for (id, port) in ports.into_iter().enumerate() {
        let mut cmd = Command::new(&exe);
        cmd.arg("--node")
            .arg(id.to_string())
            .arg("--port")
            .arg(port.to_string())
            .arg("--data")
            .arg(base_dir.join(format!("node-{id}")))
            .arg("--shared")
            .arg(base_dir)
            .arg("--watch-stdin");
        if faulty == Some(id) {
            match fault {
                Fault::SlowStart => {
                    cmd.arg("--start-delay-ms")
                        .arg(SLOW_START_DELAY.as_millis().to_string());
                }
                Fault::DeadNode => {
                    cmd.arg("--die");
                }
                Fault::None => {}
            }
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        match cmd.spawn() {
            Ok(child) => procs.lock().push(NodeProc {
                id,
                port,
                addr: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)),
                child,
            }),
            Err(e) => {
                let _ = teardown(&procs).await;
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "launch: spawning node {id} (port {port}) from {}: {e}",
                        exe.display()
                    ),
                ));
            }
        }
    }
    settle(&procs, LAUNCH_GRACE).await;
    Ok(procs)
}

/// Waits until every node accepts a TCP connection or has exited, at most
/// `grace`. Never fails: this is a courtesy, not a health check.
async fn settle(procs: &ClusterProcs, grace: Duration) {
    let deadline = tokio::time::Instant::now() + grace;
    let mut pending: Vec<usize> = (0..procs.len()).collect();
    while !pending.is_empty() && tokio::time::Instant::now() < deadline {
        let addrs = procs.addrs();
        let mut still = Vec::new();
        for i in pending {
            let exited = {
                let mut nodes = procs.lock();
                // try_wait only peeks at the status; the Child keeps it so
                // teardown still counts and reaps this node.
                matches!(
                    nodes.get_mut(i).map(|n| n.child.try_wait()),
                    Some(Ok(Some(_)))
                )
            };
            let up = match addrs.get(i) {
                Some(addr) => !exited && TcpStream::connect(addr).await.is_ok(),
                None => true,
            };
            if !exited && !up {
                still.push(i);
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Sends one request line to the node at `addr` and returns its reply line
/// (without the newline).
///
/// Connects with a plain `TcpStream::connect` (a node that is not listening
/// yet, or never will, fails fast with `ConnectionRefused`; the error kind is
/// preserved so callers can decide what is retryable). The exchange after
/// connecting is bounded by [`REQUEST_TIMEOUT`] (`TimedOut`). Errors name the
/// address and the request.
pub async fn request(addr: SocketAddr, line: &str) -> io::Result<String> {
    let ctx = |what: &str, e: io::Error| {
        io::Error::new(e.kind(), format!("node at {addr}: {what} {line:?}: {e}"))
    };
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| ctx("connect for", e))?;
    let exchange = async {
        stream.write_all(format!("{line}\n").as_bytes()).await?;
        stream.flush().await?;
        let mut reply = String::new();
        let n = BufReader::new(&mut stream).read_line(&mut reply).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a reply",
            ));
        }
        Ok(reply.trim_end().to_string())
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(e)) => Err(ctx("sending", e)),
        Err(_) => Err(ctx(
            "sending",
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no reply within {REQUEST_TIMEOUT:?}"),
            ),
        )),
    }
}

fn protocol_error(addr: SocketAddr, req: &str, reply: &str) -> io::Error {
    io::Error::other(format!("node at {addr}: {req:?} answered {reply:?}"))
}

/// Sends `PING`; returns the reply (`"PONG <id>"`).
///
/// `ConnectionRefused` while the node is still booting (or dead); any other
/// reply than `PONG ...` is an `InvalidData` error.
pub async fn ping(addr: SocketAddr) -> io::Result<String> {
    let reply = request(addr, "PING").await?;
    if reply.starts_with("PONG ") {
        Ok(reply)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("node at {addr}: PING answered {reply:?}"),
        ))
    }
}

/// Sends `INIT_SCHEMA`; `Ok(true)` if this call created the cluster-wide
/// schema, `Ok(false)` if it already existed. `ERR ...` replies become errors.
pub async fn init_schema(addr: SocketAddr) -> io::Result<bool> {
    match request(addr, "INIT_SCHEMA").await?.as_str() {
        "CREATED" => Ok(true),
        "EXISTS" => Ok(false),
        other => Err(protocol_error(addr, "INIT_SCHEMA", other)),
    }
}

/// Sends `SEED <table> <n>`; returns the table's total row count on that node.
/// `ERR no schema` (and any other `ERR`) becomes an error.
pub async fn seed(addr: SocketAddr, table: &str, n: u64) -> io::Result<u64> {
    let req = format!("SEED {table} {n}");
    let reply = request(addr, &req).await?;
    reply
        .strip_prefix("OK ")
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| protocol_error(addr, &req, &reply))
}

/// Sends `COUNT <table>`; returns the row count on that node (0 if the table
/// was never seeded).
pub async fn count(addr: SocketAddr, table: &str) -> io::Result<u64> {
    let req = format!("COUNT {table}");
    let reply = request(addr, &req).await?;
    reply
        .strip_prefix("COUNT ")
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| protocol_error(addr, &req, &reply))
}

/// Stops every node still held by `c` and reaps it; returns how many node
/// processes this call stopped and reaped.
///
/// For each node: send `SHUTDOWN` if it is listening (refused/failed sends
/// are ignored), wait up to [`GRACEFUL_EXIT_TIMEOUT`] for it to exit, then
/// kill it and *wait* for it, so no process (nor zombie) is left behind. A
/// node that had already exited (the dead node) is reaped and counted too.
///
/// Drains the handle: calling `teardown` again (e.g. from both a compensation
/// and final cleanup) returns `Ok(0)`. All nodes are always processed; if some
/// could not be killed or waited, the first such error is returned (naming
/// the node and port) after the others were handled.
pub async fn teardown(c: &ClusterProcs) -> io::Result<usize> {
    let nodes: Vec<NodeProc> = std::mem::take(&mut *c.lock());
    let results = futures_join_all(nodes.into_iter().map(stop_node)).await;
    let mut stopped = 0;
    let mut first_err = None;
    for r in results {
        match r {
            Ok(()) => stopped += 1,
            Err(e) => {
                if first_err.is_none() {
                    first_err = Some(e);
                }
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(stopped),
    }
}

/// Runs the futures concurrently as tokio tasks and collects their outputs in
/// order (a tiny `join_all`; no futures crate). Because they are spawned, a
/// cancelled `teardown` still finishes stopping and reaping in the background.
async fn futures_join_all<F>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        match h.await {
            Ok(v) => out.push(v),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    out
}

async fn stop_node(mut node: NodeProc) -> io::Result<()> {
    let ctx = |what: &str, e: io::Error| {
        io::Error::new(
            e.kind(),
            format!(
                "teardown: node {} (port {}): {what}: {e}",
                node.id, node.port
            ),
        )
    };
    // Already exited (e.g. the dead node)? try_wait reaps it.
    if let Ok(Some(_status)) = node.child.try_wait() {
        return Ok(());
    }
    if request(node.addr, "SHUTDOWN").await.is_ok()
        && let Ok(Ok(_)) = tokio::time::timeout(GRACEFUL_EXIT_TIMEOUT, node.child.wait()).await
    {
        return Ok(());
    }
    // Not listening, or did not exit in time: kill. start_kill fails only if
    // the process is already gone (then wait() just reaps it).
    let _ = node.child.start_kill();
    node.child
        .wait()
        .await
        .map(|_| ())
        .map_err(|e| ctx("waiting for exit", e))
}

// ---------------------------------------------------------------------------------------
// Detached nodes, for a controller whose runs are durable: the nodes outlive a controller
// that is killed, so that the controller started again finds them (by the ports and pids its
// store recorded) instead of launching new ones.
// ---------------------------------------------------------------------------------------

/// A node launched detached: what a durable run records of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Detached {
    /// Node id.
    pub id: usize,
    /// Its loopback address.
    pub addr: SocketAddr,
    /// Its OS process id.
    pub pid: u32,
}

/// The node processes this controller launched detached, kept to reap them (a node launched
/// by an earlier controller is reaped by init).
fn detached_children() -> &'static Mutex<Vec<std::process::Child>> {
    static CHILDREN: std::sync::OnceLock<Mutex<Vec<std::process::Child>>> =
        std::sync::OnceLock::new();
    CHILDREN.get_or_init(Default::default)
}

/// Spawns an `n`-node cluster whose nodes do not watch their stdin (they outlive this
/// process) and are not killed when dropped; waits up to [`LAUNCH_GRACE`] for them to listen,
/// as [`launch`] does. `fault` as in [`launch`].
pub async fn launch_detached(n: usize, base_dir: &Path, fault: Fault) -> io::Result<Vec<Detached>> {
    let exe = std::env::current_exe()?;
    std::fs::create_dir_all(base_dir)?;
    let ports = free_ports(n)?;
    let faulty = fault.faulty_node(n);
    let mut out = Vec::new();
    for (id, port) in ports.into_iter().enumerate() {
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("--node")
            .arg(id.to_string())
            .arg("--port")
            .arg(port.to_string())
            .arg("--data")
            .arg(base_dir.join(format!("node-{id}")))
            .arg("--shared")
            .arg(base_dir);
        match (faulty == Some(id), fault) {
            (true, Fault::SlowStart) => {
                cmd.arg("--start-delay-ms")
                    .arg(SLOW_START_DELAY.as_millis().to_string());
            }
            (true, Fault::DeadNode) => {
                cmd.arg("--die");
            }
            _ => {}
        }
        cmd.stdin(Stdio::null());
        let child = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("launch: spawning node {id} (port {port}): {e}"),
            )
        })?;
        out.push(Detached {
            id,
            addr: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)),
            pid: child.id(),
        });
        detached_children()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(child);
    }
    let deadline = tokio::time::Instant::now() + LAUNCH_GRACE;
    for node in &out {
        while tokio::time::Instant::now() < deadline && TcpStream::connect(node.addr).await.is_err()
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(out)
}

/// Whether process `pid` still exists (a zombie counts as gone).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Stops a detached node: `SHUTDOWN`, then waits for its process to go; `SIGKILL` (through
/// `kill -9`) if it does not within [`GRACEFUL_EXIT_TIMEOUT`]. Returns whether it was
/// running.
pub async fn stop_detached(node: Detached) -> io::Result<bool> {
    let was_running = alive(node.pid);
    if was_running {
        let _ = request(node.addr, "SHUTDOWN").await;
        let deadline = tokio::time::Instant::now() + GRACEFUL_EXIT_TIMEOUT;
        while alive(node.pid) && tokio::time::Instant::now() < deadline {
            reap_detached();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if alive(node.pid) {
            let _ = std::process::Command::new("kill")
                .arg("-9")
                .arg(node.pid.to_string())
                .status();
        }
    }
    reap_detached();
    Ok(was_running)
}

/// Reaps the detached children of this process that have exited.
fn reap_detached() {
    let mut children = detached_children()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    children.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
}
