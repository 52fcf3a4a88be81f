//! Durable runs: every step's outcome is committed to a [`Store`] before the next step starts,
//! and a run whose process died resumes where it stopped.
//!
//! A workflow is made durable where it is defined (`#[workflow(durable)]`), which asks, at
//! compile time, that its input, output, error and every step's output be storable (serde's
//! `Serialize` and `Deserialize`; values are stored as JSON). Its runs are durable when it is
//! started on a runtime that has a store ([`Runtime::with_store`] and [`Runtime::start`]);
//! run without one, a durable workflow runs as any other.
//!
//! What a durable run does, step by step:
//!
//! - the run is created in the store (id, workflow name, fingerprints, input) before its first
//!   step; starting a run whose id exists returns that run and never runs it twice;
//! - each step is identified by its node's stable key, its occurrence (the n-th time that node
//!   runs in the run, for loops) and its `map` item: a step whose outcome is recorded is not
//!   executed again, its recorded output (or failure) is handed to the workflow instead; any
//!   other step runs, and its outcome is committed before the workflow goes on;
//! - a failed attempt that will be retried records the attempt and the retry state (counters
//!   and the wake-up time of the backoff), so a resumed run waits only what is left;
//! - each undo that ran is committed, so a run killed while compensating runs only the undos
//!   that had not run yet;
//! - the run's final status and its output or error are committed last.
//!
//! A resumed `#[workflow]` body is re-entered from the top: the steps it reaches are answered
//! from the store in the same order as before, so its own code (which must therefore be
//! deterministic between steps) rebuilds the same state. If it reaches a step that has no
//! record while recorded steps remain unreached outside any parallel group, the code changed
//! in a way the record cannot follow, and the run stops with [`DurableError::Diverged`].

use core::future::Future;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::ctx::{Ctx, StepOutput, current_item, lock};
use crate::error::{Attempt, Error, ErrorKind, Failure, GaveUp, StepError};
use crate::graph::{Graph, NodeId};
use crate::policy::StepPolicy;
use crate::store::{
    AttemptRecord, DurableError, RetryState, RunRecord, RunStatus, StepCommit, StepKey,
    StepOutcome, StepProgress, StepRecord, Store, StoreError,
};
use crate::workflow::Workflow;

/// A value a durable run can store: serde's `Serialize` and `Deserialize`, sent between
/// threads. Implemented for every such type.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be stored by a durable run",
    label = "stored by a durable run",
    note = "a durable workflow's input, output, error and every step's output are stored as JSON: derive `serde::Serialize` and `serde::Deserialize` for `{Self}`"
)]
pub trait Stored: Serialize + DeserializeOwned + Send + 'static {}

impl<T: Serialize + DeserializeOwned + Send + 'static> Stored for T {}

/// A workflow whose runs can be durable: its input, output, error and steps' outputs are
/// [`Stored`], and its steps commit their outcomes when the run has a store.
///
/// Implemented by `#[workflow(durable)]` and `flow! { name = "..", durable; .. }`; not meant to be implemented by hand (a hand-written
/// workflow would have to route its steps through the store itself).
pub trait DurableWorkflow:
    Workflow<Input: Stored, Output: Stored, Error: Stored> + Send + Sync + 'static
{
}

/// Declared durable by its macro (`#[workflow(durable)]`, `flow! { durable; .. }`): such a
/// workflow is a [`DurableWorkflow`] when its values are [`Stored`]. (The macros check that
/// where `durable` is written, with a message naming each value; a blanket impl keeps
/// rustc's own list of serde's implementors out of the way.)
#[doc(hidden)]
pub trait DeclaredDurable {}

impl<W> DurableWorkflow for W where
    W: DeclaredDurable
        + Workflow<Input: Stored, Output: Stored, Error: Stored>
        + Send
        + Sync
        + 'static
{
}

impl<In, Out, E, S, F> DeclaredDurable
    for crate::workflow::Flow<In, Out, E, S, F, crate::workflow::Durable>
{
}

/// The committed steps of `steps` that belong to the journal with key prefix `prefix` (not
/// undos, not the steps of a child workflow run inside one of them): what a replay must reach.
fn own_unreached(steps: &[StepRecord], prefix: &str) -> HashSet<StepKey> {
    steps
        .iter()
        .filter(|s| {
            s.outcome.is_some()
                && !is_undo(&s.key.node)
                && s.key
                    .node
                    .strip_prefix(prefix)
                    .is_some_and(|rest| !rest.contains('/'))
        })
        .map(|s| s.key.clone())
        .collect()
}

/// The steps (node key, occurrence, item) of the journal with key prefix `prefix` that ran a
/// durable child workflow recorded in `steps`, each with the latest attempt that ran one.
fn children_of(steps: &[StepRecord], prefix: &str) -> HashMap<(String, u32, Option<u32>), u32> {
    let mut out: HashMap<(String, u32, Option<u32>), u32> = HashMap::new();
    for s in steps {
        let Some((head, _)) = s
            .key
            .node
            .strip_prefix(prefix)
            .and_then(|rest| rest.split_once('/'))
        else {
            continue;
        };
        let Some(parsed) = parse_child_prefix(head) else {
            continue;
        };
        let (node, occurrence, item, attempt) = parsed;
        let latest = out.entry((node.to_owned(), occurrence, item)).or_insert(0);
        *latest = (*latest).max(attempt);
    }
    out
}

/// `node@occurrence[item].attempt` (the `[item]` only in a `map`), as written by
/// [`Journal::child`].
fn parse_child_prefix(head: &str) -> Option<(&str, u32, Option<u32>, u32)> {
    let (node, tail) = head.split_once('@')?;
    let (at, attempt) = tail.rsplit_once('.')?;
    let attempt = attempt.parse().ok()?;
    let (occurrence, item) = match at.split_once('[') {
        Some((o, i)) => (o.parse().ok()?, Some(i.strip_suffix(']')?.parse().ok()?)),
        None => (at.parse().ok()?, None),
    };
    Some((node, occurrence, item, attempt))
}

/// The node key of the run's own step that a step record belongs to: its own node key, or,
/// for a step of a durable child workflow, the key of the step that ran it. A child's steps
/// are recorded in its parent's run under `<step key>@<occurrence>[<item>].<attempt>/` (nested
/// children add theirs).
///
/// ```
/// use flow_runtime::durable::top_node;
/// assert_eq!(top_node("launch"), "launch");
/// assert_eq!(top_node("assemble@1.2/check_part"), "assemble");
/// assert_eq!(top_node("probe@0[3].1/fetch@0.1/read"), "probe");
/// ```
pub fn top_node(key: &str) -> &str {
    match key.split_once('/') {
        Some((parent, _)) => parent.split_once('@').map_or(parent, |(node, _)| node),
        None => key,
    }
}

/// The record of one durable run, shared by its context: what the store holds of it, and what
/// this process has replayed so far.
pub(crate) struct Journal {
    pub(crate) store: Arc<dyn Store>,
    /// The run's id in the store.
    pub(crate) run: Arc<str>,
    graph: &'static Graph,
    /// Empty for the run's own workflow. For a durable child workflow run inside one of its
    /// steps, the parent step's key and attempt (`provision@0.1/`, nested children adding
    /// theirs): prepended to the node keys of the child's steps.
    prefix: String,
    /// The store's records of the run's steps when it was (re)started, by key.
    recorded: Mutex<HashMap<StepKey, StepRecord>>,
    /// Committed records not reached yet by the resumed body.
    unreached: Mutex<HashSet<StepKey>>,
    /// The steps of this journal that ran a durable child workflow with records: (node key,
    /// occurrence, item) to the latest attempt that ran it.
    children: HashMap<(String, u32, Option<u32>), u32>,
    /// How many times each (node, item) was reached in this run.
    occurrences: Mutex<HashMap<(u32, Option<u32>), u32>>,
    /// Steps executing now (not answered from the store).
    in_flight: Arc<core::sync::atomic::AtomicU32>,
    /// The `in_flight` counters of the journals this child journal runs inside (outermost
    /// first; empty for a run's own): a child's backoff parks the run only if each of them
    /// has nothing in flight but the step running the child.
    enclosing: Vec<Arc<core::sync::atomic::AtomicU32>>,
    /// Why the run must stop (the store failed, the code diverged from the record): shared
    /// with the journals of its child workflows, whose faults stop the whole run.
    fault: Arc<Mutex<Option<DurableError>>>,
    /// The run was cancelled while replaying: no new step starts, the replay goes on.
    cancel: Arc<core::sync::atomic::AtomicBool>,
    /// The durable clock: the store's time (ms since the Unix epoch) at `anchor`, advanced by
    /// tokio's clock (so that a paused test clock moves it too).
    anchor: (u64, Instant),
    /// Called with the wake-up time (ms since the Unix epoch) when the run's only step in
    /// flight starts waiting for a backoff whose retry state is committed: a worker parks the
    /// run (stops it and gives it back to the queue, due then).
    pub(crate) park: Arc<std::sync::OnceLock<JournalPark>>,
}

/// A journal's park hook: told the wake-up time (ms since the Unix epoch).
pub(crate) type JournalPark = Box<dyn Fn(u64) + Send + Sync>;

