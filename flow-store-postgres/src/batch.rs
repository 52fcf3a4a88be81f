//! Group commit: writes of one kind (step commits, run creations) made while earlier ones are
//! in flight are sent together, in one statement, one transaction, one WAL flush. Each
//! write is still checked and answered on its own, and only once its transaction is durable.
//!
//! No write waits for others to arrive: a write made while fewer than [`IN_FLIGHT`] are in
//! flight and none waits is sent at once by its caller, in a statement of its own. Else it
//! waits; a task sends what waits, in batches as large as what came in while the previous
//! round trip was under way, until nothing waits. So a lone run's writes each go out at once,
//! and a busy worker's go out together.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::future::BoxFuture;
use tokio::sync::oneshot;

use flow_runtime::store::StoreError;

use crate::Conn;

type Result<T> = std::result::Result<T, StoreError>;

/// How many sends of one kind may be in flight at once: while one waits for its WAL flush,
/// the next is sent.
const IN_FLIGHT: usize = 2;

/// A write that can be sent alone or in a batch.
pub(crate) trait Job: Send + Sync + Sized + 'static {
    /// Its answer.
    type Output: Send + 'static;

    /// Whether `self` and `other` cannot go in one batch (they write the same record).
    fn clashes(&self, other: &Self) -> bool;

    /// Sends `job` in a statement of its own.
    fn one<'a>(conn: &'a Conn, job: &'a Self) -> BoxFuture<'a, Result<Self::Output>>;

    /// Sends `jobs` (at least two, none clashing with another) in one statement: an answer
    /// a job, in order. `Err` when the statement failed as a whole.
    fn many<'a>(
        conn: &'a Conn,
        jobs: &'a [Self],
    ) -> BoxFuture<'a, Result<Vec<Result<Self::Output>>>>;
}

/// The writes of one kind of one store, waiting to be sent.
pub(crate) struct Batcher<J: Job> {
    /// The most writes a batch.
    max: usize,
    state: Mutex<State<J>>,
    /// Writes sent in a statement of their own.
    alone: AtomicU64,
    /// Statements that sent a batch, and the writes they sent.
    batches: AtomicU64,
    in_batches: AtomicU64,
}

/// How a [`PgStore`](crate::PgStore) has sent writes of one kind (see
/// [`PgStore::batching`](crate::PgStore::batching)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchCounts {
    /// Writes sent in a statement of their own.
    pub alone: u64,
    /// Statements that sent two writes or more together.
    pub batches: u64,
    /// The writes those statements sent.
    pub in_batches: u64,
    /// Writes waiting to be sent now.
    pub waiting: usize,
}

struct State<J: Job> {
    waiting: VecDeque<(J, oneshot::Sender<Result<J::Output>>)>,
    /// Sends in flight: calls sending alone, and tasks sending batches.
    sending: usize,
}

impl<J: Job> Batcher<J> {
    /// Batches of at most `max` writes (`max <= 1`: each write alone).
    pub(crate) fn new(max: usize) -> Batcher<J> {
        Batcher {
            max,
            state: Mutex::new(State {
                waiting: VecDeque::new(),
                sending: 0,
            }),
            alone: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            in_batches: AtomicU64::new(0),
        }
    }

    /// What it has sent, and what waits.
    pub(crate) fn counts(&self) -> BatchCounts {
        BatchCounts {
            alone: self.alone.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            in_batches: self.in_batches.load(Ordering::Relaxed),
            waiting: self.state().waiting.len(),
        }
    }

    /// Whether writes are batched at all.
    pub(crate) fn on(&self) -> bool {
        self.max > 1
    }

    fn state(&self) -> MutexGuard<'_, State<J>> {
        // A panic while the lock is held leaves the queue as it was: go on with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `job`: at once in a statement of its own when a slot is free and nothing
    /// waits, else with the next batch.
    pub(crate) async fn send(self: &Arc<Self>, conn: &Arc<Conn>, job: J) -> Result<J::Output> {
        let alone = {
            let mut state = self.state();
            let alone = !self.on() || (state.sending < IN_FLIGHT && state.waiting.is_empty());
            if alone {
                state.sending += 1;
            }
            alone
        };
        if alone {
            // Sent by this call, in its own task (no hop to another); the slot is handed to
            // the writes that queued meanwhile when it ends, also by a drop.
            let _slot = Slot {
                batcher: self.clone(),
                conn: conn.clone(),
            };
            self.alone.fetch_add(1, Ordering::Relaxed);
            return J::one(conn, &job).await;
        }
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut state = self.state();
            state.waiting.push_back((job, reply));
            let start = state.sending < IN_FLIGHT;
            if start {
                state.sending += 1;
            }
            start
        };
        if start {
            Sender::start(self.clone(), conn.clone());
        }
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::Backend {
                message: "the task sending a batch of writes to PostgreSQL ended before it \
                          was answered (its runtime shut down): the write's outcome is unknown"
                    .to_owned(),
            })
        })
    }

    /// The next batch: up to `max` waiting writes, none clashing with another (a clashing
    /// one waits for the next batch).
    #[allow(clippy::type_complexity)]
    fn next_batch(&self) -> Vec<(J, oneshot::Sender<Result<J::Output>>)> {
        let mut state = self.state();
        let mut batch: Vec<(J, oneshot::Sender<Result<J::Output>>)> = Vec::new();
        let mut later = Vec::new();
        while batch.len() < self.max.max(1) {
            let Some(next) = state.waiting.pop_front() else {
                break;
            };
            if batch.iter().any(|(job, _)| job.clashes(&next.0)) {
                later.push(next);
            } else {
                batch.push(next);
            }
        }
        while let Some(next) = later.pop() {
            state.waiting.push_front(next);
        }
        batch
    }
}

