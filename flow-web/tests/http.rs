//! Every route and action of the web view over HTTP (in process, through the router), on a
//! SQLite store that real durable runs write: the pages, the escaping of what runs stored,
//! the bad requests, the token, the live events, and a store that fails or hangs.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::*;
use flow::prelude::*;
use flow::store::{self as st, RunStatus, Store, StoreFuture};
use flow_store_sqlite::SqliteStore;
use futures_util::StreamExt as _;
use tower::ServiceExt as _;

const TOKEN: &str = "t0ken-for-tests";

fn options() -> flow_web::Options {
    flow_web::Options {
        poll_interval: Duration::from_millis(50),
        ..flow_web::Options::with_token(TOKEN)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_actions_and_bad_requests() {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(temp_store("http")).unwrap());
    let runtime = Runtime::new().with_shared_store(store.clone());
    let first_run = runtime
        .start(Review, "review-1", ("doc one".to_owned(),))
        .await
        .unwrap();
    let _second = runtime
        .start(Review, "review-2", ("doc two".to_owned(),))
        .await
        .unwrap();
    let failed = runtime.start(Fragile, "fragile-1", (7,)).await.unwrap();
    assert!(failed.wait().await.is_err());
    until(&*store, "review-1", "waiting for approve", |s| {
        waiting(s, "approve")
    })
    .await;
    until(&*store, "review-2", "waiting for approve", |s| {
        waiting(s, "approve")
    })
    .await;
    let app = flow_web::router(store.clone(), options());
    let workflow = store.get_run("review-1").await.unwrap().unwrap().workflow;

    // The runs, newest first, filtered and paged.
    let (status, page) = get(&app, "/").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let (a, b, c) = (
        page.find("fragile-1").unwrap(),
        page.find("review-2").unwrap(),
        page.find("review-1").unwrap(),
    );
    assert!(a < b && b < c, "newest first: {page}");
    let (_, page) = get(&app, "/?status=failed").await;
    assert!(
        page.contains("fragile-1") && !page.contains("review-1"),
        "{page}"
    );
    let (_, page) = get(&app, &format!("/?workflow={workflow}&age=1h&order=oldest")).await;
    assert!(page.contains("review-1") && page.contains("review-2") && !page.contains("fragile-1"));
    let (_, page) = get(&app, "/?limit=2").await;
    assert!(!page.contains("review-1"), "{page}");
    let next = page
        .split("class=\"next\" href=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let (status, page) = get(&app, &next.replace("&amp;", "&")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("review-1") && !page.contains("review-2"),
        "{page}"
    );
    let (_, page) = get(&app, "/?older=1h").await;
    assert!(page.contains("No run matches"), "{page}");

    // Malformed filters and oversized pages: 400, saying what was wrong.
    for (uri, says) in [
        ("/?status=done", "unknown status &quot;done&quot;"),
        ("/?age=abc", "`age` is a number and a unit"),
        ("/?age=99999999999999999w", "`age` is a number and a unit"),
        ("/?limit=501", "between 1 and 500"),
        ("/?limit=0", "between 1 and 500"),
        ("/?limit=many", "`limit` must be a number"),
        ("/?order=sideways", "`order` is `newest` or `oldest`"),
        ("/?colour=red", "unknown parameter"),
    ] {
        let (status, page) = get(&app, uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {page}");
        assert!(page.contains(says), "{uri}: {page}");
    }

    // A run: the graph lit by its state; what the run stored shows as text.
    let (status, page) = get(&app, "/runs/review-1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(node_state(&page, "write_draft"), "done");
    assert_eq!(node_state(&page, "book"), "done");
    assert_eq!(node_state(&page, "approve"), "running");
    assert_eq!(node_state(&page, "publish"), "notreached");
    assert!(
        page.contains("&lt;script&gt;alert('owned')&lt;/script&gt;"),
        "{page}"
    );
    assert!(
        !page.contains("<script>alert"),
        "a stored value is never markup"
    );
    assert!(!page.contains("<b>bold"), "a stored value is never markup");
    assert!(page.contains("data-events=\"/runs/review-1/events\""));
    let (status, live) = get(&app, "/runs/review-1/live").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(node_state(&live, "approve"), "running");
    // A failed run: the step failed, its three attempts and their backoffs on the timeline.
    let (_, page) = get(&app, "/runs/fragile-1").await;
    assert_eq!(node_state(&page, "flaky"), "failed");
    assert!(page.contains("flaky 7 is down"), "{page}");
    assert_eq!(
        page.matches("class=\"bar bar-failed\"").count(),
        3,
        "{page}"
    );
    assert_eq!(
        page.matches("class=\"bar bar-backoff\"").count(),
        2,
        "{page}"
    );

    // What does not exist: 404.
    for uri in [
        "/runs/nope",
        "/runs/nope/live",
        "/runs/nope/events",
        "/workflows/nope",
        "/no/such/page",
    ] {
        let (status, page) = get(&app, uri).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}: {page}");
    }
    let (status, _) = post(
        &app,
        "/runs/nope/cancel",
        &[("token", TOKEN), ("confirm", "yes")],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = post(
        &app,
        "/runs/review-1/explode",
        &[("token", TOKEN), ("confirm", "yes")],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get(&app, "/runs/review-1/cancel").await;
    assert_eq!(
        status,
        StatusCode::METHOD_NOT_ALLOWED,
        "actions are POST only"
    );

    // Actions without the token, or with a wrong one: 403, and nothing is done.
    for form in [
        vec![("confirm", "yes")],
        vec![("token", "guess"), ("confirm", "yes")],
        vec![("token", ""), ("confirm", "yes")],
    ] {
        for action in ["cancel", "resume", "restart", "signal"] {
            let (status, page) = post(&app, &format!("/runs/review-1/{action}"), &form).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{action}: {page}");
            assert!(page.contains("token"), "{page}");
        }
    }
    assert!(store.history_of("review-1").await.unwrap().is_empty());
    assert_eq!(
        store.get_run("review-1").await.unwrap().unwrap().status,
        RunStatus::Running
    );
    // A read-only view refuses every action.
    let read_only = flow_web::router(store.clone(), flow_web::Options::default());
    let (status, page) = post(
        &read_only,
        "/runs/review-1/cancel",
        &[("token", ""), ("confirm", "yes")],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(page.contains("read-only"), "{page}");

    // Without confirm=yes: a page asks first, nothing is done.
    let (status, page) = post(&app, "/runs/review-1/cancel", &[("token", TOKEN)]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("Confirm: cancel run") && page.contains("name=\"confirm\" value=\"yes\""),
        "{page}"
    );
    assert!(store.history_of("review-1").await.unwrap().is_empty());

    // A signal: its value must be JSON, its name not reserved.
    let sig = "/runs/review-1/signal";
    let (status, page) = post(
        &app,
        sig,
        &[
            ("token", TOKEN),
            ("confirm", "yes"),
            ("name", "approve"),
            ("value", "ada"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("must be JSON"), "{page}");
    let (status, _) = post(
        &app,
        sig,
        &[
            ("token", TOKEN),
            ("confirm", "yes"),
            ("name", "flow.cancel"),
            ("value", "null"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let big = format!("\"{}\"", "x".repeat(flow_web::MAX_SIGNAL_VALUE));
    let (status, _) = post(
        &app,
        sig,
        &[
            ("token", TOKEN),
            ("confirm", "yes"),
            ("name", "approve"),
            ("value", &big),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Watch the run live while the signal moves it on.
    let res = app
        .clone()
        .oneshot(
            Request::get("/runs/review-1/events")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut events = res.into_body().into_data_stream();
    let mut next_event = async || -> String {
        let mut text = String::new();
        while !text.contains("\n\n") {
            let chunk = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .expect("an event within 10 s")
                .expect("the stream goes on")
                .unwrap();
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        text
    };
    let first = next_event().await;
    assert!(first.starts_with("event: update"), "{first}");
    assert_eq!(node_state(&first, "approve"), "running");
    let (status, location) = post(
        &app,
        sig,
        &[
            ("token", TOKEN),
            ("confirm", "yes"),
            ("name", "approve"),
            ("value", "\"ada\""),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location, "/runs/review-1?done=signal");
    assert_eq!(
        first_run.wait().await.unwrap(),
        format!("{HOSTILE} doc one approved by ada")
    );
    // Events follow until the page shows the run completed.
    let mut last = first;
    for _ in 0..20 {
        if last.contains("data-status=\"completed\"") {
            break;
        }
        last = next_event().await;
    }
    assert!(last.contains("data-status=\"completed\""), "{last}");
    assert_eq!(node_state(&last, "publish"), "done");
    assert_eq!(node_state(&last, "approve"), "done");
    drop(events);
    let history = store.history_of("review-1").await.unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(
        (history[0].actor.as_str(), history[0].action.as_str()),
        ("web", "signal")
    );
    assert!(history[0].detail.contains("approve") && history[0].detail.contains("\"ada\""));

    // A finished run cannot be cancelled or signalled: 409.
    let (status, page) = post(
        &app,
        "/runs/review-1/cancel",
        &[("token", TOKEN), ("confirm", "yes")],
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{page}");
    assert!(page.contains("already finished"));

    // Cancel: the process running the run cancels it and undoes the booking.
    let (status, _) = post(
        &app,
        "/runs/review-2/cancel",
        &[("token", TOKEN), ("confirm", "yes")],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(_second.wait().await.unwrap_err().is_cancelled());
    let (_, page) = get(&app, "/runs/review-2").await;
    assert!(page.contains("badge status-cancelled"), "{page}");
    assert_eq!(node_state(&page, "book"), "compensated");
    assert_eq!(node_state(&page, "write_draft"), "done");
    let history = store.history_of("review-2").await.unwrap();
    assert_eq!(
        history
            .iter()
            .map(|h| h.action.as_str())
            .collect::<Vec<_>>(),
        ["cancel"]
    );

    // Restart from a step: refused for a step not in the graph, else recorded.
    let (status, page) = post(
        &app,
        "/runs/review-1/restart",
        &[("token", TOKEN), ("confirm", "yes"), ("step", "nope")],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("step `nope` is not in its graph"), "{page}");
    let (status, _) = post(
        &app,
        "/runs/review-1/restart",
        &[("token", TOKEN), ("confirm", "yes")],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "restart needs a step");
    let (status, _) = post(
        &app,
        "/runs/review-1/restart",
        &[("token", TOKEN), ("confirm", "yes"), ("step", "publish")],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let r = store.get_run("review-1").await.unwrap().unwrap();
    assert_eq!(r.status, RunStatus::Pending);
    let (_, page) = get(&app, "/runs/review-1").await;
    assert_eq!(node_state(&page, "publish"), "notreached");
    assert_eq!(node_state(&page, "approve"), "done");
    let history = store.history_of("review-1").await.unwrap();
    assert_eq!(history.last().unwrap().action, "restart");

    // Resume: only a failed or cancelled run; the failed step loses its record.
    let (status, page) = post(
        &app,
        "/runs/review-1/resume",
        &[("token", TOKEN), ("confirm", "yes")],
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{page}");
    let (status, _) = post(
        &app,
        "/runs/fragile-1/resume",
        &[("token", TOKEN), ("confirm", "yes")],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        store.get_run("fragile-1").await.unwrap().unwrap().status,
        RunStatus::Pending
    );
    assert!(store.steps_of("fragile-1").await.unwrap().is_empty());
    let history = store.history_of("fragile-1").await.unwrap();
    assert_eq!(history[0].action, "resume");
    assert!(history[0].detail.contains("flaky"), "{history:?}");
    // The cancelled run resumes from the undone booking.
    let (status, _) = post(
        &app,
        "/runs/review-2/resume",
        &[("token", TOKEN), ("confirm", "yes")],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let nodes: Vec<String> = store
        .steps_of("review-2")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.key.node)
        .collect();
    assert_eq!(
        nodes,
        ["write_draft"],
        "kept: the step before the undone one"
    );

    // A workflow: its graph and fingerprint.
    let (status, page) = get(&app, &format!("/workflows/{workflow}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("Newest fingerprint") && page.contains("data-key=\"approve\""),
        "{page}"
    );

    // The script and the stylesheet come from the binary.
    let (status, js) = get(&app, "/static/app.js").await;
    assert!(status == StatusCode::OK && js.contains("EventSource"));
    let (status, css) = get(&app, "/static/style.css").await;
    assert!(status == StatusCode::OK && css.contains(".state-running"));
    let (status, _) = get(&app, "/healthz").await;
    assert_eq!(status, StatusCode::OK);
}

/// An older build's unfinished run: the workflow page says whether the newest graph could
/// resume it, naming the done step whose node changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workflow_page_names_runs_a_new_build_could_not_resume() {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(temp_store("compat")).unwrap());
    let runtime = Runtime::new().with_shared_store(store.clone());
    let live = runtime
        .start(Review, "now-1", ("x".to_owned(),))
        .await
        .unwrap();
    until(&*store, "now-1", "waiting", |s| waiting(s, "approve")).await;
    let current = store.get_run("now-1").await.unwrap().unwrap();
    // Two runs of an older build (another fingerprint): one did `write_draft` when its code
    // was different, one did nothing yet. Made older than the live run.
    for (id, changed) in [("old-changed", true), ("old-fresh", false)] {
        let mut nodes = current.node_fingerprints.clone();
        if changed {
            nodes.insert("write_draft".into(), 1);
        }
        store
            .create_run(st::NewRun {
                id: id.into(),
                workflow: current.workflow.clone(),
                fingerprint: current.fingerprint ^ 1,
                node_fingerprints: nodes,
                input: b"[\"x\"]".to_vec(),
            })
            .await
            .unwrap();
        store
            .commit_step(st::StepCommit {
                key: st::StepKey::new(id, "write_draft"),
                outcome: st::StepOutcome::Completed(b"\"d\"".to_vec()),
                attempts: vec![],
                compensations: vec![],
            })
            .await
            .unwrap();
    }
    // The live run is the newest: start it again so that it is created last. Runs created
    // in the same millisecond are ordered by id ("old-fresh" > "now-2"), so let the clock
    // move past the older runs' creation time first.
    let older = store
        .get_run("old-fresh")
        .await
        .unwrap()
        .unwrap()
        .created_ms;
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        <= u128::from(older)
    {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let newest = runtime
        .start(Review, "now-2", ("y".to_owned(),))
        .await
        .unwrap();
    until(&*store, "now-2", "waiting", |s| waiting(s, "approve")).await;
    let app = flow_web::router(store.clone(), options());
    let (status, page) = get(&app, &format!("/workflows/{}", current.workflow)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let row = |id: &str| {
        let at = page
            .find(&format!(">{id}<"))
            .unwrap_or_else(|| panic!("{id} listed: {page}"));
        page[at..].split("</tr>").next().unwrap().to_owned()
    };
    assert!(row("old-changed").contains("could not resume: done step(s) write_draft (changed)"));
    assert!(row("old-fresh").contains("resumable"));
    assert!(!page.contains(">now-1<"), "same fingerprint: not listed");
    drop((live, newest));
}

/// A store wrapper that fails, or hangs, on demand.
struct Flaky {
    inner: SqliteStore,
    fail: AtomicBool,
    hang: AtomicBool,
    calls: AtomicU64,
}

impl Flaky {
    fn gate<'a, T: Send + 'a>(&'a self, f: StoreFuture<'a, T>) -> StoreFuture<'a, T> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            if self.hang.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            if self.fail.load(Ordering::SeqCst) {
                return Err(st::StoreError::Io {
                    message: "disk on fire".into(),
                });
            }
            f.await
        })
    }
}

impl Store for Flaky {
    fn create_run(&self, new: st::NewRun) -> StoreFuture<'_, st::Created> {
        self.gate(self.inner.create_run(new))
    }
    fn get_run<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<st::RunRecord>> {
        self.gate(self.inner.get_run(id))
    }
    fn set_status<'a>(
        &'a self,
        id: &'a str,
        status: RunStatus,
        result: Option<Vec<u8>>,
    ) -> StoreFuture<'a, st::RunRecord> {
        self.gate(self.inner.set_status(id, status, result))
    }
    fn unfinished_runs(&self) -> StoreFuture<'_, Vec<st::RunRecord>> {
        self.gate(self.inner.unfinished_runs())
    }
    fn list_runs(&self, filter: st::RunFilter) -> StoreFuture<'_, st::RunPage> {
        self.gate(self.inner.list_runs(filter))
    }
    fn save_progress(&self, p: st::StepProgress) -> StoreFuture<'_, ()> {
        self.gate(self.inner.save_progress(p))
    }
    fn commit_step(&self, c: st::StepCommit) -> StoreFuture<'_, st::Committed> {
        self.gate(self.inner.commit_step(c))
    }
    fn get_step<'a>(&'a self, key: &'a st::StepKey) -> StoreFuture<'a, Option<st::StepRecord>> {
        self.gate(self.inner.get_step(key))
    }
    fn steps_of<'a>(&'a self, run: &'a str) -> StoreFuture<'a, Vec<st::StepRecord>> {
        self.gate(self.inner.steps_of(run))
    }
    fn update_compensations<'a>(
        &'a self,
        run: &'a str,
        ops: Vec<st::CompensationOp>,
    ) -> StoreFuture<'a, Vec<u64>> {
        self.gate(self.inner.update_compensations(run, ops))
    }
    fn compensations_of<'a>(
        &'a self,
        run: &'a str,
    ) -> StoreFuture<'a, Vec<st::CompensationRecord>> {
        self.gate(self.inner.compensations_of(run))
    }
    fn send_signal<'a>(
        &'a self,
        run: &'a str,
        name: &'a str,
        payload: Vec<u8>,
    ) -> StoreFuture<'a, u64> {
        self.gate(self.inner.send_signal(run, name, payload))
    }
    fn take_signal<'a>(
        &'a self,
        run: &'a str,
        name: &'a str,
    ) -> StoreFuture<'a, Option<st::SignalRecord>> {
        self.gate(self.inner.take_signal(run, name))
    }
    fn take_signal_into_step<'a>(
        &'a self,
        run: &'a str,
        name: &'a str,
        key: st::StepKey,
    ) -> StoreFuture<'a, Option<st::SignalRecord>> {
        self.gate(self.inner.take_signal_into_step(run, name, key))
    }
    fn save_graph<'a>(&'a self, w: &'a str, f: u64, g: Vec<u8>) -> StoreFuture<'a, ()> {
        self.gate(self.inner.save_graph(w, f, g))
    }
    fn get_graph<'a>(&'a self, w: &'a str, f: u64) -> StoreFuture<'a, Option<Vec<u8>>> {
        self.gate(self.inner.get_graph(w, f))
    }
    fn reset_steps<'a>(
        &'a self,
        run: &'a str,
        nodes: Vec<String>,
    ) -> StoreFuture<'a, st::RunRecord> {
        self.gate(self.inner.reset_steps(run, nodes))
    }
    fn record_history<'a>(&'a self, run: &'a str, e: st::NewHistory) -> StoreFuture<'a, u64> {
        self.gate(self.inner.record_history(run, e))
    }
    fn history_of<'a>(&'a self, run: &'a str) -> StoreFuture<'a, Vec<st::HistoryRecord>> {
        self.gate(self.inner.history_of(run))
    }
}

