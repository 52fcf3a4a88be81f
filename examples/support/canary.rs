//! Versioned "app" server processes for a canary rollout.
//!
//! Plain tokio + std plumbing (no flow APIs) for the canary-rollout example.
//! Include it from an example with:
//!
//! ```ignore
//! #[path = "support/canary.rs"]
//! mod canary;
//! ```
//!
//! # Re-exec app mode
//!
//! Each deployed app is the *example binary itself*, re-executed as
//! `<current_exe> --app --version <V> --port <P> [--fail-rate PCT]
//! [--watch-stdin]`. The example's `main` must check for app mode before
//! doing anything else:
//!
//! ```ignore
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let argv: Vec<String> = std::env::args().collect();
//!     if let Some(app) = canary::app_args(&argv) {
//!         return Ok(canary::app_main(&app).await?);
//!     }
//!     // ... controller / workflow code ...
//! #   Ok(())
//! }
//! ```
//!
//! # Wire protocol (HTTP-ish, one line each way)
//!
//! | request       | reply                                  |
//! |---------------|----------------------------------------|
//! | `GET /`       | `200 v<version>` or `500`              |
//! | `GET <other>` | `404`                                  |
//! | anything else | `400`                                  |
//!
//! Failures are deterministic: with `--fail-rate PCT`, request number `k`
//! (counted from 1 across all connections) fails exactly when
//! `k * PCT / 100` crosses the next whole number. So 25 % fails every 4th
//! request, 50 % every 2nd, 100 % all, 0 % none, and e.g. 30 % fails
//! requests 4, 7, 10, 14, ... — exactly PCT failures per 100 requests.
#![allow(dead_code)]

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

/// Upper bound on a whole [`probe`] after connecting.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`deploy`] waits for a new app process to start listening.
pub const READY_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// App mode (runs inside the re-executed child process)
// ---------------------------------------------------------------------------

/// Detects app mode.
///
/// `argv` is the full argument vector (`std::env::args().collect()`, program
/// name included). Returns the app arguments (everything after the program
/// name, starting with `--app`) when this process was started as an app
/// server, `None` for a normal (controller) run.
pub fn app_args(argv: &[String]) -> Option<Vec<String>> {
    match argv.get(1) {
        Some(flag) if flag == "--app" => Some(argv[1..].to_vec()),
        _ => None,
    }
}

struct AppConfig {
    version: String,
    port: u16,
    fail_rate: u8,
    watch_stdin: bool,
}

fn parse_app_args(args: &[String]) -> Result<AppConfig, String> {
    let mut version = None;
    let mut port = None;
    let mut fail_rate = 0u8;
    let mut watch_stdin = false;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "--app" => {}
            "--version" => version = Some(value("--version")?),
            "--port" => {
                let v = value("--port")?;
                port = Some(v.parse::<u16>().map_err(|e| format!("--port {v:?}: {e}"))?);
            }
            "--fail-rate" => {
                let v = value("--fail-rate")?;
                fail_rate = match v.parse::<u8>() {
                    Ok(p) if p <= 100 => p,
                    _ => return Err(format!("--fail-rate {v:?}: expected 0..=100")),
                };
            }
            "--watch-stdin" => watch_stdin = true,
            other => return Err(format!("unknown app argument {other:?}")),
        }
    }
    Ok(AppConfig {
        version: version.ok_or("missing --version")?,
        port: port.ok_or("missing --port")?,
        fail_rate,
        watch_stdin,
    })
}

/// Whether request number `k` (1-based) fails at `pct` percent.
fn fails(k: u64, pct: u8) -> bool {
    let pct = u64::from(pct.min(100));
    k >= 1 && (k * pct) / 100 > ((k - 1) * pct) / 100
}

struct AppState {
    version: String,
    fail_rate: u8,
    served: AtomicU64,
}

/// Runs an app server until it is killed (or, with `--watch-stdin`, its
/// controller goes away).
///
/// `args` is what [`app_args`] returned. Binds `127.0.0.1:<port>` and answers
/// the protocol described in the module docs.
pub async fn app_main(args: &[String]) -> io::Result<()> {
    let cfg = parse_app_args(args)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("app mode: {e}")))?;
    if cfg.watch_stdin {
        // The controller keeps our stdin pipe open; EOF means it is gone.
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
    let bind = SocketAddrV4::new(Ipv4Addr::LOCALHOST, cfg.port);
    let listener = TcpListener::bind(bind).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("app v{}: binding {bind}: {e}", cfg.version),
        )
    })?;
    let state = Arc::new(AppState {
        version: cfg.version,
        fail_rate: cfg.fail_rate,
        served: AtomicU64::new(0),
    });
    loop {
        let (stream, _) = listener.accept().await?;
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let _ = serve_conn(stream, state).await;
        });
    }
}

async fn serve_conn(stream: TcpStream, state: Arc<AppState>) -> io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut lines = BufReader::new(rd).lines();
    while let Some(line) = lines.next_line().await? {
        let reply = match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["GET", "/"] | ["GET", "/", _] => {
                let k = state.served.fetch_add(1, Ordering::SeqCst) + 1;
                if fails(k, state.fail_rate) {
                    "500".to_string()
                } else {
                    format!("200 v{}", state.version)
                }
            }
            ["GET", _] | ["GET", _, _] => "404".to_string(),
            _ => "400".to_string(),
        };
        // One write per reply: two small writes on a kept-open connection would wait on
        // Nagle's algorithm and the peer's delayed ACK (about 40 ms each).
        wr.write_all(format!("{reply}\n").as_bytes()).await?;
        wr.flush().await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Controller side
