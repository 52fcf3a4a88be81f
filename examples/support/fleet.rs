//! A fleet of worker processes watched by a health checker.
//!
//! Plain tokio + std plumbing (no flow APIs) for the `remediate_node`
//! example. Include it from an example with:
//!
//! ```ignore
//! #[path = "support/fleet.rs"]
//! mod fleet;
//! ```
//!
//! # Re-exec worker mode
//!
//! Each worker is the *example binary itself*, re-executed as
//! `<current_exe> --worker --id <id> --port <port> [--sick-after K]
//! [--watch-stdin]`. The example's `main` must check for worker mode before
//! doing anything else:
//!
//! ```ignore
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let argv: Vec<String> = std::env::args().collect();
//!     if let Some(worker) = fleet::worker_args(&argv) {
//!         return Ok(fleet::worker_main(&worker).await?);
//!     }
//!     // ... controller / workflow code ...
//! #   Ok(())
//! }
//! ```
//!
//! # Wire protocol
//!
//! One request per line, one reply line, over TCP on `127.0.0.1:<port>`:
//!
//! | request       | reply                                                        |
//! |---------------|--------------------------------------------------------------|
//! | `HEALTH`      | `OK`, or `SICK` once the worker has turned sick               |
//! | `DRAIN`       | `DRAINED`; from then on `WORK` is refused                    |
//! | `WORK <job>`  | `DONE <job> by <id>`, or `ERR draining` / `ERR sick`         |
//! | `SHUTDOWN`    | `BYE`, then the worker process exits with status 0           |
//! | anything else | `ERR unknown command`                                        |
//!
//! With `--sick-after K` the first `K` `HEALTH` checks answer `OK` and every
//! later one `SICK` (it never recovers; `--sick-after 0` is sick from the
//! start). Only `HEALTH` requests are counted.
#![allow(dead_code)]

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

/// Upper bound on one request/reply exchange after connecting.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`spawn_worker`] waits for a new worker to start listening.
pub const READY_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Worker mode (runs inside the re-executed child process)
// ---------------------------------------------------------------------------

/// Detects worker mode.
///
/// `argv` is the full argument vector (`std::env::args().collect()`, program
/// name included). Returns the worker arguments (everything after the program
/// name, starting with `--worker`) when this process was started as a
/// worker, `None` for a normal (controller) run.
pub fn worker_args(argv: &[String]) -> Option<Vec<String>> {
    match argv.get(1) {
        Some(flag) if flag == "--worker" => Some(argv[1..].to_vec()),
        _ => None,
    }
}

struct WorkerConfig {
    id: usize,
    port: u16,
    sick_after: Option<u32>,
    watch_stdin: bool,
}

fn parse_worker_args(args: &[String]) -> Result<WorkerConfig, String> {
    let mut id = None;
    let mut port = None;
    let mut sick_after = None;
    let mut watch_stdin = false;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "--worker" => {}
            "--id" => {
                let v = value("--id")?;
                id = Some(v.parse::<usize>().map_err(|e| format!("--id {v:?}: {e}"))?);
            }
            "--port" => {
                let v = value("--port")?;
                port = Some(v.parse::<u16>().map_err(|e| format!("--port {v:?}: {e}"))?);
            }
            "--sick-after" => {
                let v = value("--sick-after")?;
                sick_after = Some(
                    v.parse::<u32>()
                        .map_err(|e| format!("--sick-after {v:?}: {e}"))?,
                );
            }
            "--watch-stdin" => watch_stdin = true,
            other => return Err(format!("unknown worker argument {other:?}")),
        }
    }
    Ok(WorkerConfig {
        id: id.ok_or("missing --id")?,
        port: port.ok_or("missing --port")?,
        sick_after,
        watch_stdin,
    })
}

struct WorkerState {
    id: usize,
    sick_after: Option<u32>,
    health_checks: AtomicU32,
    sick: AtomicBool,
    draining: AtomicBool,
}

/// Runs a worker until it receives `SHUTDOWN`, is killed, or (with
/// `--watch-stdin`) its controller goes away.
///
/// `args` is what [`worker_args`] returned. Binds `127.0.0.1:<port>` and
/// serves the line protocol described in the module docs.
pub async fn worker_main(args: &[String]) -> io::Result<()> {
    let cfg = parse_worker_args(args)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("worker mode: {e}")))?;
    if cfg.watch_stdin {
        exit_on_stdin_eof();
    }
    let bind = SocketAddrV4::new(Ipv4Addr::LOCALHOST, cfg.port);
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("worker {}: binding {bind}: {e}", cfg.id)))?;
    let state = Arc::new(WorkerState {
        id: cfg.id,
        sick_after: cfg.sick_after,
        health_checks: AtomicU32::new(0),
        sick: AtomicBool::new(cfg.sick_after == Some(0)),
        draining: AtomicBool::new(false),
    });
    loop {
        let (stream, _) = listener.accept().await?;
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let _ = serve_conn(stream, state).await;
        });
    }
}

