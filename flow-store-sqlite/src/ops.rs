//! The SQL of each store operation, on a connection that is already inside a transaction
//! (the writer's group transaction, or a reader's snapshot).

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, Row, ToSql, params};

use flow_runtime::store::{
    AttemptRecord, Committed, CompensationOp, CompensationRecord, CompensationStatus, Created,
    HistoryRecord, NewHistory, NewRun, RetryState, RunFilter, RunPage, RunRecord, RunStatus,
    SignalRecord, StepCommit, StepKey, StepOutcome, StepProgress, StepRecord, StoreError, now_ms,
};

use crate::sql_error;

type Result<T> = std::result::Result<T, StoreError>;

// u64 values are stored as the i64 with the same bits (fingerprints), or saturated
// (timestamps, which never reach 2^63 ms).
fn bits(v: u64) -> i64 {
    v as i64
}
fn unbits(v: i64) -> u64 {
    v as u64
}
fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
fn unms(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
fn item_col(item: Option<u32>) -> i64 {
    item.map_or(-1, i64::from)
}
fn item_of(v: i64) -> Option<u32> {
    u32::try_from(v).ok()
}

fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt { what: what.into() }
}

fn not_found(what: impl Into<String>) -> StoreError {
    StoreError::NotFound { what: what.into() }
}

const RUN_COLUMNS: &str =
    "id, workflow, fingerprint, input, status, output, error, created_ms, updated_ms, nodes";

/// A run's row, with its status and its nodes' fingerprints as stored (text, checked by
/// [`finish_run`]).
type RunRow = (RunRecord, String, String);

fn run_from_row(row: &Row<'_>) -> rusqlite::Result<RunRow> {
    let status: String = row.get(4)?;
    Ok((
        RunRecord {
            id: row.get(0)?,
            workflow: row.get(1)?,
            fingerprint: unbits(row.get(2)?),
            node_fingerprints: BTreeMap::new(),
            input: row.get(3)?,
            status: RunStatus::Pending,
            output: row.get(5)?,
            error: row.get(6)?,
            created_ms: unms(row.get(7)?),
            updated_ms: unms(row.get(8)?),
            // This store has no queues: every run is run in place.
            queue: None,
            lease: None,
        },
        status,
        row.get(9)?,
    ))
}

fn finish_run((mut run, status, nodes): RunRow) -> Result<RunRecord> {
    run.status = RunStatus::parse(&status)
        .ok_or_else(|| corrupt(format!("run {} has an unknown status {status:?}", run.id)))?;
    let nodes: BTreeMap<String, i64> = serde_json::from_str(&nodes).map_err(|e| {
        corrupt(format!(
            "run {} has unreadable node fingerprints {nodes:?}: {e}",
            run.id
        ))
    })?;
    run.node_fingerprints = nodes.into_iter().map(|(k, v)| (k, unbits(v))).collect();
    Ok(run)
}

/// A run's nodes' fingerprints as stored: one JSON object, node key -> the i64 of the same bits.
fn nodes_text(nodes: &BTreeMap<String, u64>) -> String {
    let bits: BTreeMap<&str, i64> = nodes.iter().map(|(k, v)| (k.as_str(), bits(*v))).collect();
    serde_json::to_string(&bits).unwrap_or_else(|_| "{}".to_owned())
}

pub(crate) fn get_run(conn: &Connection, id: &str) -> Result<Option<RunRecord>> {
    let row = conn
        .prepare_cached(&format!(
            "SELECT {RUN_COLUMNS} FROM flow_runs WHERE id = ?1"
        ))
        .map_err(sql_error)?
        .query_row([id], run_from_row)
        .optional()
        .map_err(sql_error)?;
    row.map(finish_run).transpose()
}

fn existing_run(conn: &Connection, id: &str) -> Result<RunRecord> {
    get_run(conn, id)?.ok_or_else(|| not_found(format!("run {id}")))
}

fn require_run(conn: &Connection, id: &str) -> Result<()> {
    let found = conn
        .prepare_cached("SELECT 1 FROM flow_runs WHERE id = ?1")
        .map_err(sql_error)?
        .exists([id])
        .map_err(sql_error)?;
    if found {
        Ok(())
    } else {
        Err(not_found(format!("run {id}")))
    }
}

