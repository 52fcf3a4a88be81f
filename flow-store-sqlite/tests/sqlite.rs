//! The SQLite store: the shared conformance suite on a temporary file, then what is SQLite's
//! own (pragmas, schema versions, bad files, several stores and processes on one file, group
//! commit).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use flow_runtime::store::{
    AttemptRecord, NewRun, RunFilter, StepCommit, StepKey, StepOutcome, Store, StoreError,
    conformance, new_run_id,
};
use flow_store_sqlite::{Options, SCHEMA_VERSION, Settings, SqliteStore, Synchronous};

/// A database file in the temporary directory, removed (with its WAL files) when dropped.
struct TempDb(PathBuf);

impl TempDb {
    fn new(what: &str) -> Self {
        TempDb(std::env::temp_dir().join(format!("flow-store-{what}-{}.db", new_run_id())))
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

fn new_run(id: &str) -> NewRun {
    NewRun {
        id: id.to_owned(),
        workflow: "sqlite-test".into(),
        fingerprint: 7,
        node_fingerprints: BTreeMap::from([("a".to_owned(), 1)]),
        input: b"in".to_vec(),
    }
}

fn commit(run: &str, node: &str) -> StepCommit {
    StepCommit {
        key: StepKey::new(run, node),
        outcome: StepOutcome::Completed(b"out".to_vec()),
        attempts: Vec::new(),
        compensations: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite() {
    let db = TempDb::new("conformance");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(db.path()).unwrap());
    conformance::run_all(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_with_synchronous_normal() {
    let db = TempDb::new("conformance-normal");
    let options = Options {
        synchronous: Synchronous::Normal,
        ..Options::default()
    };
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_with(db.path(), options).unwrap());
    conformance::run_all(store).await;
}

#[tokio::test]
async fn pragmas_read_back_as_asked() {
    let db = TempDb::new("pragmas");
    let store = SqliteStore::open(db.path()).unwrap();
    assert_eq!(
        store.settings().await.unwrap(),
        Settings {
            journal_mode: "wal".into(),
            synchronous: Synchronous::Full,
            foreign_keys: true,
            busy_timeout: Duration::from_secs(5),
            schema_version: SCHEMA_VERSION,
        },
        "the default is synchronous=FULL"
    );
    drop(store);
    let options = Options {
        synchronous: Synchronous::Normal,
        busy_timeout: Duration::from_millis(1234),
        max_batch: 8,
        inline_writes: false,
    };
    let store = SqliteStore::open_with(db.path(), options).unwrap();
    let settings = store.settings().await.unwrap();
    assert_eq!(settings.synchronous, Synchronous::Normal);
    assert_eq!(settings.busy_timeout, Duration::from_millis(1234));
    assert_eq!(settings.journal_mode, "wal");
}

#[tokio::test]
async fn reopening_keeps_everything() {
    let db = TempDb::new("reopen");
    let id = new_run_id();
    {
        let store = SqliteStore::open(db.path()).unwrap();
        store.create_run(new_run(&id)).await.unwrap();
        store.commit_step(commit(&id, "a")).await.unwrap();
    }
    let store = SqliteStore::open(db.path()).unwrap();
    let run = store.get_run(&id).await.unwrap().expect("the run survives");
    assert_eq!(run.node_fingerprints["a"], 1);
    assert_eq!(store.steps_of(&id).await.unwrap().len(), 1);
    assert!(!store.create_run(new_run(&id)).await.unwrap().created);
}

#[tokio::test]
async fn a_newer_schema_is_refused_and_left_untouched() {
    let db = TempDb::new("newer");
    let id = new_run_id();
    {
        let store = SqliteStore::open(db.path()).unwrap();
        store.create_run(new_run(&id)).await.unwrap();
    }
    {
        let conn = rusqlite::Connection::open(db.path()).unwrap();
        conn.execute("UPDATE flow_schema SET version = ?1", [SCHEMA_VERSION + 1])
            .unwrap();
    }
    let before = std::fs::read(db.path()).unwrap();
    let err = SqliteStore::open(db.path()).unwrap_err();
    assert_eq!(
        err,
        StoreError::NewerSchema {
            found: SCHEMA_VERSION + 1,
            supported: SCHEMA_VERSION
        }
    );
    let message = err.to_string();
    assert!(
        message.contains("newer") && message.contains("left untouched"),
        "{message}"
    );
    assert_eq!(
        std::fs::read(db.path()).unwrap(),
        before,
        "the file is unchanged"
    );
    let conn = rusqlite::Connection::open(db.path()).unwrap();
    let version: u32 = conn
        .query_row("SELECT version FROM flow_schema", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION + 1);
}

#[tokio::test]
async fn a_version_1_file_upgrades_to_the_current_schema_and_keeps_its_runs_and_history() {
    let db = TempDb::new("upgrade");
    let id = new_run_id();
    {
        let store = SqliteStore::open(db.path()).unwrap();
        store.create_run(new_run(&id)).await.unwrap();
        store.commit_step(commit(&id, "a")).await.unwrap();
    }
    // Back to what the build before schema version 2 wrote: no `flow_graphs` (nor the
    // later `flow_history` and `flow_runs_by_workflow_status`), the nodes' fingerprints in
    // `flow_run_nodes` (not in the run's row), version 1.
    {
        let conn = rusqlite::Connection::open(db.path()).unwrap();
        conn.execute_batch(
            "DROP TABLE flow_graphs; DROP TABLE flow_history; \
             DROP INDEX flow_runs_by_workflow_status; \
             CREATE TABLE flow_run_nodes ( \
                 run_id TEXT NOT NULL REFERENCES flow_runs (id) ON DELETE CASCADE, \
                 node TEXT NOT NULL, fingerprint INTEGER NOT NULL, \
                 PRIMARY KEY (run_id, node)) WITHOUT ROWID; \
             INSERT INTO flow_run_nodes (run_id, node, fingerprint) \
                 SELECT r.id, j.key, j.value FROM flow_runs r, json_each(r.nodes) j; \
             ALTER TABLE flow_runs DROP COLUMN nodes; \
             UPDATE flow_schema SET version = 1",
        )
        .unwrap();
    }
    let run = {
        let store = SqliteStore::open(db.path()).unwrap();
        assert_eq!(
            store.settings().await.unwrap().schema_version,
            SCHEMA_VERSION
        );
        let run = store.get_run(&id).await.unwrap().expect("the run survives");
        assert_eq!(run.node_fingerprints["a"], 1);
        assert_eq!(store.steps_of(&id).await.unwrap().len(), 1);
        assert_eq!(store.get_graph("sqlite-test", 7).await.unwrap(), None);
        store
            .save_graph("sqlite-test", 7, b"graph".to_vec())
            .await
            .unwrap();
        assert!(store.history_of(&id).await.unwrap().is_empty());
        let entry = flow_runtime::store::NewHistory {
            actor: "test".into(),
            action: "restart".into(),
            detail: String::new(),
        };
        assert!(store.record_history(&id, entry).await.unwrap() > 0);
        run
    };
    let store = SqliteStore::open(db.path()).unwrap();
    assert_eq!(store.get_run(&id).await.unwrap(), Some(run));
    assert_eq!(
        store.get_graph("sqlite-test", 7).await.unwrap().as_deref(),
        Some(&b"graph"[..])
    );
    let conn = rusqlite::Connection::open(db.path()).unwrap();
    let version: u32 = conn
        .query_row("SELECT version FROM flow_schema", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
}

#[tokio::test]
async fn reset_steps_deletes_the_attempt_rows_too() {
    let db = TempDb::new("reset");
    let store = SqliteStore::open(db.path()).unwrap();
    let id = new_run_id();
    store.create_run(new_run(&id)).await.unwrap();
    for node in ["a", "a~undo", "b"] {
        let mut c = commit(&id, node);
        c.attempts = vec![AttemptRecord {
            number: 1,
            started_ms: 1,
            ended_ms: Some(2),
            failure: None,
        }];
        store.commit_step(c).await.unwrap();
    }
    store.reset_steps(&id, vec!["a".into()]).await.unwrap();
    drop(store);
    let conn = rusqlite::Connection::open(db.path()).unwrap();
    let nodes: Vec<String> = conn
        .prepare("SELECT node FROM flow_step_attempts WHERE run_id = ?1 ORDER BY node")
        .unwrap()
        .query_map([&id], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(nodes, ["b"]);
}

#[test]
fn a_corrupt_file_is_a_clear_error() {
    let db = TempDb::new("corrupt");
    // 8 KiB of pseudo-random bytes (xorshift), not a SQLite header.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes: Vec<u8> = (0..8192)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(db.path(), &bytes).unwrap();
    let err = SqliteStore::open(db.path()).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("corrupt") && message.contains(&db.path().display().to_string()),
        "{message}"
    );
    assert_eq!(
        std::fs::read(db.path()).unwrap(),
        bytes,
        "the file is unchanged"
    );
}

#[test]
fn another_programs_database_is_refused() {
    let db = TempDb::new("foreign");
    rusqlite::Connection::open(db.path())
        .unwrap()
        .execute_batch("CREATE TABLE customers (id INTEGER PRIMARY KEY)")
        .unwrap();
    let err = SqliteStore::open(db.path()).unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt { what } if what.contains("not a flow store")),
        "{err:?}"
    );
}

#[test]
fn a_missing_directory_is_a_clear_error() {
    let path = std::env::temp_dir()
        .join(format!("flow-no-such-dir-{}", new_run_id()))
        .join("runs.db");
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(!path.parent().unwrap().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_on_one_file_create_one_run() {
    let db = TempDb::new("two-stores");
    let stores: [Arc<dyn Store>; 2] = [
        Arc::new(SqliteStore::open(db.path()).unwrap()),
        Arc::new(SqliteStore::open(db.path()).unwrap()),
    ];
    for _ in 0..5 {
        let id = new_run_id();
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let (store, id) = (stores[i % 2].clone(), id.clone());
                tokio::spawn(async move { store.create_run(new_run(&id)).await })
            })
            .collect();
        let mut created = 0;
        for t in tasks {
            created += usize::from(t.await.unwrap().unwrap().created);
        }
        assert_eq!(created, 1);
    }
    let all = stores[0]
        .list_runs(RunFilter {
            workflow: Some("sqlite-test".into()),
            ..RunFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(all.runs.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_groups_concurrent_writes() {
    let db = TempDb::new("group");
    // Every write through the writer thread (an idle store would run the first inline).
    let options = Options {
        inline_writes: false,
        ..Options::default()
    };
    let store = Arc::new(SqliteStore::open_with(db.path(), options).unwrap());
    let id = new_run_id();
    store.create_run(new_run(&id)).await.unwrap();
    let before = store.write_transactions();
    // Each call queues its request at once: 400 commits are waiting before the first
    // transaction ends. One of them fails (no such run): it is rolled back alone.
    let n = 400;
    let mut futures: Vec<_> = (0..n)
        .map(|i| store.commit_step(commit(&id, &format!("step-{i}"))))
        .collect();
    futures.push(store.commit_step(commit("no-such-run", "x")));
    let results = futures_util::future::join_all(futures).await;
    let transactions = store.write_transactions() - before;
    let (ok, failed): (Vec<_>, Vec<_>) = results.into_iter().partition(|r| r.is_ok());
    assert_eq!(ok.len(), n);
    assert!(matches!(&failed[..], [Err(StoreError::NotFound { .. })]));
    assert_eq!(store.steps_of(&id).await.unwrap().len(), n);
    assert!(
        transactions * 10 <= n as u64,
        "{n} writes took {transactions} transactions"
    );
    eprintln!("{n} concurrent commits in {transactions} transactions");
}

/// An idle store commits a write on the calling thread, before the call returns; a write
/// that fails there (no such run) is rolled back and answered with its error; writes made
/// while the store is busy still go to the writer thread and are grouped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_store_commits_on_the_calling_thread() {
    let db = TempDb::new("inline");
    let store = Arc::new(SqliteStore::open(db.path()).unwrap());
    let id = new_run_id();
    store.create_run(new_run(&id)).await.unwrap();
    let before = store.write_transactions();
    let pending = store.commit_step(commit(&id, "a"));
    assert_eq!(
        store.write_transactions(),
        before + 1,
        "committed before the call returned"
    );
    assert!(pending.await.unwrap().first);
    let missing = store.commit_step(commit("no-such-run", "x")).await;
    assert!(
        matches!(missing, Err(StoreError::NotFound { .. })),
        "{missing:?}"
    );
    assert_eq!(store.steps_of(&id).await.unwrap().len(), 1);
    // Many writers at once: most find the store busy and are grouped.
    let before = store.write_transactions();
    let n = 400;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (store, id) = (store.clone(), id.clone());
            tokio::spawn(async move { store.commit_step(commit(&id, &format!("s{i}"))).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let transactions = store.write_transactions() - before;
    assert_eq!(store.steps_of(&id).await.unwrap().len(), n + 1);
    assert!(
        transactions < n as u64,
        "{n} concurrent writes took {transactions} transactions"
    );
    eprintln!("{n} concurrent commits in {transactions} transactions");
}

#[tokio::test]
async fn a_batch_is_capped_at_max_batch() {
    let db = TempDb::new("max-batch");
    let options = Options {
        max_batch: 4,
        inline_writes: false,
        ..Options::default()
    };
    let store = SqliteStore::open_with(db.path(), options).unwrap();
    let id = new_run_id();
    store.create_run(new_run(&id)).await.unwrap();
    let before = store.write_transactions();
    let futures: Vec<_> = (0..40)
        .map(|i| store.commit_step(commit(&id, &format!("s{i}"))))
        .collect();
    for r in futures_util::future::join_all(futures).await {
        r.unwrap();
    }
    assert!(store.write_transactions() - before >= 10);
}

/// The child side of `processes_racing_on_one_file_create_one_run`: does nothing unless the
/// parent runs it (with the database and the run id in the environment).
#[test]
fn child_process_races_create_run() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (path, id) = spec.split_once('|').expect("path|id");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let created = rt.block_on(race_create(Path::new(path), id));
    // On a line of its own: libtest has just printed the test's name without a newline.
    println!("\nCREATED {created}");
}

const CHILD_ENV: &str = "FLOW_STORE_SQLITE_RACE_CHILD";

async fn race_create(path: &Path, id: &str) -> usize {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(path).expect("open"));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (store, id) = (store.clone(), id.to_owned());
            tokio::spawn(async move { store.create_run(new_run(&id)).await })
        })
        .collect();
    let mut created = 0;
    for t in tasks {
        created += usize::from(t.await.unwrap().expect("create_run").created);
    }
    created
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_racing_on_one_file_create_one_run() {
    let db = TempDb::new("processes");
    // Create the schema first, so that every process races on the run, not on the migration
    // (which is safe too, but slower to wait for).
    drop(SqliteStore::open(db.path()).unwrap());
    let id = new_run_id();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..3)
        .map(|_| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "child_process_races_create_run",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, format!("{}|{id}", db.path().display()))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut created = race_create(db.path(), &id).await;
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("CREATED "))
            .unwrap_or_else(|| panic!("no CREATED line in {stdout}"));
        created += line.trim().parse::<usize>().unwrap();
    }
    assert_eq!(created, 1, "4 processes x 8 tasks created the run once");
    let store = SqliteStore::open(db.path()).unwrap();
    let runs = store.list_runs(RunFilter::default()).await.unwrap();
    assert_eq!(runs.runs.len(), 1);
    assert_eq!(runs.runs[0].id, id);
}
