//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use flow::{Event, EventKind};

/// The error type of most test workflows.
#[derive(Debug, Clone, PartialEq)]
pub enum TestError {
    Busy,
    Broken(String),
}

impl std::fmt::Display for TestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TestError::Busy => f.write_str("busy"),
            TestError::Broken(s) => write!(f, "broken: {s}"),
        }
    }
}

/// An observer that records every event.
#[derive(Clone, Default)]
pub struct Recorder(pub Arc<Mutex<Vec<Event>>>);

impl Recorder {
    pub fn observer(&self) -> impl Fn(&Event) + Send + Sync + 'static {
        let log = Arc::clone(&self.0);
        move |e: &Event| log.lock().unwrap().push(e.clone())
    }

    pub fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }

    /// `step:kind` strings, without timings, for order checks.
    pub fn trace(&self) -> Vec<String> {
        self.events().iter().map(short).collect()
    }
}

pub fn short(e: &Event) -> String {
    let kind = match &e.kind {
        EventKind::RunStarted => "run-started".to_owned(),
        EventKind::Entered => "entered".to_owned(),
        EventKind::AttemptStarted { attempt } => format!("attempt-{attempt}"),
        EventKind::AttemptFailed {
            attempt, retry_in, ..
        } => {
            format!(
                "attempt-{attempt}-failed{}",
                if retry_in.is_some() { "-retrying" } else { "" }
            )
        }
        EventKind::StepSucceeded { .. } => "ok".to_owned(),
        EventKind::StepFailed { .. } => "failed".to_owned(),
        EventKind::Caught { .. } => "caught".to_owned(),
        EventKind::Progress { .. } => "progress".to_owned(),
        EventKind::CompensationStarted => "compensating".to_owned(),
        EventKind::CompensationSucceeded => "compensated".to_owned(),
        EventKind::CompensationFailed { .. } => "compensation-failed".to_owned(),
        EventKind::RunCompleted => "run-completed".to_owned(),
        EventKind::RunFailed { .. } => "run-failed".to_owned(),
        EventKind::RunCancelled => "run-cancelled".to_owned(),
        EventKind::ObserverPanicked { .. } => "observer-panicked".to_owned(),
        EventKind::SignalWaiting { name } => format!("waiting-{name}"),
        EventKind::SignalReceived { name } => format!("received-{name}"),
    };
    format!("{}:{kind}", e.step)
}

/// Records that it was dropped (a step future cancelled mid-flight).
pub struct DropFlag(pub Arc<std::sync::atomic::AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Compares `actual` with the golden file `tests/golden/{name}`; `FLOW_GOLDEN=overwrite`
/// rewrites it instead. `test` names the test target, for the message.
pub fn golden(test: &str, name: &str, actual: &str) {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var("FLOW_GOLDEN").is_ok_and(|v| v == "overwrite") {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run `FLOW_GOLDEN=overwrite cargo test --test {test}` to create it",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{} differs from the rendering (FLOW_GOLDEN=overwrite cargo test --test {test} to accept it):\n{actual}",
        path.display()
    );
}