/// The controller keeps our stdin pipe open; EOF means it is gone (even if it
/// was killed with SIGKILL), so do not linger as an orphan.
fn exit_on_stdin_eof() {
    tokio::spawn(async {
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

async fn serve_conn(stream: TcpStream, state: Arc<WorkerState>) -> io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut lines = BufReader::new(rd).lines();
    while let Some(line) = lines.next_line().await? {
        let (reply, exit) = handle(&state, line.trim());
        wr.write_all(format!("{reply}\n").as_bytes()).await?;
        wr.flush().await?;
        if exit {
            let _ = wr.shutdown().await;
            std::process::exit(0);
        }
    }
    Ok(())
}

fn handle(state: &WorkerState, line: &str) -> (String, bool) {
    let mut words = line.split_whitespace();
    let cmd = words.next().unwrap_or("");
    let rest: Vec<&str> = words.collect();
    let reply = match (cmd, rest.as_slice()) {
        ("HEALTH", []) => {
            let n = state.health_checks.fetch_add(1, Ordering::SeqCst) + 1;
            if state.sick_after.is_some_and(|k| n > k) {
                state.sick.store(true, Ordering::SeqCst);
            }
            if state.sick.load(Ordering::SeqCst) {
                "SICK"
            } else {
                "OK"
            }
            .to_string()
        }
        ("DRAIN", []) => {
            state.draining.store(true, Ordering::SeqCst);
            "DRAINED".to_string()
        }
        ("WORK", [job]) => {
            if state.draining.load(Ordering::SeqCst) {
                "ERR draining".to_string()
            } else if state.sick.load(Ordering::SeqCst) {
                "ERR sick".to_string()
            } else {
                format!("DONE {job} by {}", state.id)
            }
        }
        ("SHUTDOWN", []) => return ("BYE".to_string(), true),
        _ => "ERR unknown command".to_string(),
    };
    (reply, false)
}

// ---------------------------------------------------------------------------
// Controller side
// ---------------------------------------------------------------------------

/// A running worker process.
///
/// Owns the OS process: dropping a `Worker` kills it (`kill_on_drop`), but
/// prefer [`stop`] / [`replace`], which also wait for (reap) it.
pub struct Worker {
    /// Logical worker id (kept across [`replace`]).
    pub id: usize,
    /// How many times this slot was replaced (0 for the first process).
    pub generation: u32,
    /// Loopback TCP port the worker listens on.
    pub port: u16,
    /// `127.0.0.1:<port>`.
    pub addr: SocketAddr,
    child: Child,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.id)
            .field("generation", &self.generation)
            .field("port", &self.port)
            .field("addr", &self.addr)
            .field("pid", &self.child.id())
            .finish()
    }
}

impl Worker {
    /// OS process id (`None` once the process has been reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

fn free_port() -> io::Result<u16> {
    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| io::Error::new(e.kind(), format!("reserving a free loopback port: {e}")))?;
    Ok(l.local_addr()?.port())
}

/// Spawns worker `id` as a child process of this executable and waits (up to
/// [`READY_TIMEOUT`]) until it accepts connections.
///
/// `sick_after: Some(k)` makes the worker answer `SICK` from its `k+1`-th
/// health check on; `None` keeps it healthy forever. If the worker exits or
/// does not come up in time it is killed and reaped, and an error naming the
/// worker and port is returned.
pub async fn spawn_worker(id: usize, sick_after: Option<u32>) -> io::Result<Worker> {
    spawn_generation(id, sick_after, 0).await
}

