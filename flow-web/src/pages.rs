//! The pages, drawn with maud: every value is escaped when it is written into the page.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::http::StatusCode;
use flow_runtime::store::{
    CompensationRecord, HistoryRecord, RunFilter, RunRecord, RunStatus, StepOutcome, StepRecord,
};
use maud::{DOCTYPE, Markup, html};

use crate::graph::{self, StoredGraph, UNDO_SUFFIX, duration, step_label};
use crate::{App, DEFAULT_PAGE, MAX_PAGE, WebError};

/// A time as `2026-11-29 17:30:01.123` (UTC), from milliseconds since the Unix epoch.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// `s` percent-encoded for one segment of a URL path (or a query value).
pub fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The most of one value a page shows (the rest is cut, saying so).
const MAX_VALUE: usize = 64 * 1024;

/// A stored value for a person: pretty JSON when it is JSON, else the text.
fn value_text(bytes: &[u8]) -> String {
    let mut s = match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(v) => serde_json::to_string_pretty(&v)
            .unwrap_or_else(|_| String::from_utf8_lossy(bytes).into_owned()),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    };
    if s.len() > MAX_VALUE {
        let mut cut = MAX_VALUE;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        let total = s.len();
        s.truncate(cut);
        s.push_str(&format!(
            "\n… ({total} bytes in all; the first {cut} shown)"
        ));
    }
    s
}

fn page(app: &App, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · flow" }
                link rel="stylesheet" href=(app.link("/static/style.css"));
                script src=(app.link("/static/app.js")) defer {}
            }
            body {
                nav class="top" {
                    a class="brand" href=(app.link("/")) { "flow" }
                    a href=(app.link("/")) { "Runs" }
                    span class="store-state" id="store-state" hidden {}
                }
                main { (body) }
            }
        }
    }
}

/// An error page: what went wrong, in words.
pub(crate) fn error_page(app: &App, status: StatusCode, message: &str) -> Markup {
    let title = match status.as_u16() {
        400 => "Bad request",
        403 => "Not allowed",
        404 => "Not found",
        409 => "Not possible now",
        503 => "Store unavailable",
        _ => "Error",
    };
    page(
        app,
        title,
        html! {
            div class={ "error status-" (status.as_u16()) } {
                h1 { (status.as_u16()) " " (title) }
                p class="message" { (message) }
                @if status == StatusCode::SERVICE_UNAVAILABLE {
                    p { "The store is busy or cannot be reached; the web view keeps serving. Try again in a moment." }
                }
                p { a href=(app.link("/")) { "All runs" } }
            }
        },
    )
}

fn badge(status: RunStatus) -> Markup {
    html! { span class={ "badge status-" (status.as_str()) } { (status.as_str()) } }
}

/// The filters of the runs page, parsed and checked.
struct Filter {
    workflow: Option<String>,
    status: Option<RunStatus>,
    age: Option<(String, u64)>,
    older: Option<(String, u64)>,
    limit: usize,
    after: Option<String>,
    oldest_first: bool,
}

/// `30s`, `10m`, `2h`, `7d`, `2w` as milliseconds.
fn parse_age(what: &str, s: &str) -> Result<u64, WebError> {
    let bad = || {
        WebError::BadRequest(format!(
            "`{what}` is a number and a unit (s, m, h, d, w), as `30m`; not {s:?}"
        ))
    };
    let unit = s.chars().last().ok_or_else(bad)?;
    let n: u64 = s[..s.len() - unit.len_utf8()].parse().map_err(|_| bad())?;
    let per = match unit {
        's' => 1_000,
        'm' => 60_000,
        'h' => 3_600_000,
        'd' => 86_400_000,
        'w' => 604_800_000,
        _ => return Err(bad()),
    };
    n.checked_mul(per).ok_or_else(bad)
}