// ---------------------------------------------------------------------------

/// A deployed app version (one OS process).
///
/// Owns the process: dropping an `App` kills it (`kill_on_drop`), but prefer
/// [`retire`], which also waits for (reaps) it.
pub struct App {
    /// Version label, served as `200 v<version>`.
    pub version: String,
    /// Configured failure percentage (0..=100).
    pub fail_rate: u8,
    /// Loopback TCP port the app listens on.
    pub port: u16,
    /// `127.0.0.1:<port>`.
    pub addr: SocketAddr,
    child: Child,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("version", &self.version)
            .field("fail_rate", &self.fail_rate)
            .field("port", &self.port)
            .field("addr", &self.addr)
            .field("pid", &self.child.id())
            .finish()
    }
}

impl App {
    /// OS process id (`None` once the process has been reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// Starts `version` as a child process of this executable on a free loopback
/// port and waits (up to [`READY_TIMEOUT`]) until it accepts connections.
///
/// `fail_rate` is the percentage (0..=100) of `GET /` requests answered
/// `500`, deterministically (see module docs). `version` must be a single
/// word (e.g. `"2.0"`). Errors name the version and port; a process that
/// fails to come up is killed and reaped first.
pub async fn deploy(version: &str, fail_rate: u8) -> io::Result<App> {
    if fail_rate > 100 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("deploy v{version}: fail rate {fail_rate}% is over 100"),
        ));
    }
    if version.is_empty() || version.contains(char::is_whitespace) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("deploy: version {version:?} must be one non-empty word"),
        ));
    }
    let exe = std::env::current_exe().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("deploy v{version}: locating current executable: {e}"),
        )
    })?;
    let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("deploy v{version}: reserving a free port: {e}"),
            )
        })?;
    let child = Command::new(&exe)
        .args(["--app", "--version", version, "--port", &port.to_string()])
        .args(["--fail-rate", &fail_rate.to_string(), "--watch-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "deploy v{version} (port {port}) from {}: {e}",
                    exe.display()
                ),
            )
        })?;
    let mut app = App {
        version: version.to_string(),
        fail_rate,
        port,
        addr: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)),
        child,
    };
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        if TcpStream::connect(app.addr).await.is_ok() {
            return Ok(app);
        }
        let failure = match app.child.try_wait() {
            Ok(Some(status)) => Some(io::Error::other(format!(
                "deploy v{version} (port {port}): process exited during startup: {status}"
            ))),
            Ok(None) if tokio::time::Instant::now() >= deadline => Some(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("deploy v{version} (port {port}): not listening after {READY_TIMEOUT:?}"),
            )),
            Ok(None) => None,
            Err(e) => Some(io::Error::new(
                e.kind(),
                format!("deploy v{version} (port {port}): {e}"),
            )),
        };
        if let Some(e) = failure {
            let _ = app.child.start_kill();
            let _ = app.child.wait().await;
            return Err(e);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends `n` real `GET /` requests to `app` (sequentially, over one TCP
/// connection) and returns `(ok, failed)`: how many got `200` and how many
/// `500`.
///
/// A `500` is a *result*, not an error; errors are reserved for transport
/// problems (connect refused, timeout after [`PROBE_TIMEOUT`], connection
/// closed) and unexpected replies, and name the version and port.
pub async fn probe(app: &App, n: u32) -> io::Result<(u32, u32)> {
    let ctx = |e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("probe v{} (port {}): {e}", app.version, app.port),
        )
    };
    let stream = TcpStream::connect(app.addr).await.map_err(ctx)?;
    let run = async move {
        let (rd, mut wr) = stream.into_split();
        let mut rd = BufReader::new(rd);
        let (mut ok, mut failed) = (0u32, 0u32);
        let mut reply = String::new();
        for _ in 0..n {
            wr.write_all(b"GET /\n").await?;
            reply.clear();
            if rd.read_line(&mut reply).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed mid-probe",
                ));
            }
            match reply.trim_end() {
                r if r.starts_with("200") => ok += 1,
                "500" => failed += 1,
                other => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unexpected reply {other:?}"),
                    ));
                }
            }
        }
        Ok((ok, failed))
    };
    match tokio::time::timeout(PROBE_TIMEOUT, run).await {
        Ok(r) => r.map_err(ctx),
        Err(_) => Err(ctx(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{n} requests not answered within {PROBE_TIMEOUT:?}"),
        ))),
    }
}

/// Takes `app` out of service: kills its process and waits for it to exit
/// (reaps it).
pub async fn retire(mut app: App) -> io::Result<()> {
    // start_kill only fails if the process is already gone; wait() then reaps.
    let _ = app.child.start_kill();
    app.child.wait().await.map(|_| ()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "retire v{} (port {}): waiting for exit: {e}",
                app.version, app.port
            ),
        )
    })
}
