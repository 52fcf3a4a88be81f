//! Helpers shared by the runtime's integration tests: hand-built graphs and flows (what the
//! macros generate), a scripted step that records when each attempt started, drop probes and a
//! timed log. Everything reads tokio's clock, so tests run on a paused clock.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use core::future::Future;
use core::time::Duration;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use flow_runtime::__private::Ctx;
use flow_runtime::graph::{Edge, EdgeKind, Node, NodeKind};
use flow_runtime::{Error, Event, Flow, Graph, NodeId, Workflow, WorkflowState};
use tokio::time::Instant;

/// The tests' workflow error type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum E {
    /// Retryable by the `is_busy` rules.
    Busy,
    /// Never retried by the `is_busy` rules.
    Broken,
    /// A map item that failed.
    Item(u32),
    /// A compensation that failed.
    Undo(&'static str),
}

impl core::fmt::Display for E {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            E::Busy => f.write_str("busy"),
            E::Broken => f.write_str("broken"),
            E::Item(i) => write!(f, "item {i} failed"),
            E::Undo(s) => write!(f, "undo of {s} failed"),
        }
    }
}

pub fn is_busy(e: &E) -> bool {
    matches!(e, E::Busy)
}

pub const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A graph named `name`: node 0 start, node 1 end, then `steps` as nodes 2, 3, ... in order,
/// joined by sequence edges. Leaked: tests build a few, and the runtime wants `&'static`.
pub fn graph(name: &'static str, steps: &[(&'static str, NodeKind)]) -> &'static Graph {
    let mut nodes = vec![
        Node {
            name: "start",
            key: "start",
            fingerprint: 0,
            kind: NodeKind::Start,
            policy: "",
            parent: None,
        },
        Node {
            name: "end",
            key: "end",
            fingerprint: 0,
            kind: NodeKind::End,
            policy: "",
            parent: None,
        },
    ];
    nodes.extend(steps.iter().map(|&(name, kind)| Node {
        name,
        key: name,
        fingerprint: 0,
        kind,
        policy: "",
        parent: None,
    }));
    let mut order: Vec<u32> = vec![0];
    order.extend(2..nodes.len() as u32);
    order.push(1);
    let edges: Vec<Edge> = order
        .windows(2)
        .map(|w| Edge {
            from: w[0],
            to: w[1],
            kind: EdgeKind::Sequence,
            label: "",
        })
        .collect();
    Box::leak(Box::new(Graph {
        name,
        nodes: Box::leak(nodes.into_boxed_slice()),
        edges: Box::leak(edges.into_boxed_slice()),
        fingerprint: 0,
    }))
}

/// [`graph`] with every node a plain step.
pub fn steps(name: &'static str, steps: &[&'static str]) -> &'static Graph {
    let with_kinds: Vec<_> = steps.iter().map(|&s| (s, NodeKind::Step)).collect();
    graph(name, &with_kinds)
}

/// The state enum of the hand-built flows: only the start state carries a value; the driver
/// moves through the other states by calling `Ctx` methods, as generated code does.
pub enum St<I> {
    Start(I),
}

impl<I> WorkflowState for St<I> {
    fn node(&self) -> NodeId {
        NodeId::START
    }
}

/// A flow over `graph` whose driver receives the input directly.
pub fn flow<In, Out, F, Fut>(
    graph: &'static Graph,
    timeout: Option<Duration>,
    driver: F,
) -> impl Workflow<Input = In, Output = Out, Error = E, State = St<In>> + 'static
where
    In: Send + 'static,
    Out: Send + 'static,
    F: Fn(Ctx<E>, In) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Out, Error<E>>> + Send,
{
    Flow::new(graph, St::Start, timeout, move |ctx: Ctx<E>, s: St<In>| {
        let St::Start(input) = s;
        driver(ctx, input)
    })
}

/// Awaits `f`, failing the test if it has not finished after a day of virtual time: on the
/// paused clock a run that would hang forever (nothing left to wake it) fails at once instead.
pub async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(24 * 3600), f)
        .await
        .expect("still pending after a day of virtual time")
}