/// A slot held by a write sent alone: when it ends, or its future is dropped, the writes
/// that queued meanwhile get the slot (a task sending them), else it is freed.
struct Slot<J: Job> {
    batcher: Arc<Batcher<J>>,
    conn: Arc<Conn>,
}

impl<J: Job> Drop for Slot<J> {
    fn drop(&mut self) {
        let mut state = self.batcher.state();
        if state.waiting.is_empty() {
            state.sending -= 1;
            return;
        }
        drop(state);
        // The slot goes to the task (counted already).
        Sender::start(self.batcher.clone(), self.conn.clone());
    }
}

/// A task sending batches; counted in [`State::sending`] until it ends, also by a panic or
/// by its runtime shutting down.
struct Sender<J: Job> {
    batcher: Arc<Batcher<J>>,
    /// Uncounted already (the task saw nothing waiting).
    done: bool,
}

impl<J: Job> Drop for Sender<J> {
    fn drop(&mut self) {
        if !self.done {
            self.batcher.state().sending -= 1;
        }
    }
}

impl<J: Job> Sender<J> {
    /// Starts a task sending the waiting writes, in a slot counted already. Without a
    /// runtime to run it on (dropped as the runtime shuts down), the slot is freed. Writes
    /// left waiting by a task that ended with its runtime stay queued: the next write of
    /// their kind, on any runtime, starts a task that sends them with it (their callers, if
    /// gone, get no answer; the writes are made all the same).
    fn start(batcher: Arc<Batcher<J>>, conn: Arc<Conn>) {
        let sender = Sender {
            batcher,
            done: false,
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(sender.run(conn));
            }
            Err(_) => drop(sender),
        }
    }

    async fn run(mut self, conn: Arc<Conn>) {
        loop {
            let batch = self.batcher.next_batch();
            if batch.is_empty() {
                // Uncounted with the queue seen empty under the same lock: a write queued
                // after this starts a task of its own.
                let mut state = self.batcher.state();
                if state.waiting.is_empty() {
                    state.sending -= 1;
                    drop(state);
                    self.done = true;
                    return;
                }
                continue;
            }
            send(&self.batcher, &conn, batch).await;
        }
    }
}

/// Sends `batch` and answers each of its writes. One write goes alone (its own statement
/// is cheaper than a batch of one). A batch refused as a whole for what one of its writes
/// holds (not a connection failure) is sent again a write a statement, so that each gets
/// its own answer.
async fn send<J: Job>(
    batcher: &Batcher<J>,
    conn: &Conn,
    batch: Vec<(J, oneshot::Sender<Result<J::Output>>)>,
) {
    let (jobs, replies): (Vec<J>, Vec<_>) = batch.into_iter().unzip();
    if jobs.len() == 1 {
        for (job, reply) in jobs.iter().zip(replies) {
            batcher.alone.fetch_add(1, Ordering::Relaxed);
            let _ = reply.send(J::one(conn, job).await);
        }
        return;
    }
    batcher.batches.fetch_add(1, Ordering::Relaxed);
    batcher
        .in_batches
        .fetch_add(jobs.len() as u64, Ordering::Relaxed);
    match J::many(conn, &jobs).await {
        Ok(answers) if answers.len() == jobs.len() => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
        }
        Ok(answers) => {
            let error = StoreError::Backend {
                message: format!(
                    "PostgreSQL answered {} rows for a batch of {} writes",
                    answers.len(),
                    jobs.len()
                ),
            };
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
        Err(StoreError::Io { message }) => {
            for reply in replies {
                let _ = reply.send(Err(StoreError::Io {
                    message: message.clone(),
                }));
            }
        }
        Err(_) => {
            for (job, reply) in jobs.iter().zip(replies) {
                batcher.alone.fetch_add(1, Ordering::Relaxed);
                let _ = reply.send(J::one(conn, job).await);
            }
        }
    }
}
