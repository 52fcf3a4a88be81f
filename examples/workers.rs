//! Workers: one provisioning run, enqueued on PostgreSQL by this process, executed by three
//! worker processes. One worker is killed with SIGKILL in the middle of a step; another takes
//! the run over when the dead worker's lease expires, resumes it from its last committed
//! step, and finishes it.
//!
//! ```text
//! cargo run --example workers                                  # the local server, defaults
//! cargo run --example workers -- --postgres postgres://postgres@127.0.0.1:5432/test
//! cargo run --example workers -- --schema flow_demo            # a schema of your choice
//! cargo run --example workers -- --keep                        # keep the schema for flowctl
//! ```
//!
//! What it does, all of it real:
//!
//! 1. connects to PostgreSQL and creates a schema of its own (`flow_workers_<pid>`, or
//!    `--schema NAME`) holding the store's tables;
//! 2. starts three worker processes: this program re-executed with `--worker NAME`, each a
//!    [`flow::durable::Worker`] serving queue `provision` with 3-second leases;
//! 3. enqueues one run of `ProvisionDurable` (the workflow of `provision_cluster --store`:
//!    launch 3 node processes, ping them until they answer, create the schema, seed two
//!    tables, check the counts, stop the nodes), with one node slow to start, so that
//!    `ping_nodes` fails and retries with backoff;
//! 4. watches the store until the worker that claimed the run has committed a step and is in
//!    the middle of the next one, and kills that worker with SIGKILL;
//! 5. waits for the result: another worker takes the run over once the lease expires and
//!    resumes it from its last committed step (the nodes are not launched again: their ports
//!    and pids are in the committed output of `launch_nodes`);
//! 6. stops the other workers cleanly (it closes their stdin, which resolves the shutdown
//!    future of `Worker::run`: each prints its report), then prints what happened, from the
//!    store (the steps, their attempts, the takeover in the run's history) and from the
//!    operating system (every node process that ran for this cluster);
//! 7. drops the schema it created, unless `--keep` (a schema that existed before is never
//!    dropped).
//!
//! No process outlives the example: on every path, including errors and Ctrl-C, the workers
//! are killed and reaped and any node process of this cluster still running is killed.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/provision.rs"]
mod provision;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use flow::EventKind;
use flow::durable::{EnqueueOptions, Worker, WorkerOptions, WorkerReport};
use flow::store::{RunRecord, StepOutcome, StepRecord, Store as _};
use flow_store_postgres::{Options, PgStore};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use provision::{ProvisionDurable, StoredSpec};

type BoxError = Box<dyn std::error::Error>;

/// The server of the local development setup (trust authentication).
const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// The queue the workers serve.
const QUEUE: &str = "provision";
/// How many worker processes.
const WORKERS: usize = 3;
/// How long a worker's hold on a run lasts without renewal (renewed every third of it). Short,
/// so that the takeover comes quickly; the default is 30 s.
const LEASE: Duration = Duration::from_secs(3);
/// The longest an idle worker waits between two claims when no notification comes: a run
/// whose lease expired is found by time alone, so a dead worker's run is taken over within
/// `LEASE + POLL`.
const POLL: Duration = Duration::from_millis(500);
/// Connections per process (a worker needs few; the server is shared).
const POOL: usize = 4;

