//! The runs page over a store of 100,000 runs (SQLite), through the router: the first page
//! is the newest runs in order, every `next` link leads on to exactly the runs that follow
//! until the last page (which has none), and filters by workflow and status find their runs
//! across the whole store.
//!
//! The store is filled through the public `Store` API only: many `create_run` calls in
//! flight at once, which the SQLite writer commits in groups. What each page must list comes
//! from the runs that `create_run` returned (their creation time and id), not from the page.
//!
//! `measure_list_times` (ignored: run it by hand, in release) times `GET /` and a deep page
//! at 100,000 runs and at 1,000:
//!
//! ```sh
//! cargo test --release -p flow-web --test scale -- --ignored --nocapture
//! ```

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::get;
use flow::store::{NewRun, RunFilter, RunStatus, Store};
use flow_store_sqlite::{Options, SqliteStore, Synchronous};
use futures_util::StreamExt as _;

/// The workflows the runs belong to, in turn.
const WORKFLOWS: [&str; 4] = ["alpha", "beta", "gamma", "delta"];

/// Every this many runs, one is failed (the others stay pending): 101 of 100,000, of every
/// workflow.
const FAILED_EVERY: usize = 997;

/// A run as the test knows it from `create_run`: what the pages are checked against.
#[derive(Clone, Debug)]
struct Known {
    created_ms: u64,
    id: String,
    workflow: &'static str,
    failed: bool,
}

/// A fresh SQLite store's path.
fn temp_store(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "flow-web-{name}-{}-{}",
        std::process::id(),
        flow::store::new_run_id()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join("runs.db")
}

/// A store in a temporary file; `synchronous=NORMAL` (no fsync at each commit: these runs
/// need not survive a power cut) and large groups, to fill it fast.
fn open_store(name: &str) -> Arc<SqliteStore> {
    Arc::new(
        SqliteStore::open_with(
            temp_store(name),
            Options {
                synchronous: Synchronous::Normal,
                max_batch: 4096,
                ..Options::default()
            },
        )
        .unwrap(),
    )
}

/// Creates `n` runs (ids `run-000000`…, workflows in turn, one in [`FAILED_EVERY`] failed),
/// many calls in flight at once; returns them newest first, as the runs page lists them.
async fn fill(store: &Arc<SqliteStore>, n: usize) -> Vec<Known> {
    let mut known: Vec<Known> = futures_util::stream::iter(0..n)
        .map(|i| {
            let store = Arc::clone(store);
            async move {
                let workflow = WORKFLOWS[i % WORKFLOWS.len()];
                let created = store
                    .create_run(NewRun {
                        id: format!("run-{i:06}"),
                        workflow: workflow.to_owned(),
                        fingerprint: 1,
                        node_fingerprints: Default::default(),
                        input: b"null".to_vec(),
                    })
                    .await
                    .unwrap();
                assert!(created.created);
                let failed = i % FAILED_EVERY == 0;
                if failed {
                    store
                        .set_status(&created.run.id, RunStatus::Failed, Some(b"\"no\"".to_vec()))
                        .await
                        .unwrap();
                }
                Known {
                    created_ms: created.run.created_ms,
                    id: created.run.id,
                    workflow,
                    failed,
                }
            }
        })
        .buffer_unordered(8192)
        .collect()
        .await;
    known.sort_by(|a, b| (b.created_ms, &b.id).cmp(&(a.created_ms, &a.id)));
    known
}

/// The ids of the runs a runs page lists, in the page's order.
fn listed(page: &str) -> Vec<String> {
    let Some(table) = page.split("<tbody>").nth(1) else {
        return Vec::new();
    };
    let table = table.split("</tbody>").next().unwrap();
    table
        .split("<a href=\"/runs/")
        .skip(1)
        .map(|s| s.split('"').next().unwrap().to_owned())
        .collect()
}

/// The page's `next` link, as a URI to get.
fn next_link(page: &str) -> Option<String> {
    let href = page.split("class=\"next\" href=\"").nth(1)?;
    Some(href.split('"').next().unwrap().replace("&amp;", "&"))
}

