//! Seeing a run: the `tracing` spans and events (`TracingObserver`, checked with a small
//! hand-written subscriber), the timeline's Chrome trace-event JSON and Mermaid gantt
//! (`Timeline`), and the live progress lines (`ProgressObserver`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flow::prelude::*;
use flow::{ProgressObserver, Timeline, TracingObserver};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Metadata, Subscriber};

// ---------------------------------------------------------------- workflows under test

async fn first(n: u32) -> Result<u32, String> {
    // The user's own tracing inside a step lands in the step's span.
    tracing::info!(target: "user", n, "inside first");
    Ok(n + 1)
}

static FLAKY: AtomicU32 = AtomicU32::new(0);
/// Fails its first call (of each test that resets it).
async fn flaky(n: u32) -> Result<u32, String> {
    if FLAKY.fetch_add(1, Ordering::SeqCst) == 0 {
        Err("busy".into())
    } else {
        Ok(n * 2)
    }
}

static SLOW: AtomicU32 = AtomicU32::new(0);
/// Its first call outlives a 50 ms timeout.
async fn slow(n: u32) -> Result<u32, String> {
    if SLOW.fetch_add(1, Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(n)
}

async fn left(n: u32) -> Result<u32, String> {
    tokio::time::sleep(Duration::from_millis(30)).await;
    Ok(n)
}
async fn right(n: u32) -> Result<u32, String> {
    tokio::time::sleep(Duration::from_millis(20)).await;
    Ok(n)
}

#[workflow]
async fn traced(n: u32) -> Result<u32, String> {
    let a = first(n).await?;
    #[retry(max_attempts = 3, backoff = constant("10ms"))]
    let b = flaky(a).await?;
    #[retry(max_attempts = 2, on = timeouts)]
    #[timeout("50ms")]
    let c = slow(b).await?;
    let (x, y) = flow::join!(left(c), right(c)).await?;
    Ok(x + y)
}

async fn undo(_: u32) -> Result<(), String> {
    Ok(())
}
async fn boom(_: u32) -> Result<u32, String> {
    Err("boom".into())
}

#[workflow]
async fn undone(n: u32) -> Result<u32, String> {
    #[compensate(undo)]
    let a = first(n).await?;
    boom(a).await
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// The tests share the flaky steps' counters: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn reset() -> std::sync::MutexGuard<'static, ()> {
    let guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    FLAKY.store(0, Ordering::SeqCst);
    SLOW.store(0, Ordering::SeqCst);
    guard
}

// ---------------------------------------------------------------- a recording subscriber

#[derive(Debug, Clone, Default)]
struct SpanRec {
    name: &'static str,
    parent: Option<u64>,
    fields: HashMap<String, String>,
    closed: bool,
}

#[derive(Debug, Clone)]
struct EventRec {
    level: tracing::Level,
    target: String,
    parent: Option<u64>,
    fields: HashMap<String, String>,
}

#[derive(Default)]
struct Recorded {
    next: AtomicU64,
    spans: Mutex<HashMap<u64, SpanRec>>,
    events: Mutex<Vec<EventRec>>,
    /// Entered spans, innermost last (the tests run on one thread).
    entered: Mutex<Vec<u64>>,
}

#[derive(Clone, Default)]
struct Rec(Arc<Recorded>);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl Subscriber for Rec {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let id = self.0.next.fetch_add(1, Ordering::SeqCst) + 1;
        let mut rec = SpanRec {
            name: attrs.metadata().name(),
            // Explicit parents only: the observer never relies on the current span.
            parent: attrs.parent().map(Id::into_u64),
            ..SpanRec::default()
        };
        assert!(
            !attrs.is_contextual(),
            "span {} has no explicit parent",
            rec.name
        );
        attrs.record(&mut Fields(&mut rec.fields));
        self.0.spans.lock().unwrap().insert(id, rec);
        Id::from_u64(id)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut spans = self.0.spans.lock().unwrap();
        let rec = spans.get_mut(&span.into_u64()).unwrap();
        values.record(&mut Fields(&mut rec.fields));
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = HashMap::new();
        event.record(&mut Fields(&mut fields));
        // An explicit parent, or else the span entered now (a contextual event).
        let parent = match event.parent() {
            Some(p) => Some(p.into_u64()),
            None if event.is_contextual() => self.0.entered.lock().unwrap().last().copied(),
            None => None,
        };
        self.0.events.lock().unwrap().push(EventRec {
            level: *event.metadata().level(),
            target: event.metadata().target().to_owned(),
            parent,
            fields,
        });
    }
    fn enter(&self, id: &Id) {
        self.0.entered.lock().unwrap().push(id.into_u64());
    }
    fn exit(&self, id: &Id) {
        let mut entered = self.0.entered.lock().unwrap();
        if let Some(pos) = entered.iter().rposition(|e| *e == id.into_u64()) {
            entered.remove(pos);
        }
    }
    fn try_close(&self, id: Id) -> bool {
        if let Some(s) = self.0.spans.lock().unwrap().get_mut(&id.into_u64()) {
            s.closed = true;
        }
        true
    }
}

