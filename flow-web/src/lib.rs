//! `flow-web`: the web view of `flow`'s durable runs, straight from a [`Store`].
//!
//! ```no_run
//! # async fn serve(store: std::sync::Arc<dyn flow_runtime::store::Store>) -> std::io::Result<()> {
//! let app = flow_web::router(store, flow_web::Options::with_token("s3cret"));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8089").await?;
//! flow_web::serve(listener, app).await
//! # }
//! ```
//!
//! `flowctl serve --store PATH` runs it; a service can mount [`router`] in its own axum app
//! too (set [`Options::base_path`] to where it is mounted).
//!
//! Pages (all HTML, drawn on the server, no network needed: the stylesheet and the small
//! script are served from the binary):
//!
//! | route | what |
//! | --- | --- |
//! | `GET /` | the runs, newest first, filtered by `workflow`, `status`, `age` (`30m`: created in the last 30 minutes), `older` (created before that age), paged by `limit` (1 to [`MAX_PAGE`]) and the cursor `after` |
//! | `GET /runs/{id}` | a run: status, input, output or error; its graph with each node done / failed / running / retrying / not reached / compensated and its loop and map counts; steps with attempts, errors, durations and outputs; a timeline of attempts and backoffs; the compensation stack; the history; the actions |
//! | `GET /runs/{id}/live` | the live part of the run's page alone (HTML) |
//! | `GET /runs/{id}/events` | server-sent events: `update` (the live part, rendered) when the run changed, `store` (a message) when the store cannot be read |
//! | `GET /workflows/{name}` | a workflow: its newest graph, fingerprints, and its unfinished runs that a build of that graph could not resume |
//! | `POST /runs/{id}/cancel`, `/resume`, `/restart` (`step`), `/signal` (`name`, `value` as JSON) | the actions: they need the token (form field `token`, or header `x-flow-token`) and `confirm=yes` (without it, a page asks to confirm); each is recorded in the run's history |
//!
//! Live updates: each page that shows an unfinished run listens to `/runs/{id}/events`; the
//! server reads that run every [`Options::poll_interval`] (500 ms by default: four small reads
//! of the one run, by one poller per run however many pages watch it, and only while one
//! does) and sends the page's live part only when something changed.
//!
//! Safe by default: every value shown is escaped (maud); actions need the token, compared in
//! constant time; bad requests get a 4xx page saying what was wrong; a store that fails or
//! does not answer within [`Options::store_timeout`] gets a 503 page, and the server keeps
//! serving.

pub mod graph;
mod live;
pub mod ops;
mod pages;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Form, FromRequestParts, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header, request::Parts};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use flow_runtime::store::{Store, StoreError};

use crate::graph::StoredGraph;
pub use crate::pages::{path_segment, utc};

/// The largest page of runs asked for (`limit`); more is a 400.
pub const MAX_PAGE: usize = 500;

/// The page size when none is asked for.
pub const DEFAULT_PAGE: usize = 50;

/// How the web view behaves.
#[derive(Clone, Debug)]
pub struct Options {
    /// The token that actions need. Empty: actions are refused (a read-only view).
    pub token: String,
    /// How often a watched run is read for live updates.
    pub poll_interval: Duration,
    /// How long a store call may take before the request gets a 503 page.
    pub store_timeout: Duration,
    /// Where the router is mounted (`""` at the root, `/flow` under a service's `/flow`):
    /// the prefix of every link the pages make.
    pub base_path: String,
}

impl Options {
    /// The defaults, with actions allowed to holders of `token`.
    pub fn with_token(token: impl Into<String>) -> Self {
        Options {
            token: token.into(),
            ..Options::default()
        }
    }
}

impl Default for Options {
    /// Read-only (no token), a 500 ms poll, a 5 s store timeout, mounted at the root.
    fn default() -> Self {
        Options {
            token: String::new(),
            poll_interval: Duration::from_millis(500),
            store_timeout: Duration::from_secs(5),
            base_path: String::new(),
        }
    }
}

