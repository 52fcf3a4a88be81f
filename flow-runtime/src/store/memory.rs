//! [`MemoryStore`]: a [`Store`] that keeps its records in the process's memory.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::Notify;

use super::{
    AttemptRecord, Claim, Committed, CompensationOp, CompensationRecord, CompensationStatus,
    Created, Enqueue, HistoryRecord, Lease, NewHistory, NewRun, Queue, RetryState, RunFilter,
    RunPage, RunRecord, RunStatus, SignalRecord, StepCommit, StepKey, StepOutcome, StepProgress,
    StepRecord, Store, StoreError, StoreFuture, now_ms,
};

/// A [`Store`] that keeps every record in memory: for tests and examples.
///
/// It is **not durable: everything is lost with the process**. Use it where a durable store
/// is needed only for the length of a process: tests (a killed run is simulated by dropping
/// the runtime and resuming from the same store), examples, prototypes.
///
/// It behaves as the `SQLite` store of `flow-store-sqlite` does (it passes the same checks,
/// `store::conformance`): every method is atomic (a failing one changes nothing), a
/// run's compensation entries and signals share one `seq` counter that starts at 1 and is
/// never reused, runs are ordered by creation time, then id.
///
/// Its futures complete on their first poll: they never wait on a thread, a lock held across
/// an `await` or a timer, so it works on tokio's paused clock (`start_paused`). Timestamps
/// are taken with [`now_ms`] (the system clock, not tokio's).
///
/// Clones share the same records: clone it to give one store to several runtimes (a
/// restarted "process" in a test).
///
/// ```
/// use std::sync::Arc;
/// use flow_runtime::store::{MemoryStore, Store};
///
/// let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
/// # let _ = store;
/// ```
#[derive(Clone, Default)]
pub struct MemoryStore {
    data: Arc<Mutex<Data>>,
    /// Woken when a queue may have new work ([`Queue::wait_for_work`]).
    work: Arc<Notify>,
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// The records, also after a panic in another thread that held them (every change is
    /// made in one go after its checks, so a panic cannot leave one half done).
    fn lock(&self) -> MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let data = self.lock();
        f.debug_struct("MemoryStore")
            .field("runs", &data.runs.len())
            .finish_non_exhaustive()
    }
}

/// Every record of the store.
#[derive(Default)]
struct Data {
    /// The runs, by id.
    runs: HashMap<String, RunEntry>,
    /// The runs' order: `(created_ms, id)`, what `unfinished_runs` and `list_runs` go by.
    order: BTreeSet<(u64, String)>,
    /// The workflows' graphs, by (workflow, fingerprint).
    graphs: HashMap<(String, u64), Vec<u8>>,
}

/// A run and the records that belong to it.
struct RunEntry {
    record: RunRecord,
    /// The next `seq` of its compensation entries and signals (shared, never reused).
    next_seq: u64,
    /// Its steps, ordered by node, occurrence and item (the key's `run` is this run's).
    steps: BTreeMap<StepKey, StepEntry>,
    /// Its compensation stack, by `seq`.
    compensations: BTreeMap<u64, CompensationRecord>,
    /// Its signals not taken yet, by name, oldest first.
    signals: HashMap<String, VecDeque<(u64, Vec<u8>)>>,
    /// Its history, oldest first.
    history: Vec<HistoryRecord>,
    /// Its place in a queue, if it was enqueued.
    queued: Option<Queued>,
}

/// What a queued run keeps besides its record.
struct Queued {
    priority: i32,
    dedup_key: Option<String>,
    not_before_ms: u64,
    /// When a worker first claimed it (what a queue's rate limit counts).
    started_ms: Option<u64>,
    /// The epoch of the last lease (0: never claimed).
    epoch: u64,
}

/// A step, committed (`outcome` set) or in progress.
#[derive(Default)]
struct StepEntry {
    outcome: Option<StepOutcome>,
    attempts: BTreeMap<u32, AttemptRecord>,
    retry: RetryState,
    updated_ms: u64,
}

impl StepEntry {
    fn record(&self, key: &StepKey) -> StepRecord {
        StepRecord {
            key: key.clone(),
            outcome: self.outcome.clone(),
            attempts: self.attempts.values().cloned().collect(),
            retry: self.retry.clone(),
            updated_ms: self.updated_ms,
        }
    }
}

type Result<T> = std::result::Result<T, StoreError>;

/// The end of the node key of a step's undo record (`<key>~undo`, as durable runs store
/// them): [`Store::reset_steps`] deletes those with the steps.
const UNDO_SUFFIX: &str = "~undo";

fn not_found(what: impl Into<String>) -> StoreError {
    StoreError::NotFound { what: what.into() }
}