pub(crate) fn create_run(conn: &Connection, new: &NewRun, status: RunStatus) -> Result<Created> {
    let now = now_ms();
    // The primary key decides, also between processes: the first insert wins, the others
    // do nothing and read the winner's run.
    let inserted = conn
        .prepare_cached(
            "INSERT INTO flow_runs
                 (id, workflow, fingerprint, input, status, created_ms, updated_ms, nodes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7)
             ON CONFLICT (id) DO NOTHING",
        )
        .map_err(sql_error)?
        .execute(params![
            new.id,
            new.workflow,
            bits(new.fingerprint),
            new.input,
            status.as_str(),
            ms(now),
            nodes_text(&new.node_fingerprints)
        ])
        .map_err(sql_error)?;
    if inserted == 0 {
        return Ok(Created {
            run: existing_run(conn, &new.id)?,
            created: false,
        });
    }
    // Created: the record is what was just written, with nothing to read back.
    Ok(Created {
        run: RunRecord {
            id: new.id.clone(),
            workflow: new.workflow.clone(),
            fingerprint: new.fingerprint,
            node_fingerprints: new.node_fingerprints.clone(),
            input: new.input.clone(),
            status,
            output: None,
            error: None,
            created_ms: unms(ms(now)),
            updated_ms: unms(ms(now)),
            queue: None,
            lease: None,
        },
        created: true,
    })
}

pub(crate) fn set_status(
    conn: &Connection,
    id: &str,
    status: RunStatus,
    result: Option<Vec<u8>>,
) -> Result<RunRecord> {
    if result.is_some() && !status.is_finished() {
        return Err(StoreError::Invalid {
            what: format!("a result given with status {status}, which has none"),
        });
    }
    let mut run = existing_run(conn, id)?;
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
    // A clock that went back does not make a run updated before it was created.
    let updated = ms(now_ms()).max(ms(run.created_ms));
    conn.prepare_cached(
        "UPDATE flow_runs SET status = ?2, output = ?3, error = ?4, updated_ms = ?5 WHERE id = ?1",
    )
    .map_err(sql_error)?
    .execute(params![id, status.as_str(), output, error, updated])
    .map_err(sql_error)?;
    // The record as updated, from the one read before the update.
    run.status = status;
    run.output = output;
    run.error = error;
    run.updated_ms = unms(updated);
    Ok(run)
}

fn runs_where(conn: &Connection, clause: &str, args: &[&dyn ToSql]) -> Result<Vec<RunRecord>> {
    let mut stmt = conn
        .prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM flow_runs {clause}"))
        .map_err(sql_error)?;
    let rows = stmt
        .query_map(args, run_from_row)
        .map_err(sql_error)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(sql_error)?;
    rows.into_iter().map(finish_run).collect()
}

pub(crate) fn unfinished_runs(conn: &Connection) -> Result<Vec<RunRecord>> {
    runs_where(
        conn,
        "WHERE status IN ('pending', 'running', 'compensating') ORDER BY created_ms, id",
        &[],
    )
}

/// A page cursor is `created_ms:id` of the last run of the page: it stays valid whatever
/// happens to that run.
pub(crate) fn list_runs(conn: &Connection, filter: &RunFilter) -> Result<RunPage> {
    let (clause, args) = list_clause(filter)?;
    let refs: Vec<&dyn ToSql> = args.iter().map(|a| a.as_ref()).collect();
    let mut runs = runs_where(conn, &clause, &refs)?;
    let limit = filter.limit.max(1);
    let next = if runs.len() > limit {
        runs.truncate(limit);
        runs.last().map(|r| format!("{}:{}", r.created_ms, r.id))
    } else {
        None
    };
    Ok(RunPage { runs, next })
}

