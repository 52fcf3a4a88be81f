//! The [`Store`] and [`Queue`] methods: each one statement (most of them a call of one of the
//! schema's functions), and the fenced store of [`Queue::fenced`].

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio_postgres::types::ToSql;

use flow_runtime::store::{
    Claim, Committed, CompensationOp, CompensationRecord, Created, Enqueue, HistoryRecord,
    NewHistory, NewRun, Queue, RunFilter, RunPage, RunRecord, RunStatus, SignalRecord, StepCommit,
    StepKey, StepOutcome, StepProgress, StepRecord, Store, StoreError, StoreFuture,
};

use crate::jobs::{CommitJob, CreateJob, StatusJob, TakeJob};
use crate::rows::{self, bits, duration_ms, get, get_at, item_col, ms, unms};
use crate::{Conn, Failure, PgStore, Resend};

type Result<T> = std::result::Result<T, StoreError>;

const RUN_OF_CREATE: &str = "SELECT t.out_created, (t.out_run).* \
     FROM flow_create_run($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) t";
const GET_RUN: &str = "SELECT * FROM flow_run_view WHERE id = $1";
const SET_STATUS: &str = "SELECT * FROM flow_set_status($1, $2, $3, $4)";
const UNFINISHED_RUNS: &str = "SELECT * FROM flow_run_view \
     WHERE status IN ('pending', 'running', 'compensating') ORDER BY created_ms, id";
const SAVE_PROGRESS: &str =
    "SELECT flow_save_progress($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
const COMMIT_STEP: &str = "SELECT t.out_first, t.out_pushed, (t.out_step).* \
     FROM flow_commit_step($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
     $16, $17, $18, $19, $20) t";
const GET_STEP: &str = "SELECT * FROM flow_step_view \
     WHERE run_id = $1 AND node = $2 AND occurrence = $3 AND item = $4";
const STEPS_OF: &str =
    "SELECT * FROM flow_step_view WHERE run_id = $1 ORDER BY node, occurrence, item";
const UPDATE_COMPENSATIONS: &str =
    "SELECT flow_update_compensations($1, $2, $3, $4, $5, $6, $7, $8, $9)";
const COMPENSATIONS_OF: &str = "SELECT seq, node, occurrence, item, undo, status \
     FROM flow_compensations WHERE run_id = $1 ORDER BY seq";
const SEND_SIGNAL: &str = "SELECT flow_send_signal($1, $2, $3)";
const TAKE_SIGNAL: &str = "SELECT out_seq, out_payload FROM flow_take_signal($1, $2, $3)";
const TAKE_SIGNAL_INTO_STEP: &str =
    "SELECT out_seq, out_payload FROM flow_take_signal_into_step($1, $2, $3, $4, $5, $6)";
const SAVE_GRAPH: &str = "INSERT INTO flow_graphs (workflow, fingerprint, graph, saved_ms) \
     VALUES ($1, $2, $3, flow_now_ms()) ON CONFLICT DO NOTHING";
const GET_GRAPH: &str = "SELECT graph FROM flow_graphs WHERE workflow = $1 AND fingerprint = $2";
const RESET_STEPS: &str = "SELECT * FROM flow_reset_steps($1, $2)";
const RECORD_HISTORY: &str = "SELECT flow_record_history($1, $2, $3, $4)";
const HISTORY_OF: &str = "SELECT seq, at_ms, actor, action, detail \
     FROM flow_history WHERE run_id = $1 ORDER BY seq";
const CLAIM: &str = "SELECT * FROM flow_claim($1, $2, $3, $4, $5, $6, $7)";
const RENEW: &str = "SELECT out_run, out_epoch FROM flow_renew($1, $2, $3, $4)";
const RELEASE: &str = "SELECT flow_release($1, $2, $3)";

/// A random token that tells one call's write from another's (see the crate documentation).
fn token() -> i64 {
    fastrand::i64(..)
}

/// `error`, with the run and epoch a `LeaseLost` from the server leaves to the client.
fn fence_error(error: StoreError, run: &str, epoch: Option<u64>) -> StoreError {
    match (error, epoch) {
        (StoreError::LeaseLost { .. }, Some(epoch)) => StoreError::LeaseLost {
            run: run.to_owned(),
            epoch,
        },
        (other, _) => other,
    }
}

