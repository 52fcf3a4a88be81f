//! `flowctl`: manage the durable runs of `flow` kept in a store, without the workflows' code.
//!
//! ```text
//! flowctl --store PATH list [--workflow NAME] [--status STATUS] [--since AGE] [--limit N]
//! flowctl --store PATH show RUN
//! flowctl --store PATH graph RUN
//! flowctl --store PATH cancel RUN
//! flowctl --store PATH signal RUN NAME JSON
//! flowctl --store PATH restart RUN --from STEP
//! flowctl --store PATH serve [--port N] [--bind ADDR] [--token T]
//! ```
//!
//! - `list`: runs, oldest first, filtered by workflow, status (`pending`, `running`,
//!   `compensating`, `completed`, `failed`, `cancelled`) and age (`--since 30m`: created in the
//!   last 30 minutes; units `s`, `m`, `h`, `d`).
//! - `show`: a run (status, times, input, output or error as JSON) and every step it
//!   recorded, in the order they changed, with its attempts (times and failures) and output.
//! - `graph`: the run's workflow as a Mermaid flowchart, each node marked done, failed,
//!   running or not reached (the graph is the one the run was started with, saved in the
//!   store by the runtime).
//! - `cancel`: asks the process running the run to cancel it (it does within half a second,
//!   and undoes the completed steps); a run no process runs is cancelled when a worker
//!   resumes it.
//! - `signal RUN NAME JSON`: sends signal `NAME` with the value `JSON` to the run (a manual
//!   judgment: `flowctl --store runs.db signal deploy-42 approve '"ada"'`); the run takes it
//!   when it waits for it, whichever process runs it, or when it is resumed.
//! - `restart --from STEP`: the run will run again from step `STEP` (its key, as `flowctl
//!   show` prints it, or its name) when a worker resumes it (`Runtime::resume`): the records
//!   of that step and of every step after it in the graph are deleted, the steps before keep
//!   their recorded outputs. Refused for a step that is not in the workflow's graph.
//! - `serve`: the web view of the store (the `flow-web` crate) on `http://127.0.0.1:8089`
//!   (`--port`, `--bind`): runs, graphs lit by each run's state, live updates, and the actions
//!   above, which need the token printed at start (or given with `--token`).
//!
//! `cancel`, `signal` and `restart` are recorded in the run's history (actor `flowctl`), as
//! the web view's actions are (actor `web <client address>`). `PATH` is a SQLite file
//! or a PostgreSQL URL such as `postgres://postgres@127.0.0.1:5432/test?schema=flow`
//! ([`open_store`] opens it).
//!
//! Resuming runs needs their code: it is what a service does at start-up with
//! `Runtime::resume`, not `flowctl`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use flow_runtime::store::{RunFilter, RunRecord, RunStatus, StepOutcome, StepRecord, Store};
pub use flow_web::graph::StoredGraph;
use flow_web::ops;
pub use flow_web::utc;

/// What `flowctl` prints for `--help`.
pub const USAGE: &str = "usage:
  flowctl --store PATH list [--workflow NAME] [--status STATUS] [--since AGE] [--limit N]
  flowctl --store PATH show RUN
  flowctl --store PATH graph RUN
  flowctl --store PATH cancel RUN
  flowctl --store PATH signal RUN NAME JSON
  flowctl --store PATH restart RUN --from STEP
  flowctl --store PATH serve [--port N] [--bind ADDR] [--token T]";

/// The port `serve` listens on when none is given.
pub const DEFAULT_PORT: u16 = 8089;

/// Who `flowctl`'s actions are recorded as in a run's history.
pub const ACTOR: &str = "flowctl";