/// The `WHERE … ORDER BY … LIMIT` of [`list_runs`] (one run more than the page, to tell
/// whether there is a next page), and its arguments.
fn list_clause(filter: &RunFilter) -> Result<(String, Vec<Box<dyn ToSql>>)> {
    let mut clauses = Vec::new();
    let mut args: Vec<Box<dyn ToSql>> = Vec::new();
    if let Some(w) = &filter.workflow {
        args.push(Box::new(w.clone()));
        clauses.push(format!("workflow = ?{}", args.len()));
    }
    if let Some(s) = filter.status {
        args.push(Box::new(s.as_str()));
        clauses.push(format!("status = ?{}", args.len()));
    }
    if let Some(t) = filter.created_after {
        args.push(Box::new(ms(t)));
        clauses.push(format!("created_ms >= ?{}", args.len()));
    }
    if let Some(t) = filter.created_before {
        args.push(Box::new(ms(t)));
        clauses.push(format!("created_ms < ?{}", args.len()));
    }
    if let Some(cursor) = &filter.after {
        let (created, id) = cursor
            .split_once(':')
            .and_then(|(c, id)| Some((c.parse::<i64>().ok()?, id.to_owned())))
            .ok_or_else(|| StoreError::Invalid {
                what: format!("{cursor:?} is not a page cursor of this store"),
            })?;
        args.push(Box::new(created));
        args.push(Box::new(id));
        clauses.push(format!(
            "(created_ms, id) {} (?{}, ?{})",
            if filter.newest_first { "<" } else { ">" },
            args.len() - 1,
            args.len()
        ));
    }
    let limit = filter.limit.max(1);
    args.push(Box::new(
        i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1),
    ));
    let clause = format!(
        "{} ORDER BY {} LIMIT ?{}",
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
    Ok((clause, args))
}

fn counters_text(counters: &[u32]) -> String {
    counters
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn counters_of(text: &str) -> Result<Vec<u32>> {
    text.split(',')
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.parse()
                .map_err(|_| corrupt(format!("retry counters {text:?}")))
        })
        .collect()
}

fn put_attempt(conn: &Connection, key: &StepKey, a: &AttemptRecord) -> Result<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO flow_step_attempts
             (run_id, node, occurrence, item, number, started_ms, ended_ms, failure)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .map_err(sql_error)?
    .execute(params![
        key.run,
        key.node,
        key.occurrence,
        item_col(key.item),
        a.number,
        ms(a.started_ms),
        a.ended_ms.map(ms),
        a.failure
    ])
    .map_err(sql_error)?;
    Ok(())
}

fn step_state(conn: &Connection, key: &StepKey) -> Result<Option<String>> {
    conn.prepare_cached(
        "SELECT state FROM flow_steps
         WHERE run_id = ?1 AND node = ?2 AND occurrence = ?3 AND item = ?4",
    )
    .map_err(sql_error)?
    .query_row(
        params![key.run, key.node, key.occurrence, item_col(key.item)],
        |r| r.get(0),
    )
    .optional()
    .map_err(sql_error)
}

pub(crate) fn save_progress(conn: &Connection, p: &StepProgress) -> Result<()> {
    require_run(conn, &p.key.run)?;
    if let Some(state) = step_state(conn, &p.key)?
        && state != "running"
    {
        return Err(StoreError::Conflict {
            what: format!("step {} is already committed ({state})", p.key),
        });
    }
    conn.prepare_cached(
        "INSERT INTO flow_steps
             (run_id, node, occurrence, item, state, retry_counters, wake_at_ms, updated_ms)
         VALUES (?1, ?2, ?3, ?4, 'running', ?5, ?6, ?7)
         ON CONFLICT (run_id, node, occurrence, item) DO UPDATE SET
             retry_counters = excluded.retry_counters,
             wake_at_ms = excluded.wake_at_ms,
             updated_ms = excluded.updated_ms",
    )
    .map_err(sql_error)?
    .execute(params![
        p.key.run,
        p.key.node,
        p.key.occurrence,
        item_col(p.key.item),
        counters_text(&p.retry.counters),
        p.retry.wake_at_ms.map(ms),
        ms(now_ms())
    ])
    .map_err(sql_error)?;
    if let Some(a) = &p.attempt {
        put_attempt(conn, &p.key, a)?;
    }
    Ok(())
}