/// A new random token for the actions (32 hex digits, from the OS's random source when it
/// has one).
pub fn new_token() -> String {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    let from_os = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok();
    if !from_os {
        fastrand::fill(&mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The shared state of the handlers.
pub(crate) struct App {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) options: Options,
    pub(crate) watchers: live::Watchers,
    /// Graphs read from the store, by (workflow, fingerprint): they never change.
    graphs: Mutex<HashMap<(String, u64), Arc<StoredGraph>>>,
}

impl App {
    /// A store call, bounded by the store timeout; its failure as a page.
    pub(crate) async fn call<T>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, WebError> {
        match tokio::time::timeout(self.options.store_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(WebError::from_store(e)),
            Err(_) => Err(WebError::Unavailable(format!(
                "the store did not answer within {:?}",
                self.options.store_timeout
            ))),
        }
    }

    /// The graph saved for (`workflow`, `fingerprint`), if any.
    pub(crate) async fn graph(
        &self,
        workflow: &str,
        fingerprint: u64,
    ) -> Result<Option<Arc<StoredGraph>>, WebError> {
        let key = (workflow.to_owned(), fingerprint);
        if let Some(g) = live_lock(&self.graphs).get(&key) {
            return Ok(Some(Arc::clone(g)));
        }
        let Some(bytes) = self
            .call(self.store.get_graph(workflow, fingerprint))
            .await?
        else {
            return Ok(None);
        };
        let g = Arc::new(StoredGraph::parse(&bytes).map_err(WebError::Unavailable)?);
        live_lock(&self.graphs).insert(key, Arc::clone(&g));
        Ok(Some(g))
    }

    /// `path` under the base path.
    pub(crate) fn link(&self, path: &str) -> String {
        format!("{}{path}", self.options.base_path)
    }
}

fn live_lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a request failed, as the page (and status) it gets.
#[derive(Debug)]
pub(crate) enum WebError {
    /// 400: the request is malformed.
    BadRequest(String),
    /// 403: an action without the right token.
    Forbidden(String),
    /// 404: no such run, workflow or page.
    NotFound(String),
    /// 409: the run's state refuses the action.
    Conflict(String),
    /// 503: the store failed or is busy.
    Unavailable(String),
}

impl WebError {
    fn from_store(e: StoreError) -> WebError {
        match e {
            StoreError::NotFound { what } => WebError::NotFound(format!("not found: {what}")),
            StoreError::Conflict { what } => WebError::Conflict(what),
            StoreError::Invalid { what } => WebError::BadRequest(what),
            other => WebError::Unavailable(other.to_string()),
        }
    }

    pub(crate) fn message(&self) -> &str {
        match self {
            WebError::BadRequest(m)
            | WebError::Forbidden(m)
            | WebError::NotFound(m)
            | WebError::Conflict(m)
            | WebError::Unavailable(m) => m,
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            WebError::BadRequest(_) => StatusCode::BAD_REQUEST,
            WebError::Forbidden(_) => StatusCode::FORBIDDEN,
            WebError::NotFound(_) => StatusCode::NOT_FOUND,
            WebError::Conflict(_) => StatusCode::CONFLICT,
            WebError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl From<ops::OpError> for WebError {
    fn from(e: ops::OpError) -> Self {
        match e {
            ops::OpError::NotFound(m) => WebError::NotFound(m),
            ops::OpError::Conflict(m) => WebError::Conflict(m),
            ops::OpError::Invalid(m) => WebError::BadRequest(m),
            ops::OpError::Store(e) => WebError::from_store(e),
        }
    }
}

/// An error page, with the app's links (for the handlers that have the app).
pub(crate) struct ErrorPage(Arc<App>, WebError);

impl IntoResponse for ErrorPage {
    fn into_response(self) -> Response {
        let status = self.1.status();
        let mut res =
            (status, pages::error_page(&self.0, status, self.1.message())).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("2"));
        }
        res
    }
}

type Page = Result<Response, ErrorPage>;

/// The web view's routes over `store` (see the [crate documentation](crate)).
pub fn router(store: Arc<dyn Store>, options: Options) -> Router {
    let app = Arc::new(App {
        store,
        options,
        watchers: live::Watchers::default(),
        graphs: Mutex::new(HashMap::new()),
    });
    Router::new()
        .route("/", get(runs))
        .route("/runs/{id}", get(run))
        .route("/runs/{id}/live", get(run_live))
        .route("/runs/{id}/events", get(run_events))
        .route("/runs/{id}/{action}", post(action))
        .route("/workflows/{name}", get(workflow))
        .route("/static/style.css", get(style))
        .route("/static/app.js", get(script))
        .route("/healthz", get(health))
        .fallback(not_found)
        .with_state(app)
}

/// Serves `app` on `listener` until the process ends, with each client's address known
/// (the history records it).
pub async fn serve(listener: tokio::net::TcpListener, app: Router) -> std::io::Result<()> {
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

/// Who sent the request, for the history: `web 127.0.0.1:53122` (`web` alone when the
/// server was not started with the clients' addresses).
pub(crate) struct Client(String);

impl<S: Send + Sync> FromRequestParts<S> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Client(
            match parts.extensions.get::<ConnectInfo<SocketAddr>>() {
                Some(ConnectInfo(addr)) => format!("web {addr}"),
                None => "web".to_owned(),
            },
        ))
    }
}

async fn health(State(app): State<Arc<App>>) -> String {
    format!("ok; {} run(s) watched live\n", app.watchers.watched())
}

async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("../assets/style.css"),
    )
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("../assets/app.js"),
    )
}