impl Data {
    fn run_mut(&mut self, id: &str) -> Result<&mut RunEntry> {
        self.runs
            .get_mut(id)
            .ok_or_else(|| not_found(format!("run {id}")))
    }

    fn create_run(&mut self, new: NewRun, status: RunStatus) -> Created {
        if let Some(run) = self.runs.get(&new.id) {
            return Created {
                run: run.record.clone(),
                created: false,
            };
        }
        let now = now_ms();
        let record = RunRecord {
            id: new.id,
            workflow: new.workflow,
            fingerprint: new.fingerprint,
            node_fingerprints: new.node_fingerprints,
            input: new.input,
            status,
            output: None,
            error: None,
            created_ms: now,
            updated_ms: now,
            queue: None,
            lease: None,
        };
        self.order.insert((now, record.id.clone()));
        self.runs.insert(
            record.id.clone(),
            RunEntry {
                record: record.clone(),
                next_seq: 1,
                steps: BTreeMap::new(),
                compensations: BTreeMap::new(),
                signals: HashMap::new(),
                history: Vec::new(),
                queued: None,
            },
        );
        Created {
            run: record,
            created: true,
        }
    }

    fn set_status(
        &mut self,
        id: &str,
        status: RunStatus,
        result: Option<Vec<u8>>,
    ) -> Result<RunRecord> {
        if result.is_some() && !status.is_finished() {
            return Err(StoreError::Invalid {
                what: format!("a result given with status {status}, which has none"),
            });
        }
        let run = &mut self.run_mut(id)?.record;
        if run.status.is_finished() {
            return Err(StoreError::Conflict {
                what: format!(
                    "run {id} is {}: its status cannot become {status}",
                    run.status
                ),
            });
        }
        let (output, error) = match status {
            RunStatus::Completed => (result, None),
            _ => (None, result),
        };
        run.status = status;
        run.output = output;
        run.error = error;
        run.updated_ms = now_ms().max(run.created_ms);
        if status.is_finished() {
            run.lease = None;
        }
        Ok(run.clone())
    }

