//! Durable state of runs: the [`Store`] trait that every backend implements (the embedded
//! SQLite store in the `flow-store-sqlite` crate, the PostgreSQL store in
//! `flow-store-postgres`), and the records it keeps.
//!
//! This is the foundation of durable runs (a killed process resumes where it stopped): the
//! runtime records every durable run through it. Stores that several worker processes share
//! (PostgreSQL) also implement [`Queue`]: runs enqueued on named queues, claimed by workers
//! under leases, every write of a worker fenced by its lease.
//!
//! What a store keeps, all keyed by stable identities so that a resumed run finds its records
//! whatever order its steps happen to run in:
//!
//! - a **run** ([`RunRecord`]): its id (chosen by the caller, for example a workflow id that
//!   makes starting the run idempotent, or made by [`new_run_id`]), the workflow's name and
//!   fingerprint, each node's fingerprint (so a later build can tell whether it can resume the
//!   run), the input, the [`RunStatus`], the output or error, and its timestamps;
//! - a **step** ([`StepRecord`]), keyed by [`StepKey`]: (run, node key, occurrence, map item),
//!   with its final outcome, its attempts and the retry state needed to resume a backoff
//!   ([`RetryState`]: the per-rule counters and `wake_at_ms`, which also records a durable
//!   sleep);
//! - the **compensation stack** ([`CompensationRecord`]): the undos a failure would run, in
//!   `seq` order, changed by [`CompensationOp`]s in the same transaction as the step commit
//!   that causes them;
//! - **signals** ([`SignalRecord`]): messages sent to a run, taken first in, first out per
//!   name, each exactly once;
//! - the **history** ([`HistoryRecord`]): what was done to the run from outside its code
//!   (cancelled, restarted, signalled by an operator, taken over by a worker), and by whom.
//!
//! Values (inputs, outputs, undo inputs, payloads) are opaque bytes: the runtime serializes
//! them, the store never looks inside.
//!
//! Every method returns a boxed future, so that a store can be shared as `Arc<dyn Store>`.
//! Timestamps are milliseconds since the Unix epoch, taken by the store.

use std::collections::BTreeMap;
use std::fmt;

use futures_util::future::BoxFuture;

#[cfg(feature = "store-conformance")]
pub mod conformance;
mod memory;
mod queue;

pub use memory::MemoryStore;
pub use queue::{Claim, Enqueue, Lease, Queue, QueueOptions, Rate};

/// What every store method returns: a boxed future of a result.
pub type StoreFuture<'a, T> = BoxFuture<'a, Result<T, StoreError>>;

/// The seam between the runtime and a durable store of runs.
///
/// Writes are atomic: each method's changes are committed together or not at all, and a
/// method that reports `Ok` has made its changes durable (as durable as the backend is
/// configured to be). See the [module documentation](self) for the records.
pub trait Store: Send + Sync {
    /// Creates the run `new.id`, or returns the run that already has that id (never a second
    /// one, also when several tasks or processes race on the same id).
    fn create_run(&self, new: NewRun) -> StoreFuture<'_, Created>;