// ---------------------------------------------------------------- tracing

/// What a run of `workflow` recorded: its result, and the spans and events a fresh recording
/// subscriber saw, the run made on a paused clock by a runtime with only a `TracingObserver`
/// (`default()`: no built-in observers; `new()` may add a `TracingObserver` itself).
type RunTrace<T, E> = (
    Result<T, flow::Error<E>>,
    HashMap<u64, SpanRec>,
    Vec<EventRec>,
);

fn traced_run<W: Workflow>(workflow: &W, input: W::Input) -> RunTrace<W::Output, W::Error> {
    let rec = Rec::default();
    let out = tracing::subscriber::with_default(rec.clone(), || {
        paused_runtime().block_on(async {
            Runtime::default()
                .with_observer(TracingObserver::new())
                .run(workflow, input)
                .await
        })
    });
    let spans = rec.0.spans.lock().unwrap().clone();
    let events = rec.0.events.lock().unwrap().clone();
    (out, spans, events)
}

/// The span of step `name` (the only one: the tests' steps run once) and its id.
fn step_span<'a>(spans: &'a HashMap<u64, SpanRec>, name: &str) -> (u64, &'a SpanRec) {
    spans
        .iter()
        .find(|(_, s)| s.name == "step" && s.fields["flow.step"] == name)
        .map(|(id, s)| (*id, s))
        .unwrap_or_else(|| panic!("a span for {name}: {spans:?}"))
}