/// A store that fails or does not answer gets a 503 page; the server keeps serving, and
/// serves the pages again once the store is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_hanging_store_gets_503_and_the_server_keeps_serving() {
    let flaky = Arc::new(Flaky {
        inner: SqliteStore::open(temp_store("flaky")).unwrap(),
        fail: AtomicBool::new(false),
        hang: AtomicBool::new(false),
        calls: AtomicU64::new(0),
    });
    let store: Arc<dyn Store> = flaky.clone();
    let runtime = Runtime::new().with_shared_store(store.clone());
    let _run = runtime.start(Review, "r", ("x".to_owned(),)).await.unwrap();
    until(&*store, "r", "waiting", |s| waiting(s, "approve")).await;
    let addr = serve(
        store.clone(),
        flow_web::Options {
            store_timeout: Duration::from_millis(200),
            ..options()
        },
    )
    .await;
    let app = flow_web::router(
        store.clone(),
        flow_web::Options {
            store_timeout: Duration::from_millis(200),
            ..options()
        },
    );
    assert_eq!(get(&app, "/runs/r").await.0, StatusCode::OK);
    flaky.fail.store(true, Ordering::SeqCst);
    for uri in ["/", "/runs/r", "/runs/r/live", "/workflows/w"] {
        let (status, page) = get(&app, uri).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{uri}: {page}");
        assert!(
            page.contains("disk on fire") && page.contains("keeps serving"),
            "{page}"
        );
    }
    let (status, _) = post(
        &app,
        "/runs/r/cancel",
        &[("token", TOKEN), ("confirm", "yes")],
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    flaky.fail.store(false, Ordering::SeqCst);
    flaky.hang.store(true, Ordering::SeqCst);
    let (status, page) = get(&app, "/runs/r").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{page}");
    assert!(page.contains("did not answer within"), "{page}");
    // Over real HTTP too: the server answers while the store hangs.
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    flaky.hang.store(false, Ordering::SeqCst);
    assert_eq!(get(&app, "/runs/r").await.0, StatusCode::OK);
}