impl Journal {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        run: &str,
        graph: &'static Graph,
        steps: Vec<StepRecord>,
    ) -> Self {
        let unreached = own_unreached(&steps, "");
        let children = children_of(&steps, "");
        Journal {
            store,
            run: Arc::from(run),
            graph,
            prefix: String::new(),
            children,
            recorded: Mutex::new(steps.into_iter().map(|s| (s.key.clone(), s)).collect()),
            unreached: Mutex::new(unreached),
            occurrences: Mutex::new(HashMap::new()),
            in_flight: Arc::new(core::sync::atomic::AtomicU32::new(0)),
            enclosing: Vec::new(),
            fault: Arc::new(Mutex::new(None)),
            cancel: Arc::new(core::sync::atomic::AtomicBool::new(false)),
            anchor: (crate::store::now_ms(), Instant::now()),
            park: Arc::new(std::sync::OnceLock::new()),
        }
    }

    /// The journal of a durable child workflow (`graph`) run by attempt `attempt` of the
    /// latest execution of `node` in `item`: the same run and store, its steps keyed under
    /// that step's key and attempt (a retried parent step runs its child afresh; a resumed
    /// one replays the child's record). Its faults and cancellation are the run's.
    pub(crate) fn child(
        &self,
        node: NodeId,
        item: Option<u32>,
        attempt: u32,
        graph: &'static Graph,
    ) -> Journal {
        let mut prefix = format!(
            "{}{}@{}",
            self.prefix,
            self.graph.key_of(node),
            self.last_occurrence(node, item)
        );
        if let Some(item) = item {
            prefix.push_str(&format!("[{item}]"));
        }
        prefix.push_str(&format!(".{attempt}/"));
        let steps: Vec<StepRecord> = lock(&self.recorded)
            .values()
            .filter(|s| s.key.node.starts_with(&prefix))
            .cloned()
            .collect();
        let unreached = own_unreached(&steps, &prefix);
        let children = children_of(&steps, &prefix);
        Journal {
            children,
            store: Arc::clone(&self.store),
            run: Arc::clone(&self.run),
            graph,
            recorded: Mutex::new(steps.into_iter().map(|s| (s.key.clone(), s)).collect()),
            prefix,
            unreached: Mutex::new(unreached),
            occurrences: Mutex::new(HashMap::new()),
            in_flight: Arc::new(core::sync::atomic::AtomicU32::new(0)),
            enclosing: {
                let mut enclosing = self.enclosing.clone();
                enclosing.push(Arc::clone(&self.in_flight));
                enclosing
            },
            fault: Arc::clone(&self.fault),
            cancel: Arc::clone(&self.cancel),
            anchor: self.anchor,
            // The run's: a child's backoff parks the whole run.
            park: Arc::clone(&self.park),
        }
    }

    /// The instant `at` (earlier than now), on the durable clock.
    pub(crate) fn ms_at(&self, at: Instant) -> u64 {
        let ago = u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.now_ms().saturating_sub(ago)
    }

    /// Now, on the durable clock (ms since the Unix epoch).
    pub(crate) fn now_ms(&self) -> u64 {
        let since = Instant::now().saturating_duration_since(self.anchor.1);
        self.anchor
            .0
            .saturating_add(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }

    /// The key of the next execution of `node` (in the current `map` item).
    pub(crate) fn next_key(&self, node: NodeId, item: Option<u32>) -> StepKey {
        let occurrence = {
            let mut occ = lock(&self.occurrences);
            let n = occ.entry((node.0, item)).or_insert(0);
            let this = *n;
            *n = n.saturating_add(1);
            this
        };
        StepKey {
            run: self.run.to_string(),
            node: format!("{}{}", self.prefix, self.graph.key_of(node)),
            occurrence,
            item,
        }
    }

    /// The occurrence of the latest execution of `node` in `item` (0 if it never ran).
    pub(crate) fn last_occurrence(&self, node: NodeId, item: Option<u32>) -> u32 {
        lock(&self.occurrences)
            .get(&(node.0, item))
            .map_or(0, |n| n.saturating_sub(1))
    }

    /// The idempotency key of the latest execution of `node` in `item`: stable across
    /// attempts and restarts.
    pub(crate) fn idempotency_key(&self, node: NodeId, item: Option<u32>) -> String {
        let mut key = format!(
            "flow:{}:{}{}@{}",
            self.run,
            self.prefix,
            self.graph.key_of(node),
            self.last_occurrence(node, item)
        );
        if let Some(item) = item {
            key.push_str(&format!("[{item}]"));
        }
        key
    }

    fn record(&self, key: &StepKey) -> Option<StepRecord> {
        let record = lock(&self.recorded).get(key).cloned();
        if record.as_ref().is_some_and(|r| r.outcome.is_some()) {
            lock(&self.unreached).remove(key);
        }
        record
    }

    /// A step with no record is about to run: if the run is at a sequential point (the node
    /// is in no parallel group or map, and no other step is executing) every committed step
    /// must have been reached by now. (Branches and loops are sequential: a body that takes
    /// another arm than the record did is caught here.)
    fn check_fresh(&self, node: NodeId, key: &StepKey) -> Result<(), DurableError> {
        // Inside a parallel group or a map, other branches may reach their recorded steps
        // later: no order to check against.
        let mut concurrent = false;
        let mut at = self.graph.node(node).and_then(|n| n.parent);
        while let Some(p) = at.and_then(|p| self.graph.node(NodeId(p))) {
            if matches!(
                p.kind,
                crate::graph::NodeKind::Parallel | crate::graph::NodeKind::Map
            ) {
                concurrent = true;
                break;
            }
            at = p.parent;
        }
        if concurrent
            || key.item.is_some()
            || self.in_flight.load(core::sync::atomic::Ordering::Acquire) != 0
        {
            return Ok(());
        }
        let unreached = lock(&self.unreached);
        let Some(expected) = unreached.iter().min_by(|a, b| {
            let at = |k: &StepKey| lock(&self.recorded).get(k).map_or(0, |r| r.updated_ms);
            at(a).cmp(&at(b)).then_with(|| a.cmp(b))
        }) else {
            return Ok(());
        };
        Err(DurableError::Diverged {
            run: self.run.to_string(),
            expected: step_name(expected),
            reached: step_name(key),
        })
    }

    /// Records that step `key` waits until `wake_at_ms` (a sleep's end, a signal wait's
    /// deadline), so that a resumed run waits only what is left. `false` if the store
    /// failed: the fault is set, and the run must stop.
    async fn record_wait(&self, key: &StepKey, wake_at_ms: u64) -> bool {
        let progress = StepProgress {
            key: key.clone(),
            attempt: None,
            retry: RetryState {
                counters: Vec::new(),
                wake_at_ms: Some(wake_at_ms),
            },
        };
        match self.store.save_progress(progress).await {
            Ok(()) => true,
            Err(error) => {
                self.set_fault(DurableError::Store {
                    run: self.run.to_string(),
                    step: Some(step_name(key)),
                    error,
                });
                false
            }
        }
    }

    /// The run waits until `wake_at_ms` in a backoff whose state is committed: if nothing
    /// else of it is in flight, its worker may park it. In a durable child workflow, "nothing
    /// else" holds in every enclosing journal too (each has only the step running the
    /// child in flight).
    pub(crate) fn waiting(&self, wake_at_ms: u64) {
        let alone =
            |n: &core::sync::atomic::AtomicU32| n.load(core::sync::atomic::Ordering::Acquire) <= 1;
        if alone(&self.in_flight)
            && self.enclosing.iter().all(|n| alone(n))
            && !self.has_fault()
            && let Some(park) = self.park.get()
        {
            park(wake_at_ms);
        }
    }

    /// The run is cancelled: whether the cancellation must wait for the replay of recorded
    /// steps to finish (so the undos they register are all there). Until then no new step
    /// starts.
    pub(crate) fn defer_cancel(&self) -> bool {
        self.cancel
            .store(true, core::sync::atomic::Ordering::Release);
        !lock(&self.unreached).is_empty()
    }

    fn cancelling(&self) -> bool {
        self.cancel.load(core::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn set_fault(&self, fault: DurableError) {
        let mut slot = lock(&self.fault);
        if slot.is_none() {
            *slot = Some(fault);
        }
    }

    /// The run's fault, left for the journal of the run's own workflow to take.
    pub(crate) fn peek_fault(&self) -> Option<DurableError> {
        lock(&self.fault).clone()
    }

    /// The latest attempt of step `key` (of this journal) that ran a durable child workflow
    /// with records, if one did.
    fn child_attempt(&self, key: &StepKey) -> Option<u32> {
        if self.children.is_empty() {
            return None;
        }
        let node = key.node.strip_prefix(&self.prefix)?;
        self.children
            .get(&(node.to_owned(), key.occurrence, key.item))
            .copied()
    }

    /// Whether this is the journal of a child workflow run inside one of the run's steps.
    pub(crate) fn is_child(&self) -> bool {
        !self.prefix.is_empty()
    }

    pub(crate) fn take_fault(&self) -> Option<DurableError> {
        lock(&self.fault).take()
    }

    pub(crate) fn has_fault(&self) -> bool {
        lock(&self.fault).is_some()
    }

    /// Whether the undo of step `key` ran to the end before (in an earlier process).
    pub(crate) fn undo_done(&self, key: &StepKey) -> bool {
        lock(&self.recorded)
            .get(key)
            .is_some_and(|r| r.outcome.is_some())
    }

    /// The key under which the undo of (`node`, `occurrence`, `item`) is recorded.
    pub(crate) fn undo_key(&self, node: NodeId, occurrence: u32, item: Option<u32>) -> StepKey {
        StepKey {
            run: self.run.to_string(),
            node: format!("{}{}{UNDO_SUFFIX}", self.prefix, self.graph.key_of(node)),
            occurrence,
            item,
        }
    }
}

impl Journal {
    /// Commits that the undo `key` ran (`failure`: how it failed, if it did). A store failure
    /// is kept as the run's fault; the other undos still run.
    pub(crate) async fn commit_undo(&self, key: StepKey, attempts: u32, failure: Option<String>) {
        let now = self.now_ms();
        let outcome = match &failure {
            None => StepOutcome::Completed(b"null".to_vec()),
            Some(f) => StepOutcome::Failed(f.clone()),
        };
        let commit = StepCommit {
            key: key.clone(),
            outcome,
            attempts: vec![AttemptRecord {
                number: attempts.max(1),
                started_ms: now,
                ended_ms: Some(now),
                failure,
            }],
            compensations: Vec::new(),
        };
        if let Err(error) = self.store.commit_step(commit).await {
            self.set_fault(DurableError::Store {
                run: self.run.to_string(),
                step: Some(step_name(&key)),
                error,
            });
        }
    }
}

/// Undo records are stored as steps whose node key ends with this.
pub(crate) const UNDO_SUFFIX: &str = "~undo";

fn is_undo(node: &str) -> bool {
    node.ends_with(UNDO_SUFFIX)
}

fn step_name(key: &StepKey) -> String {
    let mut s = format!("{}@{}", key.node, key.occurrence);
    if let Some(item) = key.item {
        s.push_str(&format!("[{item}]"));
    }
    s
}

/// Marks a step as executing (not answered from the store) while it lives.
struct InFlight<'a>(&'a Journal);

impl<'a> InFlight<'a> {
    fn new(j: &'a Journal) -> Self {
        j.in_flight
            .fetch_add(1, core::sync::atomic::Ordering::AcqRel);
        InFlight(j)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, core::sync::atomic::Ordering::AcqRel);
    }
}