#[test]
fn tracing_spans_nest_workflow_step_with_otel_fields() {
    let _serial = reset();
    let rec = Rec::default();
    let out = tracing::subscriber::with_default(rec.clone(), || {
        // Only when a subscriber wants `flow`'s spans does the runtime get the observer.
        assert_eq!(flow::__private::default_observers().len(), 1);
        paused_runtime().block_on(async {
            // `default()`: no built-in observers (`new()` may add a `TracingObserver` itself).
            Runtime::default()
                .with_observer(TracingObserver::new())
                .run(&Traced, (1,))
                .await
        })
    });
    assert_eq!(out.unwrap(), 8);
    assert!(
        flow::__private::default_observers().is_empty(),
        "no subscriber, no observer"
    );

    let spans = rec.0.spans.lock().unwrap().clone();
    let events = rec.0.events.lock().unwrap().clone();
    let (&wf_id, wf) = spans.iter().find(|(_, s)| s.name == "workflow").unwrap();
    assert_eq!(wf.parent, None);
    assert_eq!(wf.fields["otel.name"], "Traced");
    assert_eq!(wf.fields["flow.workflow"], "Traced");
    assert!(wf.fields["flow.run_id"].parse::<u64>().is_ok());
    assert_eq!(wf.fields["flow.status"], "completed");
    assert_eq!(wf.fields["otel.status_code"], "OK");

    let mut steps: Vec<(u64, &SpanRec)> = spans
        .iter()
        .filter(|(_, s)| s.name == "step")
        .map(|(id, s)| (*id, s))
        .collect();
    steps.sort_by_key(|(id, _)| *id);
    let names: Vec<&str> = steps
        .iter()
        .map(|(_, s)| s.fields["flow.step"].as_str())
        .collect();
    assert_eq!(names, ["first", "flaky", "slow", "left", "right"]);
    for (_, s) in &steps {
        assert_eq!(s.parent, Some(wf_id), "step > workflow");
        assert_eq!(s.fields["otel.name"], s.fields["flow.step"]);
        assert_eq!(s.fields["otel.status_code"], "OK");
        assert_eq!(s.fields["flow.run_id"], wf.fields["flow.run_id"]);
        assert!(s.closed, "{} closed", s.fields["flow.step"]);
    }
    assert!(wf.closed);
    let span_of = |step: &str| {
        steps
            .iter()
            .find(|(_, s)| s.fields["flow.step"] == step)
            .unwrap()
    };
    assert_eq!(span_of("flaky").1.fields["flow.attempt"], "2");
    assert_eq!(span_of("first").1.fields["flow.attempt"], "1");

    // The retry of `flaky` and the timeout of `slow` are events inside their step's span.
    let retry = events
        .iter()
        .find(|e| e.parent == Some(span_of("flaky").0) && e.level == tracing::Level::WARN)
        .expect("a retry event for flaky");
    assert_eq!(retry.target, "flow");
    assert_eq!(retry.fields["flow.attempt"], "1");
    assert_eq!(retry.fields["flow.failure"], "error");
    assert_eq!(retry.fields["error.message"], "busy");
    assert_eq!(retry.fields["flow.retry_in_ms"], "10.0");
    let timeout = events
        .iter()
        .find(|e| e.parent == Some(span_of("slow").0) && e.level == tracing::Level::WARN)
        .expect("a timeout event for slow");
    assert_eq!(timeout.fields["flow.failure"], "timeout");
    assert!(
        timeout.fields["message"].contains("timed out"),
        "{timeout:?}"
    );
    assert!(
        events.iter().all(|e| e.parent.is_some()),
        "every event has a parent span"
    );
    // The runtime enters the step's span while polling the step: the user's event inside
    // `first` is a child of `first`'s span, not of the workflow or of nothing.
    let user = events
        .iter()
        .find(|e| e.target == "user")
        .expect("the user's event inside the step");
    assert_eq!(user.parent, Some(span_of("first").0));
    assert_eq!(user.fields["n"], "1");
}

#[test]
fn tracing_reports_failure_and_compensation() {
    let _serial = reset();
    let (out, spans, events) = traced_run(&Undone, (1,));
    assert!(out.is_err());
    let (&wf_id, wf) = spans.iter().find(|(_, s)| s.name == "workflow").unwrap();
    assert_eq!(wf.fields["flow.status"], "failed");
    assert_eq!(wf.fields["otel.status_code"], "ERROR");
    assert!(wf.fields["error.message"].contains("boom"));
    let boom = spans
        .values()
        .find(|s| s.name == "step" && s.fields["flow.step"] == "boom")
        .unwrap();
    assert_eq!(boom.fields["otel.status_code"], "ERROR");
    assert_eq!(boom.fields["error.message"], "boom");
    let messages: Vec<&str> = events
        .iter()
        .filter(|e| e.parent == Some(wf_id))
        .map(|e| e.fields["message"].as_str())
        .collect();
    assert!(messages.contains(&"compensating first"), "{messages:?}");
    assert!(messages.contains(&"compensated first"), "{messages:?}");
    assert!(messages.contains(&"run failed"), "{messages:?}");
}

async fn pair(n: u32) -> Result<Vec<u32>, String> {
    Ok(vec![n, n + 1])
}

/// Item 1 ends first, with success; item 0 ends 10 ms later, with an error.
async fn settle_item(i: u32) -> Result<u32, String> {
    if i == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Err(format!("item {i} is down"))
    } else {
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok(i)
    }
}

#[workflow]
async fn item_child(i: u32) -> Result<u32, String> {
    settle_item(i).await
}

