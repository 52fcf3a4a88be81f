//! The PostgreSQL store against a real server: the shared conformance suites, then what is
//! PostgreSQL's own (schema versions, several stores on one schema, connection failures,
//! fencing under a real race, LISTEN/NOTIFY between store instances).
//!
//! Each test works in a schema of its own (`flow_test_<random>` in the database of
//! `FLOW_PG_URL`, by default `postgres://postgres@127.0.0.1:5432/test`), dropped at the end,
//! also when the test fails.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flow_runtime::store::{
    Claim, Enqueue, NewRun, Queue, QueueOptions, RunFilter, RunStatus, StepCommit, StepKey,
    StepOutcome, Store, StoreError, conformance, new_run_id,
};
use flow_store_postgres::{Options, PgStore, SCHEMA_VERSION};
use tokio_postgres::NoTls;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn url() -> String {
    std::env::var("FLOW_PG_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// A plain connection to the test database, or a panic that says how to get one.
async fn admin() -> tokio_postgres::Client {
    let url = url();
    match tokio_postgres::connect(&url, NoTls).await {
        Ok((client, connection)) => {
            tokio::spawn(async move {
                let _ = connection.await;
            });
            client
        }
        Err(e) => panic!(
            "cannot reach PostgreSQL at {url}: {e:?}\n\
             These tests need a PostgreSQL server with trust authentication. Start the local one \
             with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, or \
             point FLOW_PG_URL at another (postgres://user@host:port/database)."
        ),
    }
}

/// A schema of the test's own, dropped (over a fresh connection) when the guard is dropped,
/// also while a failing test unwinds. Declare it before the stores that use it, so that they
/// are dropped first.
struct TestSchema {
    name: String,
}

impl TestSchema {
    async fn new() -> TestSchema {
        // Fail early, with the message of `admin`, if the server is not there.
        drop(admin().await);
        TestSchema {
            name: format!("flow_test_{:016x}", fastrand_u64()),
        }
    }

    fn options(&self) -> Options {
        Options {
            schema: Some(self.name.clone()),
            pool_size: 8,
            retry_for: Duration::from_secs(10),
            ..Options::default()
        }
    }

    async fn store(&self) -> PgStore {
        PgStore::connect_with(&url(), self.options())
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", url()))
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let name = self.name.clone();
        // A thread with a runtime of its own: this may run inside the test's runtime.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let client = admin().await;
                client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                    .await
            })
        })
        .join();
        if !std::thread::panicking() {
            dropped.expect("the drop thread").expect("DROP SCHEMA");
        }
    }
}