    /// [`create_run`](Self::create_run) for a run its caller starts at once: a run created by
    /// this call is [`Running`](RunStatus::Running) (never seen `Pending`); a run that
    /// existed is returned as it is. The runtime starts every run in place with it.
    ///
    /// The default is `create_run`, then [`set_status`](Self::set_status) to `Running` if
    /// the run was created: two writes, between which a crash leaves the run `Pending` (a
    /// restarted process resumes it all the same). A store that can do it in one write
    /// overrides it: a durable run then costs one write fewer.
    fn create_running(&self, new: NewRun) -> StoreFuture<'_, Created> {
        Box::pin(async move {
            let mut created = self.create_run(new).await?;
            if created.created {
                created.run = self
                    .set_status(&created.run.id, RunStatus::Running, None)
                    .await?;
            }
            Ok(created)
        })
    }

    /// The run `id`, if the store has it.
    fn get_run<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<RunRecord>>;

    /// Changes the status of run `id`. `result` is the output of a [`Completed`] run or the
    /// error of a [`Failed`] or [`Cancelled`] one (it must be `None` for the other statuses).
    /// A finished run's status never changes again: that is a [`StoreError::Conflict`].
    ///
    /// [`Completed`]: RunStatus::Completed
    /// [`Failed`]: RunStatus::Failed
    /// [`Cancelled`]: RunStatus::Cancelled
    fn set_status<'a>(
        &'a self,
        id: &'a str,
        status: RunStatus,
        result: Option<Vec<u8>>,
    ) -> StoreFuture<'a, RunRecord>;

    /// Every run that has not finished (pending, running or compensating), oldest first: what
    /// a restarted process resumes.
    fn unfinished_runs(&self) -> StoreFuture<'_, Vec<RunRecord>>;

    /// A page of runs matching `filter`, oldest first.
    fn list_runs(&self, filter: RunFilter) -> StoreFuture<'_, RunPage>;

    /// Records the progress of a step that has not ended: an attempt (started, or ended with
    /// a failure) and the retry state to resume from (counters, and `wake_at_ms` of a pending
    /// retry or sleep). An attempt with a number already recorded replaces it. A step that
    /// is already committed is not changed: that is a [`StoreError::Conflict`].
    fn save_progress(&self, progress: StepProgress) -> StoreFuture<'_, ()>;

    /// Commits a step's final outcome, with its attempts and its compensation changes, in one
    /// transaction. Idempotent: if the step was already committed nothing changes (the
    /// compensation changes are not applied again) and the first commit is returned with
    /// [`Committed::first`] `false`.
    fn commit_step(&self, commit: StepCommit) -> StoreFuture<'_, Committed>;

    /// The step `key`, if the store has it (committed or in progress).
    fn get_step<'a>(&'a self, key: &'a StepKey) -> StoreFuture<'a, Option<StepRecord>>;

    /// Every step of run `run`, ordered by node key, occurrence and item.
    fn steps_of<'a>(&'a self, run: &'a str) -> StoreFuture<'a, Vec<StepRecord>>;

    /// Applies compensation changes that no step commit causes (marking undos done while the
    /// run compensates, for example) in one transaction. Returns the `seq` of each pushed
    /// entry, in order.
    fn update_compensations<'a>(
        &'a self,
        run: &'a str,
        ops: Vec<CompensationOp>,
    ) -> StoreFuture<'a, Vec<u64>>;

    /// The compensation stack of run `run`, in `seq` order (the undos run in reverse).
    fn compensations_of<'a>(&'a self, run: &'a str) -> StoreFuture<'a, Vec<CompensationRecord>>;

    /// Sends signal `name` with `payload` to run `run`; returns its `seq`. The run must exist.
    fn send_signal<'a>(
        &'a self,
        run: &'a str,
        name: &'a str,
        payload: Vec<u8>,
    ) -> StoreFuture<'a, u64>;

    /// Takes the oldest signal `name` of run `run` not taken yet, if any. Each signal is
    /// taken exactly once.
    fn take_signal<'a>(
        &'a self,
        run: &'a str,
        name: &'a str,
    ) -> StoreFuture<'a, Option<SignalRecord>>;

    /// A durable signal wait: in one transaction, takes the oldest signal `name` of run `run`
    /// not taken yet and commits step `key` with its payload as the step's output, so that a
    /// signal is never taken without being recorded (nor recorded twice). Returns the signal
    /// taken; `None` (and changes nothing) when there is none, or when step `key` is committed
    /// already. A run that does not exist is [`StoreError::NotFound`].
    fn take_signal_into_step<'a>(
        &'a self,
        run: &'a str,
        name: &'a str,
        key: StepKey,
    ) -> StoreFuture<'a, Option<SignalRecord>>;

    /// Records the graph of workflow `workflow` whose fingerprint is `fingerprint` (bytes the
    /// runtime writes: JSON with the nodes, the edges and the Mermaid picture), so that tools
    /// that do not have the workflow's code (`flowctl`) can draw its runs. Saving a graph
    /// that is already saved (same workflow and fingerprint) changes nothing.
    fn save_graph<'a>(
        &'a self,
        workflow: &'a str,
        fingerprint: u64,
        graph: Vec<u8>,
    ) -> StoreFuture<'a, ()>;

    /// The graph saved for (`workflow`, `fingerprint`), if any.
    fn get_graph<'a>(
        &'a self,
        workflow: &'a str,
        fingerprint: u64,
    ) -> StoreFuture<'a, Option<Vec<u8>>>;

    /// Makes run `run` run again from some of its steps (an operator's restart): in one
    /// transaction, deletes every step record (with its attempts and retry state) whose node
    /// key is in `nodes`, for all occurrences and items, and the records of their undos
    /// (node key `<key>~undo`); deletes the run's compensation entries of those nodes; clears
    /// the run's output and error; and sets its status to `pending`, whatever it was (this
    /// is the one way a finished run changes again). Returns the run as it is then. A run
    /// that does not exist is [`StoreError::NotFound`].
    fn reset_steps<'a>(&'a self, run: &'a str, nodes: Vec<String>) -> StoreFuture<'a, RunRecord>;

    /// Appends `entry` to the history of run `run`: what was done to the run from outside
    /// its code (an operator's cancel, restart or signal from `flowctl` or the web view, a
    /// worker taking the run over), with who did it. Returns the entry's `seq` (from the
    /// run's own counter, shared with its compensation entries and signals). A run that does
    /// not exist is [`StoreError::NotFound`].
    fn record_history<'a>(&'a self, run: &'a str, entry: NewHistory) -> StoreFuture<'a, u64>;

    /// The history of run `run`, oldest first (by `seq`).
    fn history_of<'a>(&'a self, run: &'a str) -> StoreFuture<'a, Vec<HistoryRecord>>;
}