/// A step's failure as stored (the step's JSON record).
#[derive(Serialize, Deserialize)]
struct StoredStepError<E> {
    /// How many attempts ran.
    attempts: u32,
    /// `not_retried`, `retries_exhausted` or `budget_exhausted`.
    gave_up: String,
    /// The final failure.
    failure: StoredFailure<E>,
    /// The failure as a person reads it.
    message: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StoredFailure<E> {
    Error(E),
    TimedOut { ms: u64 },
    Panicked(String),
    Signal(String),
}

impl<'a, E> StoredFailure<&'a E> {
    fn of(f: &'a Failure<E>) -> Self {
        match f {
            Failure::Error(e) => StoredFailure::Error(e),
            Failure::TimedOut(d) => StoredFailure::TimedOut {
                ms: u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            },
            Failure::Panicked(m) => StoredFailure::Panicked(m.clone()),
            Failure::Signal(s) => StoredFailure::Signal(s.to_string()),
        }
    }
}

impl<E> StoredFailure<E> {
    fn into_failure(self) -> Failure<E> {
        match self {
            StoredFailure::Error(e) => Failure::Error(e),
            StoredFailure::TimedOut { ms } => {
                Failure::TimedOut(core::time::Duration::from_millis(ms))
            }
            StoredFailure::Panicked(m) => Failure::Panicked(m),
            // The signal's details are not kept: its message is.
            StoredFailure::Signal(m) => Failure::Panicked(format!("signal: {m}")),
        }
    }
}

fn gave_up_name(g: GaveUp) -> &'static str {
    match g {
        GaveUp::NotRetried => "not_retried",
        GaveUp::RetriesExhausted => "retries_exhausted",
        GaveUp::BudgetExhausted => "budget_exhausted",
    }
}

fn gave_up_parse(s: &str) -> GaveUp {
    match s {
        "retries_exhausted" => GaveUp::RetriesExhausted,
        "budget_exhausted" => GaveUp::BudgetExhausted,
        _ => GaveUp::NotRetried,
    }
}

/// A run's error as stored (the run's `error` column).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StoredRunError<E> {
    Step {
        step: String,
        #[serde(flatten)]
        error: StoredStepError<E>,
    },
    Workflow {
        error: E,
        message: String,
    },
    Cancelled {
        step: Option<String>,
    },
    TimedOut {
        limit_ms: u64,
        step: Option<String>,
    },
    Panicked {
        step: Option<String>,
        message: String,
    },
    Durable {
        message: String,
    },
}

