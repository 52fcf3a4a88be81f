//! Group commit: step commits made while earlier ones are in flight are sent together, in
//! one statement (`flow_commit_steps`), one transaction, one WAL flush. Each commit is
//! still checked and answered on its own, and only once its transaction is durable.
//!
//! No commit waits for others to arrive: a commit made while fewer than [`IN_FLIGHT`]
//! batches are in flight starts a task that sends it at once, with whatever else is
//! waiting by then; the task sends the next batch when its answer is back, until nothing
//! waits. So a lone run's commits each go out at once, and a busy worker's go out in
//! batches as large as the commits made while one round trip was under way.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;
use tokio_postgres::types::ToSql;

use flow_runtime::store::{Committed, StepCommit, StepKey, StepOutcome, StoreError};

use crate::rows::{self, get, item_col, ms};
use crate::{Conn, Resend};

type Result<T> = std::result::Result<T, StoreError>;

/// How many batches of one store may be in flight at once: while one waits for its WAL
/// flush, the next is sent.
const IN_FLIGHT: usize = 2;

const COMMIT_STEPS: &str = "SELECT t.out_index, t.out_refused, t.out_first, (t.out_step).* \
     FROM flow_commit_steps($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) t";

/// A commit waiting to be sent, and where its answer goes.
pub(crate) struct Pending {
    commit: StepCommit,
    /// The lease epoch it is fenced by (`None`: not fenced).
    epoch: Option<u64>,
    /// The random token that tells this commit from another of the same step.
    token: i64,
    reply: oneshot::Sender<Result<Committed>>,
}

/// The commits of one store waiting to be sent.
pub(crate) struct Commits {
    /// The most commits a batch.
    max: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    waiting: VecDeque<Pending>,
    /// Tasks sending batches.
    sending: usize,
}

impl Commits {
    /// Batches of at most `max` commits (`max <= 1`: no batching).
    pub(crate) fn new(max: usize) -> Commits {
        Commits {
            max,
            state: Mutex::new(State::default()),
        }
    }

    /// Whether `commit` goes in a batch: batching is on, and it changes no compensation
    /// (those are sent one by one, by `flow_commit_step`).
    pub(crate) fn takes(&self, commit: &StepCommit) -> bool {
        self.max > 1 && commit.compensations.is_empty()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while the lock is held leaves the queue as it was: go on with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Commits `commit`, fenced by `epoch`: at once in a statement of its own when a
    /// sending slot is free and nothing waits, else with the next batch.
    pub(crate) async fn commit(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        commit: StepCommit,
        epoch: Option<u64>,
        token: i64,
    ) -> Result<Committed> {
        let alone = {
            let mut state = self.state();
            let alone = state.sending < IN_FLIGHT && state.waiting.is_empty();
            if alone {
                state.sending += 1;
            }
            alone
        };
        if alone {
            // Sent by this call, in its own task (no hop to another); the slot is handed to
            // the commits that queued meanwhile when it ends, also by a drop.
            let _slot = Slot {
                commits: self.clone(),
                conn: conn.clone(),
            };
            return crate::store::commit_one(conn, &commit, epoch, token).await;
        }
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut state = self.state();
            state.waiting.push_back(Pending {
                commit,
                epoch,
                token,
                reply,
            });
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
                message: "the task sending a batch of step commits ended before it was \
                          answered (its runtime shut down): the commit's outcome is unknown"
                    .to_owned(),
            })
        })
    }

    /// The next batch: up to `max` waiting commits, of distinct steps (a second commit of a
    /// step waits for the next batch).
    fn next_batch(&self) -> Vec<Pending> {
        let mut state = self.state();
        let mut batch: Vec<Pending> = Vec::new();
        let mut later = VecDeque::new();
        while batch.len() < self.max.max(1) {
            let Some(pending) = state.waiting.pop_front() else {
                break;
            };
            if batch.iter().any(|p| p.commit.key == pending.commit.key) {
                later.push_back(pending);
            } else {
                batch.push(pending);
            }
        }
        while let Some(pending) = later.pop_back() {
            state.waiting.push_front(pending);
        }
        batch
    }
}

/// A sending slot held by a commit sent alone: when it ends, or its future is dropped, the
/// commits that queued meanwhile get the slot (a task sending them), else it is freed.
struct Slot {
    commits: Arc<Commits>,
    conn: Arc<Conn>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.commits.state();
        if state.waiting.is_empty() {
            state.sending -= 1;
            return;
        }
        drop(state);
        // The slot goes to the task (counted already).
        Sender::start(self.commits.clone(), self.conn.clone());
    }
}

/// A task sending batches; counted in [`State::sending`] until it ends, also by a panic or
/// by its runtime shutting down.
struct Sender {
    commits: Arc<Commits>,
    /// Uncounted already (the task saw nothing waiting).
    done: bool,
}

impl Drop for Sender {
    fn drop(&mut self) {
        if !self.done {
            self.commits.state().sending -= 1;
        }
    }
}