/// Fails 10 ms after `right` succeeds.
async fn late_fail(_: u32) -> Result<u32, String> {
    tokio::time::sleep(Duration::from_millis(30)).await;
    Err("late".into())
}

#[workflow]
async fn split(n: u32) -> Result<u32, String> {
    let (x, y) = flow::join!(late_fail(n), right(n)).await?;
    Ok(x + y)
}

/// Two items of one `map` in flight at once, each running a child workflow, ending out of
/// order: each item's step span is closed by its own item's end (item 1's success does not
/// close item 0's span), and each child's workflow span is a child of its own item's step
/// span (not of the run's, nor of the other item's). The same for two branches of a
/// `join!` (two nodes, outside any map item).
#[test]
fn tracing_keeps_the_spans_of_concurrent_steps_apart() {
    let _serial = reset();
    let (out, spans, _) = traced_run(&flow! { pair -> map(item_child, concurrency = 2) }, 0);
    assert!(out.is_err(), "item 0 fails the run");
    let item_span = |i: &str| {
        let found: Vec<(u64, &SpanRec)> = spans
            .iter()
            .filter(|(_, s)| {
                s.name == "step" && s.fields.get("flow.item").map(String::as_str) == Some(i)
            })
            .map(|(id, s)| (*id, s))
            .collect();
        assert_eq!(found.len(), 1, "one step span for item {i}: {spans:?}");
        found[0]
    };
    let (item0, s0) = item_span("0");
    let (item1, s1) = item_span("1");
    assert_eq!(s0.fields["otel.status_code"], "ERROR", "{s0:?}");
    assert!(
        s0.fields["error.message"].contains("item 0 is down"),
        "{s0:?}"
    );
    assert_eq!(s1.fields["otel.status_code"], "OK", "{s1:?}");
    assert!(!s1.fields.contains_key("error.message"), "{s1:?}");

    let child = |status: &str| {
        spans
            .values()
            .find(|s| {
                s.name == "workflow"
                    && s.fields.contains_key("flow.parent_run_id")
                    && s.fields.get("flow.status").map(String::as_str) == Some(status)
            })
            .unwrap_or_else(|| panic!("a {status} child run: {spans:?}"))
    };
    assert_eq!(child("failed").parent, Some(item0), "item 0's child");
    assert_eq!(child("completed").parent, Some(item1), "item 1's child");

    let (out, spans, _) = traced_run(&Split, (1,));
    assert!(out.is_err(), "late_fail fails the run");
    let (late, right) = (
        step_span(&spans, "late_fail").1,
        step_span(&spans, "right").1,
    );
    assert_eq!(late.fields["otel.status_code"], "ERROR", "{late:?}");
    assert_eq!(late.fields["error.message"], "late", "{late:?}");
    assert_eq!(right.fields["otel.status_code"], "OK", "{right:?}");
    assert!(late.closed && right.closed);
}

static SLOW_RETRY: AtomicU32 = AtomicU32::new(0);
static FAST_RETRY: AtomicU32 = AtomicU32::new(0);

/// Fails its first attempt at once (its retry waits 50 ms), then succeeds.
async fn slow_retry(n: u32) -> Result<u32, String> {
    if SLOW_RETRY.fetch_add(1, Ordering::SeqCst) == 0 {
        return Err("slow busy".into());
    }
    Ok(n)
}

/// Fails its first attempt after 10 ms (its retry waits 10 ms, while `slow_retry` still
/// waits for its own), then succeeds.
async fn fast_retry(n: u32) -> Result<u32, String> {
    if FAST_RETRY.fetch_add(1, Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        return Err("fast busy".into());
    }
    Ok(n)
}

#[workflow]
async fn retry_together(n: u32) -> Result<u32, String> {
    let (x, y) = flow::join!(
        #[retry(max_attempts = 2, backoff = constant("50ms"))]
        slow_retry(n),
        #[retry(max_attempts = 2, backoff = constant("10ms"))]
        fast_retry(n),
    )
    .await?;
    Ok(x + y)
}

