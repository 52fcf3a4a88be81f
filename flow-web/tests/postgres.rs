//! The web view over a PostgreSQL store (`flow_store_postgres::PgStore`), through the
//! router, with durable runs that a runtime executes on that store: a run's page, the runs
//! list and its filters, a step output that is HTML shown as text, and cancel refused
//! without the token and done with it.
//!
//! The test works in a schema of its own (`flow_web_test_<random>` in the database of
//! `FLOW_PG_URL`, by default `postgres://postgres@127.0.0.1:5432/test`), dropped at the
//! end, also when the test fails.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use common::*;
use flow::prelude::*;
use flow::store::{RunStatus, Store};
use flow_store_postgres::{Options, PgStore};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const TOKEN: &str = "pg-t0ken";

fn url() -> String {
    std::env::var("FLOW_PG_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// A plain connection to the test database, or a panic that says how to get one.
async fn admin() -> tokio_postgres::Client {
    let url = url();
    match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
        Ok((client, connection)) => {
            tokio::spawn(async move {
                let _ = connection.await;
            });
            client
        }
        Err(e) => panic!(
            "cannot reach PostgreSQL at {url}: {e:?}\n\
             This test needs a PostgreSQL server with trust authentication. Start the local \
             one with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, \
             or point FLOW_PG_URL at another (postgres://user@host:port/database)."
        ),
    }
}

/// A schema of the test's own, dropped (over a fresh connection, from a thread of its own)
/// when the guard is dropped, also while a failing test unwinds. Declared before the store
/// that uses it, so that the store is dropped first.
struct TestSchema {
    name: String,
}

impl TestSchema {
    async fn new() -> TestSchema {
        drop(admin().await);
        TestSchema {
            name: format!(
                "flow_web_test_{:016x}",
                fastrand::u64(..) ^ u64::from(std::process::id())
            ),
        }
    }

    async fn store(&self) -> PgStore {
        PgStore::connect_with(
            &url(),
            Options {
                schema: Some(self.name.clone()),
                pool_size: 4,
                retry_for: Duration::from_secs(10),
                ..Options::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", url()))
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(async move {
                    admin()
                        .await
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

/// Whether schema `name` exists.
async fn schema_exists(name: &str) -> bool {
    admin()
        .await
        .query_opt(
            "SELECT 1 FROM information_schema.schemata WHERE schema_name = $1",
            &[&name],
        )
        .await
        .unwrap()
        .is_some()
}

/// The step output the page must show as text, never as markup.
const SCRIPT: &str = "<script>alert(1)</script>";

async fn render(name: String) -> Result<String, Fail> {
    Ok(format!("{SCRIPT} for {name}"))
}

/// A step whose output is HTML, then a wait for `go` (so that the run can be cancelled).
#[workflow(durable)]
async fn html_output(name: String) -> Result<String, Fail> {
    let text = render(name).await?;
    let _go: String = flow::signal("go").timeout("1h").await?;
    Ok(text)
}

/// The ids a runs page lists, in order.
fn listed(page: &str) -> Vec<&str> {
    let Some(table) = page.split("<tbody>").nth(1) else {
        return Vec::new();
    };
    table
        .split("</tbody>")
        .next()
        .unwrap()
        .split("<a href=\"/runs/")
        .skip(1)
        .map(|s| s.split('"').next().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_view_reads_and_acts_on_a_postgres_store() {
    let schema = TestSchema::new().await;
    let schema_name = schema.name.clone();
    {
        let pg = Arc::new(schema.store().await);
        let store: Arc<dyn Store> = pg.clone();
        let runtime = Runtime::new().with_shared_store(store.clone());
        let html_run = runtime
            .start(HtmlOutput, "pg-html", ("ada".to_owned(),))
            .await
            .unwrap();
        let failed = runtime.start(Fragile, "pg-fragile", (3,)).await.unwrap();
        assert!(failed.wait().await.is_err());
        let review = runtime
            .start(Review, "pg-review", ("doc".to_owned(),))
            .await
            .unwrap();
        until(&*store, "pg-html", "waiting for go", |s| waiting(s, "go")).await;
        until(&*store, "pg-review", "waiting for approve", |s| {
            waiting(s, "approve")
        })
        .await;
        let app = flow_web::router(
            store.clone(),
            flow_web::Options {
                poll_interval: Duration::from_millis(50),
                ..flow_web::Options::with_token(TOKEN)
            },
        );

        // The list, newest first, and its filters.
        let (status, page) = get(&app, "/").await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(listed(&page), ["pg-review", "pg-fragile", "pg-html"]);
        let (_, page) = get(&app, "/?status=failed").await;
        assert_eq!(listed(&page), ["pg-fragile"]);
        let html_workflow = store.get_run("pg-html").await.unwrap().unwrap().workflow;
        let (_, page) = get(&app, &format!("/?workflow={html_workflow}&status=running")).await;
        assert_eq!(listed(&page), ["pg-html"]);
        let (_, page) = get(&app, "/?status=completed").await;
        assert!(page.contains("No run matches"), "{page}");
        // Paged: one run a page, the `next` links through all three, oldest first.
        let mut seen = Vec::new();
        let mut uri = Some("/?limit=1&order=oldest".to_owned());
        while let Some(u) = uri {
            let (status, page) = get(&app, &u).await;
            assert_eq!(status, StatusCode::OK, "{u}: {page}");
            seen.extend(listed(&page).into_iter().map(str::to_owned));
            uri = page
                .split("class=\"next\" href=\"")
                .nth(1)
                .map(|h| h.split('"').next().unwrap().replace("&amp;", "&"));
        }
        assert_eq!(seen, ["pg-html", "pg-fragile", "pg-review"]);

        // A run's page: the graph lit by its state; the HTML output as text.
        let (status, page) = get(&app, "/runs/pg-html").await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert!(page.contains("badge status-running"), "{page}");
        assert_eq!(node_state(&page, "render"), "done");
        assert_eq!(node_state(&page, "go"), "running");
        assert!(
            page.contains("&lt;script&gt;alert(1)&lt;/script&gt; for ada"),
            "{page}"
        );
        assert!(!page.contains(SCRIPT), "a stored value is never markup");
        let (_, page) = get(&app, "/runs/pg-fragile").await;
        assert_eq!(node_state(&page, "flaky"), "failed");
        assert!(page.contains("flaky 3 is down"), "{page}");
        let (status, _) = get(&app, "/runs/pg-nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        // Cancel without the token, or with a wrong one: 403, and nothing is done.
        for form in [
            vec![("confirm", "yes")],
            vec![("token", "pg-guess"), ("confirm", "yes")],
        ] {
            let (status, page) = post(&app, "/runs/pg-html/cancel", &form).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{page}");
            assert!(page.contains("token"), "{page}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(store.history_of("pg-html").await.unwrap().is_empty());
        assert_eq!(
            store.get_run("pg-html").await.unwrap().unwrap().status,
            RunStatus::Running
        );

        // With the token: the runtime running the run cancels it; the page and the history
        // say so.
        let (status, location) = post(
            &app,
            "/runs/pg-html/cancel",
            &[("token", TOKEN), ("confirm", "yes")],
        )
        .await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{location}");
        assert_eq!(location, "/runs/pg-html?done=cancel");
        assert!(html_run.wait().await.unwrap_err().is_cancelled());
        let (_, page) = get(&app, "/runs/pg-html").await;
        assert!(page.contains("badge status-cancelled"), "{page}");
        let history = store.history_of("pg-html").await.unwrap();
        assert_eq!(
            history
                .iter()
                .map(|h| (h.actor.as_str(), h.action.as_str()))
                .collect::<Vec<_>>(),
            [("web", "cancel")]
        );
        let (_, page) = get(&app, "/?status=cancelled").await;
        assert_eq!(listed(&page), ["pg-html"]);
        // The other unfinished run was left alone.
        assert_eq!(
            store.get_run("pg-review").await.unwrap().unwrap().status,
            RunStatus::Running
        );
        drop((review, runtime, store, app));
        drop(pg);
    }
    assert!(schema_exists(&schema_name).await);
    drop(schema);
    assert!(
        !schema_exists(&schema_name).await,
        "the test's schema is dropped"
    );
}

/// By hand, in release: the time of `GET /`, of a deep page and of filtered pages over a
/// PostgreSQL store of 100,000 runs (medians of 30 gets through the router), and the
/// server's plan of each list query.
///
/// ```sh
/// cargo test --release -p flow-web --test postgres -- --ignored --nocapture
/// ```
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run it by hand, in release"]
async fn measure_list_times_on_postgres() {
    use flow::store::{NewRun, RunFilter};
    use futures_util::StreamExt as _;
    const RUNS: usize = 100_000;
    let schema = TestSchema::new().await;
    let pg = Arc::new(schema.store().await);
    let began = std::time::Instant::now();
    let created: Vec<()> = futures_util::stream::iter(0..RUNS)
        .map(|i| {
            let pg = Arc::clone(&pg);
            async move {
                let id = format!("run-{i:06}");
                pg.create_run(NewRun {
                    id: id.clone(),
                    workflow: ["alpha", "beta", "gamma", "delta"][i % 4].to_owned(),
                    fingerprint: 1,
                    node_fingerprints: Default::default(),
                    input: b"null".to_vec(),
                })
                .await
                .unwrap();
                // 101 failed runs, of every workflow; 12,500 cancelled runs of `alpha` and
                // one of `beta` (a filter whose two halves match many runs each and only
                // one run together).
                let ended = if i % 997 == 0 {
                    Some(RunStatus::Failed)
                } else if i % 8 == 0 || i == 1 {
                    Some(RunStatus::Cancelled)
                } else {
                    None
                };
                if let Some(status) = ended {
                    pg.set_status(&id, status, Some(b"\"no\"".to_vec()))
                        .await
                        .unwrap();
                }
            }
        })
        .buffer_unordered(1024)
        .collect()
        .await;
    eprintln!("{} runs: filled in {:?}", created.len(), began.elapsed());
    let admin = admin().await;
    admin
        .batch_execute(&format!("SET search_path TO \"{}\"; ANALYZE", schema.name))
        .await
        .unwrap();
    let store: Arc<dyn Store> = pg.clone();
    let app = flow_web::router(store.clone(), flow_web::Options::default());
    // The cursor of the 900th page of 100 (newest first) and of the 5,000th of 20.
    let mut cursors = Vec::new();
    for (limit, page) in [(100, 900), (20, 5_000)] {
        let mut after = None;
        for _ in 1..page {
            after = store
                .list_runs(RunFilter {
                    limit,
                    after,
                    newest_first: true,
                    ..RunFilter::default()
                })
                .await
                .unwrap()
                .next;
        }
        cursors.push(after.unwrap());
    }
    let (created_ms, id) = cursors[0].split_once(':').unwrap();
    for (what, uri, sql) in [
        ("GET /", "/".to_owned(), String::new()),
        ("GET /?limit=20", "/?limit=20".to_owned(), String::new()),
        (
            "page 900 of limit=100",
            format!("/?limit=100&after={}", flow_web::path_segment(&cursors[0])),
            format!(
                "WHERE (created_ms, id) < ({created_ms}, '{id}') ORDER BY created_ms DESC, id DESC LIMIT 101"
            ),
        ),
        (
            "page 5000 of limit=20",
            format!("/?limit=20&after={}", flow_web::path_segment(&cursors[1])),
            String::new(),
        ),
        (
            "status=failed",
            "/?status=failed&limit=100".to_owned(),
            "WHERE status = 'failed' ORDER BY created_ms DESC, id DESC LIMIT 101".to_owned(),
        ),
        (
            "workflow=beta&status=failed",
            "/?workflow=beta&status=failed&limit=100".to_owned(),
            "WHERE workflow = 'beta' AND status = 'failed' ORDER BY created_ms DESC, id DESC LIMIT 101"
                .to_owned(),
        ),
        (
            "workflow=beta&status=cancelled",
            "/?workflow=beta&status=cancelled&limit=100".to_owned(),
            "WHERE workflow = 'beta' AND status = 'cancelled' ORDER BY created_ms DESC, id DESC LIMIT 101"
                .to_owned(),
        ),
        (
            "workflow=beta&status=pending, deep",
            format!(
                "/?workflow=beta&status=pending&limit=100&after={}",
                flow_web::path_segment(&cursors[0])
            ),
            format!(
                "WHERE workflow = 'beta' AND status = 'pending' AND (created_ms, id) < ({created_ms}, '{id}') ORDER BY created_ms DESC, id DESC LIMIT 101"
            ),
        ),
    ] {
        let mut times = Vec::new();
        for _ in 0..30 {
            let t = std::time::Instant::now();
            let (status, _) = get(&app, &uri).await;
            times.push(t.elapsed());
            assert_eq!(status, StatusCode::OK);
        }
        times.sort();
        eprintln!("{RUNS} runs | {what:<38} | median {:?}", times[15]);
        if !sql.is_empty() {
            let plan = admin
                .query(
                    &format!("EXPLAIN ANALYZE SELECT * FROM flow_run_view {sql}"),
                    &[],
                )
                .await
                .unwrap();
            for row in plan {
                eprintln!("      {}", row.get::<_, String>(0));
            }
        }
    }
    drop((app, store, pg));
}