/// Follows `next` links from `first` to the last page; the ids listed, page by page.
async fn every_page(app: &axum::Router, first: &str) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut uri = Some(first.to_owned());
    while let Some(u) = uri {
        let (status, page) = get(app, &u).await;
        assert_eq!(status, StatusCode::OK, "{u}: {page}");
        pages.push(listed(&page));
        uri = next_link(&page);
        assert!(pages.len() <= 1_000, "the `next` links go round in circles");
    }
    pages
}

fn ids<'a>(runs: impl IntoIterator<Item = &'a Known>) -> Vec<String> {
    runs.into_iter().map(|r| r.id.clone()).collect()
}

/// 100,000 runs listed, paged and filtered through the router. About 10 s in debug on a
/// 2-core machine: 4 to 6 s to fill the store, the rest for the 680 pages it reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_100_000_runs_is_listed_paged_and_filtered() {
    const RUNS: usize = 100_000;
    let began = Instant::now();
    let store = open_store("scale");
    let known = fill(&store, RUNS).await;
    let filled = began.elapsed();
    assert_eq!(known.len(), RUNS);
    assert_eq!(
        known.iter().map(|r| &r.id).collect::<BTreeSet<_>>().len(),
        RUNS
    );
    let app = flow_web::router(store.clone(), flow_web::Options::default());

    // The first page: the 50 newest, newest first.
    let (status, page) = get(&app, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed(&page), ids(&known[..flow_web::DEFAULT_PAGE]));
    assert!(!page.contains("first page"), "the first page links to none");

    // Every run, 500 a page, by following the `next` links to the last page: each page is
    // exactly the runs after the previous one, in order, and the last has no `next` link.
    let pages = every_page(&app, "/?limit=500").await;
    assert_eq!(pages.len(), RUNS / 500);
    for (n, page) in pages.iter().enumerate() {
        assert_eq!(page, &ids(&known[n * 500..(n + 1) * 500]), "page {}", n + 1);
    }
    // Deep pages link back to the first.
    let mut uri = "/?limit=500".to_owned();
    for _ in 0..180 {
        uri = next_link(&get(&app, &uri).await.1).unwrap();
    }
    let (_, deep) = get(&app, &uri).await;
    assert!(deep.contains("« first page"), "{deep}");
    assert_eq!(listed(&deep), ids(&known[90_000..90_500]));
    // Oldest first, from a deep page on: the oldest run last, then no `next` link.
    let oldest: Vec<&Known> = known.iter().rev().collect();
    let pages = every_page(&app, "/?order=oldest&limit=500").await;
    assert_eq!(
        pages.concat(),
        oldest.iter().map(|r| r.id.clone()).collect::<Vec<_>>()
    );

    // A filter by status across the store: the 101 failed runs, 40 a page (three pages).
    let failed: Vec<&Known> = known.iter().filter(|r| r.failed).collect();
    assert_eq!(failed.len(), 101);
    let pages = every_page(&app, "/?status=failed&limit=40").await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [40, 40, 21]);
    assert_eq!(pages.concat(), ids(failed.iter().copied()));
    // By workflow and status together: one page, no `next` link.
    let beta_failed: Vec<&Known> = failed
        .iter()
        .copied()
        .filter(|r| r.workflow == "beta")
        .collect();
    assert_eq!(beta_failed.len(), 25);
    let (status, page) = get(&app, "/?workflow=beta&status=failed&limit=500").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed(&page), ids(beta_failed.iter().copied()));
    assert!(next_link(&page).is_none(), "{page}");
    // By workflow alone: 25,000 runs, 500 a page, every one of them in order.
    let gamma: Vec<&Known> = known.iter().filter(|r| r.workflow == "gamma").collect();
    let pages = every_page(&app, "/?workflow=gamma&limit=500").await;
    assert_eq!(pages.len(), gamma.len() / 500);
    assert_eq!(pages.concat(), ids(gamma.iter().copied()));
    // Pending runs of one workflow, from a deep cursor: the filter and the cursor together.
    let delta_pending: Vec<&Known> = known
        .iter()
        .filter(|r| r.workflow == "delta" && !r.failed)
        .collect();
    let mut uri = "/?workflow=delta&status=pending&limit=500".to_owned();
    for _ in 0..40 {
        uri = next_link(&get(&app, &uri).await.1).unwrap();
    }
    let (_, page) = get(&app, &uri).await;
    assert_eq!(
        listed(&page),
        ids(delta_pending[20_000..20_500].iter().copied())
    );
    eprintln!(
        "100,000 runs: filled in {filled:?}, checked in {:?}",
        began.elapsed() - filled
    );
    drop(app);
    remove(store);
}