/// The status of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunStatus {
    /// Created, not started yet.
    Pending,
    /// Executing its steps.
    Running,
    /// Failed or cancelled, running its compensations.
    Compensating,
    /// Ended with an output.
    Completed,
    /// Ended with an error.
    Failed,
    /// Ended by cancellation.
    Cancelled,
}

impl RunStatus {
    /// Every status, in the order above.
    pub const ALL: [RunStatus; 6] = [
        RunStatus::Pending,
        RunStatus::Running,
        RunStatus::Compensating,
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::Cancelled,
    ];

    /// The status's name as stored: `pending`, `running`, `compensating`, `completed`,
    /// `failed` or `cancelled`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Running => "running",
            RunStatus::Compensating => "compensating",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    /// The status named `name` (as [`as_str`](Self::as_str) spells it).
    pub fn parse(name: &str) -> Option<RunStatus> {
        RunStatus::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether the run has ended (completed, failed or cancelled): its status never changes
    /// again.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled
        )
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A run to create ([`Store::create_run`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRun {
    /// The run's id, unique in the store. Choose it to make starting a run idempotent (a
    /// workflow id: creating it again returns the first run), or take one from
    /// [`new_run_id`].
    pub id: String,
    /// The workflow's name.
    pub workflow: String,
    /// The workflow's fingerprint (`Workflow::FINGERPRINT`).
    pub fingerprint: u64,
    /// Each node's fingerprint, by node key.
    pub node_fingerprints: BTreeMap<String, u64>,
    /// The input, serialized.
    pub input: Vec<u8>,
}

/// What [`Store::create_run`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Created {
    /// The run with the requested id: the new one, or the one that existed.
    pub run: RunRecord,
    /// `true` if this call created it, `false` if it existed already.
    pub created: bool,
}

/// A run as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunRecord {
    /// The run's id.
    pub id: String,
    /// The workflow's name.
    pub workflow: String,
    /// The workflow's fingerprint when the run was created.
    pub fingerprint: u64,
    /// Each node's fingerprint when the run was created, by node key.
    pub node_fingerprints: BTreeMap<String, u64>,
    /// The input, serialized.
    pub input: Vec<u8>,
    /// The current status.
    pub status: RunStatus,
    /// The output of a completed run.
    pub output: Option<Vec<u8>>,
    /// The error of a failed or cancelled run (if one was recorded).
    pub error: Option<Vec<u8>>,
    /// When the run was created (ms since the Unix epoch).
    pub created_ms: u64,
    /// When the run last changed (ms since the Unix epoch).
    pub updated_ms: u64,
    /// The queue the run was enqueued on ([`Queue::enqueue`]); `None` for a run started in
    /// place, which the process that started it runs.
    pub queue: Option<String>,
    /// The lease of the worker that executes the run (queued runs only); `None` while no
    /// worker holds it.
    pub lease: Option<Lease>,
}

/// Which runs [`Store::list_runs`] returns. `RunFilter::default()` lists every run, 100 a page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunFilter {
    /// Only runs of this workflow.
    pub workflow: Option<String>,
    /// Only runs with this status.
    pub status: Option<RunStatus>,
    /// Only runs created at or after this time (ms since the Unix epoch).
    pub created_after: Option<u64>,
    /// Only runs created before this time (ms since the Unix epoch).
    pub created_before: Option<u64>,
    /// At most this many runs (at least one is asked for).
    pub limit: usize,
    /// The page after this cursor ([`RunPage::next`] of the previous page).
    pub after: Option<String>,
    /// Newest first (by creation time, then id, both descending) instead of oldest first.
    pub newest_first: bool,
}