fn fastrand_u64() -> u64 {
    // Good enough for a unique name: the clock's nanoseconds, mixed with a counter.
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x =
        nanos ^ (COUNTER.fetch_add(1, Ordering::Relaxed) << 48) ^ u64::from(std::process::id());
    // xorshift, to spread the bits
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

fn new_run(id: &str, workflow: &str) -> NewRun {
    NewRun {
        id: id.to_owned(),
        workflow: workflow.to_owned(),
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

fn claim(worker: &str, queue: &str, lease: Duration) -> Claim {
    Claim {
        worker: worker.into(),
        queue: queue.into(),
        options: QueueOptions::default(),
        max: 1,
        lease,
    }
}

async fn schema_version(schema: &str) -> i64 {
    admin()
        .await
        .query_one(
            &format!("SELECT version FROM \"{schema}\".flow_schema WHERE id = 1"),
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite() {
    let schema = TestSchema::new().await;
    let store = Arc::new(
        PgStore::connect_with(
            &url(),
            Options {
                pool_size: 16,
                ..schema.options()
            },
        )
        .await
        .unwrap(),
    );
    conformance::run_all(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_conformance_suite() {
    let schema = TestSchema::new().await;
    let store = Arc::new(schema.store().await);
    conformance::run_queue_all(store).await;
}

#[tokio::test]
async fn a_new_schema_is_created_at_the_current_version() {
    let schema = TestSchema::new().await;
    let store = schema.store().await;
    assert_eq!(store.schema(), schema.name);
    assert_eq!(
        schema_version(&schema.name).await,
        i64::from(SCHEMA_VERSION)
    );
    let id = new_run_id();
    assert!(store.create_run(new_run(&id, "w")).await.unwrap().created);
    drop(store);
    // Opening it again changes nothing, and finds the run.
    let store = schema.store().await;
    assert_eq!(store.get_run(&id).await.unwrap().unwrap().id, id);
    assert_eq!(
        schema_version(&schema.name).await,
        i64::from(SCHEMA_VERSION)
    );
}

/// Every row of every table of `schema`, and its tables, functions and indexes, as text.
async fn contents(schema: &str) -> Vec<String> {
    let client = admin().await;
    let mut all: Vec<String> = client
        .query(
            "SELECT 'relation ' || c.relname::text || ' ' || c.relkind::text FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1
             UNION ALL
             SELECT 'function ' || p.proname::text || ' ' || md5(p.prosrc) FROM pg_proc p
             JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1",
            &[&schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let tables: Vec<String> = client
        .query(
            "SELECT tablename FROM pg_tables WHERE schemaname = $1",
            &[&schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for table in tables {
        let rows = client
            .query(
                &format!("SELECT t::text FROM \"{schema}\".\"{table}\" t"),
                &[],
            )
            .await
            .unwrap();
        all.extend(
            rows.iter()
                .map(|r| format!("{table}: {}", r.get::<_, String>(0))),
        );
    }
    all.sort();
    all
}

/// A version-2 schema (before `flow_runs_by_workflow_status` and its statistics) upgrades
/// in place, keeps its runs, and then lists one workflow's runs of one status along that
/// index: with 300 cancelled runs of `a` and one of `b`, the page of `b`'s cancelled runs
/// reads that run alone, not the 300 of `a` (what the index of either filter alone reads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_schema_upgrades_and_lists_by_workflow_and_status_along_an_index() {
    let schema = TestSchema::new().await;
    // Whether the index and the statistics of schema 3 are there.
    let index_exists = |name: String| async move {
        let admin = admin().await;
        let index = admin
            .query_opt(
                "SELECT 1 FROM pg_indexes WHERE schemaname = $1 \
                 AND indexname = 'flow_runs_by_workflow_status'",
                &[&name],
            )
            .await
            .unwrap()
            .is_some();
        let statistics = admin
            .query_opt(
                "SELECT 1 FROM pg_statistic_ext s JOIN pg_namespace n ON n.oid = s.stxnamespace \
                 WHERE n.nspname = $1 AND s.stxname = 'flow_runs_workflow_status'",
                &[&name],
            )
            .await
            .unwrap()
            .is_some();
        assert_eq!(index, statistics, "both or neither");
        index
    };
    {
        let store = Arc::new(schema.store().await);
        let made = (0..900).map(|i| {
            let store = Arc::clone(&store);
            async move {
                let id = format!("run-{i:04}");
                let workflow = if i == 7 || i % 3 != 0 { "b" } else { "a" };
                store.create_run(new_run(&id, workflow)).await.unwrap();
                if i == 7 || i % 3 == 0 {
                    store
                        .set_status(&id, RunStatus::Cancelled, None)
                        .await
                        .unwrap();
                }
            }
        });
        futures_util::future::join_all(made).await;
    }
    assert!(index_exists(schema.name.clone()).await);
    // Back to version 2.
    admin()
        .await
        .batch_execute(&format!(
            "DROP INDEX \"{0}\".flow_runs_by_workflow_status; \
             DROP STATISTICS \"{0}\".flow_runs_workflow_status; \
             UPDATE \"{0}\".flow_schema SET version = 2",
            schema.name
        ))
        .await
        .unwrap();
    assert!(!index_exists(schema.name.clone()).await);
    let store = schema.store().await;
    assert_eq!(
        schema_version(&schema.name).await,
        i64::from(SCHEMA_VERSION)
    );
    assert!(index_exists(schema.name.clone()).await);
    let page = store
        .list_runs(RunFilter {
            workflow: Some("b".into()),
            status: Some(RunStatus::Cancelled),
            newest_first: true,
            ..RunFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page.runs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["run-0007"]
    );
    assert_eq!(page.next, None);
    // The server's plan of that page (the query `list_runs` sends), with the table's
    // statistics up to date.
    let admin = admin().await;
    admin
        .batch_execute(&format!(
            "SET search_path TO \"{}\"; ANALYZE flow_runs",
            schema.name
        ))
        .await
        .unwrap();
    let plan: Vec<String> = admin
        .query(
            "EXPLAIN ANALYZE SELECT * FROM flow_run_view \
             WHERE workflow = $1 AND status = $2 ORDER BY created_ms DESC, id DESC LIMIT $3",
            &[&"b", &"cancelled", &101i64],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan.join("\n");
    // The plan's node that reads `flow_runs` (up to the next node).
    let runs_scan = plan
        .split("->")
        .find(|node| node.contains(" on flow_runs r "))
        .unwrap_or_else(|| panic!("no scan of flow_runs: {plan}"));
    assert!(
        runs_scan.contains("using flow_runs_by_workflow_status")
            && !runs_scan.contains("Rows Removed by Filter"),
        "{plan}"
    );
}

#[tokio::test]
async fn a_newer_schema_is_refused_and_left_untouched() {
    let schema = TestSchema::new().await;
    let id = new_run_id();
    {
        let store = schema.store().await;
        store.create_run(new_run(&id, "w")).await.unwrap();
    }
    admin()
        .await
        .execute(
            &format!("UPDATE \"{}\".flow_schema SET version = $1", schema.name),
            &[&i64::from(SCHEMA_VERSION + 1)],
        )
        .await
        .unwrap();
    let before = contents(&schema.name).await;
    assert!(before.iter().any(|l| l.contains(&id)), "{before:?}");
    let err = PgStore::connect_with(&url(), schema.options())
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::NewerSchema {
            found: SCHEMA_VERSION + 1,
            supported: SCHEMA_VERSION
        }
    );
    assert!(err.to_string().contains("left untouched"), "{err}");
    assert_eq!(
        contents(&schema.name).await,
        before,
        "the schema is unchanged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stores_opening_one_new_schema_at_once_migrate_it_once() {
    let schema = TestSchema::new().await;
    let opened = futures_util::future::join_all((0..4).map(|_| {
        let options = Options {
            pool_size: 2,
            ..schema.options()
        };
        tokio::spawn(async move { PgStore::connect_with(&url(), options).await })
    }))
    .await;
    let stores: Vec<PgStore> = opened
        .into_iter()
        .map(|r| r.unwrap().expect("every store opens the schema"))
        .collect();
    assert_eq!(
        schema_version(&schema.name).await,
        i64::from(SCHEMA_VERSION)
    );
    // One set of tables, usable from every store.
    let id = new_run_id();
    assert!(
        stores[0]
            .create_run(new_run(&id, "w"))
            .await
            .unwrap()
            .created
    );
    for store in &stores[1..] {
        assert!(!store.create_run(new_run(&id, "w")).await.unwrap().created);
    }
}

#[tokio::test]
async fn a_server_that_is_not_there_is_a_clear_error_after_the_retry_budget() {
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let err = PgStore::connect_with(
        &format!("postgres://postgres@127.0.0.1:{port}/test"),
        Options {
            retry_for: Duration::from_millis(800),
            ..Options::default()
        },
    )
    .await
    .unwrap_err();
    let took = started.elapsed();
    let StoreError::Io { message } = &err else {
        panic!("expected an I/O error, got {err:?}");
    };
    assert!(
        message.contains(&format!("127.0.0.1:{port}/test")),
        "names the server: {message}"
    );
    assert!(message.contains("tried"), "says it tried again: {message}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "retried within the budget: {took:?}"
    );
    // A malformed URL is refused at once.
    let err = PgStore::connect("postgres://[nonsense").await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid { .. }), "{err:?}");
    let err = PgStore::connect_with(
        &url(),
        Options {
            schema: Some("Robert'); DROP TABLE students;--".into()),
            ..Options::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::Invalid { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fenced_writer_never_commits_after_a_takeover() {
    let schema = TestSchema::new().await;
    let store = Arc::new(
        PgStore::connect_with(
            &url(),
            Options {
                pool_size: 12,
                ..schema.options()
            },
        )
        .await
        .unwrap(),
    );
    let queue = format!("fence-race-{}", new_run_id());
    for round in 0..3 {
        let id = new_run_id();
        store
            .enqueue(Enqueue::new(new_run(&id, &queue), &queue))
            .await
            .unwrap();
        let got = store
            .claim(claim("old", &queue, Duration::from_millis(300)))
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        let epoch = got[0].lease.as_ref().unwrap().epoch;
        // Eight tasks of the old holder commit steps in a loop until they lose the lease.
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let old = store.clone().fenced(&id, epoch);
                let id = id.clone();
                tokio::spawn(async move {
                    let mut committed = Vec::new();
                    for i in 0.. {
                        let node = format!("old-{w}-{i}");
                        match old.commit_step(commit(&id, &node)).await {
                            Ok(c) => {
                                assert!(c.first);
                                committed.push(node);
                            }
                            Err(StoreError::LeaseLost { run, epoch: e }) => {
                                assert_eq!((run, e), (id.clone(), epoch));
                                return (committed, node);
                            }
                            Err(e) => panic!("unexpected {e:?}"),
                        }
                    }
                    unreachable!()
                })
            })
            .collect();
        // Another worker takes the run over once the lease has expired.
        tokio::time::sleep(Duration::from_millis(350)).await;
        let expired = Instant::now();
        let deadline = expired + Duration::from_secs(20);
        let taken = loop {
            let got = store
                .claim(claim("new", &queue, Duration::from_secs(60)))
                .await
                .unwrap();
            if let Some(run) = got.into_iter().next() {
                break run;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: the run was never taken over"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(taken.lease.as_ref().unwrap().epoch, epoch + 1);
        eprintln!(
            "round {round}: taken over {:?} after the lease expired",
            expired.elapsed()
        );
        // What was committed when the takeover committed.
        let at_takeover: BTreeSet<String> = store
            .steps_of(&id)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.key.node)
            .collect();
        let new = store.clone().fenced(&id, epoch + 1);
        new.commit_step(commit(&id, "new-0")).await.unwrap();
        let mut accepted = BTreeSet::new();
        for w in writers {
            let (committed, refused) = w.await.unwrap();
            accepted.extend(committed);
            assert!(!at_takeover.contains(&refused));
        }
        let stored: BTreeSet<String> = store
            .steps_of(&id)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.key.node)
            .filter(|n| n.starts_with("old-"))
            .collect();
        assert!(
            !accepted.is_empty(),
            "round {round}: the old holder committed before"
        );
        assert_eq!(
            stored, accepted,
            "every accepted commit is stored, no other"
        );
        assert_eq!(
            stored, at_takeover,
            "round {round}: no commit of the old holder after the takeover"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_a_waiter_of_another_store_instance() {
    let schema = TestSchema::new().await;
    let producer = Arc::new(schema.store().await);
    let worker = Arc::new(schema.store().await);
    let queue = format!("wake-{}", new_run_id());
    let wait = |store: Arc<PgStore>, queue: String| {
        tokio::spawn(async move {
            let started = Instant::now();
            store.wait_for_work(&queue, Duration::from_secs(20)).await;
            started.elapsed()
        })
    };
    // Enqueueing wakes the waiter of that queue, not a waiter of another queue.
    let waiter = wait(worker.clone(), queue.clone());
    let other = wait(worker.clone(), format!("{queue}-other"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = new_run_id();
    producer
        .enqueue(Enqueue::new(new_run(&id, &queue), &queue))
        .await
        .unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter woke")
        .unwrap();
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert!(!other.is_finished(), "a waiter of another queue sleeps on");
    other.abort();

    // Releasing a lease, and finishing a run, wake the queue too.
    let got = worker
        .claim(claim("w", &queue, Duration::from_secs(60)))
        .await
        .unwrap();
    let epoch = got[0].lease.as_ref().unwrap().epoch;
    let waiter = wait(worker.clone(), queue.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(producer.release(&id, epoch, None).await.unwrap());
    let waited = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("woken by the release")
        .unwrap();
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    let waiter = wait(worker.clone(), queue.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    producer
        .set_status(&id, RunStatus::Cancelled, None)
        .await
        .unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("woken by the run's end")
        .unwrap();
    assert!(waited < Duration::from_secs(5), "{waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_reconnects_after_its_connection_is_killed() {
    let schema = TestSchema::new().await;
    // Named, so that only this test's connections are killed.
    let named = format!(
        "{}{}application_name={}",
        url(),
        if url().contains('?') { '&' } else { '?' },
        schema.name
    );
    let producer = PgStore::connect_with(&named, schema.options())
        .await
        .unwrap();
    let worker = Arc::new(
        PgStore::connect_with(&named, schema.options())
            .await
            .unwrap(),
    );
    let queue = format!("reconnect-{}", new_run_id());
    // Kill every listening connection of this database (the two stores' listeners).
    let killed: i64 = admin()
        .await
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND query LIKE 'LISTEN flow_work%'
               AND application_name = $1",
            &[&schema.name],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed >= 2, "{killed}");
    // The listener connects again (with backoff), then hears the next enqueue.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiter = {
            let (worker, queue) = (worker.clone(), queue.clone());
            tokio::spawn(async move { worker.wait_for_work(&queue, Duration::from_secs(3)).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        let id = new_run_id();
        producer
            .enqueue(Enqueue::new(new_run(&id, &queue), &queue))
            .await
            .unwrap();
        waiter.await.unwrap();
        if started.elapsed() < Duration::from_secs(2) {
            break;
        }
        assert!(Instant::now() < deadline, "the listener never came back");
    }
}

#[tokio::test]
async fn fingerprints_and_u64_values_keep_their_bits() {
    let schema = TestSchema::new().await;
    let store = schema.store().await;
    let id = new_run_id();
    let mut run = new_run(&id, "bits");
    run.fingerprint = u64::MAX;
    run.node_fingerprints = BTreeMap::from([("x".to_owned(), 1u64 << 63), ("y".to_owned(), 0)]);
    let created = store.create_run(run).await.unwrap().run;
    assert_eq!(created.fingerprint, u64::MAX);
    assert_eq!(created.node_fingerprints["x"], 1 << 63);
    let stored: i64 = admin()
        .await
        .query_one(
            &format!(
                "SELECT fingerprint FROM \"{}\".flow_runs WHERE id = $1",
                schema.name
            ),
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, -1, "stored as the BIGINT with the same bits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_many_runs_newest_first_uses_the_indexes() {
    let schema = TestSchema::new().await;
    let store = schema.store().await;
    let client = admin().await;
    // 100,000 runs, inserted in one statement, a second apart, in three workflows.
    client
        .batch_execute(&format!(
            "SET search_path TO \"{}\";
             INSERT INTO flow_runs (id, workflow, fingerprint, input, status, created_ms, updated_ms)
             SELECT 'run-' || lpad(i::text, 6, '0'), 'w' || (i % 3), 1, '', 
                    CASE WHEN i % 2 = 0 THEN 'completed' ELSE 'pending' END,
                    1700000000000 + i * 1000, 1700000000000 + i * 1000
             FROM generate_series(1, 100000) AS i;
             ANALYZE flow_runs; ANALYZE flow_run_nodes;",
            schema.name
        ))
        .await
        .unwrap();
    // Paging newest first from the start, then deep in the listing: each page in the same
    // order as a sort of every run would give.
    let mut after = None;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let page = store
            .list_runs(RunFilter {
                limit: 50,
                after: after.clone(),
                newest_first: true,
                workflow: Some("w1".into()),
                ..RunFilter::default()
            })
            .await
            .unwrap();
        seen.extend(page.runs.iter().map(|r| r.id.clone()));
        after = page.next;
    }
    let expected: Vec<String> = (1..=100_000)
        .rev()
        .filter(|i| i % 3 == 1)
        .take(150)
        .map(|i| format!("run-{i:06}"))
        .collect();
    assert_eq!(seen, expected);
    // The plans: an index scan, never a sort or a sequential scan of the runs.
    for query in [
        "SELECT * FROM flow_run_view ORDER BY created_ms DESC, id DESC LIMIT 101",
        "SELECT * FROM flow_run_view WHERE (created_ms, id) < (1700050000000, 'run-050000')
         ORDER BY created_ms DESC, id DESC LIMIT 101",
        "SELECT * FROM flow_run_view WHERE status = 'pending'
         ORDER BY created_ms DESC, id DESC LIMIT 101",
        "SELECT * FROM flow_run_view WHERE workflow = 'w2'
         ORDER BY created_ms, id LIMIT 101",
    ] {
        let plan: Vec<String> = client
            .query(&format!("EXPLAIN {query}"), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let plan = plan.join("\n");
        assert!(
            !plan.contains("Seq Scan on flow_runs") && !plan.contains("Sort"),
            "{query}\n{plan}"
        );
    }
}

#[tokio::test]
async fn without_a_schema_option_the_connections_current_schema_is_used() {
    let schema = TestSchema::new().await;
    // The connection's own search_path (as a DBA would set it for a role), and no
    // `Options::schema`: the store uses that schema once it exists.
    let via_url = format!(
        "{}{}options=-c%20search_path%3D{}",
        url(),
        if url().contains('?') { '&' } else { '?' },
        schema.name
    );
    let options = Options {
        schema: None,
        pool_size: 2,
        retry_for: Duration::from_secs(2),
        ..Options::default()
    };
    let err = PgStore::connect_with(&via_url, options.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Invalid { what } if what.contains("Options::schema")),
        "{err:?}"
    );
    admin()
        .await
        .batch_execute(&format!("CREATE SCHEMA {}", schema.name))
        .await
        .unwrap();
    let store = PgStore::connect_with(&via_url, options).await.unwrap();
    assert_eq!(store.schema(), schema.name);
    let id = new_run_id();
    store.create_run(new_run(&id, "w")).await.unwrap();
    assert_eq!(
        schema_version(&schema.name).await,
        i64::from(SCHEMA_VERSION)
    );
    let listed = store.list_runs(RunFilter::default()).await.unwrap();
    assert_eq!(listed.runs.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_survives_its_connections_being_killed() {
    let schema = TestSchema::new().await;
    let named = format!(
        "{}{}application_name={}",
        url(),
        if url().contains('?') { '&' } else { '?' },
        schema.name
    );
    let store = Arc::new(
        PgStore::connect_with(&named, schema.options())
            .await
            .unwrap(),
    );
    let id = new_run_id();
    store.create_run(new_run(&id, "w")).await.unwrap();
    // Open several pooled connections at once.
    let opened = (0..6).map(|i| store.commit_step(commit(&id, &format!("before-{i}"))));
    for r in futures_util::future::join_all(opened).await {
        r.unwrap();
    }
    for round in 0..3 {
        let killed: i64 = admin()
            .await
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name = $1",
                &[&schema.name],
            )
            .await
            .unwrap()
            .get(0);
        assert!(killed >= 2, "round {round}: {killed}");
        // The writes that can be sent again go through, on new connections.
        let writes = (0..6).map(|i| store.commit_step(commit(&id, &format!("after-{round}-{i}"))));
        for r in futures_util::future::join_all(writes).await {
            assert!(r.unwrap().first);
        }
        store
            .set_status(&id, RunStatus::Running, None)
            .await
            .unwrap();
    }
    assert_eq!(store.steps_of(&id).await.unwrap().len(), 6 + 3 * 6);
}

/// Waits (up to 20 s) until `done` says so, or panics saying what was awaited.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A connection of the test's own, in the test's schema, that holds locks for a while.
async fn locker(schema: &str) -> tokio_postgres::Client {
    let client = admin().await;
    client
        .batch_execute(&format!("SET search_path TO \"{schema}\"; BEGIN"))
        .await
        .unwrap();
    client
}

/// Step commits made while two others are in flight (held up by a lock) wait, and then go
/// together in one statement; each is checked and answered on its own, as if it had gone
/// alone: a fenced commit with a stale epoch is refused while its neighbours commit, a run
/// that does not exist is NotFound, a step committed already is given back (not the first),
/// a second commit of one step waits for the next batch, attempts are recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn step_commits_made_while_others_are_in_flight_go_together_each_answered_on_its_own() {
    let schema = TestSchema::new().await;
    let store = Arc::new(schema.store().await);
    store.create_run(new_run("blk", "w")).await.unwrap();
    for i in 0..12 {
        let run = new_run(&format!("r{i:02}"), "w");
        store.enqueue(Enqueue::new(run, "q")).await.unwrap();
    }
    let mut epochs = BTreeMap::new();
    for run in store
        .claim(Claim {
            max: 12,
            ..claim("w1", "q", Duration::from_secs(60))
        })
        .await
        .unwrap()
    {
        epochs.insert(run.id.clone(), run.lease.unwrap().epoch);
    }
    assert_eq!(epochs.len(), 12);
    let done_before = store.commit_step(commit("r00", "done")).await.unwrap();
    assert!(done_before.first);
    let before = store.batching().commits;

    // Hold up two commits (the two sending slots): their run's row is locked.
    let lock = locker(&schema.name).await;
    lock.batch_execute("SELECT 1 FROM flow_runs WHERE id = 'blk' FOR UPDATE")
        .await
        .unwrap();
    let mut held = Vec::new();
    for node in ["b1", "b2"] {
        let store = store.clone();
        held.push(tokio::spawn(async move {
            store.commit_step(commit("blk", node)).await
        }));
    }
    until("two commits sent alone", || {
        store.batching().commits.alone == before.alone + 2
    })
    .await;

    // These wait for a slot.
    let fenced = |run: &str, epoch: u64| store.clone().fenced(run, epoch);
    let mut waiting: Vec<(&str, tokio::task::JoinHandle<Result<_, StoreError>>)> = Vec::new();
    for i in 1..12 {
        let run = format!("r{i:02}");
        let epoch = epochs[&run];
        let (label, store, mut c) = match i {
            // Fenced by an epoch that is not the run's any more.
            2 => ("stale", fenced(&run, epoch - 1), commit(&run, "s")),
            // A failed step, with its attempts.
            3 => {
                let mut c = commit(&run, "s");
                c.outcome = StepOutcome::Failed("refused".into());
                // Attempt 2 twice: the last of a number wins.
                c.attempts = [(1, "try 1"), (2, "an earlier record"), (2, "try 2")]
                    .into_iter()
                    .map(|(n, why)| flow_runtime::store::AttemptRecord {
                        number: n,
                        started_ms: 1000 * u64::from(n),
                        ended_ms: Some(1000 * u64::from(n) + 5),
                        failure: Some(why.to_owned()),
                    })
                    .collect();
                ("failed", fenced(&run, epoch), c)
            }
            _ => ("ok", fenced(&run, epoch), commit(&run, "s")),
        };
        if label == "ok" {
            c.outcome = StepOutcome::Completed(run.clone().into_bytes());
        }
        waiting.push((
            label,
            tokio::spawn(async move { store.commit_step(c).await }),
        ));
    }
    let plain: Arc<dyn Store> = store.clone();
    let mut again = commit("r00", "done");
    again.outcome = StepOutcome::Completed(b"other".to_vec());
    let s = plain.clone();
    waiting.push((
        "again",
        tokio::spawn(async move { s.commit_step(again).await }),
    ));
    let s = plain.clone();
    waiting.push((
        "gone",
        tokio::spawn(async move { s.commit_step(commit("nobody", "s")).await }),
    ));
    // Two commits of one step: the second goes in a later batch, and finds the first.
    for out in [&b"one"[..], &b"two"[..]] {
        let mut c = commit("r01", "dup");
        c.outcome = StepOutcome::Completed(out.to_vec());
        let s = fenced("r01", epochs["r01"]);
        waiting.push(("dup", tokio::spawn(async move { s.commit_step(c).await })));
    }
    let queued = waiting.len();
    until("the commits waiting", || {
        store.batching().commits.waiting == queued
    })
    .await;
    lock.batch_execute("ROLLBACK").await.unwrap();

    for h in held {
        assert!(h.await.unwrap().unwrap().first);
    }
    let mut dups = Vec::new();
    for (label, h) in waiting {
        let answer = h.await.unwrap();
        match label {
            "ok" => {
                let c = answer.unwrap();
                assert!(c.first);
                assert_eq!(
                    c.step.outcome,
                    Some(StepOutcome::Completed(c.step.key.run.clone().into_bytes()))
                );
            }
            "stale" => assert!(
                matches!(&answer, Err(StoreError::LeaseLost { run, .. }) if run == "r02"),
                "{answer:?}"
            ),
            "failed" => {
                let c = answer.unwrap();
                assert!(c.first);
                assert_eq!(c.step.outcome, Some(StepOutcome::Failed("refused".into())));
                let tries: Vec<_> = c.step.attempts.iter().map(|a| a.failure.clone()).collect();
                assert_eq!(tries, [Some("try 1".into()), Some("try 2".into())]);
            }
            "again" => {
                let c = answer.unwrap();
                assert!(!c.first, "committed before: given back");
                assert_eq!(c.step, done_before.step);
            }
            "gone" => assert!(
                matches!(&answer, Err(StoreError::NotFound { .. })),
                "{answer:?}"
            ),
            _ => dups.push(answer.unwrap()),
        }
    }
    assert_eq!(dups.iter().filter(|c| c.first).count(), 1, "{dups:?}");
    assert_eq!(
        dups[0].step.outcome, dups[1].step.outcome,
        "one output wins"
    );
    // Nothing of the refused commits was written.
    assert_eq!(
        store.get_step(&StepKey::new("r02", "s")).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .get_step(&StepKey::new("r05", "s"))
            .await
            .unwrap()
            .unwrap()
            .outcome,
        Some(StepOutcome::Completed(b"r05".to_vec()))
    );
    let after = store.batching().commits;
    assert!(
        after.batches > before.batches && after.in_batches >= before.in_batches + 10,
        "the waiting commits went together: {before:?} -> {after:?}"
    );
    // Alone: the two held, and the second commit of `dup` (none sent again alone after its
    // batch failed).
    assert_eq!(after.alone, before.alone + 3, "{before:?} -> {after:?}");
    assert_eq!(after.waiting, 0);
}

/// Runs created or enqueued, status changes and signals taken, made while two of their kind
/// are in flight, go together too, each answered as if it had gone alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn creations_status_changes_and_signals_taken_go_together_each_answered_on_its_own() {
    let schema = TestSchema::new().await;
    let store = Arc::new(schema.store().await);
    let plain: Arc<dyn Store> = store.clone();
    let old = store.create_run(new_run("old", "w")).await.unwrap().run;
    let mut e = Enqueue::new(new_run("dk-1", "w"), "dedup");
    e.dedup_key = Some("k".into());
    assert!(store.enqueue(e).await.unwrap().created);

    // Creations: two held up by uncommitted rows with their ids.
    let lock = locker(&schema.name).await;
    lock.batch_execute(
        "INSERT INTO flow_runs (id, workflow, fingerprint, input, status, created_ms, updated_ms)
         VALUES ('blk-a', 'w', 0, '', 'pending', 0, 0), ('blk-b', 'w', 0, '', 'pending', 0, 0)",
    )
    .await
    .unwrap();
    let before = store.batching().creates;
    let mut held = Vec::new();
    for id in ["blk-a", "blk-b"] {
        let s = plain.clone();
        held.push(tokio::spawn(
            async move { s.create_run(new_run(id, "w")).await },
        ));
    }
    until("two creations sent alone", || {
        store.batching().creates.alone == before.alone + 2
    })
    .await;
    let mut waiting = Vec::new();
    for i in 0..10u8 {
        let mut run = new_run(&format!("q{i}"), "w");
        run.node_fingerprints =
            BTreeMap::from([("a".into(), 1), (format!("n{i}"), u64::MAX - u64::from(i))]);
        run.input = vec![i; 3];
        let mut e = Enqueue::new(run, "jobs");
        e.priority = i32::from(i) - 5;
        e.not_before_ms = Some(u64::from(i));
        let s = store.clone();
        waiting.push(("queued", tokio::spawn(async move { s.enqueue(e).await })));
    }
    let s = plain.clone();
    waiting.push((
        "old",
        tokio::spawn(async move { s.create_run(new_run("old", "w")).await }),
    ));
    for _ in 0..2 {
        let s = plain.clone();
        waiting.push((
            "twice",
            tokio::spawn(async move { s.create_run(new_run("twice", "w")).await }),
        ));
    }
    let queued = waiting.len();
    until("the creations waiting", || {
        store.batching().creates.waiting == queued
    })
    .await;
    // An enqueue with a deduplication key does not wait with them: it goes alone, at once
    // (its check is flow_create_run's, which the batch does not make).
    let mut e = Enqueue::new(new_run("dk-2", "w"), "dedup");
    e.dedup_key = Some("k".into());
    let answer = tokio::time::timeout(Duration::from_secs(5), store.enqueue(e))
        .await
        .expect("an enqueue with a deduplication key is sent at once, alone");
    assert!(
        matches!(&answer, Err(StoreError::Duplicate { run, .. }) if run == "dk-1"),
        "{answer:?}"
    );
    lock.batch_execute("ROLLBACK").await.unwrap();
    for h in held {
        assert!(
            h.await.unwrap().unwrap().created,
            "created once the lock is gone"
        );
    }
    let mut twice = Vec::new();
    for (label, h) in waiting {
        let c = h.await.unwrap().unwrap();
        match label {
            "queued" => {
                assert!(c.created);
                let i = c.run.input[0];
                assert_eq!(c.run.id, format!("q{i}"));
                assert_eq!(c.run.queue.as_deref(), Some("jobs"));
                assert_eq!(c.run.status, RunStatus::Pending);
                assert_eq!(
                    c.run.node_fingerprints,
                    BTreeMap::from([("a".into(), 1), (format!("n{i}"), u64::MAX - u64::from(i))])
                );
                assert_eq!(
                    store.get_run(&c.run.id).await.unwrap().as_ref(),
                    Some(&c.run)
                );
            }
            "old" => {
                assert!(!c.created);
                assert_eq!(c.run, old);
            }
            _ => twice.push(c),
        }
    }
    assert_eq!(twice.iter().filter(|c| c.created).count(), 1);
    // Claimed in priority order: the enqueue options were kept.
    let claimed = store
        .claim(Claim {
            max: 10,
            ..claim("w1", "jobs", Duration::from_secs(60))
        })
        .await
        .unwrap();
    let order: Vec<&str> = claimed.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        order,
        ["q0", "q1", "q2", "q3", "q4", "q5", "q6", "q7", "q8", "q9"]
    );
    let after = store.batching().creates;
    assert!(after.batches > before.batches, "{before:?} -> {after:?}");
    // Alone: the two held, and the second creation of `twice`.
    assert_eq!(after.alone, before.alone + 3, "{before:?} -> {after:?}");

    // Status changes and signals taken: two held up by locked rows.
    let epoch = |id: &str| {
        claimed
            .iter()
            .find(|r| r.id == id)
            .and_then(|r| r.lease.as_ref())
            .map(|l| l.epoch)
            .unwrap()
    };
    plain
        .set_status("old", RunStatus::Completed, Some(b"42".to_vec()))
        .await
        .unwrap();
    for id in ["q3", "q4"] {
        plain
            .send_signal(id, "go", id.as_bytes().to_vec())
            .await
            .unwrap();
        plain
            .send_signal(id, "go", b"second".to_vec())
            .await
            .unwrap();
    }
    let lock = locker(&schema.name).await;
    lock.batch_execute("SELECT 1 FROM flow_runs WHERE id IN ('q0', 'q1') FOR UPDATE")
        .await
        .unwrap();
    let (statuses, takes) = (store.batching().statuses, store.batching().takes);
    let mut held = Vec::new();
    for id in ["q0", "q1"] {
        let s = store.clone().fenced(id, epoch(id));
        held.push(tokio::spawn(async move {
            s.set_status(id, RunStatus::Running, None)
                .await
                .map(|r| r.status)
        }));
    }
    let mut held_takes = Vec::new();
    for id in ["q0", "q1"] {
        let s = store.clone().fenced(id, epoch(id));
        held_takes.push(tokio::spawn(async move { s.take_signal(id, "go").await }));
    }
    until("two of each sent alone", || {
        let b = store.batching();
        b.statuses.alone == statuses.alone + 2 && b.takes.alone == takes.alone + 2
    })
    .await;
    let mut changes = Vec::new();
    for (label, id, status, result) in [
        ("running", "q2", RunStatus::Running, None),
        ("done", "q5", RunStatus::Completed, Some(b"out".to_vec())),
        ("failed", "q6", RunStatus::Failed, Some(b"why".to_vec())),
        ("stale", "q7", RunStatus::Running, None),
        ("finished", "old", RunStatus::Cancelled, None),
        ("gone", "nobody", RunStatus::Running, None),
        // Two changes of one run, both finishing it: the second waits for the next batch
        // (in either order), and finds the run finished.
        ("q9", "q9", RunStatus::Completed, Some(b"out".to_vec())),
        ("q9", "q9", RunStatus::Cancelled, None),
    ] {
        let s = match label {
            "stale" => store.clone().fenced(id, epoch(id) - 1),
            "finished" | "gone" => plain.clone(),
            _ => store.clone().fenced(id, epoch(id)),
        };
        changes.push((
            label,
            tokio::spawn(async move { s.set_status(id, status, result).await }),
        ));
    }
    let mut taken = Vec::new();
    for (label, id) in [
        ("q3", "q3"),
        ("first", "q4"),
        ("none", "q5"),
        ("stale", "q8"),
    ] {
        let s = if label == "stale" {
            store.clone().fenced(id, epoch(id) - 1)
        } else {
            store.clone().fenced(id, epoch(id))
        };
        taken.push((
            label,
            id,
            tokio::spawn(async move { s.take_signal(id, "go").await }),
        ));
    }
    // A second take of q3's signal waits for the next batch: the two takes get the two
    // signals (in the order they came in).
    let s = store.clone().fenced("q3", epoch("q3"));
    taken.push((
        "q3",
        "q3",
        tokio::spawn(async move { s.take_signal("q3", "go").await }),
    ));
    until("the changes and takes waiting", || {
        let b = store.batching();
        b.statuses.waiting == changes.len() && b.takes.waiting == taken.len()
    })
    .await;
    // A result given with an unfinished status does not wait with them: it goes alone, at
    // once, and is refused (flow_set_status's check, which the batch does not make).
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        plain.set_status("q8", RunStatus::Running, Some(b"x".to_vec())),
    )
    .await
    .expect("a result with an unfinished status is sent at once, alone");
    assert!(
        matches!(&answer, Err(StoreError::Invalid { .. })),
        "{answer:?}"
    );
    lock.batch_execute("ROLLBACK").await.unwrap();
    for h in held {
        assert_eq!(h.await.unwrap().unwrap(), RunStatus::Running);
    }
    for h in held_takes {
        assert_eq!(
            h.await.unwrap().unwrap(),
            None,
            "no signal waits for q0, q1"
        );
    }
    let mut q9 = Vec::new();
    for (label, h) in changes {
        let answer = h.await.unwrap();
        match label {
            "q9" => q9.push(answer),
            "running" => assert_eq!(answer.unwrap().status, RunStatus::Running),
            "done" => {
                let run = answer.unwrap();
                assert_eq!(
                    (run.status, run.output, run.lease),
                    (RunStatus::Completed, Some(b"out".to_vec()), None)
                );
            }
            "failed" => {
                let run = answer.unwrap();
                assert_eq!(
                    (run.status, run.error, run.output),
                    (RunStatus::Failed, Some(b"why".to_vec()), None)
                );
            }
            "stale" => assert!(
                matches!(&answer, Err(StoreError::LeaseLost { run, .. }) if run == "q7"),
                "{answer:?}"
            ),
            "finished" => assert!(
                matches!(&answer, Err(StoreError::Conflict { what }) if what.contains("run old is completed")),
                "{answer:?}"
            ),
            _ => assert!(
                matches!(&answer, Err(StoreError::NotFound { .. })),
                "{answer:?}"
            ),
        }
    }
    // One of q9's changes made, the other refused: the run finished once.
    let (made, refused): (Vec<_>, Vec<_>) = q9.into_iter().partition(Result::is_ok);
    assert_eq!((made.len(), refused.len()), (1, 1), "{made:?} {refused:?}");
    assert!(
        matches!(&refused[0], Err(StoreError::Conflict { what }) if what.contains("run q9 is")),
        "{refused:?}"
    );
    let made = made[0].as_ref().unwrap();
    assert_eq!(store.get_run("q9").await.unwrap().as_ref(), Some(made));
    assert_eq!(
        store.get_run("q7").await.unwrap().unwrap().status,
        RunStatus::Pending
    );
    assert_eq!(
        store.get_run("old").await.unwrap().unwrap().status,
        RunStatus::Completed
    );
    let mut q3 = Vec::new();
    for (label, id, h) in taken {
        let answer = h.await.unwrap();
        match label {
            "first" => assert_eq!(
                answer.unwrap().map(|s| s.payload),
                Some(id.as_bytes().to_vec())
            ),
            "q3" => q3.push(answer.unwrap().map(|s| s.payload)),
            "none" => assert_eq!(answer.unwrap(), None),
            _ => assert!(
                matches!(&answer, Err(StoreError::LeaseLost { .. })),
                "{answer:?}"
            ),
        }
    }
    let b = store.batching();
    // Alone: the two held of each, the second change of q9 and the second take of q3's
    // signal (the result with an unfinished status did not go through the batches).
    assert_eq!(
        (b.statuses.alone, b.takes.alone),
        (statuses.alone + 3, takes.alone + 3),
        "{b:?}"
    );
    assert!(
        b.statuses.batches > statuses.batches && b.takes.batches > takes.batches,
        "{b:?}"
    );
    q3.sort();
    assert_eq!(q3, [Some(b"q3".to_vec()), Some(b"second".to_vec())]);
    // q4's second signal still waits: one take, one signal.
    assert_eq!(
        plain
            .take_signal("q4", "go")
            .await
            .unwrap()
            .map(|s| s.payload),
        Some(b"second".to_vec())
    );
}

/// Waits (up to 20 s) until `n` statements of the connections named `application_name`
/// that call `function` wait for a lock.
async fn until_waiting_for_locks(application_name: &str, function: &str, n: i64) {
    let admin = admin().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE application_name = $1 AND wait_event_type = 'Lock'
                   AND query LIKE '%' || $2 || '(%'",
                &[&application_name, &function],
            )
            .await
            .unwrap()
            .get(0);
        if waiting == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {n} {function} waiting for locks ({waiting})"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// [`Options::max_batch`] caps a batch; at 1 nothing is batched: every write is sent at once,
/// in a statement of its own, however many are in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_batch_caps_a_batch_and_at_one_every_write_goes_alone_at_once() {
    let schema = TestSchema::new().await;
    let named = format!(
        "{}{}application_name={}",
        url(),
        if url().contains('?') { '&' } else { '?' },
        schema.name
    );
    for max in [1, 3] {
        let store = Arc::new(
            PgStore::connect_with(
                &named,
                Options {
                    max_batch: max,
                    ..schema.options()
                },
            )
            .await
            .unwrap(),
        );
        let (blk, free) = (format!("blk-{max}"), format!("free-{max}"));
        for id in [&blk, &free] {
            store.create_run(new_run(id, "w")).await.unwrap();
        }
        let before = store.batching().commits;
        // Two commits held up by a lock on their run's row.
        let lock = locker(&schema.name).await;
        lock.batch_execute(&format!(
            "SELECT 1 FROM flow_runs WHERE id = '{blk}' FOR UPDATE"
        ))
        .await
        .unwrap();
        let mut held = Vec::new();
        for node in ["b1", "b2"] {
            let (store, blk) = (store.clone(), blk.clone());
            held.push(tokio::spawn(async move {
                store.commit_step(commit(&blk, node)).await
            }));
        }
        until_waiting_for_locks(&schema.name, "flow_commit_step", 2).await;
        if max == 1 {
            // A third does not wait for them.
            let third = tokio::time::timeout(
                Duration::from_secs(5),
                store.commit_step(commit(&free, "s")),
            )
            .await
            .expect("with max_batch 1, a write is sent at once while two are in flight");
            assert!(third.unwrap().first);
        } else {
            // Seven wait, and go in batches of at most three.
            let mut waiting = Vec::new();
            for i in 0..7 {
                let (store, free) = (store.clone(), free.clone());
                waiting.push(tokio::spawn(async move {
                    store.commit_step(commit(&free, &format!("s{i}"))).await
                }));
            }
            until("seven commits waiting", || {
                store.batching().commits.waiting == 7
            })
            .await;
            lock.batch_execute("ROLLBACK").await.unwrap();
            for h in waiting {
                assert!(h.await.unwrap().unwrap().first);
            }
        }
        lock.batch_execute("ROLLBACK").await.unwrap();
        for h in held {
            assert!(h.await.unwrap().unwrap().first);
        }
        let after = store.batching().commits;
        let (batches, in_batches) = (
            after.batches - before.batches,
            after.in_batches - before.in_batches,
        );
        if max == 1 {
            assert_eq!((batches, after.waiting), (0, 0), "{after:?}");
        } else {
            assert!(
                batches >= 2 && in_batches <= 3 * batches,
                "batches of at most 3: {before:?} -> {after:?}"
            );
            // The two held went alone; the seven in batches, but maybe one alone.
            assert_eq!(
                in_batches + (after.alone - before.alone - 2),
                7,
                "{before:?} -> {after:?}"
            );
        }
    }
}

/// Writes left waiting when the runtime of their callers shuts down (with the tasks that were
/// to send them) do not stop the store: the sending slots they held are freed, and the next
/// write of their kind, made on another runtime, is sent, with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_left_waiting_by_a_runtime_that_shut_down_go_with_the_next_one() {
    let schema = TestSchema::new().await;
    let store = Arc::new(schema.store().await);
    for id in ["blk", "free"] {
        store.create_run(new_run(id, "w")).await.unwrap();
    }
    let lock = locker(&schema.name).await;
    lock.batch_execute("SELECT 1 FROM flow_runs WHERE id = 'blk' FOR UPDATE")
        .await
        .unwrap();
    // On a runtime of its own: two commits held up by the lock, three waiting for them;
    // then that runtime shuts down.
    let s = store.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        for node in ["b1", "b2"] {
            let s = s.clone();
            runtime.spawn(async move { s.commit_step(commit("blk", node)).await });
        }
        runtime.block_on(until("two commits sent alone", || {
            s.batching().commits.alone == 2
        }));
        for i in 0..3 {
            let s = s.clone();
            runtime.spawn(async move { s.commit_step(commit("free", &format!("w{i}"))).await });
        }
        runtime.block_on(until("three commits waiting", || {
            s.batching().commits.waiting == 3
        }));
        drop(runtime);
    })
    .join()
    .unwrap();
    assert_eq!(store.batching().commits.waiting, 3);
    // The held statements, abandoned, end (their connections may go back to the pool).
    lock.batch_execute("ROLLBACK").await.unwrap();
    let next = tokio::time::timeout(
        Duration::from_secs(10),
        store.commit_step(commit("free", "next")),
    )
    .await
    .expect("the next commit is sent");
    assert!(next.unwrap().first);
    until("nothing waiting", || store.batching().commits.waiting == 0).await;
    for i in 0..3 {
        let key = StepKey::new("free", format!("w{i}"));
        assert!(store.get_step(&key).await.unwrap().is_some(), "{key}");
    }
}

/// A TCP proxy to the test server that can cut every connection through it at once: a
/// network failure, not an error of the server (the server's side is only closed).
struct Proxy {
    port: u16,
    open: Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    fn start() -> Proxy {
        let config: tokio_postgres::Config = url().parse().unwrap();
        let target = match (config.get_hosts().first(), config.get_ports().first()) {
            (Some(tokio_postgres::config::Host::Tcp(host)), port) => {
                (host.clone(), port.copied().unwrap_or(5432))
            }
            _ => panic!("FLOW_PG_URL must name a TCP host for this test"),
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(std::sync::Mutex::new(Vec::new()));
        let list = open.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = std::net::TcpStream::connect((target.0.as_str(), target.1)) else {
                    continue;
                };
                let mut open = list.lock().unwrap();
                open.push(client.try_clone().unwrap());
                open.push(server.try_clone().unwrap());
                drop(open);
                let pairs = [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ];
                for (mut from, mut to) in pairs {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Proxy { port, open }
    }

    /// A connection string to the test database through the proxy, naming the connections
    /// `application_name`.
    fn url(&self, application_name: &str) -> String {
        let config: tokio_postgres::Config = url().parse().unwrap();
        let mut s = format!(
            "host=127.0.0.1 port={} application_name={application_name}",
            self.port
        );
        if let Some(user) = config.get_user() {
            s.push_str(&format!(" user={user}"));
        }
        if let Some(db) = config.get_dbname() {
            s.push_str(&format!(" dbname={db}"));
        }
        if let Some(password) = config.get_password() {
            s.push_str(&format!(
                " password='{}'",
                String::from_utf8_lossy(password)
                    .replace('\\', "\\\\")
                    .replace('\'', "\\'")
            ));
        }
        s
    }

    /// Cuts every connection open through the proxy now.
    fn cut(&self) {
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// A batch of status changes whose connection is lost in flight, after the batch committed,
/// is sent again (as one alone would be): a change its lost attempt made is answered as made
/// (the run holds the very status and result asked for), and a run finished otherwise before
/// the batch is still a Conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_of_status_changes_sent_again_after_its_connection_was_lost_knows_its_changes() {
    let schema = TestSchema::new().await;
    let proxy = Proxy::start();
    let store = Arc::new(
        PgStore::connect_with(&proxy.url(&schema.name), schema.options())
            .await
            .unwrap(),
    );
    let plain: Arc<dyn Store> = store.clone();
    for id in ["c", "h1", "h2", "x", "z"] {
        plain.create_run(new_run(id, "w")).await.unwrap();
    }
    plain
        .set_status("z", RunStatus::Completed, Some(b"other".to_vec()))
        .await
        .unwrap();
    // Two changes held up by locked rows, so that the next ones wait, and go together...
    let held_lock = locker(&schema.name).await;
    held_lock
        .batch_execute("SELECT 1 FROM flow_runs WHERE id IN ('h1', 'h2') FOR UPDATE")
        .await
        .unwrap();
    // ... in a batch held up by another lock (on `c`, the first row it locks).
    let batch_lock = locker(&schema.name).await;
    batch_lock
        .batch_execute("SELECT 1 FROM flow_runs WHERE id = 'c' FOR UPDATE")
        .await
        .unwrap();
    let before = store.batching().statuses;
    let change = |id: &'static str, status: RunStatus, result: Option<&[u8]>| {
        let (s, result) = (plain.clone(), result.map(<[u8]>::to_vec));
        tokio::spawn(async move { s.set_status(id, status, result).await })
    };
    let held = [
        change("h1", RunStatus::Running, None),
        change("h2", RunStatus::Running, None),
    ];
    until("two changes sent alone", || {
        store.batching().statuses.alone == before.alone + 2
    })
    .await;
    let c = change("c", RunStatus::Running, None);
    let x = change("x", RunStatus::Completed, Some(b"42"));
    let z = change("z", RunStatus::Completed, Some(b"42"));
    until("three changes waiting", || {
        store.batching().statuses.waiting == 3
    })
    .await;
    held_lock.batch_execute("ROLLBACK").await.unwrap();
    for h in held {
        assert_eq!(h.await.unwrap().unwrap().status, RunStatus::Running);
    }
    // The batch is in flight, waiting for the lock on `c`: its connection is cut. The lost
    // attempt is first in line for the lock: it commits once the lock is gone, and the batch
    // sent again finds its changes made.
    until_waiting_for_locks(&schema.name, "flow_set_statuses", 1).await;
    proxy.cut();
    batch_lock.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(c.await.unwrap().unwrap().status, RunStatus::Running);
    let x = x.await.unwrap().unwrap();
    assert_eq!(
        (x.status, x.output),
        (RunStatus::Completed, Some(b"42".to_vec())),
        "made by the lost attempt: answered as made"
    );
    let z = z.await.unwrap();
    assert!(
        matches!(&z, Err(StoreError::Conflict { what }) if what.contains("run z is completed")),
        "finished before the batch, with another result: {z:?}"
    );
    assert_eq!(
        store.get_run("z").await.unwrap().unwrap().output,
        Some(b"other".to_vec())
    );
    let after = store.batching().statuses;
    assert_eq!(
        (after.batches, after.alone),
        (before.batches + 1, before.alone + 2),
        "{before:?} -> {after:?}"
    );
}

/// Writes made at once while no other is in flight go each alone, at once, in a statement of
/// their own, sent by their callers: not together, as writes that waited for a slot do. (On
/// one thread, so that nothing else runs before both are sent.)
#[tokio::test]
async fn two_writes_made_at_once_go_each_alone() {
    let schema = TestSchema::new().await;
    let store = schema.store().await;
    store.create_run(new_run("r", "w")).await.unwrap();
    let before = store.batching().commits;
    let (a, b) = tokio::join!(
        store.commit_step(commit("r", "a")),
        store.commit_step(commit("r", "b"))
    );
    assert!(a.unwrap().first && b.unwrap().first);
    let after = store.batching().commits;
    assert_eq!(
        (after.alone, after.batches),
        (before.alone + 2, before.batches),
        "{before:?} -> {after:?}"
    );
}

/// A batch's answer out of step with the client (a schema that does not match it) is an
/// error for each of its writes: a refusal the client does not know is a Backend error (not
/// one it knows), and an answer with a row missing is not trusted for any write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_answer_out_of_step_with_the_client_is_an_error_for_each_write() {
    let schema = TestSchema::new().await;
    let store = Arc::new(schema.store().await);
    let plain: Arc<dyn Store> = store.clone();
    for id in ["a", "b", "h1", "h2"] {
        plain.create_run(new_run(id, "w")).await.unwrap();
    }
    let admin = admin().await;
    admin
        .batch_execute(&format!("SET search_path TO \"{}\"", schema.name))
        .await
        .unwrap();
    for (what, refused, rows) in [
        ("an unknown refusal", "'FLXX0'", "true"),
        ("a row missing", "NULL", "u.i < cardinality(p_ids)"),
    ] {
        // flow_set_statuses, out of step: it changes nothing, and answers so.
        admin
            .batch_execute(&format!(
                "CREATE OR REPLACE FUNCTION flow_set_statuses(
                     p_ids TEXT[], p_statuses TEXT[], p_results BYTEA[], p_epochs BIGINT[])
                 RETURNS TABLE (out_index BIGINT, out_refused TEXT, out_run flow_run_view)
                 LANGUAGE sql AS $$
                     SELECT u.i, {refused}::TEXT, (SELECT v FROM flow_run_view v WHERE v.id = u.id)
                     FROM unnest(p_ids) WITH ORDINALITY AS u(id, i) WHERE {rows} ORDER BY u.i
                 $$"
            ))
            .await
            .unwrap();
        // Two changes held up by locked rows (sent alone, by flow_set_status), and two that
        // wait for them, and go together.
        let lock = locker(&schema.name).await;
        lock.batch_execute("SELECT 1 FROM flow_runs WHERE id IN ('h1', 'h2') FOR UPDATE")
            .await
            .unwrap();
        let before = store.batching().statuses;
        let change = |id: &'static str| {
            let s = plain.clone();
            tokio::spawn(async move { s.set_status(id, RunStatus::Running, None).await })
        };
        let held = [change("h1"), change("h2")];
        until("two changes sent alone", || {
            store.batching().statuses.alone == before.alone + 2
        })
        .await;
        let batched = [change("a"), change("b")];
        until("two changes waiting", || {
            store.batching().statuses.waiting == 2
        })
        .await;
        lock.batch_execute("ROLLBACK").await.unwrap();
        for h in held {
            h.await.unwrap().unwrap();
        }
        for h in batched {
            let answer = h.await.unwrap();
            assert!(
                matches!(&answer, Err(StoreError::Backend { .. })),
                "{what}: {answer:?}"
            );
        }
        let after = store.batching().statuses;
        assert_eq!(after.batches, before.batches + 1, "{what}: {after:?}");
    }
}