/// What one attempt of a scripted step does.
#[derive(Clone, Debug)]
pub enum Act {
    Ok(u32),
    Err(E),
    /// Never completes.
    Hang,
    /// Panics with this message (a formatted, `String` payload).
    Panic(&'static str),
    /// Panics with a payload that is not a string.
    PanicAny,
    /// Sleeps this many milliseconds, then does the inner act.
    After(u64, Box<Act>),
}

pub fn after(ms: u64, act: Act) -> Act {
    Act::After(ms, Box::new(act))
}

struct ScriptInner {
    t0: Instant,
    acts: Vec<Act>,
    calls: AtomicUsize,
    starts: Mutex<Vec<Duration>>,
    dropped: AtomicUsize,
}

/// A step whose attempts follow a script (the last act repeats), recording the virtual time
/// each attempt started, how many attempts ran and how many were dropped before finishing.
#[derive(Clone)]
pub struct Script {
    inner: Arc<ScriptInner>,
}

impl Script {
    /// Times are measured from now.
    pub fn new(acts: impl Into<Vec<Act>>) -> Self {
        let acts = acts.into();
        assert!(!acts.is_empty());
        Script {
            inner: Arc::new(ScriptInner {
                t0: Instant::now(),
                acts,
                calls: AtomicUsize::new(0),
                starts: Mutex::new(Vec::new()),
                dropped: AtomicUsize::new(0),
            }),
        }
    }

    /// The future of one attempt.
    pub fn attempt(&self) -> impl Future<Output = Result<u32, E>> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        async move {
            let n = inner.calls.fetch_add(1, Ordering::SeqCst);
            inner.starts.lock().unwrap().push(inner.t0.elapsed());
            let mut act = inner
                .acts
                .get(n)
                .unwrap_or(inner.acts.last().unwrap())
                .clone();
            let mut wait = 0;
            while let Act::After(ms, next) = act {
                wait += ms;
                act = *next;
            }
            let guard = DropCount(&inner.dropped, true);
            if wait > 0 {
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            let out = match act {
                Act::Ok(v) => Ok(v),
                Act::Err(e) => Err(e),
                Act::Hang => core::future::pending().await,
                Act::Panic(msg) => panic!("{msg}"),
                Act::PanicAny => std::panic::panic_any(42_u8),
                Act::After(..) => unreachable!(),
            };
            guard.disarm();
            out
        }
    }

    /// How many attempts started.
    pub fn calls(&self) -> usize {
        self.inner.calls.load(Ordering::SeqCst)
    }

    /// When each attempt started, since the script was made.
    pub fn starts(&self) -> Vec<Duration> {
        self.inner.starts.lock().unwrap().clone()
    }

    /// How many attempts were dropped before they finished (timed out or cancelled).
    pub fn dropped(&self) -> usize {
        self.inner.dropped.load(Ordering::SeqCst)
    }
}

struct DropCount<'a>(&'a AtomicUsize, bool);

impl DropCount<'_> {
    fn disarm(mut self) {
        self.1 = false;
    }
}

impl Drop for DropCount<'_> {
    fn drop(&mut self) {
        // A panicking attempt is not "dropped": it finished, by panicking.
        if self.1 && !std::thread::panicking() {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A log of what happened and when (virtual milliseconds since the log was made).
#[derive(Clone)]
pub struct Log {
    t0: Instant,
    entries: Arc<Mutex<Vec<String>>>,
}

impl Default for Log {
    fn default() -> Self {
        Log::new()
    }
}

impl Log {
    pub fn new() -> Self {
        Log {
            t0: Instant::now(),
            entries: Arc::default(),
        }
    }

    /// Appends `"{what}"`.
    pub fn push(&self, what: impl Into<String>) {
        self.entries.lock().unwrap().push(what.into());
    }

    /// Appends `"{what} @{ms}"`, the virtual time in milliseconds.
    pub fn push_at(&self, what: &str) {
        let at = self.elapsed().as_millis();
        self.push(format!("{what} @{at}"));
    }

    pub fn elapsed(&self) -> Duration {
        self.t0.elapsed()
    }

    pub fn entries(&self) -> Vec<String> {
        self.entries.lock().unwrap().clone()
    }

    /// A guard that logs `"{name} dropped @{ms}"` if dropped before [`Probe::done`].
    pub fn probe(&self, name: &'static str) -> Probe {
        Probe {
            log: self.clone(),
            name,
            armed: true,
        }
    }
}

/// See [`Log::probe`].
pub struct Probe {
    log: Log,
    name: &'static str,
    armed: bool,
}

impl Probe {
    /// The guarded work finished: logs `"{name} done @{ms}"`.
    pub fn done(mut self) {
        self.armed = false;
        self.log.push_at(&format!("{} done", self.name));
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if self.armed {
            self.log.push_at(&format!("{} dropped", self.name));
        }
    }
}

/// An observer that keeps every event.
#[derive(Clone, Default)]
pub struct Collect(pub Arc<Mutex<Vec<Event>>>);

impl Collect {
    pub fn observer(&self) -> impl Fn(&Event) + Send + Sync + 'static {
        let events = Arc::clone(&self.0);
        move |e: &Event| events.lock().unwrap().push(e.clone())
    }

    pub fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }
}