impl Default for RunFilter {
    fn default() -> Self {
        RunFilter {
            workflow: None,
            status: None,
            created_after: None,
            created_before: None,
            limit: 100,
            after: None,
            newest_first: false,
        }
    }
}

/// One page of [`Store::list_runs`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunPage {
    /// The runs, oldest first (by creation time, then id), or newest first if the filter
    /// asked for it.
    pub runs: Vec<RunRecord>,
    /// The cursor of the next page ([`RunFilter::after`]), `None` on the last page.
    pub next: Option<String>,
}

/// The stable identity of one execution of a step: what a resumed run looks its steps up by.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StepKey {
    /// The run.
    pub run: String,
    /// The node's stable key in the workflow's graph (`Node::key`).
    pub node: String,
    /// Which execution of the node in the run: 0 the first time it runs, 1 the second (in a
    /// loop), and so on.
    pub occurrence: u32,
    /// The item's index in a `map`, `None` outside one.
    pub item: Option<u32>,
}

impl StepKey {
    /// The key of the first occurrence of `node` in run `run`, outside a map.
    pub fn new(run: impl Into<String>, node: impl Into<String>) -> Self {
        StepKey {
            run: run.into(),
            node: node.into(),
            occurrence: 0,
            item: None,
        }
    }

    /// The same key with another occurrence.
    pub fn occurrence(mut self, occurrence: u32) -> Self {
        self.occurrence = occurrence;
        self
    }

    /// The same key for map item `item`.
    pub fn item(mut self, item: u32) -> Self {
        self.item = Some(item);
        self
    }
}

impl fmt::Display for StepKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@{}", self.run, self.node, self.occurrence)?;
        if let Some(item) = self.item {
            write!(f, "[{item}]")?;
        }
        Ok(())
    }
}

/// How a step ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepOutcome {
    /// With an output, serialized.
    Completed(Vec<u8>),
    /// With a failure (after its retries), described.
    Failed(String),
}

/// One attempt of a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptRecord {
    /// The attempt's number, the first is 1.
    pub number: u32,
    /// When it started (ms since the Unix epoch).
    pub started_ms: u64,
    /// When it ended, if it did.
    pub ended_ms: Option<u64>,
    /// Why it failed, if it did.
    pub failure: Option<String>,
}

/// What a step needs to resume its retries where they stopped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetryState {
    /// The attempts counted by each retry rule, in the rules' order.
    pub counters: Vec<u32>,
    /// When the pending retry (or durable sleep) is due (ms since the Unix epoch).
    pub wake_at_ms: Option<u64>,
}

/// The progress of a step that has not ended ([`Store::save_progress`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepProgress {
    /// The step.
    pub key: StepKey,
    /// An attempt to record (or to replace, by number).
    pub attempt: Option<AttemptRecord>,
    /// The retry state to resume from.
    pub retry: RetryState,
}

/// A step's final outcome to commit ([`Store::commit_step`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepCommit {
    /// The step.
    pub key: StepKey,
    /// How it ended.
    pub outcome: StepOutcome,
    /// Attempts to record with it (replacing those with the same numbers).
    pub attempts: Vec<AttemptRecord>,
    /// Compensation changes caused by this step, applied in the same transaction, in order.
    pub compensations: Vec<CompensationOp>,
}

/// What [`Store::commit_step`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The step as committed (by this call, or by the first one).
    pub step: StepRecord,
    /// `true` if this call committed it, `false` if it was committed before.
    pub first: bool,
    /// The `seq` of each compensation entry this call pushed (empty if not `first`).
    pub pushed: Vec<u64>,
}