/// Two steps waiting to retry at once: each retry's start is recorded in its own step's span
/// (not in the first waiting span found), and each span is closed by its own success.
#[test]
fn tracing_puts_each_retry_in_its_own_steps_span() {
    let _serial = reset();
    SLOW_RETRY.store(0, Ordering::SeqCst);
    FAST_RETRY.store(0, Ordering::SeqCst);
    let (out, spans, events) = traced_run(&RetryTogether, (1,));
    assert_eq!(out.unwrap(), 2);
    for name in ["slow_retry", "fast_retry"] {
        let (id, span) = step_span(&spans, name);
        assert_eq!(span.fields["flow.attempt"], "2", "{span:?}");
        assert_eq!(span.fields["otel.status_code"], "OK", "{span:?}");
        assert!(span.closed, "{span:?}");
        let started: Vec<&EventRec> = events
            .iter()
            .filter(|e| {
                e.fields.get("message").map(String::as_str) == Some("retry: attempt 2 started")
                    && e.fields.get("flow.step").map(String::as_str) == Some(name)
            })
            .collect();
        assert_eq!(started.len(), 1, "{name}: {events:?}");
        assert_eq!(
            started[0].parent,
            Some(id),
            "{name}'s retry in its own span"
        );
    }
}

static QUICK_RETRY: AtomicU32 = AtomicU32::new(0);

/// Succeeds on its first attempt, after 50 ms.
async fn long_ok(n: u32) -> Result<u32, String> {
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(n)
}

/// Fails its first attempt after 10 ms, while `long_ok` is in flight; succeeds on the second.
async fn quick_retry(n: u32) -> Result<u32, String> {
    tokio::time::sleep(Duration::from_millis(10)).await;
    if QUICK_RETRY.fetch_add(1, Ordering::SeqCst) == 0 {
        return Err("quick busy".into());
    }
    Ok(n)
}

/// Fails for good after 10 ms, while `long_ok` is in flight.
async fn quick_fail(_: u32) -> Result<u32, String> {
    tokio::time::sleep(Duration::from_millis(10)).await;
    Err("quick down".into())
}

#[workflow]
async fn retry_beside(n: u32) -> Result<u32, String> {
    let (x, y) = flow::join!(
        long_ok(n),
        #[retry(max_attempts = 2, backoff = constant("5ms"))]
        quick_retry(n),
    )
    .await?;
    Ok(x + y)
}

#[workflow]
async fn fail_beside(n: u32) -> Result<u32, String> {
    let (x, y) = flow::settle!(long_ok(n), quick_fail(n)).await;
    Ok(x.unwrap_or(0) + y.unwrap_or(0))
}

/// A step that fails (and retries, or gives up) while another of its group, started before
/// it, is still on its first attempt: the failure is recorded in the failing step's span, and
/// the other step's span is left alone until its own success.
#[test]
fn tracing_records_a_failure_in_the_span_of_the_step_that_failed() {
    let _serial = reset();
    QUICK_RETRY.store(0, Ordering::SeqCst);
    let (out, spans, events) = traced_run(&RetryBeside, (1,));
    assert_eq!(out.unwrap(), 2);
    let (_, long) = step_span(&spans, "long_ok");
    assert_eq!(long.fields["flow.attempt"], "1", "{long:?}");
    assert_eq!(long.fields["otel.status_code"], "OK", "{long:?}");
    let (quick_id, quick) = step_span(&spans, "quick_retry");
    assert_eq!(quick.fields["flow.attempt"], "2", "{quick:?}");
    assert_eq!(quick.fields["otel.status_code"], "OK", "{quick:?}");
    let retry = events
        .iter()
        .find(|e| e.level == tracing::Level::WARN)
        .expect("the retry's warning");
    assert_eq!(retry.parent, Some(quick_id), "{retry:?}");
    assert_eq!(retry.fields["error.message"], "quick busy");

    let (out, spans, _) = traced_run(&FailBeside, (1,));
    assert_eq!(out.unwrap(), 1);
    let (_, long) = step_span(&spans, "long_ok");
    assert_eq!(long.fields["otel.status_code"], "OK", "{long:?}");
    assert!(!long.fields.contains_key("error.message"), "{long:?}");
    let (_, quick) = step_span(&spans, "quick_fail");
    assert_eq!(quick.fields["otel.status_code"], "ERROR", "{quick:?}");
    assert_eq!(quick.fields["error.message"], "quick down", "{quick:?}");
}