/// The compensation changes as parallel arrays, one element per change (what the schema's
/// functions take).
#[derive(Default)]
struct Ops<'a> {
    kinds: Vec<&'static str>,
    nodes: Vec<Option<&'a str>>,
    occurrences: Vec<Option<i64>>,
    items: Vec<Option<i64>>,
    undos: Vec<Option<&'a [u8]>>,
    seqs: Vec<Option<i64>>,
    statuses: Vec<Option<&'static str>>,
}

impl<'a> Ops<'a> {
    fn new(ops: &'a [CompensationOp]) -> Self {
        let mut o = Ops::default();
        for op in ops {
            let (kind, node, occurrence, item, undo, seq, status) = match op {
                CompensationOp::Push {
                    node,
                    occurrence,
                    item,
                    undo,
                } => (
                    "push",
                    Some(node.as_str()),
                    Some(i64::from(*occurrence)),
                    Some(item_col(*item)),
                    Some(undo.as_slice()),
                    None,
                    None,
                ),
                CompensationOp::Drop { seq } => {
                    ("drop", None, None, None, None, Some(ms(*seq)), None)
                }
                CompensationOp::Mark { seq, status } => (
                    "mark",
                    None,
                    None,
                    None,
                    None,
                    Some(ms(*seq)),
                    Some(status.as_str()),
                ),
            };
            o.kinds.push(kind);
            o.nodes.push(node);
            o.occurrences.push(occurrence);
            o.items.push(item);
            o.undos.push(undo);
            o.seqs.push(seq);
            o.statuses.push(status);
        }
        o
    }
}

/// The attempts as parallel arrays.
struct Attempts<'a> {
    numbers: Vec<i64>,
    started: Vec<i64>,
    ended: Vec<Option<i64>>,
    failures: Vec<Option<&'a str>>,
}

impl<'a> Attempts<'a> {
    fn new(attempts: &'a [flow_runtime::store::AttemptRecord]) -> Self {
        Attempts {
            numbers: attempts.iter().map(|a| i64::from(a.number)).collect(),
            started: attempts.iter().map(|a| ms(a.started_ms)).collect(),
            ended: attempts.iter().map(|a| a.ended_ms.map(ms)).collect(),
            failures: attempts.iter().map(|a| a.failure.as_deref()).collect(),
        }
    }
}

/// Whether finished run `run` holds `result` where its status keeps it.
pub(crate) fn has_result(run: &RunRecord, result: &Option<Vec<u8>>) -> bool {
    match run.status {
        RunStatus::Completed => run.output == *result && run.error.is_none(),
        _ => run.error == *result && run.output.is_none(),
    }
}

/// The first row of `rows`, or an error saying that `what` returned nothing.
fn first_row<'r>(rows: &'r [tokio_postgres::Row], what: &str) -> Result<&'r tokio_postgres::Row> {
    rows.first().ok_or_else(|| StoreError::Backend {
        message: format!("{what} returned no row"),
    })
}

fn signal_of(run: &str, name: &str, rows: &[tokio_postgres::Row]) -> Result<Option<SignalRecord>> {
    rows.first()
        .map(|row| {
            Ok(SignalRecord {
                run: run.to_owned(),
                name: name.to_owned(),
                seq: unms(get(row, "out_seq")?),
                payload: get(row, "out_payload")?,
            })
        })
        .transpose()
}

// The methods, with the lease epoch of a fenced write (`None`: not fenced).
impl PgStore {
    /// Creates the run of `job`: with the next batch of creations when it can go in one
    /// (see `batch`), else in a statement of its own.
    async fn create(&self, job: CreateJob) -> Result<Created> {
        if self.creates.on() && job.batchable() {
            return self.creates.send(&self.conn, job).await;
        }
        create_one(&self.conn, &job).await
    }

    /// Sets the status of run `id` (fenced by `epoch`): with the next batch of status
    /// changes when it can go in one (see `batch`), else in a statement of its own.
    async fn status(
        &self,
        id: &str,
        status: RunStatus,
        result: Option<Vec<u8>>,
        epoch: Option<u64>,
    ) -> Result<RunRecord> {
        let job = StatusJob {
            id: id.to_owned(),
            status,
            result,
            epoch,
        };
        if self.statuses.on() && job.batchable() {
            return self.statuses.send(&self.conn, job).await;
        }
        status_one(&self.conn, &job).await
    }