    /// The runs in order (creation time, then id) from just after `after`.
    fn ordered_after<'a>(
        &'a self,
        after: Option<&'a (u64, String)>,
    ) -> impl Iterator<Item = &'a RunRecord> + 'a {
        use std::ops::Bound;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.order
            .range((start, Bound::Unbounded))
            .filter_map(|(_, id)| self.runs.get(id).map(|r| &r.record))
    }

    /// The runs in reverse order (newest first) from just before `before`.
    fn ordered_before<'a>(
        &'a self,
        before: Option<&'a (u64, String)>,
    ) -> impl Iterator<Item = &'a RunRecord> + 'a {
        use std::ops::Bound;
        let end = before.map_or(Bound::Unbounded, Bound::Excluded);
        self.order
            .range((Bound::Unbounded, end))
            .rev()
            .filter_map(|(_, id)| self.runs.get(id).map(|r| &r.record))
    }

    fn unfinished_runs(&self) -> Vec<RunRecord> {
        self.ordered_after(None)
            .filter(|r| !r.status.is_finished())
            .cloned()
            .collect()
    }

    /// A page cursor is `created_ms:id` of the last run of the page (as the `SQLite` store's):
    /// it stays valid whatever happens to that run.
    fn list_runs(&self, filter: &RunFilter) -> Result<RunPage> {
        let after = filter
            .after
            .as_deref()
            .map(|cursor| {
                cursor
                    .split_once(':')
                    .and_then(|(c, id)| Some((c.parse::<u64>().ok()?, id.to_owned())))
                    .ok_or_else(|| StoreError::Invalid {
                        what: format!("{cursor:?} is not a page cursor of this store"),
                    })
            })
            .transpose()?;
        let limit = filter.limit.max(1);
        let wanted = |r: &&RunRecord| {
            filter.workflow.as_ref().is_none_or(|w| *w == r.workflow)
                && filter.status.is_none_or(|s| s == r.status)
                && filter.created_after.is_none_or(|t| r.created_ms >= t)
                && filter.created_before.is_none_or(|t| r.created_ms < t)
        };
        let mut runs: Vec<RunRecord> = if filter.newest_first {
            self.ordered_before(after.as_ref())
                .filter(wanted)
                .take(limit.saturating_add(1))
                .cloned()
                .collect()
        } else {
            self.ordered_after(after.as_ref())
                .filter(wanted)
                .take(limit.saturating_add(1))
                .cloned()
                .collect()
        };
        let next = if runs.len() > limit {
            runs.truncate(limit);
            runs.last().map(|r| format!("{}:{}", r.created_ms, r.id))
        } else {
            None
        };
        Ok(RunPage { runs, next })
    }

    fn save_progress(&mut self, p: StepProgress) -> Result<()> {
        let run = self.run_mut(&p.key.run)?;
        if let Some(step) = run.steps.get(&p.key)
            && step.outcome.is_some()
        {
            return Err(StoreError::Conflict {
                what: format!("step {} is already committed", p.key),
            });
        }
        let step = run.steps.entry(p.key).or_default();
        step.retry = p.retry;
        step.updated_ms = now_ms();
        if let Some(a) = p.attempt {
            step.attempts.insert(a.number, a);
        }
        Ok(())
    }

    fn commit_step(&mut self, c: StepCommit) -> Result<Committed> {
        let run = self.run_mut(&c.key.run)?;
        if let Some(step) = run.steps.get(&c.key)
            && step.outcome.is_some()
        {
            // Committed before: keep the first commit, apply nothing.
            return Ok(Committed {
                step: step.record(&c.key),
                first: false,
                pushed: Vec::new(),
            });
        }
        // The compensation changes are the only part that can fail: apply them first, so
        // that a failure leaves the step as it was.
        let pushed = run.apply_compensations(c.compensations)?;
        let step = run.steps.entry(c.key.clone()).or_default();
        step.outcome = Some(c.outcome);
        step.retry.wake_at_ms = None;
        step.updated_ms = now_ms();
        for a in c.attempts {
            step.attempts.insert(a.number, a);
        }
        Ok(Committed {
            step: step.record(&c.key),
            first: true,
            pushed,
        })
    }

    fn get_step(&self, key: &StepKey) -> Option<StepRecord> {
        let run = self.runs.get(&key.run)?;
        run.steps.get(key).map(|s| s.record(key))
    }

    fn steps_of(&self, run: &str) -> Vec<StepRecord> {
        self.runs.get(run).map_or_else(Vec::new, |r| {
            r.steps.iter().map(|(k, s)| s.record(k)).collect()
        })
    }

    fn update_compensations(&mut self, run: &str, ops: Vec<CompensationOp>) -> Result<Vec<u64>> {
        self.run_mut(run)?.apply_compensations(ops)
    }

    fn compensations_of(&self, run: &str) -> Vec<CompensationRecord> {
        self.runs
            .get(run)
            .map_or_else(Vec::new, |r| r.compensations.values().cloned().collect())
    }

    fn send_signal(&mut self, run: &str, name: &str, payload: Vec<u8>) -> Result<u64> {
        let run = self.run_mut(run)?;
        let seq = run.next_seq;
        run.next_seq += 1;
        run.signals
            .entry(name.to_owned())
            .or_default()
            .push_back((seq, payload));
        Ok(seq)
    }

    fn save_graph(&mut self, workflow: &str, fingerprint: u64, graph: Vec<u8>) {
        // The first save of a (workflow, fingerprint) stays.
        self.graphs
            .entry((workflow.to_owned(), fingerprint))
            .or_insert(graph);
    }

    fn get_graph(&self, workflow: &str, fingerprint: u64) -> Option<Vec<u8>> {
        self.graphs
            .get(&(workflow.to_owned(), fingerprint))
            .cloned()
    }

    /// Nothing here can fail once the run is found: every change is made after that check.
    fn reset_steps(&mut self, id: &str, nodes: &[String]) -> Result<RunRecord> {
        let run = self.run_mut(id)?;
        let nodes: BTreeSet<&str> = nodes.iter().map(String::as_str).collect();
        // A node's steps, and its undo's (node key `<key>~undo`).
        run.steps.retain(|key, _| {
            let undo_of = key.node.strip_suffix(UNDO_SUFFIX);
            !(nodes.contains(key.node.as_str()) || undo_of.is_some_and(|n| nodes.contains(n)))
        });
        run.compensations
            .retain(|_, c| !nodes.contains(c.node.as_str()));
        // A worker still executing the run loses it: the restarted run is claimed afresh.
        if let Some(q) = &mut run.queued {
            q.epoch += 1;
        }
        let record = &mut run.record;
        record.status = RunStatus::Pending;
        record.output = None;
        record.error = None;
        record.lease = None;
        record.updated_ms = now_ms().max(record.created_ms);
        Ok(record.clone())
    }

    fn record_history(&mut self, run: &str, entry: NewHistory) -> Result<u64> {
        let run = self.run_mut(run)?;
        let seq = run.next_seq;
        run.next_seq += 1;
        run.history.push(HistoryRecord {
            run: run.record.id.clone(),
            seq,
            at_ms: now_ms(),
            actor: entry.actor,
            action: entry.action,
            detail: entry.detail,
        });
        Ok(seq)
    }

    fn take_signal_into_step(
        &mut self,
        run: &str,
        name: &str,
        key: StepKey,
    ) -> Result<Option<SignalRecord>> {
        self.run_mut(run)?;
        if self.get_step(&key).is_some_and(|s| s.outcome.is_some()) {
            return Ok(None);
        }
        let Some(signal) = self.take_signal(run, name) else {
            return Ok(None);
        };
        self.commit_step(StepCommit {
            key,
            outcome: StepOutcome::Completed(signal.payload.clone()),
            attempts: Vec::new(),
            compensations: Vec::new(),
        })?;
        Ok(Some(signal))
    }

    fn enqueue(&mut self, e: Enqueue) -> Result<Created> {
        if let Some(key) = &e.dedup_key
            && let Some(holder) = self.runs.values().find(|r| {
                r.record.id != e.run.id
                    && !r.record.status.is_finished()
                    && r.queued
                        .as_ref()
                        .is_some_and(|q| q.dedup_key.as_ref() == Some(key))
            })
        {
            return Err(StoreError::Duplicate {
                key: key.clone(),
                run: holder.record.id.clone(),
            });
        }
        let created = self.create_run(e.run, RunStatus::Pending);
        if !created.created {
            return Ok(created);
        }
        let entry = self.run_mut(&created.run.id)?;
        entry.record.queue = Some(e.queue);
        entry.queued = Some(Queued {
            priority: e.priority,
            dedup_key: e.dedup_key,
            not_before_ms: e.not_before_ms.unwrap_or(0),
            started_ms: None,
            epoch: 0,
        });
        Ok(Created {
            run: entry.record.clone(),
            created: true,
        })
    }

    fn claim(&mut self, c: &Claim) -> Vec<RunRecord> {
        let now = now_ms();
        let on_queue = |r: &&RunEntry| {
            r.record.queue.as_deref() == Some(c.queue.as_str()) && !r.record.status.is_finished()
        };
        let leased = |r: &RunEntry| r.record.lease.as_ref().is_some_and(|l| l.until_ms >= now);
        let mut room = c.max;
        if let Some(limit) = c.options.concurrency {
            let busy = self
                .runs
                .values()
                .filter(on_queue)
                .filter(|r| leased(r))
                .count();
            room = room.min(limit.saturating_sub(u32::try_from(busy).unwrap_or(u32::MAX)));
        }
        let mut starts_left = u32::MAX;
        if let Some(rate) = c.options.rate {
            let since = now.saturating_sub(u64::try_from(rate.per.as_millis()).unwrap_or(u64::MAX));
            let started = self
                .runs
                .values()
                .filter(|r| r.record.queue.as_deref() == Some(c.queue.as_str()))
                .filter(|r| {
                    r.queued
                        .as_ref()
                        .and_then(|q| q.started_ms)
                        .is_some_and(|t| t >= since)
                })
                .count();
            starts_left = rate
                .starts
                .saturating_sub(u32::try_from(started).unwrap_or(u32::MAX));
        }
        let mut due: Vec<(i32, u64, String)> = self
            .runs
            .values()
            .filter(on_queue)
            .filter(|r| !leased(r))
            .filter_map(|r| {
                let q = r.queued.as_ref()?;
                (q.not_before_ms <= now)
                    .then(|| (q.priority, r.record.created_ms, r.record.id.clone()))
            })
            .collect();
        due.sort();
        let until_ms = now.saturating_add(u64::try_from(c.lease.as_millis()).unwrap_or(u64::MAX));
        let mut claimed = Vec::new();
        for (_, _, id) in due {
            if room == 0 {
                break;
            }
            let Some(entry) = self.runs.get_mut(&id) else {
                continue;
            };
            let Some(q) = entry.queued.as_mut() else {
                continue;
            };
            if q.started_ms.is_none() {
                if starts_left == 0 {
                    continue;
                }
                starts_left -= 1;
                q.started_ms = Some(now);
            }
            q.epoch += 1;
            entry.record.lease = Some(Lease {
                worker: c.worker.clone(),
                epoch: q.epoch,
                until_ms,
            });
            room -= 1;
            claimed.push(entry.record.clone());
        }
        claimed
    }

    /// Whether run `run`'s lease epoch is still `epoch`.
    fn check_fence(&self, run: &str, epoch: u64) -> Result<()> {
        let entry = self
            .runs
            .get(run)
            .ok_or_else(|| not_found(format!("run {run}")))?;
        match &entry.queued {
            Some(q) if q.epoch == epoch => Ok(()),
            _ => Err(StoreError::LeaseLost {
                run: run.to_owned(),
                epoch,
            }),
        }
    }

    fn take_signal(&mut self, run: &str, name: &str) -> Option<SignalRecord> {
        let (seq, payload) = self.runs.get_mut(run)?.signals.get_mut(name)?.pop_front()?;
        Some(SignalRecord {
            run: run.to_owned(),
            name: name.to_owned(),
            seq,
            payload,
        })
    }
}