pub(crate) fn commit_step(conn: &Connection, c: &StepCommit) -> Result<Committed> {
    let (state, output, failure) = match &c.outcome {
        StepOutcome::Completed(out) => ("completed", Some(out.as_slice()), None),
        StepOutcome::Failed(why) => ("failed", None, Some(why.as_str())),
    };
    let now = now_ms();
    // The usual case is one plain `INSERT`: the step has no row yet. Its record is then what
    // this call wrote (no retry counters, the attempts given), with nothing to read back. A
    // step that has a row (a retried step's progress, `running`; or one committed before)
    // is refused by the primary key and takes the slower path; a missing run is the foreign
    // key's refusal. (An upsert with `RETURNING` did it in one statement, but SQLite runs
    // `RETURNING` through a temporary table, and reading the attempts back re-prepared its
    // statement at every commit: together about half of a step's commit.)
    let key = &c.key;
    let (item, updated_ms) = (item_col(key.item), ms(now));
    // The same parameters, numbered alike, for the `INSERT` and the `UPDATE`.
    let args: [&dyn ToSql; 8] = [
        &key.run,
        &key.node,
        &key.occurrence,
        &item,
        &state,
        &output,
        &failure,
        &updated_ms,
    ];
    let inserted = conn
        .prepare_cached(
            "INSERT INTO flow_steps
                 (run_id, node, occurrence, item, state, output, failure, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .map_err(sql_error)?
        .execute(&args[..]);
    let fresh = match inserted {
        Ok(_) => true,
        Err(e) if is_foreign_key(&e) => return Err(not_found(format!("run {}", key.run))),
        Err(e) if is_primary_key(&e) => false,
        Err(e) => return Err(sql_error(e)),
    };
    if !fresh {
        // A `running` row is completed; a step committed before is left as it is.
        let updated = conn
            .prepare_cached(
                "UPDATE flow_steps SET state = ?5, output = ?6, failure = ?7,
                     wake_at_ms = NULL, updated_ms = ?8
                 WHERE run_id = ?1 AND node = ?2 AND occurrence = ?3 AND item = ?4
                   AND state = 'running'",
            )
            .map_err(sql_error)?
            .execute(&args[..])
            .map_err(sql_error)?;
        if updated == 0 {
            // Committed before: keep the first commit, apply nothing.
            let step = get_step(conn, key)?.ok_or_else(|| not_found(key.to_string()))?;
            return Ok(Committed {
                step,
                first: false,
                pushed: Vec::new(),
            });
        }
    }
    for a in &c.attempts {
        put_attempt(conn, key, a)?;
    }
    let pushed = apply_compensations(conn, &key.run, &c.compensations)?;
    let (counters, attempts) = if fresh {
        // No row before: no retry counters, and no attempts but these (the attempts' foreign
        // key needs the step's row), the last of each number kept, as `put_attempt` does.
        let mut attempts: Vec<AttemptRecord> = Vec::with_capacity(c.attempts.len());
        for a in &c.attempts {
            match attempts.iter_mut().find(|b| b.number == a.number) {
                Some(b) => *b = a.clone(),
                None => attempts.push(a.clone()),
            }
        }
        attempts.sort_by_key(|a| a.number);
        (Vec::new(), attempts)
    } else {
        let text = retry_counters(conn, key)?;
        (counters_of(&text)?, attempts_of(conn, key)?)
    };
    Ok(Committed {
        step: StepRecord {
            key: key.clone(),
            outcome: Some(c.outcome.clone()),
            attempts,
            retry: RetryState {
                counters,
                wake_at_ms: None,
            },
            updated_ms: now,
        },
        first: true,
        pushed,
    })
}

/// A step's stored retry counters (its row exists).
fn retry_counters(conn: &Connection, key: &StepKey) -> Result<String> {
    conn.prepare_cached(
        "SELECT retry_counters FROM flow_steps
         WHERE run_id = ?1 AND node = ?2 AND occurrence = ?3 AND item = ?4",
    )
    .map_err(sql_error)?
    .query_row(
        params![key.run, key.node, key.occurrence, item_col(key.item)],
        |r| r.get(0),
    )
    .map_err(sql_error)
}

/// Whether `e` is SQLite's refusal of a row whose primary key is taken.
fn is_primary_key(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

/// Whether `e` is SQLite's refusal of a row whose run does not exist.
fn is_foreign_key(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY
    )
}

const STEP_COLUMNS: &str =
    "node, occurrence, item, state, output, failure, retry_counters, wake_at_ms, updated_ms";

fn step_from_row(run: &str, row: &Row<'_>) -> rusqlite::Result<StepRow> {
    Ok((
        StepRecord {
            key: StepKey {
                run: run.to_owned(),
                node: row.get(0)?,
                occurrence: row.get(1)?,
                item: item_of(row.get(2)?),
            },
            outcome: None,
            attempts: Vec::new(),
            retry: RetryState {
                counters: Vec::new(),
                wake_at_ms: row.get::<_, Option<i64>>(7)?.map(unms),
            },
            updated_ms: unms(row.get(8)?),
        },
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
    ))
}

type StepRow = (StepRecord, String, Option<Vec<u8>>, Option<String>, String);

fn finish_step(
    conn: &Connection,
    (mut step, state, output, failure, counters): StepRow,
) -> Result<StepRecord> {
    step.outcome = match state.as_str() {
        "running" => None,
        "completed" => Some(StepOutcome::Completed(output.unwrap_or_default())),
        "failed" => Some(StepOutcome::Failed(failure.unwrap_or_default())),
        other => {
            return Err(corrupt(format!(
                "step {} has an unknown state {other:?}",
                step.key
            )));
        }
    };
    step.retry.counters = counters_of(&counters)?;
    step.attempts = attempts_of(conn, &step.key)?;
    Ok(step)
}

/// The attempts recorded for step `k`, by number.
fn attempts_of(conn: &Connection, k: &StepKey) -> Result<Vec<AttemptRecord>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT number, started_ms, ended_ms, failure FROM flow_step_attempts
             WHERE run_id = ?1 AND node = ?2 AND occurrence = ?3 AND item = ?4 ORDER BY number",
        )
        .map_err(sql_error)?;
    stmt.query_map(
        params![k.run, k.node, k.occurrence, item_col(k.item)],
        |r| {
            Ok(AttemptRecord {
                number: r.get(0)?,
                started_ms: unms(r.get(1)?),
                ended_ms: r.get::<_, Option<i64>>(2)?.map(unms),
                failure: r.get(3)?,
            })
        },
    )
    .map_err(sql_error)?
    .collect::<rusqlite::Result<Vec<_>>>()
    .map_err(sql_error)
}