    async fn run(&self, id: &str) -> Result<Option<RunRecord>> {
        let answer = self.exec(GET_RUN, &[&id], Resend::Safe).await?;
        answer.rows.first().map(rows::run).transpose()
    }

    async fn progress(&self, p: &StepProgress, epoch: Option<u64>) -> Result<()> {
        let k = &p.key;
        let (occurrence, item) = (i64::from(k.occurrence), item_col(k.item));
        let counters: Vec<i64> = p.retry.counters.iter().map(|c| i64::from(*c)).collect();
        let wake = p.retry.wake_at_ms.map(ms);
        let number = p.attempt.as_ref().map(|a| i64::from(a.number));
        let started = p.attempt.as_ref().map(|a| ms(a.started_ms));
        let ended = p.attempt.as_ref().and_then(|a| a.ended_ms).map(ms);
        let failure = p.attempt.as_ref().and_then(|a| a.failure.as_deref());
        let fence = epoch.map(ms);
        let params: [&(dyn ToSql + Sync); 11] = [
            &k.run,
            &k.node,
            &occurrence,
            &item,
            &counters,
            &wake,
            &number,
            &started,
            &ended,
            &failure,
            &fence,
        ];
        self.exec(SAVE_PROGRESS, &params, Resend::Safe)
            .await
            .map_err(|e| fence_error(e, &k.run, epoch))?;
        Ok(())
    }

    /// Commits `c` (fenced by `epoch`): with the next batch of commits when it can go in
    /// one (see `batch`), else in a statement of its own.
    async fn commit(&self, c: StepCommit, epoch: Option<u64>) -> Result<Committed> {
        let job = CommitJob {
            commit: c,
            epoch,
            token: token(),
        };
        // Commits that change compensations go alone (`flow_commit_step` applies them).
        if self.commits.on() && job.commit.compensations.is_empty() {
            return self.commits.send(&self.conn, job).await;
        }
        commit_one(&self.conn, &job.commit, job.epoch, job.token).await
    }

    async fn compensate(
        &self,
        run: &str,
        changes: &[CompensationOp],
        epoch: Option<u64>,
    ) -> Result<Vec<u64>> {
        let ops = Ops::new(changes);
        let fence = epoch.map(ms);
        let params: [&(dyn ToSql + Sync); 9] = [
            &run,
            &ops.kinds,
            &ops.nodes,
            &ops.occurrences,
            &ops.items,
            &ops.undos,
            &ops.seqs,
            &ops.statuses,
            &fence,
        ];
        let answer = self
            .exec(UPDATE_COMPENSATIONS, &params, Resend::Never)
            .await
            .map_err(|e| fence_error(e, run, epoch))?;
        let pushed: Vec<i64> = get_at(first_row(&answer.rows, "flow_update_compensations")?, 0)?;
        Ok(pushed.into_iter().map(unms).collect())
    }

    async fn take(
        &self,
        run: &str,
        name: &str,
        epoch: Option<u64>,
    ) -> Result<Option<SignalRecord>> {
        let job = TakeJob {
            run: run.to_owned(),
            name: name.to_owned(),
            epoch,
        };
        if self.takes.on() {
            return self.takes.send(&self.conn, job).await;
        }
        take_one(&self.conn, &job).await
    }

    async fn take_into_step(
        &self,
        run: &str,
        name: &str,
        key: &StepKey,
        epoch: Option<u64>,
    ) -> Result<Option<SignalRecord>> {
        if key.run != run {
            return Err(StoreError::Invalid {
                what: format!("step {key} is not a step of run {run}"),
            });
        }
        let (occurrence, item) = (i64::from(key.occurrence), item_col(key.item));
        let fence = epoch.map(ms);
        let params: [&(dyn ToSql + Sync); 6] = [&run, &name, &key.node, &occurrence, &item, &fence];
        let answer = self
            .exec(TAKE_SIGNAL_INTO_STEP, &params, Resend::Safe)
            .await
            .map_err(|e| fence_error(e, run, epoch))?;
        signal_of(run, name, &answer.rows)
    }