const USAGE: &str = "usage: workers [--postgres URL] [--schema NAME] [--keep]
  --postgres URL   the server (default postgres://postgres@127.0.0.1:5432/test); a
                   `?schema=NAME` at its end is the same as --schema NAME
  --schema NAME    the schema holding the store (default: flow_workers_<pid>, created and
                   dropped by this example; a schema that exists already is never dropped)
  --keep           keep the schema at the end, to look at the run with flowctl";

/// The command line.
#[derive(Debug, Default)]
struct Cli {
    url: String,
    schema: Option<String>,
    keep: bool,
    /// Worker mode: this process is worker `NAME`.
    worker: Option<String>,
}

fn parse_cli(args: &[String]) -> Result<Cli, String> {
    let mut cli = Cli {
        url: DEFAULT_URL.to_owned(),
        ..Cli::default()
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag {
            "--postgres" => cli.url = value()?,
            "--schema" => cli.schema = Some(value()?),
            "--keep" => cli.keep = true,
            "--worker" => cli.worker = Some(value()?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    // `?schema=NAME`, as flowctl reads it.
    if let Some((base, query)) = cli.url.clone().split_once('?') {
        let mut rest = Vec::new();
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            match kv.strip_prefix("schema=") {
                Some(name) if cli.schema.is_none() => cli.schema = Some(name.to_owned()),
                Some(_) => {}
                None => rest.push(kv),
            }
        }
        cli.url = if rest.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
    }
    Ok(cli)
}

#[tokio::main]
async fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    // Node mode first: the cluster's nodes are this binary, re-executed by a worker.
    if let Some(node) = cluster::node_args(&argv) {
        return match cluster::node_main(&node).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = match parse_cli(argv.get(1..).unwrap_or_default()) {
        Ok(cli) => cli,
        Err(msg) => {
            if msg.is_empty() {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            eprintln!("{msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match cli.worker.clone() {
        Some(name) => worker_main(&name, &cli).await,
        None => parent_main(cli).await,
    }
}

// ---------------------------------------------------------------------------------------
// Worker mode: `workers --worker NAME --postgres URL --schema NAME`.
// ---------------------------------------------------------------------------------------

/// A worker process: executes the runs of queue `provision` until its stdin closes (or
/// SIGTERM), then prints its report. Its stdout is read by the parent, which prefixes every
/// line with the worker's name.
async fn worker_main(name: &str, cli: &Cli) -> ExitCode {
    let code = match worker(name, cli).await {
        Ok(report) => {
            println!("stopped cleanly: {}", describe(&report));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    };
    // Not a return: the task reading stdin may still be blocked in its read (after SIGTERM),
    // and the runtime would wait for it.
    std::process::exit(if code == ExitCode::SUCCESS { 0 } else { 1 });
}

async fn worker(name: &str, cli: &Cli) -> Result<WorkerReport, BoxError> {
    let schema = cli.schema.clone().ok_or("--worker needs --schema")?;
    let store = PgStore::connect_with(&cli.url, store_options(&schema)).await?;
    let runtime = flow::Runtime::default()
        .with_queue(Arc::new(store))
        .with_observer(print_event);
    let mut registry = flow::Registry::new();
    registry.register_durable(ProvisionDurable)?;
    let options = WorkerOptions::new(QUEUE).name(name).lease(LEASE).poll(POLL);
    let worker = Worker::new(&runtime, registry, options)?;
    println!(
        "ready: pid {}, serving queue `{QUEUE}` (lease {} s, heartbeat every {} s)",
        std::process::id(),
        LEASE.as_secs_f64(),
        (LEASE / 3).as_secs_f64()
    );
    Ok(worker.run(shutdown()).await)
}

/// Resolves when the parent closes this process's stdin (or exits), or on SIGTERM.
async fn shutdown() {
    let eof = async {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        while let Ok(1..) = stdin.read(&mut buf).await {}
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => core::future::pending().await,
        }
    };
    tokio::select! {
        () = eof => println!("stdin closed: shutting down (Worker::run releases its runs)"),
        () = term => println!("SIGTERM: shutting down (Worker::run releases its runs)"),
    }
}

/// A worker's events, one line each: the attempts and their outcomes.
fn print_event(e: &flow::Event) {
    match &e.kind {
        EventKind::RunStarted => println!("executing a run of {}", e.workflow),
        EventKind::AttemptStarted { attempt } => println!("{}: attempt {attempt}", e.key),
        EventKind::AttemptFailed {
            attempt,
            error,
            retry_in,
        } => match retry_in {
            Some(d) => println!(
                "{}: attempt {attempt} failed ({error}); retrying in {} ms",
                e.key,
                d.as_millis()
            ),
            None => println!("{}: attempt {attempt} failed ({error})", e.key),
        },
        EventKind::StepSucceeded { attempt, elapsed } => println!(
            "{}: done at attempt {attempt} ({} ms)",
            e.key,
            elapsed.as_millis()
        ),
        EventKind::StepFailed { attempts, error } => {
            println!("{}: failed after {attempts} attempt(s): {error}", e.key);
        }
        EventKind::CompensationStarted => println!("{}: undoing", e.key),
        EventKind::RunCompleted => println!("run completed"),
        EventKind::RunFailed { error } => println!("run failed: {error}"),
        EventKind::RunCancelled => println!("run cancelled"),
        _ => {}
    }
}

fn describe(r: &WorkerReport) -> String {
    format!(
        "claimed {} run(s) ({} taken over), finished {}, lost {}, released {}, stopped {}, \
         skipped {}, store errors {}",
        r.claimed,
        r.taken_over,
        r.finished,
        r.lost,
        r.released,
        r.stopped,
        r.skipped,
        r.store_errors
    )
}

fn store_options(schema: &str) -> Options {
    Options {
        schema: Some(schema.to_owned()),
        pool_size: POOL,
        ..Options::default()
    }
}

// ---------------------------------------------------------------------------------------
// The parent: producer, observer, and the one that kills a worker.
// ---------------------------------------------------------------------------------------

/// A worker process and what the parent knows of it.
struct WorkerProc {
    name: String,
    pid: u32,
    child: Child,
    /// Closing it is the worker's signal to shut down.
    stdin: Option<ChildStdin>,
    /// The tasks that print its stdout and stderr.
    readers: Vec<JoinHandle<()>>,
    /// Killed by the example (SIGKILL), or stopped and reaped.
    gone: bool,
}

/// What the workers said that the parent waits for.
#[derive(Default)]
struct Said {
    ready: BTreeSet<String>,
}

/// Everything the parent must clean up, on every path.
struct Demo {
    url: String,
    schema: String,
    /// Whether this example created the schema (and so may drop it).
    created_schema: bool,
    keep: bool,
    /// The cluster's scratch directory.
    dir: PathBuf,
    workers: Vec<WorkerProc>,
    said: Arc<Mutex<Said>>,
    /// Every node process of this cluster ever seen running (pid), from /proc.
    nodes_seen: Arc<Mutex<BTreeSet<u32>>>,
    node_watch: Option<JoinHandle<()>>,
    store: Option<Arc<PgStore>>,
}

/// Another worker's claim of the run after the kill.
struct Takeover {
    worker: String,
    epoch: u64,
    /// When the parent saw it.
    at: Instant,
}

/// What the parent saw when it killed the worker.
struct Kill {
    worker: String,
    epoch: u64,
    /// The steps as the killed worker left them (read after it died).
    steps: Vec<StepRecord>,
    /// The step it was in the middle of.
    step: String,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Prints a line of the parent's story.
macro_rules! say {
    ($($arg:tt)*) => {
        println!("== {}", format!($($arg)*))
    };
}

async fn parent_main(cli: Cli) -> ExitCode {
    say!("flow workers example: one provisioning run, {WORKERS} worker processes, PostgreSQL");
    let mut demo = match Demo::setup(&cli).await {
        Ok(demo) => demo,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = tokio::select! {
        r = demo.run() => r,
        _ = tokio::signal::ctrl_c() => Err("interrupted (Ctrl-C)".into()),
    };
    if let Err(e) = &outcome {
        eprintln!("error: {e}");
    }
    demo.cleanup().await;
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

impl Demo {
    /// Connects (creating the schema), and prepares the cluster's scratch directory.
    async fn setup(cli: &Cli) -> Result<Demo, BoxError> {
        let schema = cli
            .schema
            .clone()
            .unwrap_or_else(|| format!("flow_workers_{}", std::process::id()));
        // A plain connection first: it fails at once (not after the store's retry budget)
        // when no server listens, and tells whether the schema exists already.
        let existed = schema_exists(&cli.url, &schema).await.map_err(|e| {
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                why = format!("{why}: {cause}");
                source = cause.source();
            }
            format!(
                "cannot connect to PostgreSQL at {}: {why}\n  is the server up? \
                 (`pg_isready -h HOST -p PORT` says), or pass --postgres URL",
                cli.url
            )
        })?;
        let dir = cluster::scratch_dir("flow-workers")?;
        let store = match PgStore::connect_with(&cli.url, store_options(&schema)).await {
            Ok(store) => store,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e.into());
            }
        };
        say!(
            "store: PostgreSQL at {}, schema `{schema}`{}",
            store.server(),
            if existed {
                " (it existed: it is kept)"
            } else {
                " (created for this example)"
            }
        );
        Ok(Demo {
            url: cli.url.clone(),
            schema,
            created_schema: !existed,
            keep: cli.keep,
            dir,
            workers: Vec::new(),
            said: Arc::default(),
            nodes_seen: Arc::default(),
            node_watch: None,
            store: Some(Arc::new(store)),
        })
    }

    fn store(&self) -> Result<&Arc<PgStore>, BoxError> {
        Ok(self.store.as_ref().ok_or("the store is closed")?)
    }

    async fn run(&mut self) -> Result<(), BoxError> {
        let store = Arc::clone(self.store()?);
        self.watch_nodes();
        self.start_workers().await?;

        // The producer: a runtime on the same store, which enqueues and does not execute.
        let runtime = flow::Runtime::default().with_queue(store.clone());
        let id = free_run_id(&store).await?;
        let spec = StoredSpec {
            nodes: 3,
            fault: "slow-start".to_owned(),
            dir: self.dir.clone(),
            users: 100,
            orders: 250,
        };
        let run = runtime
            .enqueue(
                ProvisionDurable,
                id.clone(),
                (spec,),
                EnqueueOptions::queue(QUEUE),
            )
            .await?;
        let enqueued = Instant::now();
        say!(
            "enqueued run `{id}` (ProvisionDurable: 3 nodes, node 2 slow to start) on queue \
             `{QUEUE}`; the first worker to claim it executes it"
        );

        let kill = self.kill_mid_step(&store, &id).await?;
        let killed_at = Instant::now();
        say!(
            "waiting for another worker: {}'s lease runs out within {} s of its last renewal, \
             and an idle worker claims at least every {} ms",
            kill.worker,
            LEASE.as_secs(),
            POLL.as_millis()
        );
        let takeover = self.watch_takeover(&store, &id, &kill).await?;
        say!(
            "{} took the run over (lease epoch {}) {:.1} s after the kill",
            takeover.worker,
            takeover.epoch,
            takeover
                .at
                .saturating_duration_since(killed_at)
                .as_secs_f64()
        );
        let report = match tokio::time::timeout(Duration::from_secs(60), run.wait()).await {
            Ok(Ok(report)) => report,
            Ok(Err(e)) => return Err(format!("run `{id}` failed: {e}").into()),
            Err(_) => return Err(format!("run `{id}` did not finish within 60 s").into()),
        };
        say!(
            "run `{id}` completed {:.1} s after it was enqueued: {} node(s), schema created on \
             node {}, {} users + {} orders on every node, {} node process(es) stopped",
            enqueued.elapsed().as_secs_f64(),
            report.nodes,
            report.schema_created_on,
            report.users_per_node,
            report.orders_per_node,
            report.stopped
        );

        self.stop_workers().await;
        let taker = self.explain(&store, &id, &kill).await?;
        say!(
            "run `{id}` finished on another worker: {} was killed (SIGKILL) in the middle of \
             `{}`, {taker} resumed the run from its last committed step and completed it",
            kill.worker,
            kill.step,
        );
        Ok(())
    }

    /// Records every node process of this cluster seen running (by its command line, which
    /// names the cluster's directory), every 10 ms.
    fn watch_nodes(&mut self) {
        let seen = Arc::clone(&self.nodes_seen);
        let dir = self.dir.clone();
        self.node_watch = Some(tokio::spawn(async move {
            loop {
                let pids = node_pids(&dir);
                lock(&seen).extend(pids);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }

    /// Starts the worker processes and waits until each is ready.
    async fn start_workers(&mut self) -> Result<(), BoxError> {
        let exe = std::env::current_exe()?;
        say!("starting {WORKERS} worker processes (this program, re-executed with --worker NAME)");
        for i in 1..=WORKERS {
            let name = format!("worker-{i}");
            let mut child = Command::new(&exe)
                .arg("--worker")
                .arg(&name)
                .arg("--postgres")
                .arg(&self.url)
                .arg("--schema")
                .arg(&self.schema)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("starting {name} from {}: {e}", exe.display()))?;
            let pid = child.id().unwrap_or_default();
            let mut readers = Vec::new();
            if let Some(out) = child.stdout.take() {
                readers.push(self.forward(&name, out));
            }
            if let Some(err) = child.stderr.take() {
                readers.push(self.forward(&name, err));
            }
            let stdin = child.stdin.take();
            self.workers.push(WorkerProc {
                name,
                pid,
                child,
                stdin,
                readers,
                gone: false,
            });
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while lock(&self.said).ready.len() < WORKERS {
            for w in &mut self.workers {
                if let Ok(Some(status)) = w.child.try_wait() {
                    w.gone = true;
                    return Err(format!("{} exited before it was ready ({status})", w.name).into());
                }
            }
            if Instant::now() > deadline {
                return Err("the workers were not ready within 60 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Prints a worker's output, each line prefixed with its name.
    fn forward(
        &self,
        name: &str,
        out: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    ) -> JoinHandle<()> {
        let name = name.to_owned();
        let said = Arc::clone(&self.said);
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("ready:") {
                    lock(&said).ready.insert(name.clone());
                }
                println!("   {name} | {line}");
            }
        })
    }

    /// Watches the store until the worker holding the run has committed a step and is in the
    /// middle of another, then kills it with SIGKILL.
    async fn kill_mid_step(&mut self, store: &PgStore, id: &str) -> Result<Kill, BoxError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let (lease, step) = loop {
            let run = the_run(store, id).await?;
            if run.status.is_finished() {
                return Err(format!(
                    "run `{id}` ended ({}) before a worker could be killed in the middle of a \
                     step",
                    run.status
                )
                .into());
            }
            let steps = store.steps_of(id).await?;
            let committed = steps.iter().any(|s| s.outcome.is_some());
            let in_flight = steps.iter().find(|s| s.outcome.is_none());
            if let (Some(lease), true, Some(step)) = (run.lease, committed, in_flight) {
                break (lease, step.clone());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no worker was in the middle of a step of run `{id}` within 30 s"
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let w = self
            .workers
            .iter_mut()
            .find(|w| w.name == lease.worker)
            .ok_or_else(|| format!("run `{id}` is held by an unknown worker `{}`", lease.worker))?;
        let tried: Vec<String> = step
            .attempts
            .iter()
            .map(|a| match &a.failure {
                Some(f) => format!("attempt {} failed: {f}", a.number),
                None => format!("attempt {}", a.number),
            })
            .collect();
        let next = step
            .retry
            .wake_at_ms
            .map(|at| at.saturating_sub(flow::store::now_ms()));
        say!(
            "{} (pid {}) holds run `{id}` (lease epoch {}) and is in the middle of `{}` ({}{}): \
             killing it with SIGKILL",
            w.name,
            w.pid,
            lease.epoch,
            step.key.node,
            tried.join("; "),
            next.map_or(String::new(), |ms| format!("; next attempt due in {ms} ms"))
        );
        w.child.start_kill()?;
        let status = w.child.wait().await?;
        w.gone = true;
        // Read after it died: exactly what the killed worker left in the store.
        let steps = store.steps_of(id).await?;
        let done: Vec<&str> = steps
            .iter()
            .filter(|s| s.outcome.is_some())
            .map(|s| s.key.node.as_str())
            .collect();
        say!(
            "{} is dead ({status}); committed before it died: {}",
            w.name,
            done.join(", ")
        );
        Ok(Kill {
            worker: w.name.clone(),
            epoch: lease.epoch,
            steps,
            step: step.key.node.clone(),
        })
    }

    /// Waits until another worker holds the run (or it finished): (worker, epoch, when).
    async fn watch_takeover(
        &self,
        store: &PgStore,
        id: &str,
        kill: &Kill,
    ) -> Result<Takeover, BoxError> {
        let limit = LEASE * 4 + Duration::from_secs(10);
        let deadline = Instant::now() + limit;
        loop {
            let run = the_run(store, id).await?;
            if let Some(lease) = &run.lease
                && lease.epoch > kill.epoch
            {
                return Ok(Takeover {
                    worker: lease.worker.clone(),
                    epoch: lease.epoch,
                    at: Instant::now(),
                });
            }
            if run.status.is_finished() {
                // Taken over and finished between two looks: the history says by whom.
                let by = takeovers(&store.history_of(id).await?)
                    .last()
                    .map(|(w, _)| w.clone())
                    .ok_or("the run finished, but no takeover is in its history")?;
                return Ok(Takeover {
                    worker: by,
                    epoch: kill.epoch + 1,
                    at: Instant::now(),
                });
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no worker took run `{id}` over within {} s",
                    limit.as_secs()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the live workers cleanly: closing a worker's stdin resolves the shutdown future
    /// given to `Worker::run`, which releases its runs and returns its report.
    async fn stop_workers(&mut self) {
        say!("stopping the other workers (closing their stdin: Worker::run's shutdown)");
        for w in self.workers.iter_mut().filter(|w| !w.gone) {
            drop(w.stdin.take());
        }
        for w in self.workers.iter_mut().filter(|w| !w.gone) {
            match tokio::time::timeout(Duration::from_secs(10), w.child.wait()).await {
                Ok(Ok(status)) if status.success() => {}
                Ok(Ok(status)) => eprintln!("{} exited with {status}", w.name),
                Ok(Err(e)) => eprintln!("waiting for {}: {e}", w.name),
                Err(_) => {
                    eprintln!("{} did not stop within 10 s: killing it", w.name);
                    let _ = w.child.start_kill();
                    let _ = w.child.wait().await;
                }
            }
            w.gone = true;
            // Its last lines (the report) are printed before going on.
            for r in w.readers.drain(..) {
                let _ = tokio::time::timeout(Duration::from_secs(2), r).await;
            }
        }
    }

    /// Prints what happened, from the store and from the operating system; checks that no
    /// node was launched twice and that none is left running. Returns the worker(s) that
    /// took the run over, as its history says.
    async fn explain(&self, store: &PgStore, id: &str, kill: &Kill) -> Result<String, BoxError> {
        say!("what happened, from the store (schema `{}`):", self.schema);
        let history = store.history_of(id).await?;
        println!("   history of run `{id}`:");
        for h in &history {
            println!("     #{} {}: {} ({})", h.seq, h.actor, h.action, h.detail);
        }
        // Usually one; more if a worker that took the run over lost it too (it stalled).
        let taken: Vec<String> = takeovers(&history).into_iter().map(|(w, _)| w).collect();
        if taken.is_empty() || taken.contains(&kill.worker) {
            return Err(format!(
                "the history of run `{id}` shows no takeover by another worker than {}",
                kill.worker
            )
            .into());
        }
        let taker = taken.join(" then ");
        let taker = taker.as_str();
        let mut steps = store.steps_of(id).await?;
        steps.sort_by_key(|s| s.updated_ms);
        let before: BTreeMap<&str, &StepRecord> = kill
            .steps
            .iter()
            .map(|s| (s.key.node.as_str(), s))
            .collect();
        // A step's record keeps its failed attempts (a success is the commit itself).
        println!("   steps, in the order they were committed, and which worker did what:");
        let mut table = String::new();
        for s in &steps {
            let old = before.get(s.key.node.as_str());
            let by = if old.is_some_and(|o| o.outcome.is_some()) {
                format!("{} (before it was killed)", kill.worker)
            } else {
                taker.to_owned()
            };
            let outcome = match &s.outcome {
                Some(StepOutcome::Completed(_)) => format!("committed by {by}"),
                Some(StepOutcome::Failed(_)) => format!("failed for good on {by}"),
                None => "not finished".to_owned(),
            };
            let seen: BTreeSet<u32> = old
                .map(|o| o.attempts.iter().map(|a| a.number).collect())
                .unwrap_or_default();
            let failed: Vec<String> = s
                .attempts
                .iter()
                .filter(|a| a.failure.is_some())
                .map(|a| {
                    let on = if seen.contains(&a.number) {
                        kill.worker.as_str()
                    } else {
                        taker
                    };
                    format!("attempt {} on {on}", a.number)
                })
                .collect();
            let failed = if failed.is_empty() {
                String::new()
            } else {
                format!("; failed before: {}", failed.join(", "))
            };
            let _ = writeln!(table, "     {:<14} {outcome}{failed}", s.key.node);
        }
        print!("{table}");

        // The side effects: the node processes themselves.
        let launched: Vec<cluster::Detached> = steps
            .iter()
            .find(|s| s.key.node == "launch_nodes")
            .and_then(|s| match &s.outcome {
                Some(StepOutcome::Completed(bytes)) => serde_json::from_slice(bytes).ok(),
                _ => None,
            })
            .ok_or("launch_nodes has no committed output")?;
        let recorded: BTreeSet<u32> = launched.iter().map(|n| n.pid).collect();
        let seen = lock(&self.nodes_seen).clone();
        let running = node_pids(&self.dir);
        say!("what happened, from the operating system:");
        println!(
            "   node processes that ever ran for this cluster: {} (pids {:?}); launch_nodes \
             recorded pids {:?}",
            seen.len(),
            seen,
            recorded
        );
        if seen != recorded {
            return Err(format!(
                "node processes {:?} ran but are not the ones launch_nodes recorded: a node was \
                 launched twice",
                seen.difference(&recorded).collect::<Vec<_>>()
            )
            .into());
        }
        if !running.is_empty() {
            return Err(format!("node processes {running:?} are still running").into());
        }
        println!(
            "   so no node was launched twice: {taker} found the nodes {} launched, by the \
             ports and pids committed with launch_nodes, and stopped them; none is running now",
            kill.worker
        );
        Ok(taker.to_owned())
    }

    /// Kills and reaps every worker, kills any node process of the cluster still running,
    /// removes the scratch directory, and drops the schema it created (unless `--keep`).
    async fn cleanup(&mut self) {
        for w in self.workers.iter_mut().filter(|w| !w.gone) {
            let _ = w.child.start_kill();
            let _ = w.child.wait().await;
            w.gone = true;
        }
        if let Some(watch) = self.node_watch.take() {
            watch.abort();
        }
        let left = node_pids(&self.dir);
        if !left.is_empty() {
            eprintln!("killing node processes left running: {left:?}");
            for pid in &left {
                let _ = std::process::Command::new("kill")
                    .arg("-9")
                    .arg(pid.to_string())
                    .stderr(Stdio::null())
                    .status();
            }
            let deadline = Instant::now() + Duration::from_secs(2);
            while !node_pids(&self.dir).is_empty() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        for w in &mut self.workers {
            for r in w.readers.drain(..) {
                r.abort();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // Its connections first, so that nothing holds the schema.
        self.store = None;
        let store_url = format!("{}?schema={}", self.url, self.schema);
        if self.keep || !self.created_schema {
            say!(
                "schema `{}` kept{}. Look at the run with flowctl:",
                self.schema,
                if self.keep {
                    " (--keep)"
                } else {
                    ": it existed before"
                }
            );
            println!("   cargo run -p flowctl -- --store '{store_url}' list");
            println!(
                "   cargo run -p flowctl -- --store '{store_url}' serve     # the web view: \
                 open the URL it prints"
            );
        } else {
            match drop_schema(&self.url, &self.schema).await {
                Ok(()) => say!(
                    "schema `{}` dropped (run with --keep to look at the run with flowctl)",
                    self.schema
                ),
                Err(e) => eprintln!("could not drop schema `{}`: {e}", self.schema),
            }
        }
    }
}

async fn the_run(store: &PgStore, id: &str) -> Result<RunRecord, BoxError> {
    Ok(store
        .get_run(id)
        .await?
        .ok_or_else(|| format!("run `{id}` is not in the store"))?)
}

/// `cluster-42`, or the next free id when the schema holds that run already (a schema kept
/// from an earlier run of the example).
async fn free_run_id(store: &PgStore) -> Result<String, BoxError> {
    for n in 42.. {
        let id = format!("cluster-{n}");
        if store.get_run(&id).await?.is_none() {
            return Ok(id);
        }
    }
    Err("no free run id".into())
}

/// The workers that took the run over, as its history says: (worker, detail).
fn takeovers(history: &[flow::store::HistoryRecord]) -> Vec<(String, String)> {
    history
        .iter()
        .filter(|h| h.action == "takeover")
        .map(|h| {
            let worker = h.actor.strip_prefix("worker ").unwrap_or(&h.actor);
            (worker.to_owned(), h.detail.clone())
        })
        .collect()
}

/// The node processes of the cluster in `dir` running now: their command line names `dir`
/// (`--shared DIR`).
fn node_pids(dir: &Path) -> BTreeSet<u32> {
    let dir = dir.as_os_str().as_encoded_bytes();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return BTreeSet::new();
    };
    procs
        .filter_map(Result::ok)
        .filter_map(|p| {
            let pid: u32 = p.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(p.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            let node = args.contains(&b"--node".as_slice());
            let ours = args.windows(2).any(|w| w[0] == b"--shared" && w[1] == dir);
            (node && ours).then_some(pid)
        })
        .collect()
}

/// A plain connection to the server (the store has no "drop my schema").
async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn schema_exists(url: &str, schema: &str) -> Result<bool, tokio_postgres::Error> {
    let client = connect(url).await?;
    let row = client
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
        .await?;
    Ok(row.is_some())
}

async fn drop_schema(url: &str, schema: &str) -> Result<(), tokio_postgres::Error> {
    let client = connect(url).await?;
    // The name was accepted by the store (lowercase letters, digits, `_`); quoted anyway.
    client
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            schema.replace('"', "\"\"")
        ))
        .await
}
