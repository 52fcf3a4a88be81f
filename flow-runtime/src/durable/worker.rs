//! Workers: the processes that execute the runs enqueued on a shared store's queues, each
//! under a lease that it renews on a heartbeat.

use core::future::Future;
use core::time::Duration;
use std::collections::HashMap;
use std::sync::Arc;

use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{CANCEL_SIGNAL, Durability, DurableError, RunEnd, compatibility, lock, store_error};
use crate::registry::Registry;
use crate::runtime::Runtime;
use crate::store::{Claim, NewHistory, Queue, QueueOptions, RunRecord, RunStatus, StoreError};

/// Where and how [`Runtime::enqueue`] puts a run.
///
/// [`Runtime::enqueue`]: crate::Runtime::enqueue
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnqueueOptions {
    /// The queue's name.
    pub queue: String,
    /// Lower runs first (default 0).
    pub priority: i32,
    /// At most one run with this key in flight ([`StoreError::Duplicate`] otherwise).
    pub dedup_key: Option<String>,
    /// Not started before this much time has passed.
    pub delay: Option<Duration>,
}

impl EnqueueOptions {
    /// On queue `queue`, priority 0, no deduplication key, due now.
    pub fn queue(queue: impl Into<String>) -> Self {
        EnqueueOptions {
            queue: queue.into(),
            priority: 0,
            dedup_key: None,
            delay: None,
        }
    }

    /// With priority `priority` (lower runs first).
    #[must_use]
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// With deduplication key `key`.
    #[must_use]
    pub fn dedup_key(mut self, key: impl Into<String>) -> Self {
        self.dedup_key = Some(key.into());
        self
    }

    /// Due after `delay`.
    #[must_use]
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }
}

/// How a [`Worker`] works. [`WorkerOptions::new`] gives the defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerOptions {
    /// The worker's name, unique among the live workers of a store (it is written in each
    /// lease and in the runs' history). Default: `<host>:<pid>:<4 random hex digits>`.
    pub name: String,
    /// The queues it serves, each with its limits (the same limits in every worker).
    pub queues: Vec<(String, QueueOptions)>,
    /// At most this many runs executing in this worker at once. Default: 16.
    pub concurrency: u32,
    /// How long a lease lasts without renewal: a dead or stalled worker's runs are taken
    /// over this long after its last heartbeat. Default: 30 s.
    pub lease: Duration,
    /// How often the worker renews its leases. Default: a third of the lease.
    pub heartbeat: Duration,
    /// The longest a worker with free slots waits between two claims when no notification
    /// comes (runs whose delay or lease expires are found by time alone). Default: 1 s.
    pub poll: Duration,
    /// A run whose only step in flight waits for a backoff with at least this much left is
    /// parked: stopped (nothing undone: the attempt and the backoff's wake-up time are
    /// committed) and given back to its queue, due when the backoff ends, so that it holds
    /// no slot and no lease meanwhile and whichever worker is alive then wakes it. Shorter
    /// waits are slept in place. Default: the lease.
    pub park_after: Duration,
}

impl WorkerOptions {
    /// A worker of queue `queue` (no limits), with the defaults.
    pub fn new(queue: impl Into<String>) -> Self {
        let lease = Duration::from_secs(30);
        WorkerOptions {
            name: default_name(),
            queues: vec![(queue.into(), QueueOptions::default())],
            concurrency: 16,
            lease,
            heartbeat: lease / 3,
            poll: Duration::from_secs(1),
            park_after: lease,
        }
    }

    /// Named `name`.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// With the limits of a queue it serves (added if it is not served yet).
    #[must_use]
    pub fn queue(mut self, queue: impl Into<String>, options: QueueOptions) -> Self {
        let queue = queue.into();
        match self.queues.iter_mut().find(|(q, _)| *q == queue) {
            Some((_, o)) => *o = options,
            None => self.queues.push((queue, options)),
        }
        self
    }