/// A step as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepRecord {
    /// The step.
    pub key: StepKey,
    /// How it ended, `None` while it is in progress.
    pub outcome: Option<StepOutcome>,
    /// Its attempts, by number.
    pub attempts: Vec<AttemptRecord>,
    /// Its retry state.
    pub retry: RetryState,
    /// When it last changed (ms since the Unix epoch).
    pub updated_ms: u64,
}

/// A change to a run's compensation stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompensationOp {
    /// Pushes an undo for step (`node`, `occurrence`, `item`) with its input; it gets the next
    /// `seq` of the run, status [`CompensationStatus::Pending`].
    Push {
        /// The node key of the step it undoes.
        node: String,
        /// The occurrence of the step it undoes.
        occurrence: u32,
        /// The map item of the step it undoes.
        item: Option<u32>,
        /// The undo's input, serialized.
        undo: Vec<u8>,
    },
    /// Drops the pending entry `seq` (a step with its own compensation takes over from it).
    Drop {
        /// The entry.
        seq: u64,
    },
    /// Sets the status of entry `seq`.
    Mark {
        /// The entry.
        seq: u64,
        /// Its new status.
        status: CompensationStatus,
    },
}

/// The state of one compensation entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CompensationStatus {
    /// Not run yet.
    Pending,
    /// Ran and succeeded.
    Done,
    /// Ran and failed (after its retries).
    Failed,
    /// Ran out of time.
    TimedOut,
}

impl CompensationStatus {
    /// The status's name as stored: `pending`, `done`, `failed` or `timed_out`.
    pub fn as_str(self) -> &'static str {
        match self {
            CompensationStatus::Pending => "pending",
            CompensationStatus::Done => "done",
            CompensationStatus::Failed => "failed",
            CompensationStatus::TimedOut => "timed_out",
        }
    }

    /// The status named `name` (as [`as_str`](Self::as_str) spells it).
    pub fn parse(name: &str) -> Option<CompensationStatus> {
        [
            CompensationStatus::Pending,
            CompensationStatus::Done,
            CompensationStatus::Failed,
            CompensationStatus::TimedOut,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }
}

/// One entry of a run's compensation stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompensationRecord {
    /// The run.
    pub run: String,
    /// Its position in the run's stack (increasing; undos run from the highest).
    pub seq: u64,
    /// The node key of the step it undoes.
    pub node: String,
    /// The occurrence of the step it undoes.
    pub occurrence: u32,
    /// The map item of the step it undoes.
    pub item: Option<u32>,
    /// The undo's input, serialized.
    pub undo: Vec<u8>,
    /// Its status.
    pub status: CompensationStatus,
}

/// A signal sent to a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignalRecord {
    /// The run.
    pub run: String,
    /// The signal's name.
    pub name: String,
    /// Its position among the run's signals (increasing in the order they were sent).
    pub seq: u64,
    /// Its payload, serialized.
    pub payload: Vec<u8>,
}

/// An entry to append to a run's history ([`Store::record_history`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewHistory {
    /// Who did it: `flowctl`, `web` (with the client's address), `worker w-1`, ...
    pub actor: String,
    /// What was done, one word: `cancel`, `restart`, `signal`, `resume`, `takeover`, ...
    pub action: String,
    /// The details, for a person (the step restarted from, the signal's name and value).
    pub detail: String,
}

/// An entry of a run's history, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryRecord {
    /// The run.
    pub run: String,
    /// Its position in the run's history (increasing).
    pub seq: u64,
    /// When it was recorded (ms since the Unix epoch).
    pub at_ms: u64,
    /// Who did it.
    pub actor: String,
    /// What was done.
    pub action: String,
    /// The details.
    pub detail: String,
}