impl Filter {
    fn parse(q: &[(String, String)]) -> Result<Filter, WebError> {
        let mut f = Filter {
            workflow: None,
            status: None,
            age: None,
            older: None,
            limit: DEFAULT_PAGE,
            after: None,
            oldest_first: false,
        };
        for (k, v) in q {
            let v = v.trim();
            if v.is_empty() {
                continue;
            }
            match k.as_str() {
                "workflow" => f.workflow = Some(v.to_owned()),
                "status" => {
                    f.status = Some(RunStatus::parse(v).ok_or_else(|| {
                        WebError::BadRequest(format!(
                            "unknown status {v:?} (one of pending, running, compensating, completed, failed, cancelled)"
                        ))
                    })?)
                }
                "age" => f.age = Some((v.to_owned(), parse_age("age", v)?)),
                "older" => f.older = Some((v.to_owned(), parse_age("older", v)?)),
                "limit" => {
                    let n: usize = v.parse().map_err(|_| {
                        WebError::BadRequest(format!("`limit` must be a number, not {v:?}"))
                    })?;
                    if n == 0 || n > MAX_PAGE {
                        return Err(WebError::BadRequest(format!(
                            "`limit` must be between 1 and {MAX_PAGE}, not {n}"
                        )));
                    }
                    f.limit = n;
                }
                "after" => f.after = Some(v.to_owned()),
                "order" => {
                    f.oldest_first = match v {
                        "newest" => false,
                        "oldest" => true,
                        _ => {
                            return Err(WebError::BadRequest(format!(
                                "`order` is `newest` or `oldest`, not {v:?}"
                            )));
                        }
                    }
                }
                other => {
                    return Err(WebError::BadRequest(format!(
                        "unknown parameter {other:?} (the filters: workflow, status, age, older, limit, after, order)"
                    )));
                }
            }
        }
        Ok(f)
    }

    /// The query of this filter, with `after` replaced.
    fn query(&self, after: Option<&str>) -> String {
        let mut parts = Vec::new();
        if let Some(w) = &self.workflow {
            parts.push(format!("workflow={}", path_segment(w)));
        }
        if let Some(s) = self.status {
            parts.push(format!("status={s}"));
        }
        if let Some((a, _)) = &self.age {
            parts.push(format!("age={}", path_segment(a)));
        }
        if let Some((a, _)) = &self.older {
            parts.push(format!("older={}", path_segment(a)));
        }
        if self.limit != DEFAULT_PAGE {
            parts.push(format!("limit={}", self.limit));
        }
        if self.oldest_first {
            parts.push("order=oldest".to_owned());
        }
        if let Some(a) = after {
            parts.push(format!("after={}", path_segment(a)));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("?{}", parts.join("&"))
        }
    }
}