fn encode<T: Serialize>(value: &T, what: &str) -> Result<Vec<u8>, DurableError> {
    serde_json::to_vec(value).map_err(|e| DurableError::Encode {
        what: what.to_owned(),
        error: e.to_string(),
    })
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, DurableError> {
    serde_json::from_slice(bytes).map_err(|e| DurableError::Corrupt {
        what: what.to_owned(),
        error: e.to_string(),
    })
}

/// What [`Ctx::durable_begin`] found.
pub(crate) enum Begin<T, E> {
    /// Not a durable run: run the step as usual.
    Plain,
    /// Answered from the store.
    Done(Result<T, StepError<E>>),
    /// Completed by a durable child workflow at this attempt: run again, its child replays
    /// its record (every step answered from the store), so that the child's undos are
    /// registered again in this run; nothing is committed.
    Replay(StepKey, u32),
    /// Run it, under this key, resuming from this progress (if an earlier process began it).
    Run(StepKey, Option<Box<StepRecord>>),
    /// The run must stop (the journal says why).
    Stop,
    /// The run is being cancelled: do not start the step.
    Hold,
}

impl<E> Ctx<E> {
    /// This run's journal, if it is durable.
    #[inline]
    pub(crate) fn journal(&self) -> Option<&Arc<Journal>> {
        self.inner.cold_if().and_then(|c| c.journal.get())
    }
}

impl<E: Stored> Ctx<E> {
    /// Looks the next execution of `node` up in the store.
    ///
    /// `replay`: the step may have run a durable child workflow (a step, not a sleep or a
    /// signal wait), which is then run again to replay the child ([`Begin::Replay`]).
    fn durable_begin<T: Stored>(&self, node: NodeId, replay: bool) -> Begin<T, E> {
        let Some(j) = self.journal() else {
            return Begin::Plain;
        };
        let key = j.next_key(node, current_item());
        let record = j.record(&key);
        match record.as_ref().and_then(|r| r.outcome.as_ref()) {
            Some(StepOutcome::Completed(bytes)) => {
                if replay && let Some(attempt) = j.child_attempt(&key) {
                    return Begin::Replay(key, attempt);
                }
                match decode::<T>(bytes, &format!("the output of step {key}")) {
                    Ok(v) => return Begin::Done(Ok(v)),
                    Err(e) => j.set_fault(e),
                }
            }
            Some(StepOutcome::Failed(text)) => {
                match decode::<StoredStepError<E>>(text.as_bytes(), &format!("step {key}")) {
                    Ok(s) => {
                        let attempt = Attempt {
                            number: s.attempts.max(1),
                            elapsed: None,
                            failure: s.failure.into_failure(),
                        };
                        return Begin::Done(Err(StepError::new(
                            self.inner.graph.name_of(node),
                            node,
                            gave_up_parse(&s.gave_up),
                            vec![attempt],
                        )));
                    }
                    Err(e) => j.set_fault(e),
                }
            }
            None => {
                if j.cancelling() {
                    // Cancelled while replaying: this step does not start; the run ends as
                    // cancelled once the other branches have replayed their records.
                    return Begin::Hold;
                }
                if let Err(e) = j.check_fresh(node, &key) {
                    j.set_fault(e);
                }
            }
        }
        if j.has_fault() {
            return Begin::Stop;
        }
        Begin::Run(key, record.map(Box::new))
    }

    /// Commits the outcome of a step that ran; a store failure stops the run.
    ///
    /// `last` is the number and start of the step's last attempt, recorded with its end and
    /// failure (if any) beside the attempts recorded as they failed; a first attempt that
    /// succeeded is not (the step's commit tells it).
    async fn durable_commit<T: Stored>(
        &self,
        key: StepKey,
        result: Result<T, StepError<E>>,
        last: (u32, Instant),
    ) -> Result<T, StepError<E>> {
        let Some(j) = self.journal() else {
            return result;
        };
        if j.has_fault() {
            // A child workflow run by this step stopped the run (its store failed, its code
            // diverged): its error is not this step's outcome.
            return self.stop_run().await;
        }
        let now = j.now_ms();
        let encoded = match &result {
            Ok(v) => encode(v, &format!("the output of step {key}")).map(StepOutcome::Completed),
            Err(e) => {
                let stored = StoredStepError {
                    attempts: e.attempt_count(),
                    gave_up: gave_up_name(e.gave_up()).to_owned(),
                    failure: StoredFailure::of(e.failure()),
                    message: e.message(self.inner.describe),
                };
                encode(&stored, &format!("the failure of step {key}"))
                    .map(|b| StepOutcome::Failed(String::from_utf8_lossy(&b).into_owned()))
            }
        };
        let outcome = match encoded {
            Ok(o) => o,
            Err(e) => {
                j.set_fault(e);
                return self.stop_run().await;
            }
        };
        // The last attempt, unless it is a first attempt that succeeded: that one is the
        // commit itself (a row more a step cost a quarter of PostgreSQL's throughput).
        let attempts = if result.is_ok() && last.0 <= 1 {
            Vec::new()
        } else {
            vec![AttemptRecord {
                number: last.0,
                started_ms: j.ms_at(last.1),
                ended_ms: Some(now),
                failure: result
                    .as_ref()
                    .err()
                    .map(|e| e.message(self.inner.describe)),
            }]
        };
        let commit = StepCommit {
            key: key.clone(),
            outcome,
            attempts,
            compensations: Vec::new(),
        };
        match j.store.commit_step(commit).await {
            Ok(_) => result,
            Err(error) => {
                j.set_fault(DurableError::Store {
                    run: j.run.to_string(),
                    step: Some(step_name(&key)),
                    error,
                });
                self.stop_run().await
            }
        }
    }

    /// Ends the run at its next poll (the journal holds why) and never returns.
    fn stop_run<T>(&self) -> impl Future<Output = T> + use<T, E> {
        self.abort_run();
        core::future::pending()
    }

    /// Runs `step` (a plain step's future, not started yet) durably: answered from the store
    /// when recorded (`step` is then dropped unpolled), committed to it when run.
    async fn durably<T: Stored>(
        &self,
        node: NodeId,
        step: impl Future<Output = Result<T, StepError<E>>>,
    ) -> Result<T, StepError<E>> {
        match self.durable_begin(node, true) {
            Begin::Plain | Begin::Replay(..) => step.await,
            Begin::Done(r) => r,
            Begin::Stop => self.stop_run().await,
            Begin::Hold => core::future::pending().await,
            Begin::Run(key, _) => {
                let start = Instant::now();
                let r = {
                    let _busy = self.journal().map(|j| InFlight::new(j));
                    step.await
                };
                self.durable_commit(key, r, (1, start)).await
            }
        }
    }

    /// [`step`](Ctx::step) in a durable workflow: answered from the store when recorded,
    /// committed to it when run.
    pub async fn durable_step<Fut>(
        &self,
        node: NodeId,
        fut: Fut,
    ) -> Result<<Fut::Output as StepOutput<E>>::Ok, StepError<E>>
    where
        Fut: Future,
        Fut::Output: StepOutput<E>,
        <Fut::Output as StepOutput<E>>::Ok: Stored,
    {
        self.durably(node, self.step(node, fut)).await
    }

    /// [`step_timeout`](Ctx::step_timeout) in a durable workflow.
    pub async fn durable_step_timeout<Fut>(
        &self,
        node: NodeId,
        timeout: core::time::Duration,
        fut: Fut,
    ) -> Result<<Fut::Output as StepOutput<E>>::Ok, StepError<E>>
    where
        Fut: Future,
        Fut::Output: StepOutput<E>,
        <Fut::Output as StepOutput<E>>::Ok: Stored,
    {
        self.durably(node, self.step_timeout(node, timeout, fut))
            .await
    }

    /// [`step_with`](Ctx::step_with) in a durable workflow: also records each failed attempt
    /// and the retry state, so that a resumed run goes on with the same attempt count and
    /// waits only what is left of a backoff.
    pub async fn durable_step_with<Fut, M>(
        &self,
        node: NodeId,
        policy: StepPolicy<'_, E>,
        make: M,
    ) -> Result<<Fut::Output as StepOutput<E>>::Ok, StepError<E>>
    where
        M: FnMut() -> Fut,
        Fut: Future,
        Fut::Output: StepOutput<E>,
        <Fut::Output as StepOutput<E>>::Ok: Stored,
    {
        match self.durable_begin(node, true) {
            Begin::Plain => self.step_with(node, policy, make).await,
            Begin::Done(r) => r,
            // The attempt that completed, again: its child replays.
            Begin::Replay(key, attempt) => {
                let last = Mutex::new(None);
                let resume = self.journal().map(|j| Resume {
                    journal: j,
                    key: &key,
                    from: Some((attempt.saturating_sub(1), RetryState::default())),
                    last: &last,
                });
                self.step_with_resume(node, policy, make, resume).await
            }
            Begin::Stop => self.stop_run().await,
            Begin::Hold => core::future::pending().await,
            Begin::Run(key, record) => {
                let last = Mutex::new(None);
                let r = {
                    let _busy = self.journal().map(|j| InFlight::new(j));
                    let resume = self.journal().map(|j| Resume {
                        journal: j,
                        key: &key,
                        from: record.as_ref().map(|r| {
                            let done = r.attempts.iter().map(|a| a.number).max().unwrap_or(0);
                            (done, r.retry.clone())
                        }),
                        last: &last,
                    });
                    self.step_with_resume(node, policy, make, resume).await
                };
                let last = lock(&last).unwrap_or((1, Instant::now()));
                self.durable_commit(key, r, last).await
            }
        }
    }

    /// [`catch`](Ctx::catch) in a durable workflow: the recovery step is recorded as a step
    /// of its own node.
    pub async fn durable_catch<T, Fut>(
        &self,
        result: Result<T, StepError<E>>,
        catches: impl FnOnce(&StepError<E>) -> bool,
        recovery: NodeId,
        recover: impl FnOnce(StepError<E>) -> Fut,
    ) -> Result<T, StepError<E>>
    where
        Fut: Future,
        Fut::Output: StepOutput<E, Ok = T>,
        T: Stored,
    {
        match result {
            Err(e) if catches(&e) => {
                self.durable_step(recovery, async move { recover(e).await })
                    .await
            }
            other => other,
        }
    }
}

impl<E: Stored> Ctx<E> {
    /// A `flow::sleep(duration)` of a `#[workflow(durable)]` body as node `node`: the
    /// wake-up time is recorded when the wait starts (a resumed run waits only what is
    /// left), the end is committed as the step's outcome (a replay does not wait again), and
    /// while it waits a worker may park the run.
    pub async fn durable_sleep(&self, node: NodeId, duration: core::time::Duration) {
        let (key, record) = match self.durable_begin::<()>(node, false) {
            Begin::Plain => return self.sleep_step(node, duration).await,
            Begin::Done(_) | Begin::Replay(..) => return,
            Begin::Stop => {
                let _: Result<(), StepError<E>> = self.stop_run().await;
                return;
            }
            Begin::Hold => return core::future::pending().await,
            Begin::Run(key, record) => (key, record),
        };
        let Some(j) = self.journal() else {
            return self.sleep_step(node, duration).await;
        };
        let wake = match record.and_then(|r| r.retry.wake_at_ms) {
            Some(wake) => wake,
            None => {
                let wake = j.now_ms().saturating_add(duration_ms(duration));
                if !j.record_wait(&key, wake).await {
                    let _: Result<(), StepError<E>> = self.stop_run().await;
                    return;
                }
                wake
            }
        };
        let start = Instant::now();
        let waited = {
            let _busy = InFlight::new(j);
            let left = core::time::Duration::from_millis(wake.saturating_sub(j.now_ms()));
            if !left.is_zero() {
                j.waiting(wake);
            }
            self.step(node, async move { tokio::time::sleep(left).await })
                .await
        };
        let _: Result<(), StepError<E>> = self.durable_commit(key, waited, (1, start)).await;
    }
}

/// How often a durable signal wait first looks for its signal in the store: the interval
/// doubles after each look, up to [`SIGNAL_POLL_MAX`], so a run that waits long (an approval)
/// costs one statement every few seconds, and a signal sent soon after the wait starts is
/// taken soon.
pub const SIGNAL_POLL: core::time::Duration = core::time::Duration::from_millis(100);

/// The longest interval between two looks of a durable signal wait.
pub const SIGNAL_POLL_MAX: core::time::Duration = core::time::Duration::from_secs(2);

impl<E: Stored + Send> Ctx<E> {
    /// [`signal`](Ctx::signal) in a durable workflow: the signal is taken from the store
    /// (sent there by [`Runtime::signal_durable`] or `flowctl signal`, from any process, also
    /// while no process runs the run) and recorded as this step's output in the same
    /// transaction; a resumed run gets the recorded value. The wait's time limit is recorded
    /// when the wait starts, so a restart does not extend it.
    pub async fn durable_signal<T: Stored>(
        &self,
        node: NodeId,
        name: &'static str,
        timeout: Option<core::time::Duration>,
    ) -> Result<T, StepError<E>> {
        let (key, record) = match self.durable_begin::<T>(node, false) {
            Begin::Plain => return self.signal(node, name, timeout).await,
            Begin::Done(r) => return r,
            // (`Replay` is not asked for here.)
            Begin::Stop | Begin::Replay(..) => return self.stop_run().await,
            Begin::Hold => return core::future::pending().await,
            Begin::Run(key, record) => (key, record),
        };
        let Some(j) = self.journal().cloned() else {
            return self.signal(node, name, timeout).await;
        };
        let busy = InFlight::new(&j);
        let start = Instant::now();
        let fail = |failure: Failure<E>| {
            StepError::new(
                self.inner.graph.name_of(node),
                node,
                GaveUp::NotRetried,
                vec![Attempt {
                    number: 1,
                    elapsed: None,
                    failure,
                }],
            )
        };
        let deadline = match (timeout, record.as_ref().and_then(|r| r.retry.wake_at_ms)) {
            (None, _) => None,
            (Some(_), Some(at)) => Some(at),
            (Some(limit), None) => {
                let at = j.now_ms().saturating_add(duration_ms(limit));
                if !j.record_wait(&key, at).await {
                    return self.stop_run().await;
                }
                Some(at)
            }
        };
        if self.observed() {
            self.emit(node, crate::event::EventKind::SignalWaiting { name });
        }
        let mut poll = SIGNAL_POLL;
        loop {
            match j
                .store
                .take_signal_into_step(&j.run, name, key.clone())
                .await
            {
                Ok(Some(signal)) => {
                    drop(busy);
                    return match serde_json::from_slice::<T>(&signal.payload) {
                        Ok(v) => {
                            if self.observed() {
                                self.emit(node, crate::event::EventKind::SignalReceived { name });
                            }
                            Ok(v)
                        }
                        Err(_) => Err(fail(Failure::Signal(
                            crate::signal::SignalError::WrongType {
                                name,
                                sent: "stored JSON of another shape",
                                expected: core::any::type_name::<T>(),
                            },
                        ))),
                    };
                }
                Ok(None) => {}
                Err(error) => {
                    j.set_fault(DurableError::Store {
                        run: j.run.to_string(),
                        step: Some(step_name(&key)),
                        error,
                    });
                    return self.stop_run().await;
                }
            }
            let now = j.now_ms();
            let left = match deadline {
                Some(at) if now >= at => {
                    drop(busy);
                    let limit = timeout.unwrap_or_default();
                    return self
                        .durable_commit(key, Err(fail(Failure::TimedOut(limit))), (1, start))
                        .await;
                }
                Some(at) => core::time::Duration::from_millis(at - now),
                None => poll,
            };
            tokio::time::sleep(poll.min(left)).await;
            poll = (poll * 2).min(SIGNAL_POLL_MAX);
        }
    }
}

/// Where a durable step with retries records its progress, and what it resumes from.
pub(crate) struct Resume<'a> {
    pub(crate) journal: &'a Journal,
    pub(crate) key: &'a StepKey,
    /// The attempts an earlier process ran, and the retry state it left.
    pub(crate) from: Option<(u32, RetryState)>,
    /// The number and start of the attempt running (or last run), for the step's commit.
    pub(crate) last: &'a Mutex<Option<(u32, Instant)>>,
}