    /// At most `n` runs at once in this worker.
    #[must_use]
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n;
        self
    }

    /// Leases of `lease`, renewed every third of it (and backoffs of at least `lease`
    /// parked).
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self.heartbeat = lease / 3;
        self.park_after = lease;
        self
    }

    /// Renews its leases every `heartbeat` (less than the lease).
    #[must_use]
    pub fn heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// Claims at least every `poll` when it has free slots.
    #[must_use]
    pub fn poll(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Parks runs whose backoff has at least `park_after` left.
    #[must_use]
    pub fn park_after(mut self, park_after: Duration) -> Self {
        self.park_after = park_after;
        self
    }
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "host".to_owned());
    format!("{host}:{}:{:04x}", std::process::id(), fastrand::u16(..))
}

/// What a [`Worker`] did, when [`Worker::run`] returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Runs claimed.
    pub claimed: u64,
    /// Of those, runs that had started before (on a worker whose lease expired, that
    /// released it at shutdown, or that parked it for a long wait).
    pub taken_over: u64,
    /// Runs that ended here with their result (completed, failed or cancelled).
    pub finished: u64,
    /// Runs stopped because their lease was lost (taken over, or not renewed in time):
    /// nothing undone, the new holder goes on.
    pub lost: u64,
    /// Runs stopped by their store or their record ([`DurableError`]): nothing undone, left
    /// for a later claim once the lease expires.
    pub stopped: u64,
    /// Runs not started: a workflow this worker's registry does not know, or a record it
    /// cannot resume. Left for another build; their lease expires.
    pub skipped: u64,
    /// Runs stopped and given back at shutdown, to be taken over by another worker at once.
    pub released: u64,
    /// Runs parked for a long backoff: stopped and given back to the queue, due when the
    /// backoff ends.
    pub parked: u64,
    /// Store failures while claiming or renewing (the worker goes on).
    pub store_errors: u64,
}

impl WorkerReport {
    /// Adds the counts of `other`.
    fn absorb(&mut self, other: &WorkerReport) {
        self.claimed += other.claimed;
        self.taken_over += other.taken_over;
        self.finished += other.finished;
        self.lost += other.lost;
        self.stopped += other.stopped;
        self.skipped += other.skipped;
        self.released += other.released;
        self.parked += other.parked;
        self.store_errors += other.store_errors;
    }
}

/// A worker: claims runs from the queues of a shared store ([`Queue`]) and executes them,
/// each under a lease renewed on a heartbeat, until told to shut down.
///
/// A run enqueued with [`Runtime::enqueue`] (by any process) is claimed by one live worker
/// of its queue, resumed from its last committed step (a new run from its first), and its
/// every write goes through [`Queue::fenced`]: once another worker takes the run over,
/// nothing this worker does for it reaches the store. When a worker dies (killed) or stalls
/// (stopped, frozen) for longer than its lease, another worker takes its runs over. A worker
/// that cannot renew a lease in time (the store unreachable) stops that run itself.
///
/// ```no_run
/// # use flow_runtime::durable::{Worker, WorkerOptions};
/// # use flow_runtime::{Registry, Runtime};
/// # async fn demo(store: std::sync::Arc<dyn flow_runtime::store::Queue>, registry: Registry) {
/// let runtime = Runtime::new().with_queue(store);
/// let worker = Worker::new(&runtime, registry, WorkerOptions::new("provision")).unwrap();
/// let report = worker.run(async { tokio::signal::ctrl_c().await.ok(); }).await;
/// println!("{report:?}");
/// # }
/// ```
///
/// [`Runtime::enqueue`]: crate::Runtime::enqueue
pub struct Worker {
    runtime: Runtime,
    durability: Durability,
    queue: Arc<dyn Queue>,
    registry: Arc<Registry>,
    options: WorkerOptions,
}

