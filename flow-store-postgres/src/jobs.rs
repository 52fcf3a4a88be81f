//! The writes sent in batches ([`crate::batch`]): step commits without compensation changes
//! (`flow_commit_steps`), runs created or enqueued without a deduplication key
//! (`flow_create_runs`), status changes (`flow_set_statuses`) and signals taken
//! (`flow_take_signals`). Each is sent by the single-write function (`flow_commit_step`,
//! `flow_create_run`, `flow_set_status`, `flow_take_signal`) when it goes by itself.

use futures_util::future::BoxFuture;
use tokio_postgres::types::ToSql;

use flow_runtime::store::{
    Committed, Created, Enqueue, NewRun, RunRecord, RunStatus, SignalRecord, StepCommit,
    StepOutcome, StoreError,
};

use crate::rows::{self, bits, get, item_col, ms};
use crate::{Conn, Resend};

type Result<T> = std::result::Result<T, StoreError>;

const COMMIT_STEPS: &str = "SELECT t.out_index, t.out_refused, t.out_first, (t.out_step).* \
     FROM flow_commit_steps($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) t";
const SET_STATUSES: &str = "SELECT t.out_index, t.out_refused, (t.out_run).* \
     FROM flow_set_statuses($1, $2, $3, $4) t";
const TAKE_SIGNALS: &str = "SELECT t.out_index, t.out_refused, t.out_seq, t.out_payload \
     FROM flow_take_signals($1, $2, $3) t";
const CREATE_RUNS: &str = "SELECT t.out_index, t.out_created, (t.out_run).* \
     FROM flow_create_runs($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) t";

/// A step commit: fenced by `epoch` (`None`: not fenced), told from another commit of its
/// step by `token` (a commit sent again after its answer was lost finds itself).
pub(crate) struct CommitJob {
    pub(crate) commit: StepCommit,
    pub(crate) epoch: Option<u64>,
    pub(crate) token: i64,
}

impl crate::batch::Job for CommitJob {
    type Output = Committed;

    fn clashes(&self, other: &Self) -> bool {
        self.commit.key == other.commit.key
    }

    fn one<'a>(conn: &'a Conn, job: &'a Self) -> BoxFuture<'a, Result<Committed>> {
        Box::pin(crate::store::commit_one(
            conn,
            &job.commit,
            job.epoch,
            job.token,
        ))
    }

    fn many<'a>(conn: &'a Conn, jobs: &'a [Self]) -> BoxFuture<'a, Result<Vec<Result<Committed>>>> {
        Box::pin(commit_many(conn, jobs))
    }
}