pub(crate) fn get_step(conn: &Connection, key: &StepKey) -> Result<Option<StepRecord>> {
    let row = conn
        .prepare_cached(&format!(
            "SELECT {STEP_COLUMNS} FROM flow_steps
             WHERE run_id = ?1 AND node = ?2 AND occurrence = ?3 AND item = ?4"
        ))
        .map_err(sql_error)?
        .query_row(
            params![key.run, key.node, key.occurrence, item_col(key.item)],
            |r| step_from_row(&key.run, r),
        )
        .optional()
        .map_err(sql_error)?;
    row.map(|r| finish_step(conn, r)).transpose()
}

pub(crate) fn steps_of(conn: &Connection, run: &str) -> Result<Vec<StepRecord>> {
    let rows = conn
        .prepare_cached(&format!(
            "SELECT {STEP_COLUMNS} FROM flow_steps WHERE run_id = ?1
             ORDER BY node, occurrence, item"
        ))
        .map_err(sql_error)?
        .query_map([run], |r| step_from_row(run, r))
        .map_err(sql_error)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(sql_error)?;
    rows.into_iter().map(|r| finish_step(conn, r)).collect()
}

/// The run's next `seq` (shared by its compensation entries and its signals: never reused).
fn next_seq(conn: &Connection, run: &str) -> Result<u64> {
    let seq: Option<i64> = conn
        .prepare_cached(
            "UPDATE flow_runs SET next_seq = next_seq + 1 WHERE id = ?1 RETURNING next_seq - 1",
        )
        .map_err(sql_error)?
        .query_row([run], |r| r.get(0))
        .optional()
        .map_err(sql_error)?;
    seq.map(unms).ok_or_else(|| not_found(format!("run {run}")))
}

