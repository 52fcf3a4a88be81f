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