/// A command, parsed from the arguments after `--store PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `list`.
    List {
        /// Only this workflow.
        workflow: Option<String>,
        /// Only this status.
        status: Option<RunStatus>,
        /// Only runs created within this age.
        since: Option<Duration>,
        /// At most this many.
        limit: usize,
    },
    /// `show RUN`.
    Show(String),
    /// `graph RUN`.
    Graph(String),
    /// `cancel RUN`.
    Cancel(String),
    /// `signal RUN NAME JSON`.
    Signal {
        /// The run.
        run: String,
        /// The signal's name.
        name: String,
        /// Its value, as JSON.
        value: String,
    },
    /// `restart RUN --from STEP`.
    Restart {
        /// The run.
        run: String,
        /// The step to run again from.
        from: String,
    },
    /// `serve [--port N] [--bind ADDR] [--token T]`: the web view.
    Serve {
        /// The address to listen on (127.0.0.1 unless told otherwise).
        bind: IpAddr,
        /// The port (0: any free one).
        port: u16,
        /// The token actions need; a new random one when not given.
        token: Option<String>,
    },
}

/// Parses `flowctl`'s arguments (without the program name): the store's path and the
/// command, or a message for the user.
pub fn parse(args: &[String]) -> Result<(String, Command), String> {
    let mut store = None;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--store" => store = Some(it.next().ok_or("--store needs a path")?.clone()),
            "-h" | "--help" => return Err(USAGE.to_owned()),
            _ => match a.strip_prefix("--store=") {
                Some(p) => store = Some(p.to_owned()),
                None => rest.push(a.clone()),
            },
        }
    }
    let store = store.ok_or_else(|| format!("--store PATH is required\n{USAGE}"))?;
    let mut rest = rest.into_iter();
    let cmd = rest
        .next()
        .ok_or_else(|| format!("a command is required\n{USAGE}"))?;
    let one = |rest: &mut std::vec::IntoIter<String>, what: &str| {
        rest.next()
            .ok_or_else(|| format!("`{what}` needs a run id\n{USAGE}"))
    };
    let command = match cmd.as_str() {
        "list" => {
            let (mut workflow, mut status, mut since, mut limit) = (None, None, None, 100);
            while let Some(flag) = rest.next() {
                let value = rest.next().ok_or_else(|| format!("{flag} needs a value"))?;
                match flag.as_str() {
                    "--workflow" => workflow = Some(value),
                    "--status" => {
                        status = Some(RunStatus::parse(&value).ok_or_else(|| {
                            format!(
                                "unknown status {value:?} (one of pending, running, compensating, completed, failed, cancelled)"
                            )
                        })?)
                    }
                    "--since" => since = Some(parse_age(&value)?),
                    "--limit" => {
                        limit = value
                            .parse()
                            .map_err(|_| format!("--limit must be a number, not {value:?}"))?
                    }
                    other => return Err(format!("unknown option {other:?} of `list`\n{USAGE}")),
                }
            }
            Command::List {
                workflow,
                status,
                since,
                limit,
            }
        }
        "show" => Command::Show(one(&mut rest, "show")?),
        "graph" => Command::Graph(one(&mut rest, "graph")?),
        "cancel" => Command::Cancel(one(&mut rest, "cancel")?),
        "signal" => {
            let run = one(&mut rest, "signal")?;
            match (rest.next(), rest.next()) {
                (Some(name), Some(value)) => Command::Signal { run, name, value },
                _ => {
                    return Err(format!(
                        "`signal` needs a run, a name and a JSON value\n{USAGE}"
                    ));
                }
            }
        }
        "restart" => {
            let run = one(&mut rest, "restart")?;
            match (rest.next().as_deref(), rest.next()) {
                (Some("--from"), Some(from)) => Command::Restart { run, from },
                _ => return Err(format!("`restart` needs `--from STEP`\n{USAGE}")),
            }
        }
        "serve" => {
            let (mut bind, mut port, mut token) =
                (IpAddr::from([127, 0, 0, 1]), DEFAULT_PORT, None);
            while let Some(flag) = rest.next() {
                let value = rest.next().ok_or_else(|| format!("{flag} needs a value"))?;
                match flag.as_str() {
                    "--port" => {
                        port = value
                            .parse()
                            .map_err(|_| format!("--port must be a port number, not {value:?}"))?
                    }
                    "--bind" => bind = value.parse().map_err(|_| {
                        format!(
                            "--bind must be an IP address (127.0.0.1, 0.0.0.0, ::1), not {value:?}"
                        )
                    })?,
                    "--token" if value.is_empty() => {
                        return Err("--token must not be empty".to_owned());
                    }
                    "--token" => token = Some(value),
                    other => return Err(format!("unknown option {other:?} of `serve`\n{USAGE}")),
                }
            }
            Command::Serve { bind, port, token }
        }
        other => return Err(format!("unknown command {other:?}\n{USAGE}")),
    };
    if let Some(extra) = rest.next() {
        return Err(format!("unexpected argument {extra:?}\n{USAGE}"));
    }
    Ok((store, command))
}