/// Why a store could not do what was asked.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreError {
    /// The store's file or server could not be reached, read or written.
    Io {
        /// What failed, in the backend's words.
        message: String,
    },
    /// The store's data is not what this store writes (a damaged file, or another program's).
    Corrupt {
        /// What is wrong.
        what: String,
    },
    /// The store was written by a newer version of flow, with a schema this one does not
    /// know. It is left untouched.
    NewerSchema {
        /// The schema version found.
        found: u32,
        /// The newest schema version this build supports.
        supported: u32,
    },
    /// The store stayed locked by another writer for longer than its busy timeout.
    Busy,
    /// A record that must exist does not.
    NotFound {
        /// What was not found.
        what: String,
    },
    /// The change contradicts what is stored (a finished run's status, a committed step's
    /// progress).
    Conflict {
        /// What conflicts.
        what: String,
    },
    /// The request itself is malformed (for example a result given with a status that has
    /// none).
    Invalid {
        /// What is wrong.
        what: String,
    },
    /// The store was closed (its worker is gone).
    Closed,
    /// A write for run `run` made under a lease that is no longer held: another worker took
    /// the run over (its lease epoch is higher now). Nothing was written. The worker must
    /// stop executing the run.
    LeaseLost {
        /// The run.
        run: String,
        /// The epoch of the lease the write was made under.
        epoch: u64,
    },
    /// [`Queue::enqueue`] with a deduplication key that a run still in flight holds.
    Duplicate {
        /// The deduplication key.
        key: String,
        /// The run in flight that holds it.
        run: String,
    },
    /// Any other failure of the backend.
    Backend {
        /// What failed, in the backend's words.
        message: String,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io { message } => write!(f, "store I/O error: {message}"),
            StoreError::Corrupt { what } => write!(f, "store is corrupt: {what}"),
            StoreError::NewerSchema { found, supported } => write!(
                f,
                "store has schema version {found}, newer than the {supported} this build \
                 supports: it was written by a newer version of flow, and is left untouched"
            ),
            StoreError::Busy => f.write_str("store is locked by another writer (busy timeout)"),
            StoreError::NotFound { what } => write!(f, "not found in the store: {what}"),
            StoreError::Conflict { what } => write!(f, "store conflict: {what}"),
            StoreError::Invalid { what } => write!(f, "invalid store request: {what}"),
            StoreError::Closed => f.write_str("store is closed"),
            StoreError::LeaseLost { run, epoch } => write!(
                f,
                "the lease of run {run} (epoch {epoch}) was taken over by another worker: \
                 nothing was written"
            ),
            StoreError::Duplicate { key, run } => write!(
                f,
                "a run with deduplication key {key:?} is in flight already: {run}"
            ),
            StoreError::Backend { message } => write!(f, "store error: {message}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// Why a durable run stopped, or could not be started or resumed: the store failed, the
/// record cannot be read back, or the code no longer matches the record.
///
/// A run stopped by a [`Store`](DurableError::Store) failure is left as it is in the store
/// (not compensated, not marked finished): a later process resumes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DurableError {
    /// The store failed while recording the run.
    Store {
        /// The run.
        run: String,
        /// The step being recorded (`key@occurrence`), if the failure was a step's.
        step: Option<String>,
        /// What failed.
        error: StoreError,
    },
    /// A stored value cannot be read back as the type the code expects now (the type
    /// changed, or the record is damaged).
    Corrupt {
        /// Which value.
        what: String,
        /// The decoder's message.
        error: String,
    },
    /// A value could not be encoded for the store (its `Serialize` impl failed).
    Encode {
        /// Which value.
        what: String,
        /// The encoder's message.
        error: String,
    },
    /// The resumed workflow reached a step the record does not have while a recorded step
    /// was not reached: its code now takes another path than the run did.
    Diverged {
        /// The run.
        run: String,
        /// The recorded step the run should have reached (`key@occurrence`).
        expected: String,
        /// The step it reached instead.
        reached: String,
    },
    /// The part of the run already done was changed: a node with a committed step has
    /// another fingerprint in this build (or no longer exists).
    Incompatible {
        /// The run.
        run: String,
        /// Its workflow.
        workflow: String,
        /// The node's key.
        node: String,
        /// The node's fingerprint when the run was created (`None`: not recorded).
        stored: Option<u64>,
        /// Its fingerprint in this build (`None`: the node is gone).
        current: Option<u64>,
    },
    /// The stored run belongs to another workflow than the one it was started or resumed as.
    WrongWorkflow {
        /// The run.
        run: String,
        /// The workflow the store has for it.
        stored: String,
        /// The workflow asked for.
        asked: String,
    },
    /// A durable failure recorded by an earlier process, read back as its message.
    Recorded {
        /// The message.
        message: String,
    },
}

fn fingerprint_text(f: Option<u64>) -> String {
    f.map_or_else(|| "none".to_owned(), |f| format!("{f:016x}"))
}

impl fmt::Display for DurableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DurableError::Store { run, step, error } => {
                write!(f, "run `{run}`: the store failed")?;
                if let Some(step) = step {
                    write!(f, " recording step `{step}`")?;
                }
                write!(f, ": {error}; the run is left as it is, to be resumed")
            }
            DurableError::Corrupt { what, error } => {
                write!(f, "{what} cannot be read back from the store: {error}")
            }
            DurableError::Encode { what, error } => {
                write!(f, "{what} cannot be stored: {error}")
            }
            DurableError::Diverged {
                run,
                expected,
                reached,
            } => write!(
                f,
                "run `{run}` cannot be resumed by this code: the record says it ran step \
                 `{expected}` next, but the code now reaches `{reached}`"
            ),
            DurableError::Incompatible {
                run,
                workflow,
                node,
                stored,
                current,
            } => match current {
                None => write!(
                    f,
                    "run `{run}` of workflow `{workflow}` cannot be resumed: its step `{node}` \
                     (fingerprint {}) already ran but is no longer in the workflow",
                    fingerprint_text(*stored)
                ),
                Some(_) => write!(
                    f,
                    "run `{run}` of workflow `{workflow}` cannot be resumed: its step `{node}` \
                     already ran and has changed (fingerprint {} when the run started, {} now)",
                    fingerprint_text(*stored),
                    fingerprint_text(*current)
                ),
            },
            DurableError::WrongWorkflow { run, stored, asked } => write!(
                f,
                "run `{run}` is a run of workflow `{stored}`, not of `{asked}`"
            ),
            DurableError::Recorded { message } => f.write_str(message),
        }
    }
}