impl RunEntry {
    /// Applies `ops` in order, all or none: on an error the stack and the `seq` counter are
    /// left as they were. Returns the `seq` of each pushed entry.
    fn apply_compensations(&mut self, ops: Vec<CompensationOp>) -> Result<Vec<u64>> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let run = &self.record.id;
        let mut stack = self.compensations.clone();
        let mut next_seq = self.next_seq;
        let mut pushed = Vec::new();
        for op in ops {
            match op {
                CompensationOp::Push {
                    node,
                    occurrence,
                    item,
                    undo,
                } => {
                    let seq = next_seq;
                    next_seq += 1;
                    stack.insert(
                        seq,
                        CompensationRecord {
                            run: run.clone(),
                            seq,
                            node,
                            occurrence,
                            item,
                            undo,
                            status: CompensationStatus::Pending,
                        },
                    );
                    pushed.push(seq);
                }
                CompensationOp::Drop { seq } => match stack.get(&seq).map(|c| c.status) {
                    Some(CompensationStatus::Pending) => {
                        stack.remove(&seq);
                    }
                    Some(other) => {
                        return Err(StoreError::Conflict {
                            what: format!(
                                "compensation {run}#{seq} is {}: only a pending one can be dropped",
                                other.as_str()
                            ),
                        });
                    }
                    None => return Err(not_found(format!("compensation {run}#{seq}"))),
                },
                CompensationOp::Mark { seq, status } => match stack.get_mut(&seq) {
                    Some(entry) => entry.status = status,
                    None => return Err(not_found(format!("compensation {run}#{seq}"))),
                },
            }
        }
        self.compensations = stack;
        self.next_seq = next_seq;
        Ok(pushed)
    }
}