    async fn list(&self, filter: &RunFilter) -> Result<RunPage> {
        let mut clauses = Vec::new();
        let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        if let Some(w) = &filter.workflow {
            args.push(Box::new(w.clone()));
            clauses.push(format!("workflow = ${}", args.len()));
        }
        if let Some(s) = filter.status {
            args.push(Box::new(s.as_str()));
            clauses.push(format!("status = ${}", args.len()));
        }
        if let Some(t) = filter.created_after {
            args.push(Box::new(ms(t)));
            clauses.push(format!("created_ms >= ${}", args.len()));
        }
        if let Some(t) = filter.created_before {
            args.push(Box::new(ms(t)));
            clauses.push(format!("created_ms < ${}", args.len()));
        }
        if let Some(cursor) = &filter.after {
            // A page cursor is `created_ms:id` of the last run of the page (as the other
            // stores'): it stays valid whatever happens to that run.
            let (created, id) = cursor
                .split_once(':')
                .and_then(|(c, id)| Some((c.parse::<i64>().ok()?, id.to_owned())))
                .ok_or_else(|| StoreError::Invalid {
                    what: format!("{cursor:?} is not a page cursor of this store"),
                })?;
            args.push(Box::new(created));
            args.push(Box::new(id));
            clauses.push(format!(
                "(created_ms, id) {} (${}, ${})",
                if filter.newest_first { "<" } else { ">" },
                args.len() - 1,
                args.len()
            ));
        }
        let limit = filter.limit.max(1);
        args.push(Box::new(
            i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1),
        ));
        let sql = format!(
            "SELECT * FROM flow_run_view {} ORDER BY {} LIMIT ${}",
            if clauses.is_empty() {
                String::new()
            } else {
                format!("WHERE {}", clauses.join(" AND "))
            },
            if filter.newest_first {
                "created_ms DESC, id DESC"
            } else {
                "created_ms, id"
            },
            args.len()
        );
        let params: Vec<&(dyn ToSql + Sync)> = args
            .iter()
            .map(|a| a.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let answer = self.exec(&sql, &params, Resend::Safe).await?;
        let mut runs = answer
            .rows
            .iter()
            .map(rows::run)
            .collect::<Result<Vec<_>>>()?;
        let next = if runs.len() > limit {
            runs.truncate(limit);
            runs.last().map(|r| format!("{}:{}", r.created_ms, r.id))
        } else {
            None
        };
        Ok(RunPage { runs, next })
    }
}

/// Sets a run's status as `job` says, in a statement of its own (`flow_set_status`).
pub(crate) async fn status_one(conn: &Conn, job: &StatusJob) -> Result<RunRecord> {
    let (id, status, result, epoch) = (&job.id, job.status, &job.result, job.epoch);
    let fence = epoch.map(ms);
    let params: [&(dyn ToSql + Sync); 4] = [id, &status.as_str(), result, &fence];
    let answer = match conn.exec_full(SET_STATUS, &params, Resend::Safe).await {
        Ok(answer) => answer,
        // An attempt lost in flight may have made this very change: then it is done.
        Err(Failure {
            error: StoreError::Conflict { what },
            in_doubt: true,
        }) => {
            let answer = conn.exec(GET_RUN, &[id], Resend::Safe).await?;
            return match answer.rows.first().map(rows::run).transpose()? {
                Some(run) if run.status == status && has_result(&run, result) => Ok(run),
                _ => Err(StoreError::Conflict { what }),
            };
        }
        Err(f) => return Err(fence_error(f.error, id, epoch)),
    };
    rows::run(first_row(&answer.rows, "flow_set_status")?)
}

/// Takes the oldest waiting signal `job` names, in a statement of its own
/// (`flow_take_signal`).
pub(crate) async fn take_one(conn: &Conn, job: &TakeJob) -> Result<Option<SignalRecord>> {
    let fence = job.epoch.map(ms);
    let params: [&(dyn ToSql + Sync); 3] = [&job.run, &job.name, &fence];
    let answer = conn
        .exec(TAKE_SIGNAL, &params, Resend::Never)
        .await
        .map_err(|e| fence_error(e, &job.run, job.epoch))?;
    signal_of(&job.run, &job.name, &answer.rows)
}

