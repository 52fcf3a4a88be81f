//! The versioned schema: the `flow_schema` table holds the version; migration `n` takes a
//! store from version `n` to `n + 1`, in one transaction with the version's update. A store
//! whose version is newer than [`SCHEMA_VERSION`] is refused, never guessed at.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use flow_runtime::store::StoreError;

use crate::sql_error;

/// The schema version this build writes, and the newest it can read.
pub const SCHEMA_VERSION: u32 = 5;

/// The migrations, in order: `MIGRATIONS[n]` takes version `n` to `n + 1`.
///
/// Keys: a run by its id; a step by (run, node, occurrence, item), the item stored as -1
/// outside a map (SQLite lets NULLs repeat in a primary key); a compensation entry and a
/// signal by (run, seq), `seq` taken from the run's own counter so it is never reused.
/// u64 values (fingerprints) are stored as the i64 with the same bits.
///
/// 1: runs, their nodes' fingerprints, steps and their attempts, compensation entries,
/// signals; the indexes that list runs in creation order, all of them, by status, by
/// workflow. 2: `flow_graphs`, the workflows' graphs by (workflow, fingerprint). 3:
/// `flow_history`, what was done to each run from outside (by (run, seq)). 4: an index that
/// lists one workflow's runs of one status in order: with both filters, a page reads its own
/// runs only, not every run of the workflow (or of the status) until it has found them.
/// 5: a run's nodes' fingerprints move from `flow_run_nodes` (a row a node) into the run's
/// row (`flow_runs.nodes`, one JSON object: node key -> the fingerprint's i64): creating a run
/// writes one row instead of one a node, and reading one (a page of runs too) is one lookup.
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [
    r#"
CREATE TABLE flow_runs (
    id          TEXT    NOT NULL PRIMARY KEY,
    workflow    TEXT    NOT NULL,
    fingerprint INTEGER NOT NULL,
    input       BLOB    NOT NULL,
    status      TEXT    NOT NULL CHECK (status IN
                ('pending', 'running', 'compensating', 'completed', 'failed', 'cancelled')),
    output      BLOB,
    error       BLOB,
    created_ms  INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL,
    next_seq    INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX flow_runs_by_created ON flow_runs (created_ms, id);
CREATE INDEX flow_runs_by_status ON flow_runs (status, created_ms, id);
CREATE INDEX flow_runs_by_workflow ON flow_runs (workflow, created_ms, id);

CREATE TABLE flow_run_nodes (
    run_id      TEXT    NOT NULL REFERENCES flow_runs (id) ON DELETE CASCADE,
    node        TEXT    NOT NULL,
    fingerprint INTEGER NOT NULL,
    PRIMARY KEY (run_id, node)
) WITHOUT ROWID;

CREATE TABLE flow_steps (
    run_id         TEXT    NOT NULL REFERENCES flow_runs (id) ON DELETE CASCADE,
    node           TEXT    NOT NULL,
    occurrence     INTEGER NOT NULL,
    item           INTEGER NOT NULL,
    state          TEXT    NOT NULL CHECK (state IN ('running', 'completed', 'failed')),
    output         BLOB,
    failure        TEXT,
    retry_counters TEXT    NOT NULL DEFAULT '',
    wake_at_ms     INTEGER,
    updated_ms     INTEGER NOT NULL,
    PRIMARY KEY (run_id, node, occurrence, item)
) WITHOUT ROWID;

CREATE TABLE flow_step_attempts (
    run_id      TEXT    NOT NULL,
    node        TEXT    NOT NULL,
    occurrence  INTEGER NOT NULL,
    item        INTEGER NOT NULL,
    number      INTEGER NOT NULL,
    started_ms  INTEGER NOT NULL,
    ended_ms    INTEGER,
    failure     TEXT,
    PRIMARY KEY (run_id, node, occurrence, item, number),
    FOREIGN KEY (run_id, node, occurrence, item)
        REFERENCES flow_steps (run_id, node, occurrence, item) ON DELETE CASCADE
) WITHOUT ROWID;

CREATE TABLE flow_compensations (
    run_id      TEXT    NOT NULL REFERENCES flow_runs (id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    node        TEXT    NOT NULL,
    occurrence  INTEGER NOT NULL,
    item        INTEGER NOT NULL,
    undo        BLOB    NOT NULL,
    status      TEXT    NOT NULL CHECK (status IN ('pending', 'done', 'failed', 'timed_out')),
    updated_ms  INTEGER NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;

CREATE TABLE flow_signals (
    run_id      TEXT    NOT NULL REFERENCES flow_runs (id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    name        TEXT    NOT NULL,
    payload     BLOB    NOT NULL,
    consumed    INTEGER NOT NULL DEFAULT 0,
    sent_ms     INTEGER NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE INDEX flow_signals_waiting ON flow_signals (run_id, name, consumed, seq);
"#,
    r#"
CREATE TABLE flow_graphs (
    workflow    TEXT    NOT NULL,
    fingerprint INTEGER NOT NULL,
    graph       BLOB    NOT NULL,
    saved_ms    INTEGER NOT NULL,
    PRIMARY KEY (workflow, fingerprint)
) WITHOUT ROWID;
"#,
    r#"
CREATE TABLE flow_history (
    run_id      TEXT    NOT NULL REFERENCES flow_runs (id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    at_ms       INTEGER NOT NULL,
    actor       TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    detail      TEXT    NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
"#,
    r#"
CREATE INDEX flow_runs_by_workflow_status ON flow_runs (workflow, status, created_ms, id);
"#,
    r#"
ALTER TABLE flow_runs ADD COLUMN nodes TEXT NOT NULL DEFAULT '{}';
UPDATE flow_runs SET nodes = coalesce(
    (SELECT json_group_object(n.node, n.fingerprint) FROM flow_run_nodes n WHERE n.run_id = flow_runs.id),
    '{}');
DROP TABLE flow_run_nodes;
"#,
];

/// The store's schema version without writing anything: 0 for a new, empty database. Refuses
/// a newer schema, and a database that holds other tables but no `flow_schema` (another
/// program's).
pub(crate) fn check_version(conn: &Connection) -> Result<u32, StoreError> {
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
            [],
            |r| r.get(0),
        )
        .map_err(sql_error)?;
    let has_schema: bool = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'flow_schema'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(sql_error)?
        > 0;
    if !has_schema {
        if tables > 0 {
            return Err(StoreError::Corrupt {
                what: "the database has tables but no `flow_schema`: it is not a flow store".into(),
            });
        }
        return Ok(0);
    }
    let version = read_version(conn)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(version)
}

fn read_version(conn: &Connection) -> Result<u32, StoreError> {
    let version: Option<i64> = conn
        .query_row("SELECT version FROM flow_schema WHERE id = 1", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(sql_error)?;
    let version = version.unwrap_or(0);
    u32::try_from(version).map_err(|_| StoreError::Corrupt {
        what: format!("schema version {version} is out of range"),
    })
}

/// Applies the missing migrations in order, one transaction each (`BEGIN IMMEDIATE`, so two
/// processes opening one new file do not both migrate it).
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    migrate_to(conn, SCHEMA_VERSION)
}

/// [`migrate`] up to version `target` only (at most [`SCHEMA_VERSION`]): what an older build
/// did, for the tests of upgrades.
fn migrate_to(conn: &mut Connection, target: u32) -> Result<(), StoreError> {
    let target = target.min(SCHEMA_VERSION);
    loop {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_error)?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS flow_schema (
                 id      INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
                 version INTEGER NOT NULL
             )",
        )
        .map_err(sql_error)?;
        let version = read_version(&tx)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        if version >= target {
            return tx.commit().map_err(sql_error);
        }
        tx.execute_batch(MIGRATIONS[version as usize])
            .map_err(sql_error)?;
        tx.execute(
            "INSERT INTO flow_schema (id, version) VALUES (1, ?1)
             ON CONFLICT (id) DO UPDATE SET version = excluded.version",
            [version + 1],
        )
        .map_err(sql_error)?;
        tx.commit().map_err(sql_error)?;
    }
}

#[cfg(test)]
mod tests {
    use flow_runtime::store::{RunStatus, StepCommit, StepKey, StepOutcome};

    use super::*;
    use crate::ops;

    /// Every table's and index's SQL, by name.
    fn schema_of(conn: &Connection) -> Vec<(String, Option<String>)> {
        conn.prepare("SELECT name, sql FROM sqlite_master ORDER BY name")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[test]
    fn a_version_1_store_upgrades_and_keeps_its_runs() {
        // A store as the build before version 2 left it: migration 1 only, with a run.
        let mut conn = Connection::open_in_memory().unwrap();
        migrate_to(&mut conn, 1).unwrap();
        assert_eq!(check_version(&conn).unwrap(), 1);
        let has_graphs = |conn: &Connection| {
            conn.query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'flow_graphs'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
                == 1
        };
        assert!(!has_graphs(&conn));
        // A run as version 1 wrote it: its nodes' fingerprints in `flow_run_nodes` (u64s as
        // the i64 of the same bits); and one with no nodes.
        conn.execute_batch(
            "INSERT INTO flow_runs (id, workflow, fingerprint, input, status, created_ms, updated_ms)
             VALUES ('old-run', 'w', -1, x'696e', 'pending', 5, 6),
                    ('bare-run', 'w', 1, x'', 'running', 7, 7);
             INSERT INTO flow_run_nodes (run_id, node, fingerprint)
             VALUES ('old-run', 'a', 3), ('old-run', 'b', -1);",
        )
        .unwrap();
        let step = StepCommit {
            key: StepKey::new("old-run", "a"),
            outcome: StepOutcome::Completed(b"out".to_vec()),
            attempts: Vec::new(),
            compensations: Vec::new(),
        };
        ops::commit_step(&conn, &step).unwrap();

        migrate(&mut conn).unwrap();
        assert_eq!(check_version(&conn).unwrap(), SCHEMA_VERSION);
        assert!(has_graphs(&conn));
        let run = ops::get_run(&conn, "old-run").unwrap().unwrap();
        assert_eq!(
            (
                run.fingerprint,
                run.input.as_slice(),
                run.status,
                run.created_ms,
                run.updated_ms
            ),
            (u64::MAX, &b"in"[..], RunStatus::Pending, 5, 6)
        );
        assert_eq!(
            run.node_fingerprints,
            [("a".to_owned(), 3), ("b".to_owned(), u64::MAX)].into()
        );
        let bare = ops::get_run(&conn, "bare-run").unwrap().unwrap();
        assert!(bare.node_fingerprints.is_empty());
        assert_eq!(ops::steps_of(&conn, "old-run").unwrap().len(), 1);
        ops::save_graph(&conn, "w", u64::MAX, b"graph").unwrap();
        assert_eq!(
            ops::get_graph(&conn, "w", u64::MAX).unwrap().as_deref(),
            Some(&b"graph"[..])
        );
        // Migrating again does nothing.
        migrate(&mut conn).unwrap();
        assert_eq!(check_version(&conn).unwrap(), SCHEMA_VERSION);

        // The upgraded schema is the one a new store gets.
        let mut fresh = Connection::open_in_memory().unwrap();
        migrate(&mut fresh).unwrap();
        assert_eq!(schema_of(&conn), schema_of(&fresh));
    }

    #[test]
    fn a_newer_version_is_refused_by_the_migration() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        conn.execute("UPDATE flow_schema SET version = ?1", [SCHEMA_VERSION + 1])
            .unwrap();
        assert_eq!(
            migrate(&mut conn),
            Err(StoreError::NewerSchema {
                found: SCHEMA_VERSION + 1,
                supported: SCHEMA_VERSION
            })
        );
    }
}