// Each method does its work when its future is first polled (not when it is called, as
// futures go), under the lock, and completes at once.
impl Store for MemoryStore {
    fn create_run(&self, new: NewRun) -> StoreFuture<'_, Created> {
        Box::pin(async move { Ok(self.lock().create_run(new, RunStatus::Pending)) })
    }

    fn create_running(&self, new: NewRun) -> StoreFuture<'_, Created> {
        Box::pin(async move { Ok(self.lock().create_run(new, RunStatus::Running)) })
    }

    fn get_run<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<RunRecord>> {
        Box::pin(async move { Ok(self.lock().runs.get(id).map(|r| r.record.clone())) })
    }

    fn set_status<'a>(
        &'a self,
        id: &'a str,
        status: RunStatus,
        result: Option<Vec<u8>>,
    ) -> StoreFuture<'a, RunRecord> {
        Box::pin(async move { self.lock().set_status(id, status, result) })
    }

    fn unfinished_runs(&self) -> StoreFuture<'_, Vec<RunRecord>> {
        Box::pin(async move { Ok(self.lock().unfinished_runs()) })
    }

    fn list_runs(&self, filter: RunFilter) -> StoreFuture<'_, RunPage> {
        Box::pin(async move { self.lock().list_runs(&filter) })
    }

    fn save_progress(&self, progress: StepProgress) -> StoreFuture<'_, ()> {
        Box::pin(async move { self.lock().save_progress(progress) })
    }

    fn commit_step(&self, commit: StepCommit) -> StoreFuture<'_, Committed> {
        Box::pin(async move { self.lock().commit_step(commit) })
    }

    fn get_step<'a>(&'a self, key: &'a StepKey) -> StoreFuture<'a, Option<StepRecord>> {
        Box::pin(async move { Ok(self.lock().get_step(key)) })
    }

    fn steps_of<'a>(&'a self, run: &'a str) -> StoreFuture<'a, Vec<StepRecord>> {
        Box::pin(async move { Ok(self.lock().steps_of(run)) })
    }

    fn update_compensations<'a>(
        &'a self,
        run: &'a str,
        ops: Vec<CompensationOp>,
    ) -> StoreFuture<'a, Vec<u64>> {
        Box::pin(async move { self.lock().update_compensations(run, ops) })
    }

    fn compensations_of<'a>(&'a self, run: &'a str) -> StoreFuture<'a, Vec<CompensationRecord>> {
        Box::pin(async move { Ok(self.lock().compensations_of(run)) })
    }

    fn send_signal<'a>(
        &'a self,
        run: &'a str,
        name: &'a str,
        payload: Vec<u8>,
    ) -> StoreFuture<'a, u64> {
        Box::pin(async move { self.lock().send_signal(run, name, payload) })
    }

    fn take_signal<'a>(
        &'a self,
        run: &'a str,
        name: &'a str,
    ) -> StoreFuture<'a, Option<SignalRecord>> {
        Box::pin(async move { Ok(self.lock().take_signal(run, name)) })
    }

    fn take_signal_into_step<'a>(
        &'a self,
        run: &'a str,
        name: &'a str,
        key: StepKey,
    ) -> StoreFuture<'a, Option<SignalRecord>> {
        Box::pin(async move { self.lock().take_signal_into_step(run, name, key) })
    }

    fn save_graph<'a>(
        &'a self,
        workflow: &'a str,
        fingerprint: u64,
        graph: Vec<u8>,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.lock().save_graph(workflow, fingerprint, graph);
            Ok(())
        })
    }

    fn get_graph<'a>(
        &'a self,
        workflow: &'a str,
        fingerprint: u64,
    ) -> StoreFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move { Ok(self.lock().get_graph(workflow, fingerprint)) })
    }

    fn reset_steps<'a>(&'a self, run: &'a str, nodes: Vec<String>) -> StoreFuture<'a, RunRecord> {
        Box::pin(async move {
            let record = self.lock().reset_steps(run, &nodes);
            self.work.notify_waiters();
            record
        })
    }

    fn record_history<'a>(&'a self, run: &'a str, entry: NewHistory) -> StoreFuture<'a, u64> {
        Box::pin(async move { self.lock().record_history(run, entry) })
    }

    fn history_of<'a>(&'a self, run: &'a str) -> StoreFuture<'a, Vec<HistoryRecord>> {
        Box::pin(async move {
            Ok(self
                .lock()
                .runs
                .get(run)
                .map_or_else(Vec::new, |r| r.history.clone()))
        })
    }
}

