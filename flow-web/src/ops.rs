//! What an operator does to a run from outside its code: cancel, signal, restart from a
//! step, resume a failed or cancelled run. Shared by the web view and `flowctl`; each action
//! is recorded in the run's history ([`Store::record_history`]) with who did it.
//!
//! None of these runs a step: they write the store, and the process that runs the run (or
//! the worker that resumes it, `Runtime::resume`) does the rest.

use std::collections::BTreeSet;

use flow_runtime::store::{NewHistory, RunRecord, StepOutcome, Store, StoreError};

use crate::graph::{StoredGraph, UNDO_SUFFIX};
use flow_runtime::durable::top_node;

/// Why an action was refused or failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpError {
    /// The run does not exist.
    NotFound(String),
    /// The run is not in a state that allows the action (finished, or not failed).
    Conflict(String),
    /// The request is malformed (a step not in the graph, a value that is not JSON).
    Invalid(String),
    /// The store failed (busy, unreachable, damaged).
    Store(StoreError),
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpError::NotFound(m) | OpError::Conflict(m) | OpError::Invalid(m) => f.write_str(m),
            OpError::Store(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for OpError {}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { what } => OpError::NotFound(format!("not found: {what}")),
            other => OpError::Store(other),
        }
    }
}

/// Signal names that start with this are the runtime's own (`flow.cancel`).
pub const RESERVED_SIGNAL_PREFIX: &str = "flow.";

/// The run `id`, or [`OpError::NotFound`].
pub async fn the_run(store: &dyn Store, id: &str) -> Result<RunRecord, OpError> {
    store
        .get_run(id)
        .await?
        .ok_or_else(|| OpError::NotFound(format!("no run `{id}` in this store")))
}

/// The graph run `r` was started with, as the runtime saved it.
pub async fn stored_graph(store: &dyn Store, r: &RunRecord) -> Result<StoredGraph, OpError> {
    let bytes = store
        .get_graph(&r.workflow, r.fingerprint)
        .await?
        .ok_or_else(|| {
            OpError::Conflict(format!(
                "the store has no graph of workflow `{}` (fingerprint {:016x}): it is saved when a run starts",
                r.workflow, r.fingerprint
            ))
        })?;
    StoredGraph::parse(&bytes).map_err(OpError::Conflict)
}

async fn record(
    store: &dyn Store,
    run: &str,
    actor: &str,
    action: &str,
    detail: String,
) -> Result<(), OpError> {
    store
        .record_history(
            run,
            NewHistory {
                actor: actor.to_owned(),
                action: action.to_owned(),
                detail,
            },
        )
        .await?;
    Ok(())
}

/// Asks the process running run `id` to cancel it ([`flow_runtime::durable::CANCEL_SIGNAL`]):
/// it does within [`flow_runtime::durable::CANCEL_POLL`] and undoes the completed steps; a
/// run no process runs is cancelled when a worker resumes it. Refused for a finished run.
pub async fn cancel(store: &dyn Store, id: &str, actor: &str) -> Result<String, OpError> {
    let r = the_run(store, id).await?;
    if r.status.is_finished() {
        return Err(OpError::Conflict(format!(
            "run `{id}` has already finished ({})",
            r.status
        )));
    }
    store
        .send_signal(id, flow_runtime::durable::CANCEL_SIGNAL, b"null".to_vec())
        .await?;
    record(
        store,
        id,
        actor,
        "cancel",
        format!("cancellation requested (run was {})", r.status),
    )
    .await?;
    Ok(format!(
        "cancellation of run `{id}` requested: the process running it cancels it within {:?} and undoes its completed steps; if no process runs it, it is cancelled when a worker resumes it",
        flow_runtime::durable::CANCEL_POLL
    ))
}

/// Sends signal `name` with the JSON `value` to run `run`. Refused for a finished run, a
/// value that is not JSON, and a reserved name (`flow.…`: cancel has its own action).
pub async fn signal(
    store: &dyn Store,
    run: &str,
    name: &str,
    value: &str,
    actor: &str,
) -> Result<String, OpError> {
    if name.is_empty() || name.starts_with(RESERVED_SIGNAL_PREFIX) {
        return Err(OpError::Invalid(format!(
            "a signal needs a name, not empty nor starting with `{RESERVED_SIGNAL_PREFIX}` (reserved): {name:?}"
        )));
    }
    if let Err(e) = serde_json::from_str::<serde_json::Value>(value) {
        return Err(OpError::Invalid(format!(
            "the value must be JSON (a string is quoted: '\"ada\"'): {e}"
        )));
    }
    let r = the_run(store, run).await?;
    if r.status.is_finished() {
        return Err(OpError::Conflict(format!(
            "run `{run}` has already finished ({})",
            r.status
        )));
    }
    let seq = store
        .send_signal(run, name, value.as_bytes().to_vec())
        .await?;
    record(
        store,
        run,
        actor,
        "signal",
        format!("signal `{name}` = {value}"),
    )
    .await?;
    Ok(format!(
        "signal `{name}` sent to run `{run}` (#{seq}): it takes it when it waits for it"
    ))
}