fn apply_compensations(conn: &Connection, run: &str, ops: &[CompensationOp]) -> Result<Vec<u64>> {
    let mut pushed = Vec::new();
    for op in ops {
        match op {
            CompensationOp::Push {
                node,
                occurrence,
                item,
                undo,
            } => {
                let seq = next_seq(conn, run)?;
                conn.prepare_cached(
                    "INSERT INTO flow_compensations
                         (run_id, seq, node, occurrence, item, undo, status, updated_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7)",
                )
                .map_err(sql_error)?
                .execute(params![
                    run,
                    ms(seq),
                    node,
                    occurrence,
                    item_col(*item),
                    undo,
                    ms(now_ms())
                ])
                .map_err(sql_error)?;
                pushed.push(seq);
            }
            CompensationOp::Drop { seq } => {
                let status: Option<String> = conn
                    .prepare_cached(
                        "DELETE FROM flow_compensations WHERE run_id = ?1 AND seq = ?2
                         RETURNING status",
                    )
                    .map_err(sql_error)?
                    .query_row(params![run, ms(*seq)], |r| r.get(0))
                    .optional()
                    .map_err(sql_error)?;
                match status.as_deref() {
                    Some("pending") => {}
                    Some(other) => {
                        return Err(StoreError::Conflict {
                            what: format!(
                                "compensation {run}#{seq} is {other}: only a pending one can be dropped"
                            ),
                        });
                    }
                    None => return Err(not_found(format!("compensation {run}#{seq}"))),
                }
            }
            CompensationOp::Mark { seq, status } => {
                let changed = conn
                    .prepare_cached(
                        "UPDATE flow_compensations SET status = ?3, updated_ms = ?4
                         WHERE run_id = ?1 AND seq = ?2",
                    )
                    .map_err(sql_error)?
                    .execute(params![run, ms(*seq), status.as_str(), ms(now_ms())])
                    .map_err(sql_error)?;
                if changed == 0 {
                    return Err(not_found(format!("compensation {run}#{seq}")));
                }
            }
        }
    }
    Ok(pushed)
}

pub(crate) fn update_compensations(
    conn: &Connection,
    run: &str,
    ops: &[CompensationOp],
) -> Result<Vec<u64>> {
    require_run(conn, run)?;
    apply_compensations(conn, run, ops)
}

pub(crate) fn compensations_of(conn: &Connection, run: &str) -> Result<Vec<CompensationRecord>> {
    let rows = conn
        .prepare_cached(
            "SELECT seq, node, occurrence, item, undo, status FROM flow_compensations
             WHERE run_id = ?1 ORDER BY seq",
        )
        .map_err(sql_error)?
        .query_map([run], |r| {
            Ok((
                unms(r.get(0)?),
                r.get::<_, String>(1)?,
                r.get::<_, u32>(2)?,
                item_of(r.get(3)?),
                r.get::<_, Vec<u8>>(4)?,
                r.get::<_, String>(5)?,
            ))
        })
        .map_err(sql_error)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(sql_error)?;
    rows.into_iter()
        .map(|(seq, node, occurrence, item, undo, status)| {
            Ok(CompensationRecord {
                run: run.to_owned(),
                seq,
                node,
                occurrence,
                item,
                undo,
                status: CompensationStatus::parse(&status)
                    .ok_or_else(|| corrupt(format!("compensation status {status:?}")))?,
            })
        })
        .collect()
}

pub(crate) fn send_signal(conn: &Connection, run: &str, name: &str, payload: &[u8]) -> Result<u64> {
    let seq = next_seq(conn, run)?;
    conn.prepare_cached(
        "INSERT INTO flow_signals (run_id, seq, name, payload, sent_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .map_err(sql_error)?
    .execute(params![run, ms(seq), name, payload, ms(now_ms())])
    .map_err(sql_error)?;
    Ok(seq)
}

pub(crate) fn record_history(conn: &Connection, run: &str, entry: &NewHistory) -> Result<u64> {
    let seq = next_seq(conn, run)?;
    conn.prepare_cached(
        "INSERT INTO flow_history (run_id, seq, at_ms, actor, action, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .map_err(sql_error)?
    .execute(params![
        run,
        ms(seq),
        ms(now_ms()),
        entry.actor,
        entry.action,
        entry.detail
    ])
    .map_err(sql_error)?;
    Ok(seq)
}

pub(crate) fn history_of(conn: &Connection, run: &str) -> Result<Vec<HistoryRecord>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, at_ms, actor, action, detail FROM flow_history
             WHERE run_id = ?1 ORDER BY seq",
        )
        .map_err(sql_error)?;
    let rows = stmt
        .query_map([run], |r| {
            Ok(HistoryRecord {
                run: run.to_owned(),
                seq: unms(r.get(0)?),
                at_ms: unms(r.get(1)?),
                actor: r.get(2)?,
                action: r.get(3)?,
                detail: r.get(4)?,
            })
        })
        .map_err(sql_error)?;
    rows.collect::<rusqlite::Result<_>>().map_err(sql_error)
}