async fn reporting(n: u32) -> Result<u32, String> {
    let c = flow::step_context().expect("inside a step");
    c.report_progress((0.5, "halfway"));
    Ok(n)
}

#[workflow]
async fn reports(n: u32) -> Result<u32, String> {
    reporting(n).await
}

#[test]
fn tracing_shows_a_steps_progress_inside_its_span() {
    let _serial = reset();
    let (out, spans, events) = traced_run(&Reports, (1,));
    assert_eq!(out.unwrap(), 1);
    let (&step_id, _) = spans
        .iter()
        .find(|(_, s)| s.name == "step" && s.fields["flow.step"] == "reporting")
        .unwrap();
    let progress = events
        .iter()
        .find(|e| e.fields.get("message").is_some_and(|m| m == "progress"))
        .expect("a progress event");
    assert_eq!(progress.parent, Some(step_id));
    assert_eq!(progress.target, "flow");
    assert_eq!(progress.fields["flow.progress"], "0.5");
    assert_eq!(progress.fields["flow.message"], "halfway");
    assert_eq!(progress.fields["flow.attempt"], "1");
}

static STORED_FLAKY: AtomicU32 = AtomicU32::new(0);
/// Says where it runs (a `user` event with its attempt), and fails its first call.
async fn stored_flaky(n: u32) -> Result<u32, String> {
    let call = STORED_FLAKY.fetch_add(1, Ordering::SeqCst) + 1;
    tracing::info!(target: "user", call, "inside stored_flaky");
    if call == 1 {
        Err("busy".into())
    } else {
        Ok(n + 1)
    }
}

/// A durable workflow's retried step without a timeout: its attempts run through the
/// general loop (`step_with`) with no deadline, the path an observed run polls inside the
/// step's span and an unobserved one polls as it is.
#[workflow(durable)]
async fn stored_traced(n: u32) -> Result<u32, String> {
    #[retry(max_attempts = 2, backoff = constant("10ms"))]
    let a = stored_flaky(n).await?;
    Ok(a)
}

#[test]
fn tracing_puts_a_durable_retried_steps_own_events_in_its_span() {
    let _serial = reset();
    STORED_FLAKY.store(0, Ordering::SeqCst);
    let rec = Rec::default();
    let out = tracing::subscriber::with_default(rec.clone(), || {
        paused_runtime().block_on(async {
            let runtime = Runtime::default()
                .with_observer(TracingObserver::new())
                .with_store(flow::store::MemoryStore::new());
            runtime
                .start(StoredTraced, "traced-1", (1,))
                .await
                .expect("started")
                .wait()
                .await
        })
    });
    assert_eq!(out.unwrap(), 2);
    let spans = rec.0.spans.lock().unwrap().clone();
    let events = rec.0.events.lock().unwrap().clone();
    let (&step_id, step) = spans
        .iter()
        .find(|(_, s)| s.name == "step" && s.fields["flow.step"] == "stored_flaky")
        .unwrap();
    assert_eq!(step.fields["otel.status_code"], "OK");
    let user: Vec<(&str, Option<u64>)> = events
        .iter()
        .filter(|e| e.target == "user")
        .map(|e| (e.fields["call"].as_str(), e.parent))
        .collect();
    // Both attempts are polled inside the step's span.
    assert_eq!(user, [("1", Some(step_id)), ("2", Some(step_id))]);
}

async fn scripted_away(n: u32) -> Result<u32, String> {
    Ok(n)
}

#[workflow]
async fn scripted_first(n: u32) -> Result<u32, String> {
    scripted_away(n).await
}