/// Creates the run of `job` in a statement of its own (`flow_create_run`).
pub(crate) async fn create_one(conn: &Conn, job: &CreateJob) -> Result<Created> {
    let new = &job.run;
    let (nodes, fingerprints): (Vec<&str>, Vec<i64>) = new
        .node_fingerprints
        .iter()
        .map(|(k, v)| (k.as_str(), bits(*v)))
        .unzip();
    let fingerprint = bits(new.fingerprint);
    let queue = job.queue.as_deref();
    let priority = job.queue.is_some().then_some(job.priority);
    let dedup = job.dedup_key.as_deref();
    let not_before = job.not_before_ms.map(ms);
    let params: [&(dyn ToSql + Sync); 11] = [
        &new.id,
        &new.workflow,
        &fingerprint,
        &nodes,
        &fingerprints,
        &new.input,
        &job.token,
        &queue,
        &priority,
        &dedup,
        &not_before,
    ];
    let answer = conn
        .exec(RUN_OF_CREATE, &params, Resend::Safe)
        .await
        .map_err(|e| match e {
            StoreError::Duplicate { run, .. } => StoreError::Duplicate {
                key: dedup.unwrap_or_default().to_owned(),
                run,
            },
            other => other,
        })?;
    let row = first_row(&answer.rows, "flow_create_run")?;
    Ok(Created {
        created: get(row, "out_created")?,
        run: rows::run(row)?,
    })
}

/// Commits `c` (fenced by `epoch`, told from another commit of its step by `token`) in a
/// statement of its own: `flow_commit_step`, which also applies compensation changes.
pub(crate) async fn commit_one(
    conn: &Conn,
    c: &StepCommit,
    epoch: Option<u64>,
    token: i64,
) -> Result<Committed> {
    let k = &c.key;
    let (occurrence, item) = (i64::from(k.occurrence), item_col(k.item));
    let (state, output, failure) = match &c.outcome {
        StepOutcome::Completed(out) => ("completed", Some(out.as_slice()), None),
        StepOutcome::Failed(why) => ("failed", None, Some(why.as_str())),
    };
    let attempts = Attempts::new(&c.attempts);
    let ops = Ops::new(&c.compensations);
    let fence = epoch.map(ms);
    let params: [&(dyn ToSql + Sync); 20] = [
        &k.run,
        &k.node,
        &occurrence,
        &item,
        &state,
        &output,
        &failure,
        &attempts.numbers,
        &attempts.started,
        &attempts.ended,
        &attempts.failures,
        &ops.kinds,
        &ops.nodes,
        &ops.occurrences,
        &ops.items,
        &ops.undos,
        &ops.seqs,
        &ops.statuses,
        &fence,
        &token,
    ];
    let answer = conn
        .exec(COMMIT_STEP, &params, Resend::Safe)
        .await
        .map_err(|e| fence_error(e, &k.run, epoch))?;
    let row = first_row(&answer.rows, "flow_commit_step")?;
    let pushed: Vec<i64> = get(row, "out_pushed")?;
    Ok(Committed {
        first: get(row, "out_first")?,
        pushed: pushed.into_iter().map(unms).collect(),
        step: rows::step(row)?,
    })
}