impl core::fmt::Debug for Worker {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Worker")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// A run executing here.
struct Held {
    epoch: u64,
    abort: tokio::task::AbortHandle,
    /// Until when the lease is known to be held, on this process's clock (from the start of
    /// the last renewal that succeeded).
    until: Instant,
}

/// How long a worker woken by new work waits before it claims, so that runs enqueued
/// together are claimed in one statement.
const CLAIM_COALESCE: Duration = Duration::from_millis(5);

/// A run's task ended: (run, epoch, how).
type Ended = (String, u64, RunEnd);

/// A run can be parked: (run, epoch, wake-up ms).
type Park = (String, u64, u64);

/// Where a worker's runs report to its loop.
struct Channels {
    ended: mpsc::UnboundedSender<Ended>,
    park: mpsc::UnboundedSender<Park>,
}

impl Worker {
    /// A worker executing the runs of `options.queues` with the durable workflows of
    /// `registry` ([`Registry::register_durable`]), on `runtime` (its observers and limits),
    /// whose store must be a queue ([`Runtime::with_queue`]).
    ///
    /// [`Runtime::with_queue`]: crate::Runtime::with_queue
    pub fn new(
        runtime: &Runtime,
        registry: Registry,
        options: WorkerOptions,
    ) -> Result<Worker, DurableError> {
        let invalid = |what: &str| {
            store_error(
                "*",
                StoreError::Invalid {
                    what: what.to_owned(),
                },
            )
        };
        let durability = runtime.durability("*")?.clone();
        let Some(queue) = durability.queue.clone() else {
            return Err(invalid(
                "a worker needs a runtime whose store is a queue: build it with \
                 `Runtime::with_queue`",
            ));
        };
        if options.queues.is_empty() {
            return Err(invalid("a worker needs at least one queue"));
        }
        if options.concurrency == 0 {
            return Err(invalid("a worker's concurrency must be at least 1"));
        }
        if options.heartbeat.is_zero() || options.heartbeat >= options.lease {
            return Err(invalid(&format!(
                "a worker's heartbeat ({:?}) must be shorter than its lease ({:?})",
                options.heartbeat, options.lease
            )));
        }
        Ok(Worker {
            runtime: runtime.clone(),
            durability,
            queue,
            registry: Arc::new(registry),
            options,
        })
    }

    /// The worker's name (as written in its leases).
    pub fn name(&self) -> &str {
        &self.options.name
    }

    /// Claims and executes runs until `shutdown` resolves; then stops the runs still
    /// executing (nothing is undone: each resumes from its last committed step) and releases
    /// their leases, so that another worker takes them over at once.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> WorkerReport {
        let mut report = WorkerReport::default();
        let mut held: HashMap<String, Held> = HashMap::new();
        let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<Ended>();
        let (park_tx, mut park_rx) = mpsc::unbounded_channel::<Park>();
        let channels = Channels {
            ended: ended_tx,
            park: park_tx,
        };
        let mut heartbeat = tokio::time::interval(self.options.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shutdown = shutdown.fuse();
        futures_util::pin_mut!(shutdown);
        // Claims take runs in batches: a busy worker claims again once an eighth of its slots
        // are free (or it holds nothing), not after every run that ends.
        let batch = (self.options.concurrency / 8).max(1);
        loop {
            let room = self
                .options
                .concurrency
                .saturating_sub(u32::try_from(held.len()).unwrap_or(u32::MAX));
            if room >= batch || (room > 0 && held.is_empty()) {
                self.claim(room, &mut held, &channels, &mut report).await;
            }
            let room = self
                .options
                .concurrency
                .saturating_sub(u32::try_from(held.len()).unwrap_or(u32::MAX));
            let work = async {
                if room < batch && !held.is_empty() {
                    return core::future::pending().await;
                }
                let waits = self
                    .options
                    .queues
                    .iter()
                    .map(|(q, _)| self.queue.wait_for_work(q, self.options.poll));
                futures_util::future::select_all(waits).await;
                // Runs enqueued together (a burst) are claimed together.
                tokio::time::sleep(CLAIM_COALESCE).await;
            };
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some((run, epoch, end)) = ended_rx.recv() => {
                    self.ended(&run, epoch, end, &mut held, &mut report);
                }
                Some((run, epoch, wake)) = park_rx.recv() => {
                    self.park(&run, epoch, wake, &mut held, &mut report).await;
                }
                _ = heartbeat.tick() => self.renew(&mut held, &mut report).await,
                () = work => {}
            }
        }
        while let Ok((run, epoch, end)) = ended_rx.try_recv() {
            self.ended(&run, epoch, end, &mut held, &mut report);
        }
        for (run, h) in held.drain() {
            h.abort.abort();
            lock(&self.durability.active).remove(&run);
            match self.queue.release(&run, h.epoch, None).await {
                Ok(true) => report.released += 1,
                // Not held any more: it ended just now, or another worker has it.
                Ok(false) => match self.queue.get_run(&run).await {
                    Ok(Some(r)) if r.status.is_finished() => report.finished += 1,
                    _ => report.lost += 1,
                },
                Err(_) => report.store_errors += 1,
            }
        }
        report
    }