impl Queue for MemoryStore {
    fn enqueue(&self, enqueue: Enqueue) -> StoreFuture<'_, Created> {
        Box::pin(async move {
            let created = self.lock().enqueue(enqueue);
            self.work.notify_waiters();
            created
        })
    }

    fn claim(&self, claim: Claim) -> StoreFuture<'_, Vec<RunRecord>> {
        Box::pin(async move { Ok(self.lock().claim(&claim)) })
    }

    fn renew<'a>(
        &'a self,
        worker: &'a str,
        leases: Vec<(String, u64)>,
        lease: Duration,
    ) -> StoreFuture<'a, Vec<bool>> {
        Box::pin(async move {
            let mut data = self.lock();
            let until_ms =
                now_ms().saturating_add(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX));
            Ok(leases
                .into_iter()
                .map(|(run, epoch)| {
                    let Some(entry) = data.runs.get_mut(&run) else {
                        return false;
                    };
                    match &mut entry.record.lease {
                        Some(l) if l.epoch == epoch && l.worker == worker => {
                            l.until_ms = until_ms;
                            true
                        }
                        _ => false,
                    }
                })
                .collect())
        })
    }

    fn release<'a>(
        &'a self,
        run: &'a str,
        epoch: u64,
        due_ms: Option<u64>,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let released = {
                let mut data = self.lock();
                match data.runs.get_mut(run) {
                    Some(entry)
                        if entry
                            .record
                            .lease
                            .as_ref()
                            .is_some_and(|l| l.epoch == epoch) =>
                    {
                        entry.record.lease = None;
                        if let (Some(due), Some(q)) = (due_ms, entry.queued.as_mut()) {
                            q.not_before_ms = due;
                        }
                        true
                    }
                    _ => false,
                }
            };
            self.work.notify_waiters();
            Ok(released)
        })
    }

    fn fenced(self: Arc<Self>, run: &str, epoch: u64) -> Arc<dyn Store> {
        Arc::new(Fenced {
            store: self,
            run: run.to_owned(),
            epoch,
        })
    }

    fn wait_for_work<'a>(&'a self, _queue: &'a str, timeout: Duration) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let _ = tokio::time::timeout(timeout, self.work.notified()).await;
        })
    }
}

/// A [`MemoryStore`] whose writes for one run are fenced by a lease epoch
/// ([`Queue::fenced`]): the check and the write are made under the same lock.
struct Fenced {
    store: Arc<MemoryStore>,
    run: String,
    epoch: u64,
}

impl Fenced {
    /// Runs `write` under the store's lock, after checking the fence when it is for the
    /// fenced run.
    fn write<T>(&self, run: &str, write: impl FnOnce(&mut Data) -> Result<T>) -> Result<T> {
        let mut data = self.store.lock();
        if run == self.run {
            data.check_fence(run, self.epoch)?;
        }
        write(&mut data)
    }
}

