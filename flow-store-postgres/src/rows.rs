//! Values between Rust and SQL: u64 as BIGINT, the records from the views' rows.

use std::collections::BTreeMap;

use tokio_postgres::Row;
use tokio_postgres::types::FromSql;

use flow_runtime::store::{
    AttemptRecord, CompensationRecord, CompensationStatus, HistoryRecord, Lease, RetryState,
    RunRecord, RunStatus, StepKey, StepOutcome, StepRecord, StoreError,
};

type Result<T> = std::result::Result<T, StoreError>;

// u64 values are stored as the BIGINT with the same bits (fingerprints), or saturated
// (timestamps, seqs and u32 values, which never reach 2^63).
pub(crate) fn bits(v: u64) -> i64 {
    v as i64
}
pub(crate) fn unbits(v: i64) -> u64 {
    v as u64
}
pub(crate) fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
pub(crate) fn unms(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
/// A map item as stored: -1 outside a map (the column is part of the primary key).
pub(crate) fn item_col(item: Option<u32>) -> i64 {
    item.map_or(-1, i64::from)
}
/// A duration in ms, capped so that adding it to a time cannot overflow a BIGINT.
pub(crate) fn duration_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis())
        .unwrap_or(i64::MAX)
        .min(i64::MAX / 4)
}

fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt { what: what.into() }
}

/// Column `name` of `row`.
pub(crate) fn get<'a, T: FromSql<'a>>(row: &'a Row, name: &str) -> Result<T> {
    row.try_get(name)
        .map_err(|e| corrupt(format!("column {name}: {}", crate::error::describe(&e))))
}

/// Column `idx` of `row`.
pub(crate) fn get_at<'a, T: FromSql<'a>>(row: &'a Row, idx: usize) -> Result<T> {
    row.try_get(idx)
        .map_err(|e| corrupt(format!("column {idx}: {}", crate::error::describe(&e))))
}

fn u32_of(v: i64, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| corrupt(format!("{what} {v} is out of range")))
}

/// A run from a row of `flow_run_view`.
pub(crate) fn run(row: &Row) -> Result<RunRecord> {
    let id: String = get(row, "id")?;
    let status: String = get(row, "status")?;
    let status = RunStatus::parse(&status)
        .ok_or_else(|| corrupt(format!("run {id} has an unknown status {status:?}")))?;
    let keys: Vec<String> = get(row, "node_keys")?;
    let fingerprints: Vec<i64> = get(row, "node_fingerprints")?;
    let lease = match get::<Option<String>>(row, "lease_worker")? {
        Some(worker) => Some(Lease {
            worker,
            epoch: unms(get(row, "lease_epoch")?),
            until_ms: unms(get::<Option<i64>>(row, "lease_until_ms")?.unwrap_or(0)),
        }),
        None => None,
    };
    Ok(RunRecord {
        workflow: get(row, "workflow")?,
        fingerprint: unbits(get(row, "fingerprint")?),
        node_fingerprints: keys
            .into_iter()
            .zip(fingerprints.into_iter().map(unbits))
            .collect::<BTreeMap<_, _>>(),
        input: get(row, "input")?,
        status,
        output: get(row, "output")?,
        error: get(row, "error")?,
        created_ms: unms(get(row, "created_ms")?),
        updated_ms: unms(get(row, "updated_ms")?),
        queue: get(row, "queue")?,
        lease,
        id,
    })
}

/// A step from a row of `flow_step_view`.
pub(crate) fn step(row: &Row) -> Result<StepRecord> {
    let key = StepKey {
        run: get(row, "run_id")?,
        node: get(row, "node")?,
        occurrence: u32_of(get(row, "occurrence")?, "occurrence")?,
        item: u32::try_from(get::<i64>(row, "item")?).ok(),
    };
    let state: String = get(row, "state")?;
    let outcome = match state.as_str() {
        "running" => None,
        "completed" => Some(StepOutcome::Completed(
            get::<Option<Vec<u8>>>(row, "output")?.unwrap_or_default(),
        )),
        "failed" => Some(StepOutcome::Failed(
            get::<Option<String>>(row, "failure")?.unwrap_or_default(),
        )),
        other => {
            return Err(corrupt(format!(
                "step {key} has an unknown state {other:?}"
            )));
        }
    };
    let counters: Vec<i64> = get(row, "retry_counters")?;
    let numbers: Vec<i64> = get(row, "attempt_numbers")?;
    let started: Vec<i64> = get(row, "attempt_started")?;
    let ended: Vec<Option<i64>> = get(row, "attempt_ended")?;
    let failures: Vec<Option<String>> = get(row, "attempt_failures")?;
    if started.len() != numbers.len()
        || ended.len() != numbers.len()
        || failures.len() != numbers.len()
    {
        return Err(corrupt(format!("step {key}: attempts of unequal lengths")));
    }
    let attempts = numbers
        .into_iter()
        .zip(started)
        .zip(ended.into_iter().zip(failures))
        .map(|((number, started), (ended, failure))| {
            Ok(AttemptRecord {
                number: u32_of(number, "attempt number")?,
                started_ms: unms(started),
                ended_ms: ended.map(unms),
                failure,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(StepRecord {
        retry: RetryState {
            counters: counters
                .into_iter()
                .map(|c| u32_of(c, "retry counter"))
                .collect::<Result<_>>()?,
            wake_at_ms: get::<Option<i64>>(row, "wake_at_ms")?.map(unms),
        },
        updated_ms: unms(get(row, "updated_ms")?),
        outcome,
        attempts,
        key,
    })
}

/// A compensation entry of run `run` from `seq, node, occurrence, item, undo, status`.
pub(crate) fn compensation(run: &str, row: &Row) -> Result<CompensationRecord> {
    let status: String = get(row, "status")?;
    Ok(CompensationRecord {
        run: run.to_owned(),
        seq: unms(get(row, "seq")?),
        node: get(row, "node")?,
        occurrence: u32_of(get(row, "occurrence")?, "occurrence")?,
        item: u32::try_from(get::<i64>(row, "item")?).ok(),
        undo: get(row, "undo")?,
        status: CompensationStatus::parse(&status)
            .ok_or_else(|| corrupt(format!("compensation status {status:?}")))?,
    })
}

/// A history entry of run `run` from `seq, at_ms, actor, action, detail`.
pub(crate) fn history(run: &str, row: &Row) -> Result<HistoryRecord> {
    Ok(HistoryRecord {
        run: run.to_owned(),
        seq: unms(get(row, "seq")?),
        at_ms: unms(get(row, "at_ms")?),
        actor: get(row, "actor")?,
        action: get(row, "action")?,
        detail: get(row, "detail")?,
    })
}