pub(crate) fn take_signal(
    conn: &Connection,
    run: &str,
    name: &str,
) -> Result<Option<SignalRecord>> {
    // Inside the writer's transaction: select and mark are one step for every other writer.
    let found: Option<(i64, Vec<u8>)> = conn
        .prepare_cached(
            "SELECT seq, payload FROM flow_signals
             WHERE run_id = ?1 AND name = ?2 AND consumed = 0 ORDER BY seq LIMIT 1",
        )
        .map_err(sql_error)?
        .query_row([run, name], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(sql_error)?;
    let Some((seq, payload)) = found else {
        return Ok(None);
    };
    conn.prepare_cached("UPDATE flow_signals SET consumed = 1 WHERE run_id = ?1 AND seq = ?2")
        .map_err(sql_error)?
        .execute(params![run, seq])
        .map_err(sql_error)?;
    Ok(Some(SignalRecord {
        run: run.to_owned(),
        name: name.to_owned(),
        seq: unms(seq),
        payload,
    }))
}

pub(crate) fn save_graph(
    conn: &Connection,
    workflow: &str,
    fingerprint: u64,
    graph: &[u8],
) -> Result<()> {
    // The first save of a (workflow, fingerprint) stays.
    conn.prepare_cached(
        "INSERT OR IGNORE INTO flow_graphs (workflow, fingerprint, graph, saved_ms)
         VALUES (?1, ?2, ?3, ?4)",
    )
    .map_err(sql_error)?
    .execute(params![workflow, bits(fingerprint), graph, ms(now_ms())])
    .map_err(sql_error)?;
    Ok(())
}

pub(crate) fn get_graph(
    conn: &Connection,
    workflow: &str,
    fingerprint: u64,
) -> Result<Option<Vec<u8>>> {
    conn.prepare_cached("SELECT graph FROM flow_graphs WHERE workflow = ?1 AND fingerprint = ?2")
        .map_err(sql_error)?
        .query_row(params![workflow, bits(fingerprint)], |r| r.get(0))
        .optional()
        .map_err(sql_error)
}

/// The end of the node key of a step's undo record (`<key>~undo`, as durable runs store
/// them): `reset_steps` deletes those with the steps.
const UNDO_SUFFIX: &str = "~undo";

pub(crate) fn reset_steps(conn: &Connection, run: &str, nodes: &[String]) -> Result<RunRecord> {
    require_run(conn, run)?;
    // The attempts go with their steps (`ON DELETE CASCADE`), but are deleted explicitly:
    // the cascade needs `foreign_keys=ON`, a setting of the connection, not of the file.
    let mut attempts = conn
        .prepare_cached("DELETE FROM flow_step_attempts WHERE run_id = ?1 AND node IN (?2, ?3)")
        .map_err(sql_error)?;
    let mut steps = conn
        .prepare_cached("DELETE FROM flow_steps WHERE run_id = ?1 AND node IN (?2, ?3)")
        .map_err(sql_error)?;
    let mut compensations = conn
        .prepare_cached("DELETE FROM flow_compensations WHERE run_id = ?1 AND node = ?2")
        .map_err(sql_error)?;
    for node in nodes {
        let undo = format!("{node}{UNDO_SUFFIX}");
        attempts
            .execute(params![run, node, undo])
            .map_err(sql_error)?;
        steps.execute(params![run, node, undo]).map_err(sql_error)?;
        compensations
            .execute(params![run, node])
            .map_err(sql_error)?;
    }
    conn.prepare_cached(
        "UPDATE flow_runs SET status = 'pending', output = NULL, error = NULL,
             updated_ms = max(?2, created_ms)
         WHERE id = ?1",
    )
    .map_err(sql_error)?
    .execute(params![run, ms(now_ms())])
    .map_err(sql_error)?;
    existing_run(conn, run)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run's node fingerprints that are not the JSON object the store writes are a clear
    /// error naming the run, not an empty map.
    #[test]
    fn unreadable_node_fingerprints_are_reported() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::schema::migrate(&mut conn).unwrap();
        let new = NewRun {
            id: "run-n".into(),
            workflow: "w".into(),
            fingerprint: 1,
            node_fingerprints: [("a".to_owned(), u64::MAX)].into(),
            input: Vec::new(),
        };
        let created = create_run(&conn, &new, RunStatus::Running).unwrap();
        assert_eq!(get_run(&conn, "run-n").unwrap(), Some(created.run));
        conn.execute(
            "UPDATE flow_runs SET nodes = '[1, 2' WHERE id = 'run-n'",
            [],
        )
        .unwrap();
        let error = get_run(&conn, "run-n").unwrap_err();
        assert!(
            matches!(&error, StoreError::Corrupt { what } if what.contains("run-n")),
            "{error:?}"
        );
    }

    /// A step commit that does not fit (the database full: `max_page_count` reached) gets the
    /// disk's error, and nothing is stored: only the primary key's refusal of the `INSERT`
    /// means that the step has a row already (taken for one, the commit would report the
    /// step missing instead).
    #[test]
    fn a_commit_into_a_full_database_reports_it_full() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::schema::migrate(&mut conn).unwrap();
        conn.pragma_update(None, "foreign_keys", "ON").unwrap();
        let new = NewRun {
            id: "run-full".into(),
            workflow: "w".into(),
            fingerprint: 1,
            node_fingerprints: BTreeMap::new(),
            input: Vec::new(),
        };
        create_run(&conn, &new, RunStatus::Running).unwrap();
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        conn.pragma_update(None, "max_page_count", pages).unwrap();
        let step = StepCommit {
            key: StepKey::new("run-full", "launch"),
            outcome: StepOutcome::Completed(vec![7; 64 * 1024]),
            attempts: Vec::new(),
            compensations: Vec::new(),
        };
        let error = commit_step(&conn, &step).unwrap_err();
        assert!(
            matches!(&error, StoreError::Io { message } if message.contains("full")),
            "{error:?}"
        );
        assert_eq!(get_step(&conn, &step.key).unwrap(), None);
    }

    /// SQLite's plan of `list_runs` for `filter`, one line per step.
    fn plan(conn: &Connection, filter: &RunFilter) -> String {
        let (clause, args) = list_clause(filter).unwrap();
        let refs: Vec<&dyn ToSql> = args.iter().map(|a| a.as_ref()).collect();
        conn.prepare(&format!(
            "EXPLAIN QUERY PLAN SELECT {RUN_COLUMNS} FROM flow_runs {clause}"
        ))
        .unwrap()
        .query_map(&refs[..], |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<rusqlite::Result<Vec<_>>>()
        .unwrap()
        .join("\n")
    }

    /// Every page of runs, whatever its filters, cursor and order, is read along an index
    /// that has each equality filter and then the order: never sorted, never found by reading
    /// runs that the filters reject, so a deep page costs what the first does.
    #[test]
    fn every_page_of_runs_reads_an_index_in_order() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::schema::migrate(&mut conn).unwrap();
        for workflow in [None, Some("w".to_owned())] {
            for status in [None, Some(RunStatus::Failed)] {
                for after in [None, Some("1700000000000:run-7".to_owned())] {
                    for newest_first in [false, true] {
                        let filter = RunFilter {
                            workflow: workflow.clone(),
                            status,
                            after: after.clone(),
                            newest_first,
                            ..RunFilter::default()
                        };
                        let plan = plan(&conn, &filter);
                        let index = match (workflow.is_some(), status.is_some()) {
                            (true, true) => {
                                "USING INDEX flow_runs_by_workflow_status (workflow=? AND status=?"
                            }
                            (true, false) => "USING INDEX flow_runs_by_workflow (workflow=?",
                            (false, true) => "USING INDEX flow_runs_by_status (status=?",
                            (false, false) => "USING INDEX flow_runs_by_created",
                        };
                        assert!(plan.contains(index), "{filter:?}:\n{plan}");
                        assert!(!plan.contains("TEMP B-TREE"), "{filter:?}:\n{plan}");
                        if after.is_some() {
                            assert!(plan.contains("(created_ms,id)"), "{filter:?}:\n{plan}");
                        }
                    }
                }
            }
        }
    }
}