/// The list of runs.
pub(crate) async fn runs_page(app: &App, q: &[(String, String)]) -> Result<Markup, WebError> {
    let f = Filter::parse(q)?;
    let now = flow_runtime::store::now_ms();
    let page_of_runs = app
        .call(app.store.list_runs(RunFilter {
            workflow: f.workflow.clone(),
            status: f.status,
            created_after: f.age.as_ref().map(|(_, ms)| now.saturating_sub(*ms)),
            created_before: f.older.as_ref().map(|(_, ms)| now.saturating_sub(*ms)),
            limit: f.limit,
            after: f.after.clone(),
            newest_first: !f.oldest_first,
        }))
        .await?;
    let body = html! {
        h1 { "Runs" }
        form class="filters" method="get" action=(app.link("/")) {
            label { "Workflow " input type="text" name="workflow" value=[f.workflow.as_deref()] placeholder="any"; }
            label { "Status "
                select name="status" {
                    option value="" { "any" }
                    @for s in RunStatus::ALL {
                        option value=(s.as_str()) selected[f.status == Some(s)] { (s.as_str()) }
                    }
                }
            }
            label { "Created within " input type="text" name="age" size="5" value=[f.age.as_ref().map(|a| a.0.as_str())] placeholder="30m, 2h, 7d"; }
            label { "Older than " input type="text" name="older" size="5" value=[f.older.as_ref().map(|a| a.0.as_str())] placeholder="1h"; }
            label { "Per page " input type="number" name="limit" min="1" max=(MAX_PAGE) value=(f.limit); }
            label { "Order "
                select name="order" {
                    option value="newest" selected[!f.oldest_first] { "newest first" }
                    option value="oldest" selected[f.oldest_first] { "oldest first" }
                }
            }
            button type="submit" { "Filter" }
            a href=(app.link("/")) { "clear" }
        }
        @if page_of_runs.runs.is_empty() {
            p class="empty" { "No run matches." }
        } @else {
            table class="runs" {
                thead { tr { th { "Run" } th { "Workflow" } th { "Status" } th { "Created (UTC)" } th { "Updated (UTC)" } th { "Took" } } }
                tbody {
                    @for r in &page_of_runs.runs {
                        tr class={ "status-" (r.status.as_str()) } {
                            td class="mono" { a href=(app.link(&format!("/runs/{}", path_segment(&r.id)))) { (r.id) } }
                            td { a href=(app.link(&format!("/workflows/{}", path_segment(&r.workflow)))) { (r.workflow) } }
                            td { (badge(r.status)) }
                            td class="mono" { (utc(r.created_ms)) }
                            td class="mono" { (utc(r.updated_ms)) }
                            td class="num" {
                                @if r.status.is_finished() { (duration(r.updated_ms.saturating_sub(r.created_ms))) }
                                @else { (duration(now.saturating_sub(r.created_ms))) " so far" }
                            }
                        }
                    }
                }
            }
        }
        p class="pager" {
            @if f.after.is_some() { a href=(app.link(&format!("/{}", f.query(None)))) { "« first page" } " " }
            @if let Some(next) = &page_of_runs.next {
                a class="next" href=(app.link(&format!("/{}", f.query(Some(next))))) { "next page »" }
            }
        }
    };
    Ok(page(app, "Runs", body))
}

/// Everything the live part of a run's page shows, as read from the store.
pub(crate) struct Snapshot {
    run: RunRecord,
    steps: Vec<StepRecord>,
    compensations: Vec<CompensationRecord>,
    history: Vec<HistoryRecord>,
    graph: Option<Arc<StoredGraph>>,
}

impl PartialEq for Snapshot {
    fn eq(&self, other: &Self) -> bool {
        self.run == other.run
            && self.steps == other.steps
            && self.compensations == other.compensations
            && self.history == other.history
    }
}

impl Snapshot {
    /// Reads run `id` (a 404 if it does not exist).
    pub(crate) async fn read(app: &App, id: &str) -> Result<Snapshot, WebError> {
        let run = app
            .call(app.store.get_run(id))
            .await?
            .ok_or_else(|| WebError::NotFound(format!("no run `{id}` in this store")))?;
        let steps = app.call(app.store.steps_of(id)).await?;
        let compensations = app.call(app.store.compensations_of(id)).await?;
        let history = app.call(app.store.history_of(id)).await?;
        let graph = app.graph(&run.workflow, run.fingerprint).await?;
        Ok(Snapshot {
            run,
            steps,
            compensations,
            history,
            graph,
        })
    }
}

/// At most this many steps are listed in a run's table.
const MAX_STEP_ROWS: usize = 500;