impl Store for Fenced {
    fn create_run(&self, new: NewRun) -> StoreFuture<'_, Created> {
        self.store.create_run(new)
    }

    fn get_run<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<RunRecord>> {
        self.store.get_run(id)
    }

    fn set_status<'a>(
        &'a self,
        id: &'a str,
        status: RunStatus,
        result: Option<Vec<u8>>,
    ) -> StoreFuture<'a, RunRecord> {
        Box::pin(async move {
            let record = self.write(id, |d| d.set_status(id, status, result));
            if status.is_finished() {
                self.store.work.notify_waiters();
            }
            record
        })
    }

    fn unfinished_runs(&self) -> StoreFuture<'_, Vec<RunRecord>> {
        self.store.unfinished_runs()
    }

    fn list_runs(&self, filter: RunFilter) -> StoreFuture<'_, RunPage> {
        self.store.list_runs(filter)
    }

    fn save_progress(&self, progress: StepProgress) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let run = progress.key.run.clone();
            self.write(&run, |d| d.save_progress(progress))
        })
    }

    fn commit_step(&self, commit: StepCommit) -> StoreFuture<'_, Committed> {
        Box::pin(async move {
            let run = commit.key.run.clone();
            self.write(&run, |d| d.commit_step(commit))
        })
    }

    fn get_step<'a>(&'a self, key: &'a StepKey) -> StoreFuture<'a, Option<StepRecord>> {
        self.store.get_step(key)
    }

    fn steps_of<'a>(&'a self, run: &'a str) -> StoreFuture<'a, Vec<StepRecord>> {
        self.store.steps_of(run)
    }

    fn update_compensations<'a>(
        &'a self,
        run: &'a str,
        ops: Vec<CompensationOp>,
    ) -> StoreFuture<'a, Vec<u64>> {
        Box::pin(async move { self.write(run, |d| d.update_compensations(run, ops)) })
    }

    fn compensations_of<'a>(&'a self, run: &'a str) -> StoreFuture<'a, Vec<CompensationRecord>> {
        self.store.compensations_of(run)
    }

    fn send_signal<'a>(
        &'a self,
        run: &'a str,
        name: &'a str,
        payload: Vec<u8>,
    ) -> StoreFuture<'a, u64> {
        self.store.send_signal(run, name, payload)
    }

    fn take_signal<'a>(
        &'a self,
        run: &'a str,
        name: &'a str,
    ) -> StoreFuture<'a, Option<SignalRecord>> {
        Box::pin(async move { self.write(run, |d| Ok(d.take_signal(run, name))) })
    }

    fn take_signal_into_step<'a>(
        &'a self,
        run: &'a str,
        name: &'a str,
        key: StepKey,
    ) -> StoreFuture<'a, Option<SignalRecord>> {
        Box::pin(async move { self.write(run, |d| d.take_signal_into_step(run, name, key)) })
    }

    fn save_graph<'a>(
        &'a self,
        workflow: &'a str,
        fingerprint: u64,
        graph: Vec<u8>,
    ) -> StoreFuture<'a, ()> {
        self.store.save_graph(workflow, fingerprint, graph)
    }

    fn get_graph<'a>(
        &'a self,
        workflow: &'a str,
        fingerprint: u64,
    ) -> StoreFuture<'a, Option<Vec<u8>>> {
        self.store.get_graph(workflow, fingerprint)
    }

    fn reset_steps<'a>(&'a self, run: &'a str, nodes: Vec<String>) -> StoreFuture<'a, RunRecord> {
        self.store.reset_steps(run, nodes)
    }

    fn record_history<'a>(&'a self, run: &'a str, entry: NewHistory) -> StoreFuture<'a, u64> {
        self.store.record_history(run, entry)
    }

    fn history_of<'a>(&'a self, run: &'a str) -> StoreFuture<'a, Vec<HistoryRecord>> {
        self.store.history_of(run)
    }
}

#[cfg(all(test, feature = "store-conformance"))]
mod conformance_tests {
    use super::MemoryStore;

