//! What the web view's tests share: durable workflows whose progress a test controls with
//! signals, a store in a temporary directory, and the web view served on a free port.

#![allow(dead_code)] // each test file uses part of it

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use flow::prelude::*;
use flow::store::Store;
use serde::{Deserialize, Serialize};
use tower::ServiceExt as _;

/// A step's error.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fail(pub String);

impl core::fmt::Display for Fail {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A booking's record, undone by `cancel_booking`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Booking {
    pub id: String,
}

/// What the draft says: HTML, to check that the page shows it as text.
pub const HOSTILE: &str = "<script>alert('owned')</script><b>bold</b>";

async fn write_draft(doc: String) -> Result<String, Fail> {
    Ok(format!("{HOSTILE} {doc}"))
}
async fn book(doc: String) -> Result<Booking, Fail> {
    Ok(Booking {
        id: format!("b-{}", doc.len()),
    })
}
async fn cancel_booking(_: Booking) -> Result<(), Fail> {
    Ok(())
}
async fn publish(draft: String, by: String) -> Result<String, Fail> {
    if by == "nobody" {
        return Err(Fail("nobody approved <i>this</i>".into()));
    }
    Ok(format!("{draft} approved by {by}"))
}

/// Writes a draft, books a slot (undone on failure), waits for the signal `approve`, then
/// publishes: a test moves it on by sending the signal.
#[workflow(durable)]
pub async fn review(doc: String) -> Result<String, Fail> {
    let draft = write_draft(doc.clone()).await?;
    #[compensate(cancel_booking)]
    let _slot = book(doc).await?;
    let by: String = flow::signal("approve").timeout("1h").await?;
    publish(draft, by).await
}

async fn flaky(n: u32) -> Result<u32, Fail> {
    Err(Fail(format!("flaky {n} is down")))
}

/// Fails after three attempts, with backoffs between them.
#[workflow(durable)]
pub async fn fragile(n: u32) -> Result<u32, Fail> {
    #[retry(max_attempts = 3, backoff = constant("20ms"))]
    let v = flaky(n).await?;
    Ok(v)
}

/// A fresh SQLite store's path.
pub fn temp_store(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "flow-web-{name}-{}-{}",
        std::process::id(),
        flow::store::new_run_id()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join("runs.db")
}

/// The web view of `store` on a free port of 127.0.0.1, served by a task.
pub async fn serve(store: Arc<dyn Store>, options: flow_web::Options) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(flow_web::serve(listener, flow_web::router(store, options)));
    addr
}

/// Waits (up to 10 s) until `check` holds of the store's run `id`.
pub async fn until(
    store: &dyn Store,
    id: &str,
    what: &str,
    check: impl Fn(&[flow::store::StepRecord]) -> bool,
) {
    for _ in 0..1000 {
        let steps = store.steps_of(id).await.expect("steps");
        if check(&steps) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("run {id}: {what} did not happen within 10 s");
}

/// Whether run `id`'s step `node` is waiting (recorded, not ended).
pub fn waiting(steps: &[flow::store::StepRecord], node: &str) -> bool {
    steps
        .iter()
        .any(|s| s.key.node == node && s.outcome.is_none())
}

async fn announce(text: String) -> Result<String, Fail> {
    Ok(format!("announced: {text}"))
}

/// `review`'s steps, then a second wait (`release`) after publishing: a test that cancels the
/// run after the first signal still finds it running.
#[workflow(durable)]
pub async fn staged(doc: String) -> Result<String, Fail> {
    let draft = write_draft(doc.clone()).await?;
    #[compensate(cancel_booking)]
    let _slot = book(doc).await?;
    let by: String = flow::signal("approve").timeout("1h").await?;
    let text = publish(draft, by).await?;
    let _go: String = flow::signal("release").timeout("1h").await?;
    announce(text).await
}

// ---------------------------------------------------------------- requests to the router

/// GETs `uri`: the status and the page.
pub async fn get(app: &axum::Router, uri: &str) -> (StatusCode, String) {
    let res = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let body = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Posts `form`: the status and the redirect's target (or the page).
pub async fn post(app: &axum::Router, uri: &str, form: &[(&str, &str)]) -> (StatusCode, String) {
    let body: Vec<String> = form
        .iter()
        .map(|(k, v)| format!("{k}={}", flow_web::path_segment(v)))
        .collect();
    let res = app
        .clone()
        .oneshot(
            Request::post(uri)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(body.join("&")))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = res.status();
    let location = res
        .headers()
        .get(header::LOCATION)
        .map(|l| l.to_str().unwrap().to_owned());
    let body = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        location.unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned()),
    )
}

/// The class of the graph node `key` on a page.
pub fn node_state(page: &str, key: &str) -> String {
    let at = page
        .find(&format!("data-key=\"{key}\""))
        .unwrap_or_else(|| panic!("no node {key} on the page"));
    let tag_start = page[..at].rfind("<g ").unwrap();
    let tag = &page[tag_start..at];
    tag.split("state-")
        .nth(1)
        .unwrap()
        .split(['"', ' '])
        .next()
        .unwrap()
        .to_owned()
}