/// The part of a run's page that live updates replace.
pub(crate) fn live_part(app: &App, s: &Snapshot) -> Markup {
    let r = &s.run;
    let now = flow_runtime::store::now_ms();
    let states = s
        .graph
        .as_deref()
        .map(|g| graph::node_states(g, r, &s.steps, &s.compensations))
        .unwrap_or_default();
    let mut steps: Vec<&StepRecord> = s.steps.iter().collect();
    steps.sort_by_key(|x| {
        (
            x.attempts
                .iter()
                .map(|a| a.started_ms)
                .min()
                .unwrap_or(x.updated_ms),
            x.key.clone(),
        )
    });
    let cut = steps.len().saturating_sub(MAX_STEP_ROWS);
    steps.truncate(MAX_STEP_ROWS);
    html! {
        div class="summary" data-status=(r.status.as_str()) {
            p class="status-line" {
                (badge(r.status))
                " workflow " a href=(app.link(&format!("/workflows/{}", path_segment(&r.workflow)))) { (r.workflow) }
                " · created " span class="mono" { (utc(r.created_ms)) } " UTC"
                " · updated " span class="mono" { (utc(r.updated_ms)) } " UTC"
                " · " @if r.status.is_finished() { "took " (duration(r.updated_ms.saturating_sub(r.created_ms))) }
                @else { "running for " (duration(now.saturating_sub(r.created_ms))) }
                @if let Some(q) = &r.queue { " · queue " (q) }
                @if let Some(l) = &r.lease { " · held by " (l.worker) }
            }
            div class="values" {
                div { h3 { "Input" } pre class="value" { (value_text(&r.input)) } }
                @if let Some(o) = &r.output { div { h3 { "Output" } pre class="value output" { (value_text(o)) } } }
                @if let Some(e) = &r.error { div { h3 { "Error" } pre class="value error" { (value_text(e)) } } }
            }
        }
        section class="graph-section" {
            h2 { "Graph" }
            @match &s.graph {
                Some(g) => {
                    (graph::legend())
                    div class="graph-wrap" { (graph::svg(g, &states)) }
                    p class="hint" { "Click a step to pick it for “restart from”." }
                }
                None => p class="empty" { "The store has no graph of this workflow's fingerprint " (format!("{:016x}", r.fingerprint)) " (the runtime saves it when a run starts)." }
            }
        }
        section {
            h2 { "Steps " span class="count" { "(" (s.steps.len()) ")" } }
            @if steps.is_empty() { p class="empty" { "No step recorded yet." } } @else {
                table class="steps" {
                    thead { tr { th { "Step" } th { "State" } th { "Attempts" } th { "Started or committed (UTC)" } th { "Took" } th { "Output or error" } } }
                    tbody {
                        @for st in &steps {
                            @let state = graph::NodeState::of_step(st);
                            @let undo = st.key.node.ends_with(UNDO_SUFFIX);
                            @let first = st.attempts.iter().map(|a| a.started_ms).min();
                            @let last = st.attempts.iter().map(|a| a.ended_ms.unwrap_or(now)).max();
                            tr class={ "state-" (state.as_str()) @if undo { " undo" } } data-step=(step_label(st)) {
                                td class="mono" { (step_label(st)) @if undo { " (undo)" } }
                                td { span class={ "pill state-" (state.as_str()) } { (state.as_str()) } }
                                td class="num" {
                                    (st.attempts.len())
                                    @if let (graph::NodeState::Retrying, Some(w)) = (state, st.retry.wake_at_ms) {
                                        br; span class="due" { "next due " (utc(w)) }
                                    }
                                }
                                td class="mono" { @if let Some(t) = first { (utc(t)) } @else { (utc(st.updated_ms)) } }
                                td class="num" { @if let (Some(a), Some(b)) = (first, last) { (duration(b.saturating_sub(a))) } }
                                td {
                                    @match &st.outcome {
                                        Some(StepOutcome::Completed(v)) => details { summary { "output" } pre class="value output" { (value_text(v)) } },
                                        Some(StepOutcome::Failed(e)) => pre class="value error" { (e) },
                                        None => {}
                                    }
                                    @for a in &st.attempts {
                                        @if let Some(fail) = &a.failure {
                                            div class="attempt-failure" {
                                                "attempt " (a.number)
                                                @if let Some(end) = a.ended_ms { " (" (duration(end.saturating_sub(a.started_ms))) ")" }
                                                ": " span class="error" { (fail) }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                @if cut > 0 { p class="note" { (cut) " more steps not listed (the first " (MAX_STEP_ROWS) " by start are)." } }
            }
        }
        section {
            h2 { "Timeline" }
            p class="hint" { "One bar per attempt (green done, red failed, yellow running), the backoff waits (hatched) between them, and a mark at the commit of a step that succeeded at its first attempt (recorded by its commit alone), on one time axis." }
            div class="timeline-wrap" { (graph::timeline(&s.steps, now)) }
        }
        section {
            h2 { "Compensation " span class="count" { "(" (s.compensations.len()) ")" } }
            @if s.compensations.is_empty() { p class="empty" { "No undo recorded." } } @else {
                table class="compensations" {
                    thead { tr { th { "#" } th { "Undoes" } th { "Status" } th { "Undo input" } } }
                    tbody {
                        @for c in &s.compensations {
                            tr {
                                td class="num" { (c.seq) }
                                td class="mono" { (c.node) "@" (c.occurrence) @if let Some(i) = c.item { "[" (i) "]" } }
                                td { span class={ "pill comp-" (c.status.as_str()) } { (c.status.as_str()) } }
                                td { pre class="value" { (value_text(&c.undo)) } }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { "History " span class="count" { "(" (s.history.len()) ")" } }
            @if s.history.is_empty() { p class="empty" { "Nothing was done to this run from outside." } } @else {
                table class="history" {
                    thead { tr { th { "#" } th { "At (UTC)" } th { "Who" } th { "Action" } th { "Detail" } } }
                    tbody {
                        @for h in &s.history {
                            tr data-action=(h.action) {
                                td class="num" { (h.seq) }
                                td class="mono" { (utc(h.at_ms)) }
                                td { (h.actor) }
                                td { (h.action) }
                                td { (h.detail) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A run's page.
pub(crate) async fn run_page(app: &App, id: &str, done: Option<&str>) -> Result<Markup, WebError> {
    let snap = Snapshot::read(app, id).await?;
    let r = &snap.run;
    let base = format!("/runs/{}", path_segment(&r.id));
    let steps: Vec<String> = snap
        .graph
        .as_deref()
        .map(|g| g.step_keys().into_iter().map(str::to_owned).collect())
        .unwrap_or_default();
    let flash = match done {
        Some("cancel") => Some(
            "Cancellation requested: the process running the run cancels it within half a second and undoes its completed steps.",
        ),
        Some("resume") => Some(
            "Resume recorded: the run runs again from where it stopped when a worker resumes it.",
        ),
        Some("restart") => Some(
            "Restart recorded: the run runs again from the chosen step when a worker resumes it.",
        ),
        Some("signal") => Some("Signal sent: the run takes it when it waits for it."),
        _ => None,
    };
    let body = html! {
        p class="crumbs" { a href=(app.link("/")) { "Runs" } " / " a href=(app.link(&format!("/workflows/{}", path_segment(&r.workflow)))) { (r.workflow) } " / run" }
        h1 class="mono" { (r.id) }
        @if let Some(msg) = flash { p class="flash" { (msg) } }
        div id="live" data-events=(app.link(&format!("{base}/events"))) { (live_part(app, &snap)) }
        section id="actions" {
            h2 { "Actions" }
            p class="hint" {
                "Each action is confirmed and recorded in the run's history. They need the token that "
                code { "flowctl serve" } " printed at start."
            }
            label class="token" { "Token " input type="password" id="token-box" autocomplete="off" placeholder="paste the token"; }
            div class="action-forms" {
                form method="post" action=(app.link(&format!("{base}/cancel"))) data-confirm={ "Cancel run " (r.id) "? Its completed steps are undone." } {
                    input type="hidden" name="token"; input type="hidden" name="confirm";
                    button type="submit" class="danger" id="cancel-button" { "Cancel run" }
                }
                form method="post" action=(app.link(&format!("{base}/resume"))) data-confirm={ "Resume run " (r.id) " from where it stopped?" } {
                    input type="hidden" name="token"; input type="hidden" name="confirm";
                    button type="submit" { "Resume (failed or cancelled run)" }
                }
                form method="post" id="restart-form" action=(app.link(&format!("{base}/restart"))) data-confirm={ "Restart run " (r.id) " from step" } {
                    input type="hidden" name="token"; input type="hidden" name="confirm";
                    label { "Restart from "
                        select name="step" id="restart-step" {
                            option value="" { "(click a step on the graph)" }
                            @for k in &steps { option value=(k) { (k) } }
                        }
                    }
                    button type="submit" { "Restart" }
                }
                form method="post" action=(app.link(&format!("{base}/signal"))) data-confirm={ "Send this signal to run " (r.id) "?" } {
                    input type="hidden" name="token"; input type="hidden" name="confirm";
                    label { "Signal " input type="text" name="name" placeholder="approve" required; }
                    label { "value (JSON) " input type="text" name="value" placeholder="\"ada\"" required; }
                    button type="submit" { "Send" }
                }
            }
        }
    };
    Ok(page(app, &format!("Run {}", r.id), body))
}

/// The page that asks to confirm an action sent without `confirm=yes`.
pub(crate) fn confirm_page(
    app: &App,
    r: &RunRecord,
    action: &str,
    fields: &[(&'static str, String)],
) -> Markup {
    let base = format!("/runs/{}", path_segment(&r.id));
    page(
        app,
        "Confirm",
        html! {
            h1 { "Confirm: " (action) " run " span class="mono" { (r.id) } }
            p { "The run is " (badge(r.status)) "." }
            @if !fields.iter().any(|(k, v)| *k != "token" && !v.is_empty()) {} @else {
                ul { @for (k, v) in fields { @if *k != "token" { li { (k) ": " code { (v) } } } } }
            }
            form method="post" action=(app.link(&format!("{base}/{action}"))) {
                @for (k, v) in fields { @if *k != "token" { input type="hidden" name=(k) value=(v); } }
                input type="hidden" name="confirm" value="yes";
                label { "Token " input type="password" name="token" value=[fields.iter().find(|(k, _)| *k == "token").map(|(_, v)| v.as_str())]; }
                button type="submit" class="danger" { "Yes, " (action) }
                " " a href=(app.link(&base)) { "No, back to the run" }
            }
        },
    )
}

/// How many unfinished runs of a workflow the compatibility check reads at most.
const MAX_CHECKED: usize = 200;

/// A workflow's page.
pub(crate) async fn workflow_page(app: &App, name: &str) -> Result<Markup, WebError> {
    let newest = app
        .call(app.store.list_runs(RunFilter {
            workflow: Some(name.to_owned()),
            limit: 1,
            newest_first: true,
            ..RunFilter::default()
        }))
        .await?
        .runs
        .into_iter()
        .next()
        .ok_or_else(|| WebError::NotFound(format!("no run of workflow `{name}` in this store")))?;
    let graph = app.graph(name, newest.fingerprint).await?;
    // The unfinished runs, and what a build of the newest graph would say of each.
    let mut unfinished = Vec::new();
    for status in [
        RunStatus::Pending,
        RunStatus::Running,
        RunStatus::Compensating,
    ] {
        let page_of_runs = app
            .call(app.store.list_runs(RunFilter {
                workflow: Some(name.to_owned()),
                status: Some(status),
                limit: MAX_CHECKED,
                ..RunFilter::default()
            }))
            .await?;
        unfinished.extend(page_of_runs.runs);
    }
    unfinished.sort_by_key(|r| std::cmp::Reverse(r.created_ms));
    let more = unfinished.len() > MAX_CHECKED;
    unfinished.truncate(MAX_CHECKED);
    let current: BTreeMap<&str, u64> = graph
        .as_deref()
        .map(|g| {
            g.keys
                .iter()
                .zip(&g.fingerprints)
                .filter_map(|(k, f)| Some((k.as_str(), u64::from_str_radix(f, 16).ok()?)))
                .collect()
        })
        .unwrap_or_default();
    let mut verdicts = Vec::new();
    for r in unfinished
        .iter()
        .filter(|r| r.fingerprint != newest.fingerprint)
    {
        let steps = app.call(app.store.steps_of(&r.id)).await?;
        let done: BTreeSet<&str> = steps
            .iter()
            .filter(|s| s.outcome.is_some())
            .map(|s| s.key.node.strip_suffix(UNDO_SUFFIX).unwrap_or(&s.key.node))
            .collect();
        let changed: Vec<String> = done
            .into_iter()
            .filter(|k| r.node_fingerprints.get(*k).copied() != current.get(k).copied())
            .map(|k| {
                if current.contains_key(k) {
                    format!("{k} (changed)")
                } else {
                    format!("{k} (gone)")
                }
            })
            .collect();
        verdicts.push((r, changed));
    }
    let same = unfinished.len() - verdicts.len();
    let body = html! {
        p class="crumbs" { a href=(app.link("/")) { "Runs" } " / workflow" }
        h1 { (name) }
        p {
            "Newest fingerprint: " code { (format!("{:016x}", newest.fingerprint)) }
            " (the one its newest run, " a class="mono" href=(app.link(&format!("/runs/{}", path_segment(&newest.id)))) { (newest.id) } ", was started with)."
            " " a href=(app.link(&format!("/?workflow={}", path_segment(name)))) { "Its runs »" }
        }
        @match &graph {
            Some(g) => {
                div class="graph-wrap" { (graph::svg(g, &[])) }
                details {
                    summary { "Nodes and their fingerprints" }
                    table {
                        thead { tr { th { "Key" } th { "Name" } th { "Kind" } th { "Fingerprint" } } }
                        tbody { @for i in 0..g.len() { tr { td class="mono" { (g.keys[i]) } td { (g.names[i]) } td { (g.kinds[i]) } td class="mono" { (g.fingerprints[i]) } } } }
                    }
                }
            }
            None => p class="empty" { "The store has no graph for this fingerprint." }
        }
        section {
            h2 { "Runs a new build could not resume" }
            p class="hint" {
                "What the store can tell without the code: an unfinished run is compared with the newest graph saved for this workflow "
                "(the graph of the build that started the newest run). A run started with another fingerprint that has already done a step "
                "whose node changed or is gone would be refused by that build (DurableError::Incompatible); changes only in steps it has not reached are fine. "
                "It cannot tell about builds that have not run yet, nor a path the code now takes differently (Diverged): for that, run "
                code { "flow::durable::check" } " with the new build's registry."
            }
            p { (unfinished.len()) @if more { "+" } " unfinished run(s): " (same) " with the newest fingerprint, " (verdicts.len()) " with another." }
            @if !verdicts.is_empty() {
                table class="compat" {
                    thead { tr { th { "Run" } th { "Status" } th { "Fingerprint" } th { "Verdict for the newest graph" } } }
                    tbody {
                        @for (r, changed) in &verdicts {
                            tr class=(if changed.is_empty() { "ok" } else { "refused" }) {
                                td class="mono" { a href=(app.link(&format!("/runs/{}", path_segment(&r.id)))) { (r.id) } }
                                td { (badge(r.status)) }
                                td class="mono" { (format!("{:016x}", r.fingerprint)) }
                                td {
                                    @if changed.is_empty() { "resumable: the steps it did are unchanged" }
                                    @else { "could not resume: done step(s) " (changed.join(", ")) }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page(app, &format!("Workflow {name}"), body))
}