async fn not_found(State(app): State<Arc<App>>) -> ErrorPage {
    ErrorPage(
        app,
        WebError::NotFound("there is no such page here".to_owned()),
    )
}

type Params = Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>;

async fn runs(State(app): State<Arc<App>>, q: Params) -> Page {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => {
            return Err(ErrorPage(
                app,
                WebError::BadRequest(format!("malformed query: {e}")),
            ));
        }
    };
    match pages::runs_page(&app, &q).await {
        Ok(m) => Ok(m.into_response()),
        Err(e) => Err(ErrorPage(app, e)),
    }
}

async fn run(State(app): State<Arc<App>>, Path(id): Path<String>, q: Params) -> Page {
    let done = q
        .ok()
        .and_then(|Query(q)| q.into_iter().find(|(k, _)| k == "done").map(|(_, v)| v));
    match pages::run_page(&app, &id, done.as_deref()).await {
        Ok(m) => Ok(m.into_response()),
        Err(e) => Err(ErrorPage(app, e)),
    }
}

async fn run_live(State(app): State<Arc<App>>, Path(id): Path<String>) -> Page {
    let snap = pages::Snapshot::read(&app, &id).await;
    match snap {
        Ok(s) => Ok(pages::live_part(&app, &s).into_response()),
        Err(e) => Err(ErrorPage(app, e)),
    }
}