    /// Claims up to `room` runs from each queue (while there is room) and starts them.
    async fn claim(
        &self,
        mut room: u32,
        held: &mut HashMap<String, Held>,
        channels: &Channels,
        report: &mut WorkerReport,
    ) {
        for (queue, options) in &self.options.queues {
            if room == 0 {
                return;
            }
            let asked = Instant::now();
            let claimed = match self
                .queue
                .claim(Claim {
                    worker: self.options.name.clone(),
                    queue: queue.clone(),
                    options: *options,
                    max: room,
                    lease: self.options.lease,
                })
                .await
            {
                Ok(runs) => runs,
                Err(_) => {
                    report.store_errors += 1;
                    continue;
                }
            };
            report.claimed += claimed.len() as u64;
            room = room.saturating_sub(u32::try_from(claimed.len()).unwrap_or(u32::MAX));
            let until = asked + self.options.lease;
            // Started together: their first reads and writes go to the store at once (a
            // store that batches them sends them in few statements).
            let starts = claimed.into_iter().map(|run| async move {
                let mut counts = WorkerReport::default();
                let started = self.start(run, until, channels, &mut counts).await;
                (started, counts)
            });
            for (started, counts) in futures_util::future::join_all(starts).await {
                report.absorb(&counts);
                if let Some((id, h)) = started {
                    held.insert(id, h);
                }
            }
        }
    }

    /// Starts a claimed run, or says why not in its history.
    async fn start(
        &self,
        run: RunRecord,
        until: Instant,
        channels: &Channels,
        report: &mut WorkerReport,
    ) -> Option<(String, Held)> {
        let epoch = run.lease.as_ref()?.epoch;
        let id = run.id.clone();
        let fenced = Arc::clone(&self.queue).fenced(&id, epoch);
        let skip = |action: &str, detail: String| NewHistory {
            actor: format!("worker {}", self.options.name),
            action: action.to_owned(),
            detail,
        };
        let Some(resumer) = self.registry.durable.get(&run.workflow) else {
            report.skipped += 1;
            let detail = format!(
                "not started: this worker does not know workflow `{}`",
                run.workflow
            );
            let _ = self.queue.record_history(&id, skip("skip", detail)).await;
            return None;
        };
        // A run claimed for the first time (epoch 1, never started) has no steps: every step
        // is written under a lease, and `reset_steps` moves the epoch on.
        let fresh = epoch == 1 && run.status == RunStatus::Pending;
        let steps = if fresh {
            Vec::new()
        } else {
            match self.queue.steps_of(&id).await {
                Ok(steps) => steps,
                Err(_) => {
                    report.store_errors += 1;
                    return None;
                }
            }
        };
        if let Err(e) = compatibility(resumer.graph(), &run, &steps) {
            report.skipped += 1;
            let _ = self
                .queue
                .record_history(&id, skip("skip", format!("not resumable here: {e}")))
                .await;
            return None;
        }
        if run.status != RunStatus::Pending {
            report.taken_over += 1;
            let detail = format!(
                "resumed from its last committed step (lease epoch {epoch}): its previous \
                 worker died, stalled, shut down, or parked it for a wait"
            );
            let _ = self
                .queue
                .record_history(&id, skip("takeover", detail))
                .await;
        }
        // A cancellation asked while no worker ran it.
        let cancelled = match fenced.take_signal(&id, CANCEL_SIGNAL).await {
            Ok(signal) => signal.is_some(),
            Err(StoreError::LeaseLost { .. }) => {
                report.lost += 1;
                return None;
            }
            Err(_) => {
                report.store_errors += 1;
                return None;
            }
        };
        let park = channels.park.clone();
        let durability = Durability {
            store: fenced,
            park: Some(Arc::new(move |run: &str, wake: u64| {
                let _ = park.send((run.to_owned(), epoch, wake));
            })),
            ..self.durability.clone()
        };
        let resumed = match resumer.resume(&self.runtime, &durability, run, steps, cancelled) {
            Ok(r) => r,
            Err(e) => {
                report.skipped += 1;
                let _ = self
                    .queue
                    .record_history(&id, skip("skip", format!("cannot start: {e}")))
                    .await;
                return None;
            }
        };
        let abort = resumed.abort.clone();
        let tx = channels.ended.clone();
        let run_id = id.clone();
        tokio::spawn(async move {
            let end = resumed.done.await;
            let _ = tx.send((run_id, epoch, end));
        });
        Some((
            id,
            Held {
                epoch,
                abort,
                until,
            },
        ))
    }