async fn spawn_generation(
    id: usize,
    sick_after: Option<u32>,
    generation: u32,
) -> io::Result<Worker> {
    let exe = std::env::current_exe().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("spawn worker {id}: locating current executable: {e}"),
        )
    })?;
    let port =
        free_port().map_err(|e| io::Error::new(e.kind(), format!("spawn worker {id}: {e}")))?;
    let mut cmd = Command::new(&exe);
    cmd.args([
        "--worker",
        "--id",
        &id.to_string(),
        "--port",
        &port.to_string(),
        "--watch-stdin",
    ]);
    if let Some(k) = sick_after {
        cmd.args(["--sick-after", &k.to_string()]);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "spawn worker {id} (port {port}) from {}: {e}",
                exe.display()
            ),
        )
    })?;
    let mut worker = Worker {
        id,
        generation,
        port,
        addr: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)),
        child,
    };
    match wait_ready(&mut worker).await {
        Ok(()) => Ok(worker),
        Err(e) => {
            let _ = worker.child.start_kill();
            let _ = worker.child.wait().await;
            Err(e)
        }
    }
}

async fn wait_ready(w: &mut Worker) -> io::Result<()> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        if TcpStream::connect(w.addr).await.is_ok() {
            return Ok(());
        }
        if let Some(status) = w.child.try_wait()? {
            return Err(io::Error::other(format!(
                "worker {} (port {}) exited during startup: {status}",
                w.id, w.port
            )));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "worker {} (port {}) not listening after {READY_TIMEOUT:?}",
                    w.id, w.port
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends one request line to worker `w` and returns the reply line.
///
/// Errors keep the underlying `io::ErrorKind` (e.g. `ConnectionRefused` for a
/// dead worker, `TimedOut` after [`REQUEST_TIMEOUT`]) and name the worker and
/// port.
pub async fn request(w: &Worker, line: &str) -> io::Result<String> {
    let (id, port) = (w.id, w.port);
    let ctx = move |e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("worker {id} (port {port}): {line:?}: {e}"),
        )
    };
    let mut stream = TcpStream::connect(w.addr).await.map_err(ctx)?;
    let exchange = async {
        stream.write_all(format!("{line}\n").as_bytes()).await?;
        stream.flush().await?;
        let mut reply = String::new();
        if BufReader::new(&mut stream).read_line(&mut reply).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a reply",
            ));
        }
        Ok(reply.trim_end().to_string())
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Ok(r) => r.map_err(ctx),
        Err(_) => Err(ctx(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no reply within {REQUEST_TIMEOUT:?}"),
        ))),
    }
}

fn unexpected(w: &Worker, req: &str, reply: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "worker {} (port {}): {req:?} answered {reply:?}",
            w.id, w.port
        ),
    )
}

/// Health check: `Ok(true)` for `OK`, `Ok(false)` for `SICK`; an error if the
/// worker is unreachable or answers anything else.
pub async fn health(w: &Worker) -> io::Result<bool> {
    match request(w, "HEALTH").await?.as_str() {
        "OK" => Ok(true),
        "SICK" => Ok(false),
        other => Err(unexpected(w, "HEALTH", other)),
    }
}

/// Asks the worker to stop taking new work (`DRAIN` -> `DRAINED`). Idempotent.
pub async fn drain(w: &Worker) -> io::Result<()> {
    match request(w, "DRAIN").await?.as_str() {
        "DRAINED" => Ok(()),
        other => Err(unexpected(w, "DRAIN", other)),
    }
}

/// Sends a unit of work (`WORK <job>`; `job` must be one word). Returns the
/// `DONE ...` reply; a drained or sick worker's `ERR ...` refusal is an error
/// of kind `Other`.
pub async fn work(w: &Worker, job: &str) -> io::Result<String> {
    let req = format!("WORK {job}");
    let reply = request(w, &req).await?;
    if reply.starts_with("DONE ") {
        Ok(reply)
    } else {
        Err(io::Error::other(format!(
            "worker {} (port {}): {req:?} refused: {reply:?}",
            w.id, w.port
        )))
    }
}

/// Kills the worker's process and waits for it to exit (reaps it).
pub async fn stop(mut w: Worker) -> io::Result<()> {
    kill_and_wait(&mut w).await
}

async fn kill_and_wait(w: &mut Worker) -> io::Result<()> {
    // start_kill only fails if the process is already gone; wait() then reaps.
    let _ = w.child.start_kill();
    w.child.wait().await.map(|_| ()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("worker {} (port {}): waiting for exit: {e}", w.id, w.port),
        )
    })
}

/// Replaces a worker: kills and reaps `old`, then spawns a fresh, healthy
/// worker with the same id (next [`Worker::generation`], new port) and waits
/// until it listens.
pub async fn replace(mut old: Worker) -> io::Result<Worker> {
    kill_and_wait(&mut old).await?;
    spawn_generation(old.id, None, old.generation + 1).await
}