/// The observer hands the span of a starting step to the runtime through a per-thread slot,
/// which only an observed run reads. A scripted attempt (`flow::testing`) is never polled, so
/// its step's span stays in the slot; an unobserved run on the same thread must not enter it.
#[test]
fn an_unobserved_run_does_not_enter_a_span_another_run_left() {
    let _serial = reset();
    STORED_FLAKY.store(0, Ordering::SeqCst);
    let rec = Rec::default();
    let out = tracing::subscriber::with_default(rec.clone(), || {
        paused_runtime().block_on(async {
            let scripted = flow::testing::Harness::new()
                .with_runtime(Runtime::default().with_observer(TracingObserver::new()))
                .script(
                    "scripted_away",
                    [flow::testing::Outcome::Fail("no".to_string())],
                )
                .run(&ScriptedFirst, (1,))
                .await;
            assert!(scripted.result.is_err());
            // No observer: the run makes no spans and enters none.
            Runtime::default()
                .with_store(flow::store::MemoryStore::new())
                .start(StoredTraced, "plain-1", (1,))
                .await
                .expect("started")
                .wait()
                .await
        })
    });
    assert_eq!(out.unwrap(), 2);
    let events = rec.0.events.lock().unwrap().clone();
    let user: Vec<(&str, Option<u64>)> = events
        .iter()
        .filter(|e| e.target == "user")
        .map(|e| (e.fields["call"].as_str(), e.parent))
        .collect();
    assert_eq!(user, [("1", None), ("2", None)]);
}

// ---------------------------------------------------------------- timeline

/// Checks `json` against the trace-event format: the required fields, a matching `E` for
/// every `B` on its track (properly nested), timestamps in order. Returns the `B` events.
fn check_trace_events(json: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(json).expect("valid JSON");
    let events = v["traceEvents"].as_array().expect("traceEvents array");
    let mut last_ts = 0.0;
    let mut open: HashMap<u64, Vec<f64>> = HashMap::new();
    let mut begins = Vec::new();
    for e in events {
        let ph = e["ph"].as_str().expect("ph");
        assert!(e["pid"].is_u64() && e["tid"].is_u64(), "pid/tid: {e}");
        if ph == "M" {
            assert!(
                e["name"].is_string() && e["args"]["name"].is_string(),
                "{e}"
            );
            continue;
        }
        let ts = e["ts"].as_f64().expect("ts");
        assert!(ts >= last_ts, "timestamps in order: {e}");
        last_ts = ts;
        let tid = e["tid"].as_u64().unwrap();
        match ph {
            "B" => {
                assert!(e["name"].is_string() && e["cat"].is_string(), "{e}");
                open.entry(tid).or_default().push(ts);
                begins.push(e.clone());
            }
            "E" => {
                let start = open
                    .get_mut(&tid)
                    .and_then(Vec::pop)
                    .unwrap_or_else(|| panic!("E without B: {e}"));
                assert!(ts >= start);
            }
            "i" => assert!(e["name"].is_string()),
            other => panic!("unexpected phase {other}"),
        }
    }
    for (tid, stack) in open {
        assert!(stack.is_empty(), "track {tid}: B without E");
    }
    begins
}