impl Store for PgStore {
    fn create_run(&self, new: NewRun) -> StoreFuture<'_, Created> {
        Box::pin(async move { self.create(CreateJob::in_place(new, token())).await })
    }

    fn get_run<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<RunRecord>> {
        Box::pin(self.run(id))
    }

    fn set_status<'a>(
        &'a self,
        id: &'a str,
        status: RunStatus,
        result: Option<Vec<u8>>,
    ) -> StoreFuture<'a, RunRecord> {
        Box::pin(self.status(id, status, result, None))
    }

    fn unfinished_runs(&self) -> StoreFuture<'_, Vec<RunRecord>> {
        Box::pin(async move {
            let answer = self.exec(UNFINISHED_RUNS, &[], Resend::Safe).await?;
            answer.rows.iter().map(rows::run).collect()
        })
    }

    fn list_runs(&self, filter: RunFilter) -> StoreFuture<'_, RunPage> {
        Box::pin(async move { self.list(&filter).await })
    }

    fn save_progress(&self, progress: StepProgress) -> StoreFuture<'_, ()> {
        Box::pin(async move { self.progress(&progress, None).await })
    }

    fn commit_step(&self, commit: StepCommit) -> StoreFuture<'_, Committed> {
        Box::pin(async move { self.commit(commit, None).await })
    }

    fn get_step<'a>(&'a self, key: &'a StepKey) -> StoreFuture<'a, Option<StepRecord>> {
        Box::pin(async move {
            let (occurrence, item) = (i64::from(key.occurrence), item_col(key.item));
            let params: [&(dyn ToSql + Sync); 4] = [&key.run, &key.node, &occurrence, &item];
            let answer = self.exec(GET_STEP, &params, Resend::Safe).await?;
            answer.rows.first().map(rows::step).transpose()
        })
    }

    fn steps_of<'a>(&'a self, run: &'a str) -> StoreFuture<'a, Vec<StepRecord>> {
        Box::pin(async move {
            let answer = self.exec(STEPS_OF, &[&run], Resend::Safe).await?;
            answer.rows.iter().map(rows::step).collect()
        })
    }

    fn update_compensations<'a>(
        &'a self,
        run: &'a str,
        ops: Vec<CompensationOp>,
    ) -> StoreFuture<'a, Vec<u64>> {
        Box::pin(async move { self.compensate(run, &ops, None).await })
    }

    fn compensations_of<'a>(&'a self, run: &'a str) -> StoreFuture<'a, Vec<CompensationRecord>> {
        Box::pin(async move {
            let answer = self.exec(COMPENSATIONS_OF, &[&run], Resend::Safe).await?;
            answer
                .rows
                .iter()
                .map(|row| rows::compensation(run, row))
                .collect()
        })
    }

    fn send_signal<'a>(
        &'a self,
        run: &'a str,
        name: &'a str,
        payload: Vec<u8>,
    ) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            let params: [&(dyn ToSql + Sync); 3] = [&run, &name, &payload];
            let answer = self.exec(SEND_SIGNAL, &params, Resend::Never).await?;
            Ok(unms(get_at(
                first_row(&answer.rows, "flow_send_signal")?,
                0,
            )?))
        })
    }

    fn take_signal<'a>(
        &'a self,
        run: &'a str,
        name: &'a str,
    ) -> StoreFuture<'a, Option<SignalRecord>> {
        Box::pin(self.take(run, name, None))
    }

    fn take_signal_into_step<'a>(
        &'a self,
        run: &'a str,
        name: &'a str,
        key: StepKey,
    ) -> StoreFuture<'a, Option<SignalRecord>> {
        Box::pin(async move { self.take_into_step(run, name, &key, None).await })
    }

    fn save_graph<'a>(
        &'a self,
        workflow: &'a str,
        fingerprint: u64,
        graph: Vec<u8>,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let fingerprint = bits(fingerprint);
            let params: [&(dyn ToSql + Sync); 3] = [&workflow, &fingerprint, &graph];
            self.exec(SAVE_GRAPH, &params, Resend::Safe).await?;
            Ok(())
        })
    }

    fn get_graph<'a>(
        &'a self,
        workflow: &'a str,
        fingerprint: u64,
    ) -> StoreFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            let fingerprint = bits(fingerprint);
            let params: [&(dyn ToSql + Sync); 2] = [&workflow, &fingerprint];
            let answer = self.exec(GET_GRAPH, &params, Resend::Safe).await?;
            answer.rows.first().map(|row| get_at(row, 0)).transpose()
        })
    }

    fn reset_steps<'a>(&'a self, run: &'a str, nodes: Vec<String>) -> StoreFuture<'a, RunRecord> {
        Box::pin(async move {
            let params: [&(dyn ToSql + Sync); 2] = [&run, &nodes];
            let answer = self.exec(RESET_STEPS, &params, Resend::Safe).await?;
            rows::run(first_row(&answer.rows, "flow_reset_steps")?)
        })
    }

    fn record_history<'a>(&'a self, run: &'a str, entry: NewHistory) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            let params: [&(dyn ToSql + Sync); 4] =
                [&run, &entry.actor, &entry.action, &entry.detail];
            let answer = self.exec(RECORD_HISTORY, &params, Resend::Never).await?;
            Ok(unms(get_at(
                first_row(&answer.rows, "flow_record_history")?,
                0,
            )?))
        })
    }

    fn history_of<'a>(&'a self, run: &'a str) -> StoreFuture<'a, Vec<HistoryRecord>> {
        Box::pin(async move {
            let answer = self.exec(HISTORY_OF, &[&run], Resend::Safe).await?;
            answer
                .rows
                .iter()
                .map(|row| rows::history(run, row))
                .collect()
        })
    }
}