    #[tokio::test]
    async fn conformance() {
        crate::store::conformance::run_all(std::sync::Arc::new(MemoryStore::new())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queue_conformance() {
        crate::store::conformance::run_queue_all(std::sync::Arc::new(MemoryStore::new())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_multi_thread() {
        crate::store::conformance::run_all(std::sync::Arc::new(MemoryStore::new())).await;
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    fn new_run(id: &str) -> NewRun {
        NewRun {
            id: id.to_owned(),
            workflow: "w".to_owned(),
            fingerprint: 1,
            node_fingerprints: BTreeMap::new(),
            input: Vec::new(),
        }
    }

    fn push(undo: &[u8]) -> CompensationOp {
        CompensationOp::Push {
            node: "n".to_owned(),
            occurrence: 0,
            item: None,
            undo: undo.to_vec(),
        }
    }

    #[test]
    fn futures_complete_on_first_poll() {
        let store = MemoryStore::new();
        let created = store.create_run(new_run("a")).now_or_never();
        assert!(matches!(created, Some(Ok(Created { created: true, .. }))));
        let run = store.get_run("a").now_or_never();
        assert!(matches!(run, Some(Ok(Some(_)))));
    }

    #[tokio::test(start_paused = true)]
    async fn works_on_a_paused_clock_and_clones_share_records() {
        let store = MemoryStore::new();
        let other: Arc<dyn Store> = Arc::new(store.clone());
        store.create_run(new_run("a")).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        let run = other.get_run("a").await.unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Pending);
        assert_eq!(format!("{store:?}"), "MemoryStore { runs: 1, .. }");
    }

    #[tokio::test]
    async fn a_failing_commit_changes_nothing() {
        let store = MemoryStore::new();
        store.create_run(new_run("a")).await.unwrap();
        let key = StepKey::new("a", "n");
        let r = store
            .commit_step(StepCommit {
                key: key.clone(),
                outcome: StepOutcome::Completed(Vec::new()),
                attempts: Vec::new(),
                compensations: vec![push(b"x"), CompensationOp::Drop { seq: 99 }],
            })
            .await;
        assert!(matches!(r, Err(StoreError::NotFound { .. })), "{r:?}");
        assert_eq!(store.get_step(&key).await.unwrap(), None);
        assert!(store.compensations_of("a").await.unwrap().is_empty());
        // The failed push did not use up a seq: seqs start at 1, shared with signals.
        assert_eq!(store.send_signal("a", "s", Vec::new()).await.unwrap(), 1);
        let pushed = store
            .update_compensations("a", vec![push(b"y")])
            .await
            .unwrap();
        assert_eq!(pushed, [2]);
        // Only a pending entry can be dropped.
        store
            .update_compensations(
                "a",
                vec![CompensationOp::Mark {
                    seq: 2,
                    status: CompensationStatus::Done,
                }],
            )
            .await
            .unwrap();
        let r = store
            .update_compensations("a", vec![CompensationOp::Drop { seq: 2 }])
            .await;
        assert!(matches!(r, Err(StoreError::Conflict { .. })), "{r:?}");
    }

    #[tokio::test]
    async fn commit_keeps_progress_counters_and_clears_the_wake_up() {
        let store = MemoryStore::new();
        store.create_run(new_run("a")).await.unwrap();
        let key = StepKey::new("a", "n");
        store
            .save_progress(StepProgress {
                key: key.clone(),
                attempt: None,
                retry: RetryState {
                    counters: vec![2],
                    wake_at_ms: Some(10),
                },
            })
            .await
            .unwrap();
        let c = store
            .commit_step(StepCommit {
                key,
                outcome: StepOutcome::Failed("no".to_owned()),
                attempts: Vec::new(),
                compensations: Vec::new(),
            })
            .await
            .unwrap();
        assert_eq!(
            c.step.retry,
            RetryState {
                counters: vec![2],
                wake_at_ms: None
            }
        );
    }

    #[tokio::test]
    async fn edge_cases_match_the_sqlite_store() {
        let store = MemoryStore::new();
        // Taking a signal of a run that does not exist: nothing to take.
        assert_eq!(store.take_signal("ghost", "s").await.unwrap(), None);
        // A result with an unfinished status is invalid, checked first.
        let r = store
            .set_status("ghost", RunStatus::Running, Some(Vec::new()))
            .await;
        assert!(matches!(r, Err(StoreError::Invalid { .. })), "{r:?}");
        let r = store
            .list_runs(RunFilter {
                after: Some("nonsense".to_owned()),
                ..RunFilter::default()
            })
            .await;
        assert!(matches!(r, Err(StoreError::Invalid { .. })), "{r:?}");
        // Limit 0 asks for one run; runs created in one millisecond go by id.
        for id in ["b", "a", "c"] {
            store.create_run(new_run(id)).await.unwrap();
        }
        let page = store
            .list_runs(RunFilter {
                limit: 0,
                ..RunFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(page.runs.len(), 1);
        assert!(page.next.is_some());
        let all = store.list_runs(RunFilter::default()).await.unwrap();
        let mut by_time: Vec<(u64, String)> = all
            .runs
            .iter()
            .map(|r| (r.created_ms, r.id.clone()))
            .collect();
        let listed = by_time.clone();
        by_time.sort();
        assert_eq!(listed, by_time);
    }
}