impl Resume<'_> {
    /// The attempts an earlier process ran, and the retry state it left.
    pub(crate) fn from(&self) -> Option<&(u32, RetryState)> {
        self.from.as_ref()
    }

    /// Records a failed attempt that will be retried after `delay`. A store failure stops the
    /// run (at its next poll).
    pub(crate) async fn failed_attempt(
        &self,
        number: u32,
        start: Instant,
        failure: String,
        counters: &[u32],
        delay: core::time::Duration,
    ) {
        let now = self.journal.now_ms();
        let wake = now.saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
        let progress = StepProgress {
            key: self.key.clone(),
            attempt: Some(AttemptRecord {
                number,
                started_ms: self.journal.ms_at(start),
                ended_ms: Some(now),
                failure: Some(failure),
            }),
            retry: RetryState {
                counters: counters.to_vec(),
                wake_at_ms: Some(wake),
            },
        };
        match self.journal.store.save_progress(progress).await {
            Ok(()) => self.journal.waiting(wake),
            Err(error) => self.journal.set_fault(DurableError::Store {
                run: self.journal.run.to_string(),
                step: Some(step_name(self.key)),
                error,
            }),
        }
    }

    /// Attempt `number` of the step started at `start`.
    pub(crate) fn attempt_started(&self, number: u32, start: Instant) {
        *lock(self.last) = Some((number, start));
    }

    /// How long the resumed backoff still has to wait (its worker may park the run for it).
    pub(crate) fn remaining(&self, wake_at_ms: u64) -> core::time::Duration {
        let left = wake_at_ms.saturating_sub(self.journal.now_ms());
        if left > 0 {
            self.journal.waiting(wake_at_ms);
        }
        core::time::Duration::from_millis(left)
    }
}

/// Encodes a run's error for the store.
pub(crate) fn encode_run_error<E>(error: &Error<E>, describe: fn(&Failure<E>) -> String) -> Vec<u8>
where
    E: Stored + core::fmt::Display,
{
    let stored = match error.kind() {
        ErrorKind::Step(s) => StoredRunError::Step {
            step: s.step().to_owned(),
            error: StoredStepError {
                attempts: s.attempt_count(),
                gave_up: gave_up_name(s.gave_up()).to_owned(),
                failure: StoredFailure::of(s.failure()),
                message: s.message(describe),
            },
        },
        ErrorKind::Workflow(e) => StoredRunError::Workflow {
            error: e,
            message: error.to_string(),
        },
        ErrorKind::Cancelled { step } => StoredRunError::Cancelled {
            step: step.map(str::to_owned),
        },
        ErrorKind::TimedOut { limit, step } => StoredRunError::TimedOut {
            limit_ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
            step: step.map(str::to_owned),
        },
        ErrorKind::Panicked { step, message } => StoredRunError::Panicked {
            step: step.map(str::to_owned),
            message: message.clone(),
        },
        ErrorKind::Durable(d) => StoredRunError::Durable {
            message: d.to_string(),
        },
    };
    // A value that cannot be encoded is stored as its message.
    serde_json::to_vec(&stored).unwrap_or_else(|e| {
        serde_json::to_vec(&StoredRunError::<()>::Durable {
            message: format!("{error} (not encodable: {e})"),
        })
        .unwrap_or_default()
    })
}

/// Decodes a finished run's stored error.
pub(crate) fn decode_run_error<E: Stored>(
    graph: &'static Graph,
    bytes: &[u8],
) -> Result<Error<E>, DurableError> {
    let name = graph.name;
    let stored: StoredRunError<E> = decode(bytes, "the run's error")?;
    let step_of = |s: Option<String>| s.and_then(|s| static_name(graph, &s));
    let kind = match stored {
        StoredRunError::Step { step, error } => {
            let node = graph
                .steps()
                .find(|(_, n)| n.name == step)
                .map_or(NodeId::END, |(id, _)| id);
            ErrorKind::Step(StepError::new(
                graph.name_of(node),
                node,
                gave_up_parse(&error.gave_up),
                vec![Attempt {
                    number: error.attempts.max(1),
                    elapsed: None,
                    failure: error.failure.into_failure(),
                }],
            ))
        }
        StoredRunError::Workflow { error, .. } => ErrorKind::Workflow(error),
        StoredRunError::Cancelled { step } => ErrorKind::Cancelled {
            step: step_of(step),
        },
        StoredRunError::TimedOut { limit_ms, step } => ErrorKind::TimedOut {
            limit: core::time::Duration::from_millis(limit_ms),
            step: step_of(step),
        },
        StoredRunError::Panicked { step, message } => ErrorKind::Panicked {
            step: step_of(step),
            message,
        },
        StoredRunError::Durable { message } => {
            ErrorKind::Durable(Box::new(DurableError::Recorded { message }))
        }
    };
    Ok(Error::new(name, kind))
}

fn static_name(graph: &'static Graph, name: &str) -> Option<&'static str> {
    graph.nodes.iter().find(|n| n.name == name).map(|n| n.name)
}

/// Encodes a value for the store.
pub(crate) fn encode_value<T: Serialize>(value: &T, what: &str) -> Result<Vec<u8>, DurableError> {
    encode(value, what)
}

/// Decodes a stored value.
pub(crate) fn decode_value<T: DeserializeOwned>(
    bytes: &[u8],
    what: &str,
) -> Result<T, DurableError> {
    decode(bytes, what)
}

/// Whether run `record` can be resumed by a build whose workflow has graph `graph`: the
/// part of the run already done (every node with a committed step) must be unchanged.
pub fn compatibility(
    graph: &Graph,
    record: &RunRecord,
    steps: &[StepRecord],
) -> Result<(), DurableError> {
    if record.fingerprint == graph.fingerprint {
        return Ok(());
    }
    // A child workflow's steps count as done work of the step that ran them.
    let mut done: Vec<&str> = steps
        .iter()
        .filter(|s| s.outcome.is_some())
        .map(|s| top_node(s.key.node.strip_suffix(UNDO_SUFFIX).unwrap_or(&s.key.node)))
        .collect();
    done.sort_unstable();
    done.dedup();
    for key in done {
        let stored = record.node_fingerprints.get(key).copied();
        let current = graph
            .find(key)
            .and_then(|id| graph.node(id))
            .map(|n| n.fingerprint);
        if stored != current {
            return Err(DurableError::Incompatible {
                run: record.id.clone(),
                workflow: record.workflow.clone(),
                node: key.to_owned(),
                stored,
                current,
            });
        }
    }
    Ok(())
}

/// A store error while starting or resuming a run, as a [`DurableError`].
pub(crate) fn store_error(run: &str, error: StoreError) -> DurableError {
    DurableError::Store {
        run: run.to_owned(),
        step: None,
        error,
    }
}

/// The status a finished run is stored with.
pub(crate) fn final_status<E>(error: &Error<E>) -> RunStatus {
    if error.is_cancelled() {
        RunStatus::Cancelled
    } else {
        RunStatus::Failed
    }
}

// ---------------------------------------------------------------------------------------
// Starting, resuming and reading durable runs.

use std::collections::BTreeMap;

use crate::registry::{Registry, RegistryError};
use crate::runtime::{Handle, Runtime, drive};
use crate::store::{Enqueue, NewRun, Queue, RunFilter};

mod worker;

pub use worker::{EnqueueOptions, Worker, WorkerOptions, WorkerReport};

/// A duration in whole milliseconds (saturating).
fn duration_ms(d: core::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A runtime's store, and the durable runs it has in flight (by run id), each with a signal
/// that turns `true` when the run has recorded its end.
#[derive(Clone)]
pub(crate) struct Durability {
    pub(crate) store: Arc<dyn Store>,
    /// The same store as a queue, when it is one ([`Runtime::with_queue`]).
    pub(crate) queue: Option<Arc<dyn Queue>>,
    /// A worker's hook: told (run, wake-up ms) when a run can be parked for a backoff.
    pub(crate) park: Option<ParkHook>,
    active: Arc<Mutex<HashMap<String, tokio::sync::watch::Receiver<bool>>>>,
    /// The graphs this runtime has saved (or is saving) in the store, by (workflow,
    /// fingerprint): one save each, also when many runs start at once.
    graphs: Arc<Mutex<SavedGraphs>>,
}

/// The graphs a runtime has saved, or is saving, by (workflow, fingerprint).
type SavedGraphs = HashMap<(&'static str, u64), Arc<tokio::sync::OnceCell<()>>>;

/// Told (run, wake-up time in ms since the Unix epoch) when a run can be parked.
pub(crate) type ParkHook = Arc<dyn Fn(&str, u64) + Send + Sync>;

/// The signal that asks a durable run to cancel itself (`flowctl cancel`): whichever process
/// runs the run takes it within [`CANCEL_POLL`] and cancels the run (its completed steps are
/// undone); a run that no process runs is cancelled when it is resumed. Signal names that
/// start with `flow.` are reserved.
pub const CANCEL_SIGNAL: &str = "flow.cancel";

/// How often a durable run looks for [`CANCEL_SIGNAL`] in the store.
pub const CANCEL_POLL: core::time::Duration = core::time::Duration::from_millis(500);

/// The graph of a workflow as stored for tools that do not have its code (`flowctl`): JSON
/// with the workflow's name and fingerprint, every node (index, key, name, kind, group), every
/// edge, and the Mermaid picture (whose node `i` is `n<i>`).
pub fn graph_json(graph: &Graph) -> Vec<u8> {
    let kind = |k: crate::graph::NodeKind| format!("{k:?}").to_lowercase();
    let nodes: Vec<serde_json::Value> = graph
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            serde_json::json!({
                "id": i,
                "key": n.key,
                "name": n.name,
                "kind": kind(n.kind),
                "parent": n.parent,
                "fingerprint": format!("{:016x}", n.fingerprint),
            })
        })
        .collect();
    let edges: Vec<serde_json::Value> = graph
        .edges
        .iter()
        .map(|e| {
            serde_json::json!({
                "from": e.from,
                "to": e.to,
                "kind": format!("{:?}", e.kind).to_lowercase(),
                "label": e.label,
            })
        })
        .collect();
    let value = serde_json::json!({
        "workflow": graph.name,
        "fingerprint": format!("{:016x}", graph.fingerprint),
        "nodes": nodes,
        "edges": edges,
        "mermaid": graph.to_mermaid(),
    });
    serde_json::to_vec(&value).unwrap_or_default()
}

impl Durability {
    /// Saves `graph` in the store, once per runtime.
    async fn save_graph(&self, graph: &'static Graph, run: &str) -> Result<(), DurableError> {
        let key = (graph.name, graph.fingerprint);
        let once = Arc::clone(lock(&self.graphs).entry(key).or_default());
        once.get_or_try_init(|| async {
            self.store
                .save_graph(graph.name, graph.fingerprint, graph_json(graph))
                .await
                .map_err(|e| store_error(run, e))
        })
        .await?;
        Ok(())
    }
}

impl Journal {
    /// The run starts compensating: recorded, so that a later process knows.
    pub(crate) async fn compensating(&self) {
        if let Err(error) = self
            .store
            .set_status(&self.run, RunStatus::Compensating, None)
            .await
        {
            self.set_fault(store_error(&self.run, error));
        }
    }
}

/// A durable run started by [`Runtime::start`]: running here, finished before, or running
/// elsewhere (another task or process that started the same id). Await it (or call
/// [`wait`](Self::wait)) for the run's result, read back from the store when it did not run
/// here.
pub struct DurableRun<W: Workflow> {
    id: String,
    created: bool,
    state: RunState<W>,
}

enum RunState<W: Workflow> {
    Here(Handle<W>),
    Finished(Result<W::Output, Error<W::Error>>),
    Elsewhere {
        store: Arc<dyn Store>,
        graph: &'static Graph,
        done: Option<tokio::sync::watch::Receiver<bool>>,
    },
}

impl<W: Workflow> core::fmt::Debug for DurableRun<W> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let state = match &self.state {
            RunState::Here(_) => "running here",
            RunState::Finished(_) => "finished",
            RunState::Elsewhere { .. } => "running elsewhere",
        };
        f.debug_struct("DurableRun")
            .field("id", &self.id)
            .field("created", &self.created)
            .field("state", &state)
            .finish()
    }
}