async fn run_events(State(app): State<Arc<App>>, Path(id): Path<String>) -> Page {
    // A run that does not exist is a 404 here, not an endless stream.
    if let Err(e) = app
        .call(app.store.get_run(&id))
        .await
        .and_then(|r| r.ok_or_else(|| WebError::NotFound(format!("no run `{id}` in this store"))))
    {
        return Err(ErrorPage(app, e));
    }
    let rx = live::subscribe(&app, &id);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            rx.changed().await.ok()?;
            let msg = rx.borrow_and_update().clone();
            let event = match msg {
                live::Live::Nothing => continue,
                live::Live::Update(html) => Event::default().event("update").data(&*html),
                live::Live::Unavailable(m) => Event::default().event("store").data(&*m),
            };
            return Some((Ok::<_, std::convert::Infallible>(event), rx));
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// The fields an action's form may carry.
#[derive(serde::Deserialize, Default)]
struct ActionForm {
    token: Option<String>,
    confirm: Option<String>,
    step: Option<String>,
    name: Option<String>,
    value: Option<String>,
}

/// Compares two byte strings in time that depends only on their lengths.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The largest signal value accepted, in bytes.
pub const MAX_SIGNAL_VALUE: usize = 64 * 1024;

async fn action(
    State(app): State<Arc<App>>,
    Path((id, action)): Path<(String, String)>,
    Client(client): Client,
    headers: HeaderMap,
    form: Result<Form<ActionForm>, axum::extract::rejection::FormRejection>,
) -> Page {
    let fail = |app: Arc<App>, e: WebError| Err(ErrorPage(app, e));
    if !matches!(action.as_str(), "cancel" | "resume" | "restart" | "signal") {
        return fail(
            app,
            WebError::NotFound(format!(
                "no action `{action}` (the actions: cancel, resume, restart, signal)"
            )),
        );
    }
    let form = match form {
        Ok(Form(f)) => f,
        Err(e) => return fail(app, WebError::BadRequest(format!("malformed form: {e}"))),
    };
    let given = headers
        .get("x-flow-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| form.token.clone())
        .unwrap_or_default();
    if app.options.token.is_empty() {
        return fail(
            app,
            WebError::Forbidden(
                "this web view is read-only: it was started without a token for actions".into(),
            ),
        );
    }
    if !same_secret(given.as_bytes(), app.options.token.as_bytes()) {
        return fail(
            app,
            WebError::Forbidden(if given.is_empty() {
                "actions need the token that `flowctl serve` printed at start (form field `token` or header `x-flow-token`)".into()
            } else {
                "wrong token: actions need the token that `flowctl serve` printed at start".into()
            }),
        );
    }
    let step = form.step.clone().unwrap_or_default();
    let name = form.name.clone().unwrap_or_default();
    let value = form.value.clone().unwrap_or_default();
    match action.as_str() {
        "restart" if step.is_empty() => {
            return fail(
                app,
                WebError::BadRequest("restart needs a step (pick one on the graph)".into()),
            );
        }
        "signal" if value.len() > MAX_SIGNAL_VALUE => {
            return fail(
                app,
                WebError::BadRequest(format!(
                    "a signal's value may have at most {MAX_SIGNAL_VALUE} bytes"
                )),
            );
        }
        "signal" => {
            if let Err(e) = serde_json::from_str::<serde_json::Value>(&value) {
                return fail(
                    app,
                    WebError::BadRequest(format!(
                        "the value must be JSON (a string is quoted: \"ada\"): {e}"
                    )),
                );
            }
        }
        _ => {}
    }
    if form.confirm.as_deref() != Some("yes") {
        // Ask first (the page's script asks with a dialog and sends `confirm=yes`).
        return match app.call(app.store.get_run(&id)).await {
            Ok(Some(r)) => {
                Ok(pages::confirm_page(&app, &r, &action, &form_fields(&form)).into_response())
            }
            Ok(None) => fail(
                app,
                WebError::NotFound(format!("no run `{id}` in this store")),
            ),
            Err(e) => fail(app, e),
        };
    }
    let store = &*app.store;
    let call = async {
        match action.as_str() {
            "cancel" => ops::cancel(store, &id, &client).await,
            "resume" => ops::resume(store, &id, &client).await,
            "restart" => ops::restart(store, &id, &step, &client).await,
            _ => ops::signal(store, &id, &name, &value, &client).await,
        }
    };
    let result = match tokio::time::timeout(app.options.store_timeout * 2, call).await {
        Ok(r) => r.map_err(WebError::from),
        Err(_) => Err(WebError::Unavailable(format!(
            "the store did not answer within {:?}",
            app.options.store_timeout * 2
        ))),
    };
    match result {
        Ok(_) => Ok(Redirect::to(
            &app.link(&format!("/runs/{}?done={action}", pages::path_segment(&id))),
        )
        .into_response()),
        Err(e) => fail(app, e),
    }
}

fn form_fields(f: &ActionForm) -> Vec<(&'static str, String)> {
    let mut v = Vec::new();
    for (k, x) in [
        ("token", &f.token),
        ("step", &f.step),
        ("name", &f.name),
        ("value", &f.value),
    ] {
        if let Some(x) = x {
            v.push((k, x.clone()));
        }
    }
    v
}

async fn workflow(State(app): State<Arc<App>>, Path(name): Path<String>) -> Page {
    match pages::workflow_page(&app, &name).await {
        Ok(m) => Ok(m.into_response()),
        Err(e) => Err(ErrorPage(app, e)),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_compare_by_content_and_length() {
        assert!(super::same_secret(b"abc", b"abc"));
        assert!(!super::same_secret(b"abc", b"abd"));
        assert!(!super::same_secret(b"abc", b"abcd"));
        assert!(!super::same_secret(b"", b"a"));
    }

    #[test]
    fn tokens_are_32_hex_digits_and_differ() {
        let (a, b) = (super::new_token(), super::new_token());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