impl std::error::Error for DurableError {}

/// A new, globally unique run id, in the layout of a UUIDv7: 48 bits of milliseconds since
/// the Unix epoch, then 74 random bits, as 36 characters of lowercase hex
/// (`0190f3a1-7c2e-7d4b-9a8f-1b2c3d4e5f60`). Within a process ids are strictly increasing:
/// an id made later sorts after every earlier one (within the same millisecond, the random
/// bits of the previous id plus one, as RFC 9562's monotonic method does). Across processes
/// they are ordered to the millisecond.
pub fn new_run_id() -> String {
    // The last (millisecond, 74 random bits) given out.
    static LAST: std::sync::Mutex<(u64, u128)> = std::sync::Mutex::new((0, 0));
    const RANDOM_BITS: u32 = 74;
    let mut ms = now_ms() & 0xffff_ffff_ffff;
    let mut random = ((u128::from(fastrand::u16(..)) << 64) | u128::from(fastrand::u64(..)))
        & ((1 << RANDOM_BITS) - 1);
    {
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        if ms <= last.0 {
            ms = last.0;
            random = last.1 + 1;
            if random >> RANDOM_BITS != 0 {
                ms += 1;
                random = 0;
            }
        }
        *last = (ms, random);
    }
    let rand_a = (random >> 62) as u64; // 12 bits
    let rand_b = (random as u64) & 0x3fff_ffff_ffff_ffff; // 62 bits
    let hi = (ms << 16) | 0x7000 | rand_a;
    let lo = 0x8000_0000_0000_0000 | rand_b;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    )
}

/// Milliseconds since the Unix epoch, now (0 if the clock is set before 1970). What stores
/// use for their timestamps.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_uuid_v7_shaped_unique_and_ordered() {
        let a = new_run_id();
        assert_eq!(a.len(), 36);
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('7'), "{a}");
        assert!(matches!(&parts[3][..1], "8" | "9" | "a" | "b"), "{a}");
        let ids: Vec<String> = (0..1000).map(|_| new_run_id()).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "strictly increasing within a process"
        );
        assert!(a < ids[0]);
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(new_run_id()[..13] > a[..13]);
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for s in RunStatus::ALL {
            assert_eq!(RunStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(RunStatus::parse("done"), None);
        for s in [
            CompensationStatus::Pending,
            CompensationStatus::Done,
            CompensationStatus::Failed,
            CompensationStatus::TimedOut,
        ] {
            assert_eq!(CompensationStatus::parse(s.as_str()), Some(s));
        }
        assert!(RunStatus::Cancelled.is_finished() && !RunStatus::Compensating.is_finished());
    }

    #[test]
    fn the_trait_is_object_safe() {
        fn takes(_: Option<std::sync::Arc<dyn Store>>) {}
        takes(None);
    }
}