impl<W: DurableWorkflow> DurableRun<W> {
    /// The run's id in the store.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether this call created the run (`false`: a run with this id existed, and this is
    /// that run: it was not started again).
    pub fn created(&self) -> bool {
        self.created
    }

    /// The run's [`Handle`] (its state, events, signals, cancellation) when it runs in this
    /// call's task.
    pub fn handle(&self) -> Option<&Handle<W>> {
        match &self.state {
            RunState::Here(h) => Some(h),
            _ => None,
        }
    }

    /// The run's result: its own when it runs here, read back from the store otherwise
    /// (waiting for the run to end).
    pub async fn wait(self) -> Result<W::Output, Error<W::Error>> {
        match self.state {
            RunState::Here(handle) => handle.await,
            RunState::Finished(result) => result,
            RunState::Elsewhere { store, graph, done } => {
                if let Some(mut done) = done {
                    let _ = done.wait_for(|d| *d).await;
                }
                loop {
                    match store.get_run(&self.id).await {
                        Ok(Some(record)) if record.status.is_finished() => {
                            return stored_result::<W>(graph, &record);
                        }
                        Ok(_) => tokio::time::sleep(core::time::Duration::from_millis(50)).await,
                        Err(error) => {
                            return Err(Error::new(
                                graph.name,
                                ErrorKind::Durable(Box::new(store_error(&self.id, error))),
                            ));
                        }
                    }
                }
            }
        }
    }
}

impl<W: DurableWorkflow> core::future::IntoFuture for DurableRun<W> {
    type Output = Result<W::Output, Error<W::Error>>;
    type IntoFuture = futures_util::future::BoxFuture<'static, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.wait())
    }
}

/// The result of a finished stored run, decoded.
fn stored_result<W: DurableWorkflow>(
    graph: &'static Graph,
    record: &RunRecord,
) -> Result<W::Output, Error<W::Error>> {
    let fail = |e: DurableError| Error::new(graph.name, ErrorKind::Durable(Box::new(e)));
    match record.status {
        RunStatus::Completed => {
            let bytes = record.output.as_deref().unwrap_or(b"null");
            decode_value(bytes, &format!("the output of run `{}`", record.id)).map_err(fail)
        }
        _ => match record.error.as_deref() {
            Some(bytes) => Err(decode_run_error(graph, bytes).unwrap_or_else(fail)),
            None => Err(Error::new(graph.name, ErrorKind::Cancelled { step: None })),
        },
    }
}

/// Each node's fingerprint, by key.
fn node_fingerprints(graph: &Graph) -> BTreeMap<String, u64> {
    graph
        .nodes
        .iter()
        .map(|n| (n.key.to_owned(), n.fingerprint))
        .collect()
}

impl Runtime {
    /// Records the durable runs of this runtime in `store` ([`start`](Self::start),
    /// [`resume`](Self::resume)). Runs started with [`run`](Self::run) or
    /// [`spawn`](Self::spawn) stay in memory, as before.
    pub fn with_store(self, store: impl Store + 'static) -> Self {
        self.with_shared_store(Arc::new(store))
    }

    /// As [`with_store`](Self::with_store), with a store shared with other runtimes or with
    /// management code.
    pub fn with_shared_store(mut self, store: Arc<dyn Store>) -> Self {
        self.durable = Some(Durability {
            store,
            queue: None,
            park: None,
            active: Arc::default(),
            graphs: Arc::default(),
        });
        self
    }

    /// As [`with_shared_store`](Self::with_shared_store), with a store that is also a
    /// [`Queue`] (PostgreSQL): runs can then be [`enqueue`](Self::enqueue)d, and executed by
    /// [`Worker`]s in any process sharing the store.
    pub fn with_queue(mut self, store: Arc<dyn Queue>) -> Self {
        self.durable = Some(Durability {
            store: Arc::clone(&store) as Arc<dyn Store>,
            queue: Some(store),
            park: None,
            active: Arc::default(),
            graphs: Arc::default(),
        });
        self
    }

    /// Enqueues a durable run of `workflow` with id `id` on a queue (see [`Enqueue`] for the
    /// options) instead of running it here: a [`Worker`] serving that queue (in this process
    /// or another) executes it. Idempotent as [`start`](Self::start) is: an id that exists
    /// returns that run. The returned run's [`wait`](DurableRun::wait) reads its result back
    /// from the store when it ends. Needs a runtime built with [`with_queue`](Self::with_queue).
    pub async fn enqueue<W>(
        &self,
        workflow: W,
        id: impl Into<String>,
        input: W::Input,
        options: EnqueueOptions,
    ) -> Result<DurableRun<W>, DurableError>
    where
        W: DurableWorkflow,
    {
        let id = id.into();
        let durability = self.durability(&id)?.clone();
        let Some(queue) = durability.queue.clone() else {
            return Err(store_error(
                &id,
                StoreError::Invalid {
                    what: "this runtime's store is not a queue: build it with \
                           `Runtime::with_queue` and a store that implements `Queue` \
                           (PostgreSQL)"
                        .to_owned(),
                },
            ));
        };
        let graph = workflow.graph();
        durability.save_graph(graph, &id).await?;
        let run = NewRun {
            id: id.clone(),
            workflow: graph.name.to_owned(),
            fingerprint: graph.fingerprint,
            node_fingerprints: node_fingerprints(graph),
            input: encode_value(&input, &format!("the input of run `{id}`"))?,
        };
        let created = queue
            .enqueue(Enqueue {
                run,
                queue: options.queue,
                priority: options.priority,
                dedup_key: options.dedup_key,
                not_before_ms: options
                    .delay
                    .map(|d| crate::store::now_ms().saturating_add(duration_ms(d))),
            })
            .await
            .map_err(|e| store_error(&id, e))?;
        let record = created.run;
        if record.workflow != graph.name {
            return Err(DurableError::WrongWorkflow {
                run: id,
                stored: record.workflow,
                asked: graph.name.to_owned(),
            });
        }
        let state = if record.status.is_finished() {
            RunState::Finished(stored_result::<W>(graph, &record))
        } else {
            RunState::Elsewhere {
                store: Arc::clone(&durability.store),
                graph,
                done: lock(&durability.active).get(&id).cloned(),
            }
        };
        Ok(DurableRun {
            id,
            created: created.created,
            state,
        })
    }

