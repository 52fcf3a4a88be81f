//! [`Queue`]: runs enqueued on named queues and executed by worker processes under leases.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::{Created, NewRun, RunRecord, Store, StoreFuture};

/// A run to enqueue ([`Queue::enqueue`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enqueue {
    /// The run, as [`Store::create_run`] takes it (its id makes enqueueing idempotent).
    pub run: NewRun,
    /// The queue's name.
    pub queue: String,
    /// Runs with a lower priority are claimed first (`0` by default; negative values go
    /// ahead of it). Within one priority, the oldest run first.
    pub priority: i32,
    /// At most one run with this key is in flight (not finished) at a time: enqueueing a
    /// second one while the first is in flight is [`StoreError::Duplicate`].
    ///
    /// [`StoreError::Duplicate`]: super::StoreError::Duplicate
    pub dedup_key: Option<String>,
    /// Not claimed before this time (ms since the Unix epoch).
    pub not_before_ms: Option<u64>,
}

impl Enqueue {
    /// `run` on `queue`, priority 0, no deduplication key, due now.
    pub fn new(run: NewRun, queue: impl Into<String>) -> Self {
        Enqueue {
            run,
            queue: queue.into(),
            priority: 0,
            dedup_key: None,
            not_before_ms: None,
        }
    }
}

/// At most `starts` runs of a queue started in any window of `per`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// How many first starts the window allows.
    pub starts: u32,
    /// The window.
    pub per: Duration,
}

/// The limits of a queue, shared by every worker of it (each worker passes the same ones
/// with its [`Claim`]; the store enforces them across workers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueOptions {
    /// At most this many runs of the queue executing at once, on all workers together
    /// (runs under an unexpired lease).
    pub concurrency: Option<u32>,
    /// At most this many runs started (claimed for the first time) per period. A run taken
    /// over from a dead worker is not a new start.
    pub rate: Option<Rate>,
}

/// A worker's request for runs to execute ([`Queue::claim`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The worker's name (unique among live workers: `host:pid`, say).
    pub worker: String,
    /// The queue.
    pub queue: String,
    /// The queue's limits.
    pub options: QueueOptions,
    /// At most this many runs (the worker's free slots: its own concurrency limit).
    pub max: u32,
    /// How long the lease of each claimed run lasts unless renewed.
    pub lease: Duration,
}

/// A worker's hold on a run.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The worker that holds it.
    pub worker: String,
    /// The fencing token: it grows by one each time the run is claimed, and every write made
    /// under the lease checks it in the same transaction ([`Queue::fenced`]).
    pub epoch: u64,
    /// When it expires unless renewed (ms since the Unix epoch).
    pub until_ms: u64,
}

/// A store that several worker processes share: runs are enqueued on named queues, workers
/// claim them under leases, and every write a worker makes for a run it executes is fenced
/// by its lease.
///
/// The life of a queued run:
///
/// 1. [`enqueue`](Self::enqueue) creates it `pending` on a queue (no worker runs it yet);
/// 2. a worker [`claim`](Self::claim)s it: the run gets a [`Lease`] (the worker, the next
///    epoch, an expiry); the worker executes it, writing through
///    [`fenced`](Self::fenced), and [`renew`](Self::renew)s its leases on a heartbeat;
/// 3. the run finishes (a fenced `set_status` to a finished status ends the lease), or the
///    worker [`release`](Self::release)s it (shutting down), or the worker dies or stalls and
///    its lease expires: the run is claimable again, and the next claim takes it over with a
///    higher epoch, after which every write of the old worker for that run fails with
///    [`StoreError::LeaseLost`](super::StoreError::LeaseLost).
///
/// A run is claimable when it is on the queue, not finished, not under an unexpired lease,
/// and due (`not_before_ms`). Claims take runs by priority, then age.
pub trait Queue: Store {
    /// Creates the run `pending` on a queue, or returns the run that already has this id
    /// (as [`Store::create_run`]). A deduplication key held by a run in flight is
    /// [`StoreError::Duplicate`](super::StoreError::Duplicate), and nothing is created.
    fn enqueue(&self, enqueue: Enqueue) -> StoreFuture<'_, Created>;

    /// Leases up to `claim.max` claimable runs of `claim.queue` to `claim.worker`, within
    /// the queue's limits, in one transaction (claims of several workers never take the same
    /// run). Each returned run has its [`RunRecord::lease`].
    fn claim(&self, claim: Claim) -> StoreFuture<'_, Vec<RunRecord>>;

    /// Extends the leases `(run, epoch)` held by `worker` to `lease` from now. Returns, in
    /// the same order, whether each lease is still held (`false`: the run was taken over, or
    /// finished).
    fn renew<'a>(
        &'a self,
        worker: &'a str,
        leases: Vec<(String, u64)>,
        lease: Duration,
    ) -> StoreFuture<'a, Vec<bool>>;

    /// Gives the lease `epoch` of run `run` back: the run is claimable again at once (a
    /// worker shutting down), or from `due_ms` on (ms since the Unix epoch: a run parked
    /// while it waits for a long backoff, so that whichever worker is alive then wakes it).
    /// Returns `false` (and changes nothing) if that lease was not held any more.
    fn release<'a>(
        &'a self,
        run: &'a str,
        epoch: u64,
        due_ms: Option<u64>,
    ) -> StoreFuture<'a, bool>;

    /// This store, with every write for run `run` fenced by lease `epoch`: in the same
    /// transaction as the write, the store checks that the run's lease epoch is still
    /// `epoch`, and fails with [`StoreError::LeaseLost`](super::StoreError::LeaseLost)
    /// (writing nothing) if another worker claimed the run since. Reads, and writes for
    /// other runs, are unchanged. A fenced `set_status` to a finished status also ends the
    /// lease.
    fn fenced(self: Arc<Self>, run: &str, epoch: u64) -> Arc<dyn Store>;

    /// Resolves when queue `queue` may have new work (a run enqueued, released, or
    /// finished, which frees a slot of the queue's concurrency), or after `timeout`,
    /// whichever is first. Workers wait on it between claims instead of polling in a tight
    /// loop; runs that become claimable by time alone (an expired lease, `not_before_ms`)
    /// are found by the claim after the timeout.
    fn wait_for_work<'a>(&'a self, queue: &'a str, timeout: Duration) -> BoxFuture<'a, ()>;
}