fn list(s: &BTreeSet<String>) -> String {
    if s.is_empty() {
        "none".to_owned()
    } else {
        s.iter().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// Resets the records of `nodes` (and their undos) of run `r`: it runs again from there
/// when a worker resumes it. Returns (deleted, kept) node keys for the message.
async fn reset(
    store: &dyn Store,
    r: &RunRecord,
    nodes: &BTreeSet<String>,
) -> Result<(BTreeSet<String>, BTreeSet<String>), OpError> {
    let steps = store.steps_of(&r.id).await?;
    // A step of a durable child workflow (`assemble@0.1/check`) belongs to the step that ran
    // it: reset with it.
    let base = |k: &str| k.strip_suffix(UNDO_SUFFIX).unwrap_or(k).to_owned();
    let top = |k: &str| top_node(&base(k)).to_owned();
    let dropped = steps
        .iter()
        .map(|s| top(&s.key.node))
        .filter(|k| nodes.contains(k))
        .collect();
    let kept = steps
        .iter()
        .map(|s| top(&s.key.node))
        .filter(|k| !nodes.contains(k))
        .collect();
    let mut reset: BTreeSet<String> = nodes.clone();
    reset.extend(
        steps
            .iter()
            .map(|s| base(&s.key.node))
            .filter(|k| k.contains('/') && nodes.contains(top_node(k))),
    );
    store
        .reset_steps(&r.id, reset.into_iter().collect())
        .await?;
    Ok((dropped, kept))
}

/// Makes run `run` run again from step `from` (its key, or its name when one node has it)
/// when a worker resumes it: the records of that step and of every step after it in the
/// graph are deleted, the steps before keep their recorded outputs.
pub async fn restart(
    store: &dyn Store,
    run: &str,
    from: &str,
    actor: &str,
) -> Result<String, OpError> {
    let r = the_run(store, run).await?;
    let graph = stored_graph(store, &r).await?;
    let nodes = graph.after(from).map_err(|e| {
        OpError::Invalid(format!(
            "cannot restart run `{run}` of workflow `{}`: {e}",
            r.workflow
        ))
    })?;
    let (dropped, kept) = reset(store, &r, &nodes).await?;
    record(
        store,
        run,
        actor,
        "restart",
        format!(
            "from step `{from}` (run was {}); records deleted: {}",
            r.status,
            list(&dropped)
        ),
    )
    .await?;
    Ok(format!(
        "run `{run}` will run again from step `{from}` when a worker resumes it (Runtime::resume); records deleted: {}; recorded outputs kept: {}",
        list(&dropped),
        list(&kept)
    ))
}

/// Makes a failed or cancelled run `run` run again from where it stopped, when a worker
/// resumes it: the steps that failed, were cut in flight or were undone (their undo
/// completed), and every step after them, lose their records; the others keep their
/// outputs. Refused for a run that has not failed or been cancelled.
pub async fn resume(store: &dyn Store, run: &str, actor: &str) -> Result<String, OpError> {
    use flow_runtime::store::RunStatus;
    let r = the_run(store, run).await?;
    if !matches!(r.status, RunStatus::Failed | RunStatus::Cancelled) {
        return Err(OpError::Conflict(format!(
            "only a failed or cancelled run can be resumed; run `{run}` is {}",
            r.status
        )));
    }
    let graph = stored_graph(store, &r).await?;
    let steps = store.steps_of(run).await?;
    let mut from: BTreeSet<String> = BTreeSet::new();
    for s in &steps {
        match s.key.node.strip_suffix(UNDO_SUFFIX) {
            // An undo that ran: its step's effect is gone, the step must run again.
            Some(base) => {
                if matches!(s.outcome, Some(StepOutcome::Completed(_))) {
                    from.insert(top_node(base).to_owned());
                }
            }
            None => {
                if !matches!(s.outcome, Some(StepOutcome::Completed(_))) {
                    from.insert(top_node(&s.key.node).to_owned());
                }
            }
        }
    }
    for c in store.compensations_of(run).await? {
        if c.status == flow_runtime::store::CompensationStatus::Done {
            from.insert(top_node(&c.node).to_owned());
        }
    }
    let mut nodes = BTreeSet::new();
    for k in &from {
        // A node the graph no longer names is reset by itself.
        match graph.after(k) {
            Ok(after) => nodes.extend(after),
            Err(_) => {
                nodes.insert(k.clone());
            }
        }
    }
    let (dropped, kept) = reset(store, &r, &nodes).await?;
    record(
        store,
        run,
        actor,
        "resume",
        format!(
            "run was {}; runs again from {}; records deleted: {}",
            r.status,
            list(&from),
            list(&dropped)
        ),
    )
    .await?;
    Ok(format!(
        "run `{run}` will run again from {} when a worker resumes it (Runtime::resume); records deleted: {}; recorded outputs kept: {}",
        if from.is_empty() {
            "its next step".to_owned()
        } else {
            format!("step(s) {}", list(&from))
        },
        list(&dropped),
        list(&kept)
    ))
}
