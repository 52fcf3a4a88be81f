//! `flowctl`: manage the durable runs of `flow` kept in a store, without the workflows' code.
//!
//! ```text
//! flowctl --store PATH list [--workflow NAME] [--status STATUS] [--since AGE] [--limit N]
//! flowctl --store PATH show RUN
//! flowctl --store PATH graph RUN
//! flowctl --store PATH cancel RUN
//! flowctl --store PATH signal RUN NAME JSON
//! flowctl --store PATH restart RUN --from STEP
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
//!
//! Resuming runs needs their code: it is what a service does at start-up with
//! `Runtime::resume`, not `flowctl`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use flow_runtime::store::{RunFilter, RunRecord, RunStatus, StepOutcome, StepRecord, Store};

/// What `flowctl` prints for `--help`.
pub const USAGE: &str = "usage:
  flowctl --store PATH list [--workflow NAME] [--status STATUS] [--since AGE] [--limit N]
  flowctl --store PATH show RUN
  flowctl --store PATH graph RUN
  flowctl --store PATH cancel RUN
  flowctl --store PATH signal RUN NAME JSON
  flowctl --store PATH restart RUN --from STEP";

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

/// A time as `2026-11-29 17:30:01.123` (UTC).
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

fn text(bytes: Option<&[u8]>) -> String {
    match bytes {
        Some(b) => String::from_utf8_lossy(b).into_owned(),
        None => "-".to_owned(),
    }
}

fn step_label(s: &StepRecord) -> String {
    let mut l = format!("{}@{}", s.key.node, s.key.occurrence);
    if let Some(i) = s.key.item {
        let _ = write!(l, "[{i}]");
    }
    l
}

async fn the_run(store: &dyn Store, id: &str) -> Result<RunRecord, String> {
    store
        .get_run(id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no run `{id}` in this store"))
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
            let r = the_run(store, &id).await?;
            if r.status.is_finished() {
                return Err(format!("run `{id}` has already finished ({})", r.status));
            }
            store
                .send_signal(&id, flow_runtime::durable::CANCEL_SIGNAL, b"{}".to_vec())
                .await
                .map_err(|e| e.to_string())?;
            let _ = writeln!(
                out,
                "cancellation of run `{id}` requested: the process running it cancels it within {:?} and undoes its completed steps; if no process runs it, it is cancelled when a worker resumes it",
                flow_runtime::durable::CANCEL_POLL
            );
        }
        Command::Signal { run, name, value } => {
            let r = the_run(store, &run).await?;
            if r.status.is_finished() {
                return Err(format!("run `{run}` has already finished ({})", r.status));
            }
            if let Err(e) = serde_json::from_str::<serde_json::Value>(&value) {
                return Err(format!(
                    "the value must be JSON (a string is quoted: '\"ada\"'): {e}"
                ));
            }
            let seq = store
                .send_signal(&run, &name, value.into_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let _ = writeln!(
                out,
                "signal `{name}` sent to run `{run}` (#{seq}): it takes it when it waits for it"
            );
        }
        Command::Restart { run, from } => {
            let r = the_run(store, &run).await?;
            let graph = stored_graph(store, &r).await?;
            let nodes = graph.after(&from).map_err(|e| {
                format!(
                    "cannot restart run `{run}` of workflow `{}`: {e}",
                    r.workflow
                )
            })?;
            let steps = store.steps_of(&run).await.map_err(|e| e.to_string())?;
            let dropped: BTreeSet<&str> = steps
                .iter()
                .map(|s| s.key.node.trim_end_matches("~undo"))
                .filter(|k| nodes.contains(*k))
                .collect();
            let kept: BTreeSet<&str> = steps
                .iter()
                .map(|s| s.key.node.trim_end_matches("~undo"))
                .filter(|k| !nodes.contains(*k))
                .collect();
            store
                .reset_steps(&run, nodes.iter().cloned().collect())
                .await
                .map_err(|e| e.to_string())?;
            let list = |s: &BTreeSet<&str>| {
                if s.is_empty() {
                    "none".to_owned()
                } else {
                    s.iter().copied().collect::<Vec<_>>().join(", ")
                }
            };
            let _ = writeln!(
                out,
                "run `{run}` will run again from step `{from}` when a worker resumes it (Runtime::resume); records deleted: {}; recorded outputs kept: {}",
                list(&dropped),
                list(&kept)
            );
        }
    }
    Ok(out)
}