    /// A run's task ended.
    fn ended(
        &self,
        run: &str,
        epoch: u64,
        end: RunEnd,
        held: &mut HashMap<String, Held>,
        report: &mut WorkerReport,
    ) {
        // A task of a lease given up already (lost, then claimed again here) is not this one.
        if held.get(run).is_none_or(|h| h.epoch != epoch) {
            return;
        }
        held.remove(run);
        match end {
            RunEnd::Finished(_) => report.finished += 1,
            RunEnd::Stopped { lost: true, .. } => report.lost += 1,
            RunEnd::Stopped { lost: false, .. } => report.stopped += 1,
        }
    }

    /// Parks run `run` (lease `epoch`) until `wake` if its backoff is long enough: stops it
    /// and gives it back to the queue, due then.
    async fn park(
        &self,
        run: &str,
        epoch: u64,
        wake: u64,
        held: &mut HashMap<String, Held>,
        report: &mut WorkerReport,
    ) {
        let park_after = u64::try_from(self.options.park_after.as_millis()).unwrap_or(u64::MAX);
        if held.get(run).is_none_or(|h| h.epoch != epoch)
            || wake.saturating_sub(crate::store::now_ms()) < park_after
        {
            return;
        }
        if let Some(h) = held.remove(run) {
            h.abort.abort();
            lock(&self.durability.active).remove(run);
            match self.queue.release(run, epoch, Some(wake)).await {
                Ok(true) => report.parked += 1,
                Ok(false) => report.lost += 1,
                // The lease runs out by itself; the run is taken over then.
                Err(_) => report.store_errors += 1,
            }
        }
    }

    /// Renews every lease held; stops the runs whose lease is lost, or could not be renewed
    /// before it ran out.
    async fn renew(&self, held: &mut HashMap<String, Held>, report: &mut WorkerReport) {
        if held.is_empty() {
            return;
        }
        let asked = Instant::now();
        let leases: Vec<(String, u64)> = held.iter().map(|(r, h)| (r.clone(), h.epoch)).collect();
        let answer = self
            .queue
            .renew(&self.options.name, leases.clone(), self.options.lease)
            .await;
        let now = Instant::now();
        let lost: Vec<String> = match answer {
            Ok(kept) => leases
                .into_iter()
                .zip(kept)
                .filter_map(|((run, _), kept)| {
                    if kept {
                        if let Some(h) = held.get_mut(&run) {
                            h.until = asked + self.options.lease;
                        }
                        None
                    } else {
                        Some(run)
                    }
                })
                .collect(),
            Err(_) => {
                report.store_errors += 1;
                // Not renewed: a lease that has run out on this clock may be another
                // worker's now.
                held.iter()
                    .filter(|(_, h)| h.until <= now)
                    .map(|(r, _)| r.clone())
                    .collect()
            }
        };
        for run in lost {
            if let Some(h) = held.remove(&run) {
                h.abort.abort();
                lock(&self.durability.active).remove(&run);
                report.lost += 1;
            }
        }
    }
}