    /// The runtime's store, if it has one.
    pub fn store(&self) -> Option<&Arc<dyn Store>> {
        self.durable.as_ref().map(|d| &d.store)
    }

    fn durability(&self, run: &str) -> Result<&Durability, DurableError> {
        self.durable.as_ref().ok_or_else(|| {
            store_error(
                run,
                StoreError::Invalid {
                    what: "this runtime has no store: build it with `Runtime::with_store`"
                        .to_owned(),
                },
            )
        })
    }

    /// Starts a durable run of `workflow` with id `id` (a workflow id: the same id never runs
    /// twice) on a task of its own.
    ///
    /// The run is created in the store with its input before its first step. If the store
    /// has a run with this id already, that run is returned instead, and nothing is started:
    /// finished, with its stored result; unfinished, as a run going on elsewhere (in another
    /// task or process, or waiting for [`resume`](Self::resume) after its process died),
    /// whose result [`DurableRun::wait`] reads back when it ends. Two starts of one id that
    /// race (two tasks, two processes on one store) run it once.
    pub async fn start<W>(
        &self,
        workflow: W,
        id: impl Into<String>,
        input: W::Input,
    ) -> Result<DurableRun<W>, DurableError>
    where
        W: DurableWorkflow,
    {
        let id = id.into();
        let durability = self.durability(&id)?.clone();
        let graph = workflow.graph();
        durability.save_graph(graph, &id).await?;
        let new = NewRun {
            id: id.clone(),
            workflow: graph.name.to_owned(),
            fingerprint: graph.fingerprint,
            node_fingerprints: node_fingerprints(graph),
            input: encode_value(&input, &format!("the input of run `{id}`"))?,
        };
        let created = durability
            .store
            .create_running(new)
            .await
            .map_err(|e| store_error(&id, e))?;
        let record = created.run;
        if record.workflow != graph.name {
            return Err(DurableError::WrongWorkflow {
                run: id,
                stored: record.workflow,
                asked: graph.name.to_owned(),
            });
        }
        if created.created {
            let handle = self.launch(&durability, workflow, &record, Vec::new(), input, false);
            return Ok(DurableRun {
                id,
                created: true,
                state: RunState::Here(handle),
            });
        }
        let state = if record.status.is_finished() {
            RunState::Finished(stored_result::<W>(graph, &record))
        } else {
            RunState::Elsewhere {
                store: Arc::clone(&durability.store),
                graph,
                done: lock(&durability.active).get(&id).cloned(),
            }
        };
        Ok(DurableRun {
            id,
            created: false,
            state,
        })
    }

    /// Sends signal `name` carrying `value` to the durable run `run`, through the store: the
    /// run takes it when it waits for it (`flow::signal(name)` in a `#[workflow(durable)]`),
    /// whichever process runs it and even if none does now (it is kept until the run is
    /// resumed). Returns the signal's position among the run's signals.
    pub async fn signal_durable<T: Serialize>(
        &self,
        run: &str,
        name: &str,
        value: &T,
    ) -> Result<u64, DurableError> {
        let durability = self.durability(run)?;
        let payload = encode_value(value, &format!("signal `{name}` of run `{run}`"))?;
        durability
            .store
            .send_signal(run, name, payload)
            .await
            .map_err(|e| store_error(run, e))
    }

    /// [`start`](Self::start) with a new, globally unique id ([`store::new_run_id`]).
    ///
    /// [`store::new_run_id`]: crate::store::new_run_id
    pub async fn start_new<W: DurableWorkflow>(
        &self,
        workflow: W,
        input: W::Input,
    ) -> Result<DurableRun<W>, DurableError> {
        self.start(workflow, crate::store::new_run_id(), input)
            .await
    }

    /// The result of the finished run `id` of `workflow`, read back from the store: `None`
    /// while it has not finished.
    pub async fn result<W: DurableWorkflow>(
        &self,
        workflow: &W,
        id: &str,
    ) -> Result<Option<Result<W::Output, Error<W::Error>>>, DurableError> {
        let durability = self.durability(id)?;
        let graph = workflow.graph();
        let record = durability
            .store
            .get_run(id)
            .await
            .map_err(|e| store_error(id, e))?
            .ok_or_else(|| {
                store_error(
                    id,
                    StoreError::NotFound {
                        what: format!("run `{id}`"),
                    },
                )
            })?;
        if record.workflow != graph.name {
            return Err(DurableError::WrongWorkflow {
                run: id.to_owned(),
                stored: record.workflow,
                asked: graph.name.to_owned(),
            });
        }
        Ok(record
            .status
            .is_finished()
            .then(|| stored_result::<W>(graph, &record)))
    }

    /// Spawns the run `record` (new, or resumed with its stored `steps`).
    fn launch<W: DurableWorkflow>(
        &self,
        durability: &Durability,
        workflow: W,
        record: &RunRecord,
        steps: Vec<StepRecord>,
        input: W::Input,
        cancelled: bool,
    ) -> Handle<W> {
        let journal = Arc::new(Journal::new(
            Arc::clone(&durability.store),
            &record.id,
            workflow.graph(),
            steps,
        ));
        if let Some(park) = &durability.park {
            let park = Arc::clone(park);
            let run = record.id.clone();
            let _ = journal.park.set(Box::new(move |wake| park(&run, wake)));
        }
        let (done_tx, done_rx) = tokio::sync::watch::channel(false);
        let mut done = done_rx.clone();
        lock(&durability.active).insert(record.id.clone(), done_rx);
        let active = Arc::clone(&durability.active);
        let pending = record.status == RunStatus::Pending;
        let set = Arc::clone(&journal);
        let handle = self.spawn_with(
            workflow,
            input,
            false,
            move |ctx| {
                let _ = ctx.inner.cold().journal.set(set);
                // Cancelled while no process ran it: from its first poll (it replays first).
                if cancelled && let Some(token) = ctx.cancel_token() {
                    token.cancel();
                }
            },
            move |workflow, ctx, input| async move {
                let result = run_durable(&workflow, ctx, input, &journal, pending).await;
                lock(&active).remove(&*journal.run);
                let _ = done_tx.send(true);
                result
            },
        );
        // Cancellation asked through the store (`flowctl cancel`, another process).
        let store = Arc::clone(&durability.store);
        let token = handle.token.clone();
        let id = record.id.clone();
        // The first look is one poll interval in: a run that ends sooner costs the store
        // nothing (a resumed run's pending cancellation was taken before it started).
        tokio::spawn(async move {
            loop {
                let ended = async {
                    let _ = done.wait_for(|v| *v).await;
                };
                tokio::select! {
                    () = ended => return,
                    () = tokio::time::sleep(CANCEL_POLL) => {}
                }
                if let Ok(Some(_)) = store.take_signal(&id, CANCEL_SIGNAL).await {
                    token.cancel();
                    return;
                }
            }
        });
        handle
    }

    /// Resumes every unfinished run in the store whose workflow is in `registry` (registered
    /// with [`Registry::register_durable`]) and not already running in this runtime, each on
    /// a task of its own. Runs of workflows the registry does not know, and runs this build
    /// cannot resume (the part already done changed), are listed in the report, not skipped
    /// silently; they stay in the store as they are.
    ///
    /// Call it once at start-up, before starting new runs: a run is resumed by one process
    /// only if one process calls it. Runs enqueued on a queue ([`enqueue`](Self::enqueue))
    /// are not resumed here: the [`Worker`]s of their queue take them over under leases.
    pub async fn resume(&self, registry: &Registry) -> Result<ResumeReport, DurableError> {
        let durability = self.durability("*")?.clone();
        let checked = check(&*durability.store, registry).await?;
        let mut report = ResumeReport::default();
        for c in checked {
            let id = c.run.id.clone();
            // Queued runs are the workers' (`Worker`), under leases.
            if lock(&durability.active).contains_key(&id) || c.run.queue.is_some() {
                continue;
            }
            match c.verdict {
                Verdict::Resumable => {
                    let Some(resumer) = registry.durable.get(&c.run.workflow) else {
                        continue;
                    };
                    // A cancellation asked while no process ran it.
                    let cancelled = durability
                        .store
                        .take_signal(&id, CANCEL_SIGNAL)
                        .await
                        .map_err(|e| store_error(&id, e))?
                        .is_some();
                    match resumer.resume(self, &durability, c.run, c.steps, cancelled) {
                        Ok(run) => report.resumed.push(run),
                        Err(e) => report.failed.push(e),
                    }
                }
                Verdict::UnknownWorkflow => report.unknown.push(c.run),
                Verdict::Incompatible(e) => report.incompatible.push(e),
            }
        }
        Ok(report)
    }
}

/// Drives a durable run and records its end.
async fn run_durable<W: DurableWorkflow>(
    workflow: &W,
    ctx: Ctx<W::Error>,
    input: W::Input,
    journal: &Journal,
    pending: bool,
) -> Result<W::Output, Error<W::Error>> {
    let name = workflow.graph().name;
    if pending
        && let Err(e) = journal
            .store
            .set_status(&journal.run, RunStatus::Running, None)
            .await
    {
        return Err(Error::new(
            name,
            ErrorKind::Durable(Box::new(store_error(&journal.run, e))),
        ));
    }
    let describe = ctx.inner.describe;
    let result = drive(workflow, ctx, input, None, false).await;
    let (status, bytes) = match &result {
        // Stopped by the store or by a record the code cannot follow: left for a later
        // process.
        Err(e) if matches!(e.kind(), ErrorKind::Durable(_)) => return result,
        Ok(v) => match encode_value(v, &format!("the output of run `{}`", journal.run)) {
            Ok(b) => (RunStatus::Completed, b),
            Err(e) => return Err(Error::new(name, ErrorKind::Durable(Box::new(e)))),
        },
        Err(e) => (final_status(e), encode_run_error(e, describe)),
    };
    // The result stands even if recording it fails: every step is committed, so a resumed
    // run would come to the same result without running a step again.
    let _ = journal
        .store
        .set_status(&journal.run, status, Some(bytes))
        .await;
    result
}