/// Closes `store` and removes its directory (20 MB at 100,000 runs).
fn remove(store: Arc<SqliteStore>) {
    let dir = store.path().parent().unwrap().to_owned();
    drop(store);
    std::fs::remove_dir_all(dir).unwrap();
}

/// The median time of `n` gets of `uri`.
async fn time_get(app: &axum::Router, uri: &str, n: usize) -> Duration {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let (status, page) = get(app, uri).await;
        times.push(t.elapsed());
        assert_eq!(status, StatusCode::OK, "{page}");
        assert!(!listed(&page).is_empty());
    }
    times.sort();
    times[n / 2]
}

/// The `after` cursor of page `page` (from 1) of `filter`'s pages, through the store.
async fn cursor_before(store: &SqliteStore, filter: RunFilter, page: usize) -> Option<String> {
    let mut after = None;
    for _ in 1..page {
        after = store
            .list_runs(RunFilter {
                after: after.clone(),
                ..filter.clone()
            })
            .await
            .unwrap()
            .next;
        after.as_ref()?;
    }
    after
}

/// By hand, in release: the time of `GET /`, of a deep page and of filtered pages at 100,000
/// runs and at 1,000 (medians of 50 gets through the router, rendering included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run it by hand, in release"]
async fn measure_list_times() {
    for runs in [1_000, 100_000] {
        let store = open_store("measure");
        let t = Instant::now();
        fill(&store, runs).await;
        eprintln!("{runs} runs: filled in {:?}", t.elapsed());
        let app = flow_web::router(store.clone(), flow_web::Options::default());
        let newest = RunFilter {
            limit: 100,
            newest_first: true,
            ..RunFilter::default()
        };
        // The deepest page at limit 100 (the 10th of 1,000 runs) and the 900th of 100,000.
        let deep_page = (runs / 100).min(900);
        let deep = cursor_before(&store, newest.clone(), deep_page)
            .await
            .unwrap();
        let last = cursor_before(&store, newest.clone(), runs / 100)
            .await
            .unwrap();
        let last_20 = cursor_before(
            &store,
            RunFilter {
                limit: 20,
                ..newest.clone()
            },
            runs / 20,
        )
        .await
        .unwrap();
        let pending_deep = cursor_before(
            &store,
            RunFilter {
                status: Some(RunStatus::Pending),
                workflow: Some("beta".into()),
                ..newest.clone()
            },
            (runs / 400).max(2),
        )
        .await
        .unwrap();
        for (what, uri) in [
            ("GET /", "/".to_owned()),
            ("GET /?limit=20", "/?limit=20".to_owned()),
            ("GET /?limit=100", "/?limit=100".to_owned()),
            (
                "page {deep_page} of limit=100",
                format!("/?limit=100&after={}", flow_web::path_segment(&deep)),
            ),
            (
                "last page of limit=100",
                format!("/?limit=100&after={}", flow_web::path_segment(&last)),
            ),
            (
                "last page of limit=20",
                format!("/?limit=20&after={}", flow_web::path_segment(&last_20)),
            ),
            ("status=failed", "/?status=failed&limit=100".to_owned()),
            (
                "workflow=beta&status=failed",
                "/?workflow=beta&status=failed&limit=100".to_owned(),
            ),
            (
                "workflow=beta&status=pending, deep",
                format!(
                    "/?workflow=beta&status=pending&limit=100&after={}",
                    flow_web::path_segment(&pending_deep)
                ),
            ),
        ] {
            let what = what.replace("{deep_page}", &deep_page.to_string());
            let median = time_get(&app, &uri, 50).await;
            eprintln!("{runs:>7} runs | {what:<38} | median {median:?}");
        }
        drop(app);
        remove(store);
    }
}