/// `30s`, `10m`, `2h`, `7d`.
fn parse_age(s: &str) -> Result<Duration, String> {
    let bad = || format!("an age is a number and a unit (s, m, h, d), as `30m`; not {s:?}");
    let unit = s.chars().last().ok_or_else(bad)?;
    let n: u64 = s[..s.len() - unit.len_utf8()].parse().map_err(|_| bad())?;
    let secs = match unit {
        's' => n,
        'm' => n * 60,
        'h' => n * 3600,
        'd' => n * 86_400,
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs(secs))
}

fn text(bytes: Option<&[u8]>) -> String {
    match bytes {
        Some(b) => String::from_utf8_lossy(b).into_owned(),
        None => "-".to_owned(),
    }
}

fn step_label(s: &StepRecord) -> String {
    flow_web::graph::step_label(s)
}

async fn the_run(store: &dyn Store, id: &str) -> Result<RunRecord, String> {
    ops::the_run(store, id).await.map_err(|e| e.to_string())
}

/// Opens the store `spec` names: a SQLite file's path (it must exist), or a PostgreSQL URL
/// (`postgres://user@host:5432/database`, with `?schema=NAME` for a store kept in schema
/// `NAME`). The one place that knows the kinds of stores.
pub async fn open_store(spec: &str) -> Result<Arc<dyn Store>, String> {
    if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
        // `?schema=NAME` picks the store's schema (the runs of one deployment); the rest of
        // the URL is the server's.
        let (url, schema) = split_schema(spec);
        let options = flow_store_postgres::Options {
            schema,
            retry_for: std::time::Duration::from_secs(5),
            ..flow_store_postgres::Options::default()
        };
        return flow_store_postgres::PgStore::connect_with(&url, options)
            .await
            .map(|s| Arc::new(s) as Arc<dyn Store>)
            .map_err(|e| format!("cannot open the store {url}: {e}"));
    }
    if !std::path::Path::new(spec).exists() {
        return Err(format!("no store at {spec}"));
    }
    flow_store_sqlite::SqliteStore::open(spec)
        .map(|s| Arc::new(s) as Arc<dyn Store>)
        .map_err(|e| format!("cannot open the store {spec}: {e}"))
}

/// Takes `schema=NAME` out of a PostgreSQL URL's query: (the URL without it, NAME).
fn split_schema(spec: &str) -> (String, Option<String>) {
    let Some((base, query)) = spec.split_once('?') else {
        return (spec.to_owned(), None);
    };
    let mut schema = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|kv| match kv.strip_prefix("schema=") {
            Some(name) => {
                schema = Some(name.to_owned());
                false
            }
            None => !kv.is_empty(),
        })
        .collect();
    if rest.is_empty() {
        (base.to_owned(), schema)
    } else {
        (format!("{base}?{}", rest.join("&")), schema)
    }
}