/// How a build's workflows see a stored run that has not finished.
#[derive(Debug)]
pub enum Verdict {
    /// A workflow of the registry can resume it.
    Resumable,
    /// The registry has no durable workflow of this name.
    UnknownWorkflow,
    /// The workflow changed in the part the run has already done
    /// ([`DurableError::Incompatible`]).
    Incompatible(DurableError),
}

/// One unfinished run, as [`check`] classifies it.
#[derive(Debug)]
pub struct Checked {
    /// The run.
    pub run: RunRecord,
    /// Its steps as stored.
    pub steps: Vec<StepRecord>,
    /// Whether this build can resume it.
    pub verdict: Verdict,
}

/// Classifies every unfinished run in `store` against the durable workflows of `registry`:
/// resumable, of a workflow the registry does not know, or incompatible (and why). Run it
/// before deploying a build (in CI, against a copy of the production store) so that a
/// change that would strand runs fails there.
pub async fn check(store: &dyn Store, registry: &Registry) -> Result<Vec<Checked>, DurableError> {
    let runs = store
        .unfinished_runs()
        .await
        .map_err(|e| store_error("*", e))?;
    let mut out = Vec::with_capacity(runs.len());
    for run in runs {
        let steps = store
            .steps_of(&run.id)
            .await
            .map_err(|e| store_error(&run.id, e))?;
        let verdict = match registry.durable.get(&run.workflow) {
            None => Verdict::UnknownWorkflow,
            Some(r) => match compatibility(r.graph(), &run, &steps) {
                Ok(()) => Verdict::Resumable,
                Err(e) => Verdict::Incompatible(e),
            },
        };
        out.push(Checked {
            run,
            steps,
            verdict,
        });
    }
    Ok(out)
}

/// What [`Runtime::resume`] did.
#[derive(Debug, Default)]
pub struct ResumeReport {
    /// The runs resumed, each on a task of its own.
    pub resumed: Vec<ResumedRun>,
    /// Unfinished runs of workflows the registry does not know: left in the store.
    pub unknown: Vec<RunRecord>,
    /// Unfinished runs this build cannot resume: left in the store.
    pub incompatible: Vec<DurableError>,
    /// Runs that could not be resumed (their input cannot be read back, say).
    pub failed: Vec<DurableError>,
}

/// A run resumed by [`Runtime::resume`].
pub struct ResumedRun {
    /// The run's id.
    pub id: String,
    /// Its workflow.
    pub workflow: String,
    done: futures_util::future::BoxFuture<'static, RunEnd>,
    /// Stops the run's task (undoing nothing): what a worker does when its lease is lost.
    abort: tokio::task::AbortHandle,
}

impl core::fmt::Debug for ResumedRun {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ResumedRun")
            .field("id", &self.id)
            .field("workflow", &self.workflow)
            .finish_non_exhaustive()
    }
}

impl ResumedRun {
    /// Waits for the run to end: `Err` with the run's error as text if it failed (or was
    /// stopped by its store, to be resumed later).
    pub async fn wait(self) -> Result<(), String> {
        match self.done.await {
            RunEnd::Finished(result) => result,
            RunEnd::Stopped { error, .. } => Err(error),
        }
    }
}

/// How a resumed run's task ended.
pub(crate) enum RunEnd {
    /// With its result (recorded in the store, unless recording it failed).
    Finished(Result<(), String>),
    /// Stopped by its store or its record (`ErrorKind::Durable`): nothing undone, left to
    /// resume.
    Stopped {
        /// Because its lease was taken over ([`StoreError::LeaseLost`]).
        lost: bool,
        /// The error, as text.
        error: String,
    },
}

/// Resumes stored runs of one workflow (kept by a [`Registry`]).
pub(crate) trait Resumer: Send + Sync {
    fn graph(&self) -> &'static Graph;
    fn resume(
        &self,
        runtime: &Runtime,
        durability: &Durability,
        run: RunRecord,
        steps: Vec<StepRecord>,
        cancelled: bool,
    ) -> Result<ResumedRun, DurableError>;
}

struct Typed<W>(W);

impl<W: DurableWorkflow + Clone> Resumer for Typed<W> {
    fn graph(&self) -> &'static Graph {
        self.0.graph()
    }

    fn resume(
        &self,
        runtime: &Runtime,
        durability: &Durability,
        run: RunRecord,
        steps: Vec<StepRecord>,
        cancelled: bool,
    ) -> Result<ResumedRun, DurableError> {
        let input: W::Input = decode_value(&run.input, &format!("the input of run `{}`", run.id))?;
        let handle = runtime.launch(durability, self.0.clone(), &run, steps, input, cancelled);
        let abort = handle.task.abort_handle();
        Ok(ResumedRun {
            id: run.id,
            workflow: run.workflow,
            done: Box::pin(async move {
                match handle.await {
                    Ok(_) => RunEnd::Finished(Ok(())),
                    Err(e) => match e.kind() {
                        ErrorKind::Durable(d) => RunEnd::Stopped {
                            lost: matches!(
                                **d,
                                DurableError::Store {
                                    error: StoreError::LeaseLost { .. },
                                    ..
                                }
                            ),
                            error: e.to_string(),
                        },
                        _ => RunEnd::Finished(Err(e.to_string())),
                    },
                }
            }),
            abort,
        })
    }
}

impl Registry {
    /// Registers a durable workflow under its graph's name (the name its stored runs carry):
    /// [`Runtime::resume`] resumes its unfinished runs, [`check`] classifies them. Also
    /// registers it as [`register`](Registry::register) does.
    pub fn register_durable<W>(&mut self, workflow: W) -> Result<(), RegistryError>
    where
        W: DurableWorkflow + Clone,
    {
        let name = workflow.graph().name.to_owned();
        self.register(name.clone(), workflow.clone())?;
        self.durable.insert(name, Arc::new(Typed(workflow)));
        Ok(())
    }
}

/// Runs of a store, newest last, matching `filter`: a convenience over
/// [`Store::list_runs`] that reads every page.
pub async fn all_runs(
    store: &dyn Store,
    mut filter: RunFilter,
) -> Result<Vec<RunRecord>, StoreError> {
    let mut out = Vec::new();
    loop {
        let page = store.list_runs(filter.clone()).await?;
        out.extend(page.runs);
        match page.next {
            Some(next) => filter.after = Some(next),
            None => return Ok(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(node: &str, occurrence: u32, item: Option<u32>, done: bool) -> StepRecord {
        StepRecord {
            key: StepKey {
                run: "r".into(),
                node: node.into(),
                occurrence,
                item,
            },
            outcome: done.then(|| StepOutcome::Completed(b"1".to_vec())),
            attempts: Vec::new(),
            retry: RetryState::default(),
            updated_ms: 0,
        }
    }

    #[test]
    fn a_child_prefix_is_read_back_as_written() {
        assert_eq!(
            parse_child_prefix("launch@0.1"),
            Some(("launch", 0, None, 1))
        );
        assert_eq!(
            parse_child_prefix("probe#2@3[7].12"),
            Some(("probe#2", 3, Some(7), 12))
        );
        for bad in [
            "launch",
            "launch@0",
            "launch@x.1",
            "launch@0.x",
            "p@0[1.1",
            "p@0[x].1",
        ] {
            assert_eq!(parse_child_prefix(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_top_node_of_a_childs_step_is_the_step_that_ran_it() {
        assert_eq!(top_node("launch"), "launch");
        assert_eq!(top_node("a@0.1/b"), "a");
        assert_eq!(top_node("a@2[3].1/b@0.1/c"), "a");
    }

    #[test]
    fn a_journal_counts_its_own_steps_and_the_latest_attempt_of_each_child() {
        let steps = vec![
            step("a", 0, None, true),
            step("b", 0, None, false),
            step("a~undo", 0, None, true),
            step("c@0.1/x", 0, None, true),
            step("c@0.2/x", 0, None, true),
            step("c@1.1/x", 0, None, true),
            step("m@0[4].3/y", 0, Some(1), true),
            step("c@0.2/x@0.1/z", 0, None, true),
        ];
        // The run's own: committed, not undos, not a child's.
        let own: HashSet<String> = own_unreached(&steps, "")
            .into_iter()
            .map(|k| k.node)
            .collect();
        assert_eq!(own, HashSet::from(["a".to_owned()]));
        // A child's own, under its prefix (not its own children's).
        let child: HashSet<String> = own_unreached(&steps, "c@0.2/")
            .into_iter()
            .map(|k| k.node)
            .collect();
        assert_eq!(child, HashSet::from(["c@0.2/x".to_owned()]));
        // Steps that ran a child: the latest attempt of each (node, occurrence, item).
        let children = children_of(&steps, "");
        assert_eq!(children.len(), 3, "{children:?}");
        assert_eq!(children.get(&("c".to_owned(), 0, None)), Some(&2));
        assert_eq!(children.get(&("c".to_owned(), 1, None)), Some(&1));
        assert_eq!(children.get(&("m".to_owned(), 0, Some(4))), Some(&3));
        let nested = children_of(&steps, "c@0.2/");
        assert_eq!(nested.len(), 1);
        assert_eq!(nested.get(&("x".to_owned(), 0, None)), Some(&1));
    }
}