/// The commits of `jobs` as parallel arrays, one statement; an answer a commit, in order.
/// Sent again after a connection lost in flight: each commit carries its token, so a
/// commit its lost attempt made is recognised as its own.
async fn commit_many(conn: &Conn, jobs: &[CommitJob]) -> Result<Vec<Result<Committed>>> {
    let n = jobs.len();
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
    for (index, job) in (1..).zip(jobs) {
        let k = &job.commit.key;
        runs.push(k.run.as_str());
        nodes.push(k.node.as_str());
        occurrences.push(i64::from(k.occurrence));
        items.push(item_col(k.item));
        match &job.commit.outcome {
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
        epochs.push(job.epoch.map(ms));
        tokens.push(job.token);
        for a in &job.commit.attempts {
            // The commit's index, 1-based as SQL arrays.
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
    Ok(jobs
        .iter()
        .zip(&answer.rows)
        .map(|(job, row)| committed(job, row))
        .collect())
}

/// One commit's answer, from its row.
fn committed(job: &CommitJob, row: &tokio_postgres::Row) -> Result<Committed> {
    let key = &job.commit.key;
    match get::<Option<String>>(row, "out_refused")?.as_deref() {
        None => Ok(Committed {
            first: get(row, "out_first")?,
            pushed: Vec::new(),
            step: rows::step(row)?,
        }),
        Some(code) => Err(refusal(code, &key.run, job.epoch, || {
            format!("flow_commit_steps refused the commit of step {key}")
        })),
    }
}

/// The error of a write a batch refused with `code` (`FLNF0`: its run `run` is gone;
/// `FLLL0`: its lease epoch `epoch` is stale); another code is `what`, with the code.
fn refusal(code: &str, run: &str, epoch: Option<u64>, what: impl FnOnce() -> String) -> StoreError {
    match code {
        "FLNF0" => StoreError::NotFound {
            what: format!("run {run}"),
        },
        "FLLL0" => StoreError::LeaseLost {
            run: run.to_owned(),
            epoch: epoch.unwrap_or_default(),
        },
        other => StoreError::Backend {
            message: format!("{}: {other}", what()),
        },
    }
}

/// A run to create: in place (`queue: None`), or enqueued.
pub(crate) struct CreateJob {
    pub(crate) run: NewRun,
    pub(crate) queue: Option<String>,
    pub(crate) priority: i32,
    pub(crate) dedup_key: Option<String>,
    pub(crate) not_before_ms: Option<u64>,
    /// Tells this call's run from another's with the same id (a call sent again after its
    /// answer was lost finds its own run, and reports it created).
    pub(crate) token: i64,
}

impl CreateJob {
    /// A run created in place.
    pub(crate) fn in_place(run: NewRun, token: i64) -> CreateJob {
        CreateJob {
            run,
            queue: None,
            priority: 0,
            dedup_key: None,
            not_before_ms: None,
            token,
        }
    }

    /// A run enqueued.
    pub(crate) fn queued(e: Enqueue, token: i64) -> CreateJob {
        CreateJob {
            run: e.run,
            queue: Some(e.queue),
            priority: e.priority,
            dedup_key: e.dedup_key,
            not_before_ms: e.not_before_ms,
            token,
        }
    }

    /// Whether it may go in a batch: one with a deduplication key goes alone (its check
    /// and its error are `flow_create_run`'s).
    pub(crate) fn batchable(&self) -> bool {
        self.dedup_key.is_none()
    }
}

impl crate::batch::Job for CreateJob {
    type Output = Created;

    fn clashes(&self, other: &Self) -> bool {
        self.run.id == other.run.id
    }

    fn one<'a>(conn: &'a Conn, job: &'a Self) -> BoxFuture<'a, Result<Created>> {
        Box::pin(crate::store::create_one(conn, job))
    }

    fn many<'a>(conn: &'a Conn, jobs: &'a [Self]) -> BoxFuture<'a, Result<Vec<Result<Created>>>> {
        Box::pin(create_many(conn, jobs))
    }
}

/// The runs of `jobs` (none with a deduplication key) as parallel arrays, one statement;
/// an answer a run, in order. Safe to send again: each run carries its token.
async fn create_many(conn: &Conn, jobs: &[CreateJob]) -> Result<Vec<Result<Created>>> {
    let n = jobs.len();
    let mut ids = Vec::with_capacity(n);
    let mut workflows = Vec::with_capacity(n);
    let mut fingerprints = Vec::with_capacity(n);
    let mut inputs: Vec<&[u8]> = Vec::with_capacity(n);
    let mut tokens = Vec::with_capacity(n);
    let mut queues: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut priorities: Vec<i32> = Vec::with_capacity(n);
    let mut not_before: Vec<i64> = Vec::with_capacity(n);
    let mut n_runs: Vec<i32> = Vec::new();
    let mut n_nodes: Vec<&str> = Vec::new();
    let mut n_fingerprints: Vec<i64> = Vec::new();
    for (index, job) in (1..).zip(jobs) {
        ids.push(job.run.id.as_str());
        workflows.push(job.run.workflow.as_str());
        fingerprints.push(bits(job.run.fingerprint));
        inputs.push(job.run.input.as_slice());
        tokens.push(job.token);
        queues.push(job.queue.as_deref());
        priorities.push(job.priority);
        not_before.push(job.not_before_ms.map_or(0, ms));
        for (node, fingerprint) in &job.run.node_fingerprints {
            // The run's index, 1-based as SQL arrays.
            n_runs.push(index);
            n_nodes.push(node.as_str());
            n_fingerprints.push(bits(*fingerprint));
        }
    }
    let params: [&(dyn ToSql + Sync); 11] = [
        &ids,
        &workflows,
        &fingerprints,
        &inputs,
        &tokens,
        &queues,
        &priorities,
        &not_before,
        &n_runs,
        &n_nodes,
        &n_fingerprints,
    ];
    let answer = conn.exec(CREATE_RUNS, &params, Resend::Safe).await?;
    Ok(answer
        .rows
        .iter()
        .map(|row| {
            Ok(Created {
                created: get(row, "out_created")?,
                run: rows::run(row)?,
            })
        })
        .collect())
}

/// A run's status change: fenced by `epoch` (`None`: not fenced), with the run's result
/// when it finishes.
pub(crate) struct StatusJob {
    pub(crate) id: String,
    pub(crate) status: RunStatus,
    pub(crate) result: Option<Vec<u8>>,
    pub(crate) epoch: Option<u64>,
}

impl StatusJob {
    /// Whether it may go in a batch: one that gives a result with an unfinished status goes
    /// alone (the store's refusal is `flow_set_status`'s).
    pub(crate) fn batchable(&self) -> bool {
        self.result.is_none() || self.status.is_finished()
    }
}

impl crate::batch::Job for StatusJob {
    type Output = RunRecord;

    fn clashes(&self, other: &Self) -> bool {
        self.id == other.id
    }

    fn one<'a>(conn: &'a Conn, job: &'a Self) -> BoxFuture<'a, Result<RunRecord>> {
        Box::pin(crate::store::status_one(conn, job))
    }

    fn many<'a>(conn: &'a Conn, jobs: &'a [Self]) -> BoxFuture<'a, Result<Vec<Result<RunRecord>>>> {
        Box::pin(status_many(conn, jobs))
    }
}

/// The status changes of `jobs` as parallel arrays, one statement; an answer a change, in
/// order. Sent again after a connection lost in flight: a change then refused because the
/// run is finished already is a success if the run holds the very status and result asked
/// for (the lost attempt made it).
async fn status_many(conn: &Conn, jobs: &[StatusJob]) -> Result<Vec<Result<RunRecord>>> {
    let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
    let statuses: Vec<&str> = jobs.iter().map(|j| j.status.as_str()).collect();
    let results: Vec<Option<&[u8]>> = jobs.iter().map(|j| j.result.as_deref()).collect();
    let epochs: Vec<Option<i64>> = jobs.iter().map(|j| j.epoch.map(ms)).collect();
    let params: [&(dyn ToSql + Sync); 4] = [&ids, &statuses, &results, &epochs];
    let answer = conn.exec(SET_STATUSES, &params, Resend::Safe).await?;
    let in_doubt = answer.in_doubt;
    Ok(jobs
        .iter()
        .zip(&answer.rows)
        .map(|(job, row)| status_answer(job, row, in_doubt))
        .collect())
}

/// One status change's answer, from its row.
fn status_answer(job: &StatusJob, row: &tokio_postgres::Row, in_doubt: bool) -> Result<RunRecord> {
    let refused: Option<String> = get(row, "out_refused")?;
    let Some(refused) = refused else {
        return rows::run(row);
    };
    match refused.split_once(':') {
        Some(("FLCF0", current)) => {
            if in_doubt {
                let run = rows::run(row)?;
                if run.status == job.status && crate::store::has_result(&run, &job.result) {
                    return Ok(run);
                }
            }
            Err(StoreError::Conflict {
                what: format!(
                    "run {} is {current}: its status cannot become {}",
                    job.id,
                    job.status.as_str()
                ),
            })
        }
        _ => Err(refusal(&refused, &job.id, job.epoch, || {
            format!(
                "flow_set_statuses refused the status change of run {}",
                job.id
            )
        })),
    }
}

/// A signal to take: the oldest waiting signal `name` of run `run`, fenced by `epoch`
/// (`None`: not fenced).
pub(crate) struct TakeJob {
    pub(crate) run: String,
    pub(crate) name: String,
    pub(crate) epoch: Option<u64>,
}

impl crate::batch::Job for TakeJob {
    type Output = Option<SignalRecord>;

    fn clashes(&self, other: &Self) -> bool {
        self.run == other.run && self.name == other.name
    }

    fn one<'a>(conn: &'a Conn, job: &'a Self) -> BoxFuture<'a, Result<Option<SignalRecord>>> {
        Box::pin(crate::store::take_one(conn, job))
    }

    fn many<'a>(
        conn: &'a Conn,
        jobs: &'a [Self],
    ) -> BoxFuture<'a, Result<Vec<Result<Option<SignalRecord>>>>> {
        Box::pin(take_many(conn, jobs))
    }
}

/// The signals of `jobs` taken in one statement; an answer a job, in order. Not sent again
/// after a connection lost in flight (it would take other signals): every job then fails
/// with [`StoreError::Io`], the outcome unknown.
async fn take_many(conn: &Conn, jobs: &[TakeJob]) -> Result<Vec<Result<Option<SignalRecord>>>> {
    let runs: Vec<&str> = jobs.iter().map(|j| j.run.as_str()).collect();
    let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
    let epochs: Vec<Option<i64>> = jobs.iter().map(|j| j.epoch.map(ms)).collect();
    let params: [&(dyn ToSql + Sync); 3] = [&runs, &names, &epochs];
    let answer = conn.exec(TAKE_SIGNALS, &params, Resend::Never).await?;
    Ok(jobs
        .iter()
        .zip(&answer.rows)
        .map(|(job, row)| {
            if let Some(code) = get::<Option<String>>(row, "out_refused")? {
                return Err(refusal(&code, &job.run, job.epoch, || {
                    format!(
                        "flow_take_signals refused to take signal {} of run {}",
                        job.name, job.run
                    )
                }));
            }
            let Some(seq) = get::<Option<i64>>(row, "out_seq")? else {
                return Ok(None);
            };
            Ok(Some(SignalRecord {
                run: job.run.clone(),
                name: job.name.clone(),
                seq: rows::unms(seq),
                payload: get(row, "out_payload")?,
            }))
        })
        .collect())
}
