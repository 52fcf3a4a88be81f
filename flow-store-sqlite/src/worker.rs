//! The threads that own the connections. SQLite is synchronous, so each connection lives on
//! a thread of its own, fed by a channel; callers await a tokio oneshot for the answer.
//!
//! **Group commit.** The writer takes one request, then whatever else is already queued (up
//! to `max_batch`), and runs them all in one `BEGIN IMMEDIATE` transaction, each inside its
//! own savepoint: a request that fails is rolled back to its savepoint alone and gets its
//! error, the others are kept. After the one `COMMIT` (one fsync with `synchronous=FULL`),
//! every request gets its answer, so no caller hears `Ok` before its change is durable. If
//! the commit fails, every request of the batch gets the error. Under load, the fsync's cost
//! is shared by every request that arrived while the previous batch was committing.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use tokio::sync::oneshot;

use flow_runtime::store::StoreError;

use crate::sql_error;

/// A request for the writer: `run` does its SQL inside the group transaction, `finish` gets
/// the outcome of the commit and answers the caller.
pub(crate) trait WriteJob: Send {
    /// Runs the request's SQL; `false` if it failed (its savepoint is then rolled back).
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller, once the group transaction committed (`Ok`) or failed.
    fn finish(self: Box<Self>, commit: Result<(), StoreError>);
}

pub(crate) struct Job<T, F> {
    work: Option<F>,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job<T, F> {
    pub(crate) fn new(work: F, reply: oneshot::Sender<Result<T, StoreError>>) -> Self {
        Job {
            work: Some(work),
            result: None,
            reply,
        }
    }
}

fn guarded<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    catch_unwind(AssertUnwindSafe(|| f(conn))).unwrap_or_else(|_| {
        Err(StoreError::Backend {
            message: "a store operation panicked".into(),
        })
    })
}

impl<T, F> WriteJob for Job<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        let result = guarded(conn, work);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, commit: Result<(), StoreError>) {
        let answer = match (self.result, commit) {
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(v)), Ok(())) => Ok(v),
            (_, Err(e)) => Err(e),
            (None, Ok(())) => Err(StoreError::Backend {
                message: "a request was not run".into(),
            }),
        };
        // The caller may have stopped waiting; the change is committed all the same.
        let _ = self.reply.send(answer);
    }
}

/// The write connection, shared by the writer thread and callers that write while the store
/// is idle ([`Writes::try_inline`]).
pub(crate) struct Writes {
    conn: Mutex<Connection>,
    /// Requests queued to the writer thread and not answered yet.
    queued: AtomicUsize,
    /// Transactions committed.
    pub(crate) commits: AtomicU64,
}

impl Writes {
    pub(crate) fn new(conn: Connection) -> Self {
        Writes {
            conn: Mutex::new(conn),
            queued: AtomicUsize::new(0),
            commits: AtomicU64::new(0),
        }
    }

    /// A request is about to be queued to the writer thread.
    pub(crate) fn queue(&self) {
        self.queued.fetch_add(1, Ordering::AcqRel);
    }

    /// A queued request could not be sent (the store is closing).
    pub(crate) fn unqueue(&self) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
    }

    /// Runs `job` on this thread, in a transaction of its own, when nothing is queued for the
    /// writer thread and the connection is free: no thread hand-off, which costs more than
    /// the commit itself on the machines measured. `job` is given back when the store is
    /// busy (it then goes to the writer thread, which groups what is queued).
    pub(crate) fn try_inline(&self, job: Box<dyn WriteJob>) -> Result<(), Box<dyn WriteJob>> {
        if self.queued.load(Ordering::Acquire) != 0 {
            return Err(job);
        }
        let Ok(conn) = self.conn.try_lock() else {
            return Err(job);
        };
        let mut batch = [job];
        let outcome = run_batch(&conn, &mut batch);
        drop(conn);
        if outcome.is_ok() {
            self.commits.fetch_add(1, Ordering::Relaxed);
        }
        let [job] = batch;
        job.finish(outcome);
        Ok(())
    }
}

/// The writer's loop: batches of queued requests, one transaction each. Ends when every
/// sender is gone.
pub(crate) fn writer(writes: Arc<Writes>, rx: Receiver<Box<dyn WriteJob>>, max_batch: usize) {
    let max_batch = max_batch.max(1);
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        // A poisoned lock: a request panicked inside `run_batch`'s guard, which contains it;
        // the connection is still sound.
        let conn = writes
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let outcome = run_batch(&conn, &mut batch);
        drop(conn);
        if outcome.is_ok() {
            writes.commits.fetch_add(1, Ordering::Relaxed);
        }
        writes.queued.fetch_sub(batch.len(), Ordering::AcqRel);
        for job in batch {
            job.finish(outcome.clone());
        }
    }
}

fn run_batch(conn: &Connection, batch: &mut [Box<dyn WriteJob>]) -> Result<(), StoreError> {
    // Cached statements: a batch runs these for every request.
    let exec = |sql: &str| {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map(drop)
            .map_err(sql_error)
    };
    exec("BEGIN IMMEDIATE")?;
    let body = (|| {
        if let [job] = batch {
            // Alone: a failed request rolls the transaction back, no savepoint needed.
            if !job.run(conn) {
                return exec("ROLLBACK");
            }
            return exec("COMMIT");
        }
        for job in batch.iter_mut() {
            exec("SAVEPOINT flow_job")?;
            if !job.run(conn) {
                exec("ROLLBACK TO flow_job")?;
            }
            exec("RELEASE flow_job")?;
        }
        exec("COMMIT")
    })();
    if body.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    body
}

/// A request for the reader: runs on the reader's connection inside a read transaction (a
/// consistent snapshot), and answers the caller itself.
pub(crate) type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

/// The reader's loop. Ends when every sender is gone.
pub(crate) fn reader(conn: Connection, rx: Receiver<ReadJob>) {
    while let Ok(job) = rx.recv() {
        let exec = |sql: &str| conn.prepare_cached(sql).and_then(|mut s| s.execute([]));
        let began = exec("BEGIN DEFERRED").is_ok();
        job(&conn);
        if began {
            let _ = exec("COMMIT");
        }
    }
}

/// Runs `f` for a read job, answering `reply` (and containing a panic).
pub(crate) fn answer<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    reply: oneshot::Sender<Result<T, StoreError>>,
) {
    let _ = reply.send(guarded(conn, f));
}