/// A workflow's graph as the runtime stored it (`flow::durable::graph_json`).
#[derive(Debug)]
pub struct StoredGraph {
    /// Node keys by index.
    pub keys: Vec<String>,
    /// Node names by index.
    pub names: Vec<String>,
    /// Node kinds by index (`step`, `parallel`, `map`, `branch`, `loop`, ...).
    pub kinds: Vec<String>,
    /// Each node's group, by index.
    pub parents: Vec<Option<usize>>,
    /// Edges (from, to).
    pub edges: Vec<(usize, usize)>,
    /// The Mermaid picture (node `i` is `n<i>`).
    pub mermaid: String,
}

async fn stored_graph(store: &dyn Store, r: &RunRecord) -> Result<StoredGraph, String> {
    let bytes = store
        .get_graph(&r.workflow, r.fingerprint)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "the store has no graph of workflow `{}` (fingerprint {:016x}): it is saved when a run starts",
                r.workflow, r.fingerprint
            )
        })?;
    StoredGraph::parse(&bytes)
}

impl StoredGraph {
    /// Reads the JSON the runtime stores.
    pub fn parse(bytes: &[u8]) -> Result<StoredGraph, String> {
        let v: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| format!("the stored graph is damaged: {e}"))?;
        let nodes = v["nodes"]
            .as_array()
            .ok_or("the stored graph has no nodes")?;
        let s = |n: &serde_json::Value, k: &str| n[k].as_str().unwrap_or_default().to_owned();
        let edges = v["edges"]
            .as_array()
            .map(|es| {
                es.iter()
                    .filter_map(|e| {
                        Some((
                            usize::try_from(e["from"].as_u64()?).ok()?,
                            usize::try_from(e["to"].as_u64()?).ok()?,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(StoredGraph {
            keys: nodes.iter().map(|n| s(n, "key")).collect(),
            names: nodes.iter().map(|n| s(n, "name")).collect(),
            kinds: nodes.iter().map(|n| s(n, "kind")).collect(),
            parents: nodes
                .iter()
                .map(|n| n["parent"].as_u64().and_then(|p| usize::try_from(p).ok()))
                .collect(),
            edges,
            mermaid: v["mermaid"].as_str().unwrap_or_default().to_owned(),
        })
    }

    /// The node named `step` (by key, or by name when one node has it).
    fn find(&self, step: &str) -> Result<usize, String> {
        if let Some(i) = self.keys.iter().position(|k| k == step) {
            return Ok(i);
        }
        let by_name: Vec<usize> = (0..self.names.len())
            .filter(|&i| self.names[i] == step)
            .collect();
        match by_name[..] {
            [i] => Ok(i),
            [] => Err(format!(
                "step `{step}` is not in its graph (its steps: {})",
                self.step_keys().join(", ")
            )),
            _ => Err(format!(
                "several steps are named `{step}`: give one's key ({})",
                by_name
                    .iter()
                    .map(|&i| self.keys[i].as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    fn step_keys(&self) -> Vec<&str> {
        (0..self.keys.len())
            .filter(|&i| !matches!(self.kinds[i].as_str(), "start" | "end"))
            .map(|i| self.keys[i].as_str())
            .collect()
    }

    /// The keys of step `step` and of every node after it (reachable by edges, and the
    /// members of groups reached).
    pub fn after(&self, step: &str) -> Result<BTreeSet<String>, String> {
        let start = self.find(step)?;
        if matches!(self.kinds[start].as_str(), "start" | "end") {
            return Err(format!("`{step}` is not a step"));
        }
        let mut seen = BTreeSet::from([start]);
        let mut todo = vec![start];
        while let Some(n) = todo.pop() {
            let next = self
                .edges
                .iter()
                .filter(|(f, _)| *f == n)
                .map(|(_, t)| *t)
                .chain((0..self.parents.len()).filter(|&c| self.parents[c] == Some(n)));
            for t in next.collect::<Vec<_>>() {
                if seen.insert(t) {
                    todo.push(t);
                }
            }
        }
        Ok(seen.into_iter().map(|i| self.keys[i].clone()).collect())
    }
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