impl Sender {
    /// Starts a task sending the waiting commits, in a slot counted already. Without a
    /// runtime to run it on (being dropped as the runtime shuts down), the slot is freed:
    /// the commits waiting are then answered by the closed channel.
    fn start(commits: Arc<Commits>, conn: Arc<Conn>) {
        let sender = Sender {
            commits,
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
            let batch = self.commits.next_batch();
            if batch.is_empty() {
                // Uncounted with the queue seen empty under the same lock: a commit queued
                // after this starts a task of its own.
                let mut state = self.commits.state();
                if state.waiting.is_empty() {
                    state.sending -= 1;
                    drop(state);
                    self.done = true;
                    return;
                }
                continue;
            }
            send(&conn, batch).await;
        }
    }
}

/// Sends `batch` and answers each of its commits. A batch refused as a whole for what one
/// of its commits holds (not a connection failure) is sent again one commit a statement,
/// so that each commit gets its own answer.
async fn send(conn: &Arc<Conn>, mut batch: Vec<Pending>) {
    if batch.len() == 1 {
        // One commit: its own statement is cheaper than a batch of one.
        if let Some(p) = batch.pop() {
            let answer = crate::store::commit_one(conn, &p.commit, p.epoch, p.token).await;
            let _ = p.reply.send(answer);
        }
        return;
    }
    match commit_many(conn, &batch).await {
        Ok(answers) => {
            for (pending, answer) in batch.into_iter().zip(answers) {
                let _ = pending.reply.send(answer);
            }
        }
        Err(error) if batch.len() > 1 && !matches!(error, StoreError::Io { .. }) => {
            for p in batch {
                let answer = crate::store::commit_one(conn, &p.commit, p.epoch, p.token).await;
                let _ = p.reply.send(answer);
            }
        }
        Err(error) => {
            for pending in batch {
                let _ = pending.reply.send(Err(error.clone()));
            }
        }
    }
}

/// The commits of `batch` as parallel arrays, one statement; an answer a commit, in order.
/// Sent again after a connection lost in flight: each commit carries its token, so a
/// commit its lost attempt made is recognised as its own.
async fn commit_many(conn: &Conn, batch: &[Pending]) -> Result<Vec<Result<Committed>>> {
    let n = batch.len();
    let mut runs = Vec::with_capacity(n);
    let mut nodes = Vec::with_capacity(n);
    let mut occurrences = Vec::with_capacity(n);
    let mut items = Vec::with_capacity(n);
    let mut states = Vec::with_capacity(n);
    let mut outputs: Vec<Option<&[u8]>> = Vec::with_capacity(n);
    let mut failures: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut epochs = Vec::with_capacity(n);
    let mut tokens = Vec::with_capacity(n);
    let mut a_commits: Vec<i32> = Vec::new();
    let mut a_numbers: Vec<i64> = Vec::new();
    let mut a_started: Vec<i64> = Vec::new();
    let mut a_ended: Vec<Option<i64>> = Vec::new();
    let mut a_failures: Vec<Option<&str>> = Vec::new();
    for (i, p) in batch.iter().enumerate() {
        let k = &p.commit.key;
        runs.push(k.run.as_str());
        nodes.push(k.node.as_str());
        occurrences.push(i64::from(k.occurrence));
        items.push(item_col(k.item));
        match &p.commit.outcome {
            StepOutcome::Completed(out) => {
                states.push("completed");
                outputs.push(Some(out.as_slice()));
                failures.push(None);
            }
            StepOutcome::Failed(why) => {
                states.push("failed");
                outputs.push(None);
                failures.push(Some(why.as_str()));
            }
        }
        epochs.push(p.epoch.map(ms));
        tokens.push(p.token);
        // 1-based, as SQL arrays; a batch holds at most `Options::commit_batch` commits.
        let index = i32::try_from(i + 1).unwrap_or(i32::MAX);
        for a in &p.commit.attempts {
            a_commits.push(index);
            a_numbers.push(i64::from(a.number));
            a_started.push(ms(a.started_ms));
            a_ended.push(a.ended_ms.map(ms));
            a_failures.push(a.failure.as_deref());
        }
    }
    let params: [&(dyn ToSql + Sync); 14] = [
        &runs,
        &nodes,
        &occurrences,
        &items,
        &states,
        &outputs,
        &failures,
        &epochs,
        &tokens,
        &a_commits,
        &a_numbers,
        &a_started,
        &a_ended,
        &a_failures,
    ];
    let answer = conn.exec(COMMIT_STEPS, &params, Resend::Safe).await?;
    if answer.rows.len() != n {
        return Err(StoreError::Backend {
            message: format!(
                "flow_commit_steps answered {} rows for {n} commits",
                answer.rows.len()
            ),
        });
    }
    batch
        .iter()
        .zip(&answer.rows)
        .map(|(p, row)| Ok(committed(&p.commit.key, p.epoch, row)))
        .collect()
}

/// One commit's answer, from its row.
fn committed(key: &StepKey, epoch: Option<u64>, row: &tokio_postgres::Row) -> Result<Committed> {
    match get::<Option<String>>(row, "out_refused")?.as_deref() {
        None => Ok(Committed {
            first: get(row, "out_first")?,
            pushed: Vec::new(),
            step: rows::step(row)?,
        }),
        Some("FLNF0") => Err(StoreError::NotFound {
            what: format!("run {}", key.run),
        }),
        Some("FLLL0") => Err(StoreError::LeaseLost {
            run: key.run.clone(),
            epoch: epoch.unwrap_or_default(),
        }),
        Some(other) => Err(StoreError::Backend {
            message: format!("flow_commit_steps refused the commit of step {key}: {other}"),
        }),
    }
}