#[test]
fn timeline_exports_trace_events_and_gantt() {
    let _serial = reset();
    let timeline = Timeline::new();
    let out = paused_runtime().block_on(async {
        Runtime::new()
            .with_observer(timeline.clone())
            .run(&Traced, (1,))
            .await
    });
    assert_eq!(out.unwrap(), 8);
    let json = timeline.to_chrome_trace();
    let begins = check_trace_events(&json);
    let find = |name: &str| {
        begins
            .iter()
            .find(|b| b["name"] == name)
            .unwrap_or_else(|| panic!("no slice {name} in {json}"))
    };
    // Retries: one slice per attempt, and the backoff between, under the step.
    let flaky = find("flaky");
    assert_eq!(flaky["args"]["attempt"], 2);
    assert_eq!(find("flaky #1")["args"]["outcome"], "failed");
    assert_eq!(find("flaky #1")["args"]["error"], "busy");
    assert_eq!(find("flaky #2")["args"]["outcome"], "ok");
    assert_eq!(find("flaky #1")["tid"], flaky["tid"]);
    assert_eq!(find("backoff before flaky #2")["ts"], 0);
    assert_eq!(find("flaky #2")["ts"], 10_000);
    assert_eq!(find("slow #1")["args"]["error"], "timed out after 50ms");
    // Parallel branches on tracks of their own; times on the paused clock, in µs.
    let (l, r) = (find("left"), find("right"));
    assert_ne!(l["tid"], r["tid"]);
    assert_eq!(l["ts"], r["ts"]);
    let run = begins.iter().find(|b| b["cat"] == "workflow").unwrap();
    assert!(run["name"].as_str().unwrap().starts_with("Traced run-"));
    assert_eq!(
        run["tid"], flaky["tid"],
        "sequential steps sit under their run"
    );

    let gantt = timeline.to_mermaid_gantt();
    assert!(gantt.starts_with("gantt\n"), "{gantt}");
    assert!(gantt.contains("    section Traced run-"), "{gantt}");
    assert!(gantt.contains("    flaky attempt 1 :crit, "), "{gantt}");
    assert!(gantt.contains("    flaky attempt 2 :done, "), "{gantt}");
    assert!(gantt.contains("    left :done, "), "{gantt}");
}

#[test]
fn timeline_of_a_failed_run_shows_the_failure_and_the_compensation() {
    let _serial = reset();
    let timeline = Timeline::new();
    let out = paused_runtime().block_on(async {
        Runtime::new()
            .with_observer(timeline.clone())
            .run(&Undone, (1,))
            .await
    });
    assert!(out.is_err());
    let begins = check_trace_events(&timeline.to_chrome_trace());
    let outcome = |name: &str| {
        begins
            .iter()
            .find(|b| b["name"] == name)
            .map(|b| b["args"]["outcome"].clone())
    };
    assert_eq!(outcome("boom").unwrap(), "failed");
    assert_eq!(outcome("compensate first").unwrap(), "ok");
    assert!(timeline.to_mermaid_gantt().contains("boom :crit, "));
}

#[test]
fn json_strings_are_escaped() {
    let _serial = reset();
    async fn quote(_: u32) -> Result<u32, String> {
        Err("a \"quoted\"\nline \\ \u{1}".into())
    }
    #[workflow]
    async fn quoting(n: u32) -> Result<u32, String> {
        quote(n).await
    }
    let timeline = Timeline::new();
    let _ = paused_runtime().block_on(
        Runtime::new()
            .with_observer(timeline.clone())
            .run(&Quoting, (1,)),
    );
    let begins = check_trace_events(&timeline.to_chrome_trace());
    let q = begins.iter().find(|b| b["name"] == "quote").unwrap();
    assert_eq!(q["args"]["error"], "a \"quoted\"\nline \\ \u{1}");
}

// ---------------------------------------------------------------- live progress

#[test]
fn progress_lines_follow_the_run() {
    let _serial = reset();
    let progress = ProgressObserver::hidden().with_graph(Traced::GRAPH);
    let out = paused_runtime().block_on(async {
        Runtime::new()
            .with_observer(progress.clone())
            .run(&Traced, (1,))
            .await
    });
    assert_eq!(out.unwrap(), 8);
    let lines = progress.lines();
    let line = |step: &str| {
        lines
            .iter()
            .find(|l| l.trim_start().starts_with(step))
            .unwrap_or_else(|| panic!("no line for {step}: {lines:#?}"))
    };
    assert!(
        lines[0].starts_with("Traced run-") && lines[0].contains("completed in"),
        "{lines:#?}"
    );
    assert!(line("first").contains("done in 0.00s"), "{lines:#?}");
    assert!(
        line("flaky").contains("done in 0.01s (attempt 2)"),
        "{lines:#?}"
    );
    assert!(line("slow").contains("(attempt 2)"), "{lines:#?}");
    assert!(line("left").contains("done in 0.03s"), "{lines:#?}");
}