/// `serve`: the web view of `store` on `bind:port` until the process ends. Prints the URL
/// (with the token in its fragment, which the browser keeps and never sends) and the token.
pub async fn serve(
    store: Arc<dyn Store>,
    bind: IpAddr,
    port: u16,
    token: Option<String>,
) -> Result<(), String> {
    let token = token.unwrap_or_else(flow_web::new_token);
    let listener = tokio::net::TcpListener::bind((bind, port))
        .await
        .map_err(|e| format!("cannot listen on {bind}:{port}: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot listen on {bind}:{port}: {e}"))?;
    if !bind.is_loopback() {
        eprintln!(
            "flowctl: listening on {bind}, not only this machine: whoever reaches it sees every run (actions need the token)"
        );
    }
    println!("flowctl: web view at http://{addr}/#token={token}");
    println!("flowctl: actions (cancel, resume, restart, signal) need the token {token}");
    let app = flow_web::router(store, flow_web::Options::with_token(token));
    flow_web::serve(listener, app)
        .await
        .map_err(|e| format!("the web view stopped: {e}"))
}

/// Runs `command` on `store`; returns what to print.
pub async fn execute(store: &dyn Store, command: Command) -> Result<String, String> {
    let mut out = String::new();
    match command {
        Command::List {
            workflow,
            status,
            since,
            limit,
        } => {
            let created_after = since.map(|d| {
                flow_runtime::store::now_ms()
                    .saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            });
            let page = store
                .list_runs(RunFilter {
                    workflow,
                    status,
                    created_after,
                    limit: limit.max(1),
                    ..RunFilter::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            let _ = writeln!(
                out,
                "{:<38} {:<20} {:<13} {:<23} {:<23}",
                "RUN", "WORKFLOW", "STATUS", "CREATED (UTC)", "UPDATED (UTC)"
            );
            for r in &page.runs {
                let _ = writeln!(
                    out,
                    "{:<38} {:<20} {:<13} {:<23} {:<23}",
                    r.id,
                    r.workflow,
                    r.status.as_str(),
                    utc(r.created_ms),
                    utc(r.updated_ms)
                );
            }
            if page.next.is_some() {
                let _ = writeln!(out, "(more: raise --limit)");
            }
        }
        Command::Show(id) => {
            let r = the_run(store, &id).await?;
            let _ = writeln!(out, "run          {}", r.id);
            let _ = writeln!(
                out,
                "workflow     {} (fingerprint {:016x})",
                r.workflow, r.fingerprint
            );
            let _ = writeln!(out, "status       {}", r.status);
            let _ = writeln!(out, "created      {} UTC", utc(r.created_ms));
            let _ = writeln!(out, "updated      {} UTC", utc(r.updated_ms));
            let _ = writeln!(out, "input        {}", text(Some(&r.input)));
            let _ = writeln!(out, "output       {}", text(r.output.as_deref()));
            let _ = writeln!(out, "error        {}", text(r.error.as_deref()));
            let mut steps = store.steps_of(&id).await.map_err(|e| e.to_string())?;
            steps.sort_by_key(|s| s.updated_ms);
            let _ = writeln!(
                out,
                "steps        {} (in the order they changed)",
                steps.len()
            );
            for s in &steps {
                let (state, value) = match &s.outcome {
                    Some(StepOutcome::Completed(v)) => ("completed", text(Some(v))),
                    Some(StepOutcome::Failed(f)) => ("failed", f.clone()),
                    None => ("running", String::new()),
                };
                let _ = writeln!(
                    out,
                    "  {:<28} {:<9} {} UTC  {value}",
                    step_label(s),
                    state,
                    utc(s.updated_ms)
                );
                for a in &s.attempts {
                    let end = a.ended_ms.map_or_else(|| "-".to_owned(), utc);
                    let _ = writeln!(
                        out,
                        "      attempt {} started {} ended {}{}",
                        a.number,
                        utc(a.started_ms),
                        end,
                        a.failure
                            .as_deref()
                            .map_or_else(String::new, |f| format!(": {f}"))
                    );
                }
                if let Some(w) = s.retry.wake_at_ms
                    && s.outcome.is_none()
                {
                    let _ = writeln!(out, "      next attempt due {} UTC", utc(w));
                }
            }
        }
        Command::Graph(id) => {
            let r = the_run(store, &id).await?;
            let graph = stored_graph(store, &r).await?;
            let steps = store.steps_of(&id).await.map_err(|e| e.to_string())?;
            out.push_str(&marked_mermaid(&graph, &r, &steps));
        }
        Command::Cancel(id) => {
            let msg = ops::cancel(store, &id, ACTOR)
                .await
                .map_err(|e| e.to_string())?;
            let _ = writeln!(out, "{msg}");
        }
        Command::Signal { run, name, value } => {
            let msg = ops::signal(store, &run, &name, &value, ACTOR)
                .await
                .map_err(|e| e.to_string())?;
            let _ = writeln!(out, "{msg}");
        }
        Command::Restart { run, from } => {
            let msg = ops::restart(store, &run, &from, ACTOR)
                .await
                .map_err(|e| e.to_string())?;
            let _ = writeln!(out, "{msg}");
        }
        Command::Serve { .. } => {
            return Err("`serve` runs until stopped: call `flowctl::serve`".to_owned());
        }
    }
    Ok(out)
}

async fn stored_graph(store: &dyn Store, r: &RunRecord) -> Result<StoredGraph, String> {
    ops::stored_graph(store, r).await.map_err(|e| e.to_string())
}

/// The run's graph in Mermaid, each node marked by what the run did there.
pub fn marked_mermaid(graph: &StoredGraph, run: &RunRecord, steps: &[StepRecord]) -> String {
    let mut by_key: BTreeMap<&str, &'static str> = BTreeMap::new();
    for s in steps {
        if s.key.node.ends_with("~undo") {
            continue;
        }
        let state = match &s.outcome {
            None => "running",
            Some(StepOutcome::Failed(_)) => "failed",
            Some(StepOutcome::Completed(_)) => "done",
        };
        let slot = by_key.entry(&s.key.node).or_insert(state);
        // Running beats failed beats done (a loop's later iteration, a map's other items).
        let rank = |s: &str| match s {
            "running" => 3,
            "failed" => 2,
            _ => 1,
        };
        if rank(state) > rank(slot) {
            *slot = state;
        }
    }
    let mut state: Vec<&str> = graph
        .keys
        .iter()
        .enumerate()
        .map(|(i, k)| match graph.kinds[i].as_str() {
            "start" => "done",
            "end" if run.status.is_finished() => {
                if run.status == RunStatus::Completed {
                    "done"
                } else {
                    "failed"
                }
            }
            _ => by_key.get(k.as_str()).copied().unwrap_or("notreached"),
        })
        .collect();
    // A group is as far as its members got.
    for g in (0..state.len()).rev() {
        let members: Vec<&str> = (0..graph.parents.len())
            .filter(|&c| graph.parents[c] == Some(g))
            .map(|c| state[c])
            .collect();
        if state[g] == "notreached" && !members.is_empty() {
            state[g] = if members.contains(&"running") {
                "running"
            } else if members.contains(&"failed") {
                "failed"
            } else if members.contains(&"done") {
                "done"
            } else {
                "notreached"
            };
        }
    }
    let mut out = format!("%% run {} ({})\n", run.id, run.status);
    out.push_str(&graph.mermaid);
    out.push_str(
        "    classDef done fill:#c8e6c9,stroke:#2e7d32
    classDef failed fill:#ffcdd2,stroke:#c62828
    classDef running fill:#fff59d,stroke:#f9a825,stroke-width:3px
    classDef notreached fill:#fafafa,stroke:#bdbdbd,color:#9e9e9e,stroke-dasharray:3 3
",
    );
    for class in ["done", "failed", "running", "notreached"] {
        let ids: Vec<String> = (0..state.len())
            .filter(|&i| state[i] == class)
            .map(|i| format!("n{i}"))
            .collect();
        if !ids.is_empty() {
            let _ = writeln!(out, "    class {} {class}", ids.join(","));
        }
    }
    out
}