impl Queue for PgStore {
    fn enqueue(&self, enqueue: Enqueue) -> StoreFuture<'_, Created> {
        Box::pin(async move { self.create(CreateJob::queued(enqueue, token())).await })
    }

    fn claim(&self, claim: Claim) -> StoreFuture<'_, Vec<RunRecord>> {
        Box::pin(async move {
            let max = i64::from(claim.max);
            let lease = duration_ms(claim.lease);
            let concurrency = claim.options.concurrency.map(i64::from);
            let rate_starts = claim.options.rate.map(|r| i64::from(r.starts));
            let rate_per = claim.options.rate.map(|r| duration_ms(r.per));
            let params: [&(dyn ToSql + Sync); 7] = [
                &claim.queue,
                &claim.worker,
                &max,
                &lease,
                &concurrency,
                &rate_starts,
                &rate_per,
            ];
            let answer = self.exec(CLAIM, &params, Resend::Never).await?;
            answer.rows.iter().map(rows::run).collect()
        })
    }

    fn renew<'a>(
        &'a self,
        worker: &'a str,
        leases: Vec<(String, u64)>,
        lease: Duration,
    ) -> StoreFuture<'a, Vec<bool>> {
        Box::pin(async move {
            let runs: Vec<&str> = leases.iter().map(|(run, _)| run.as_str()).collect();
            let epochs: Vec<i64> = leases.iter().map(|(_, epoch)| ms(*epoch)).collect();
            let lease = duration_ms(lease);
            let params: [&(dyn ToSql + Sync); 4] = [&worker, &runs, &epochs, &lease];
            let answer = self.exec(RENEW, &params, Resend::Safe).await?;
            let held = answer
                .rows
                .iter()
                .map(|row| Ok((get::<String>(row, "out_run")?, unms(get(row, "out_epoch")?))))
                .collect::<Result<std::collections::HashSet<_>>>()?;
            Ok(leases.into_iter().map(|l| held.contains(&l)).collect())
        })
    }

    fn release<'a>(
        &'a self,
        run: &'a str,
        epoch: u64,
        due_ms: Option<u64>,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let epoch = ms(epoch);
            let due = due_ms.map(ms);
            let params: [&(dyn ToSql + Sync); 3] = [&run, &epoch, &due];
            let answer = self.exec(RELEASE, &params, Resend::Safe).await?;
            get_at(first_row(&answer.rows, "flow_release")?, 0)
        })
    }

    fn fenced(self: Arc<Self>, run: &str, epoch: u64) -> Arc<dyn Store> {
        Arc::new(Fenced {
            store: self,
            run: run.to_owned(),
            epoch,
        })
    }

    fn wait_for_work<'a>(&'a self, queue: &'a str, timeout: Duration) -> BoxFuture<'a, ()> {
        Box::pin(self.waiters.wait(queue, timeout))
    }
}

/// A [`PgStore`] whose writes for one run are fenced by a lease epoch ([`Queue::fenced`]):
/// the check is made in the write's own transaction.
struct Fenced {
    store: Arc<PgStore>,
    run: String,
    epoch: u64,
}

impl Fenced {
    /// The epoch to check for a write of run `run`: only the fenced run's.
    fn epoch_for(&self, run: &str) -> Option<u64> {
        (run == self.run).then_some(self.epoch)
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
        Box::pin(self.store.status(id, status, result, self.epoch_for(id)))
    }

    fn unfinished_runs(&self) -> StoreFuture<'_, Vec<RunRecord>> {
        self.store.unfinished_runs()
    }

    fn list_runs(&self, filter: RunFilter) -> StoreFuture<'_, RunPage> {
        self.store.list_runs(filter)
    }

    fn save_progress(&self, progress: StepProgress) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let epoch = self.epoch_for(&progress.key.run);
            self.store.progress(&progress, epoch).await
        })
    }

    fn commit_step(&self, commit: StepCommit) -> StoreFuture<'_, Committed> {
        Box::pin(async move {
            let epoch = self.epoch_for(&commit.key.run);
            self.store.commit(commit, epoch).await
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
        Box::pin(async move { self.store.compensate(run, &ops, self.epoch_for(run)).await })
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
        Box::pin(self.store.take(run, name, self.epoch_for(run)))
    }

    fn take_signal_into_step<'a>(
        &'a self,
        run: &'a str,
        name: &'a str,
        key: StepKey,
    ) -> StoreFuture<'a, Option<SignalRecord>> {
        Box::pin(async move {
            self.store
                .take_into_step(run, name, &key, self.epoch_for(run))
                .await
        })
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
