//! Live progress in the terminal (cargo feature `progress`): [`ProgressObserver`] draws each
//! run as it happens with `indicatif`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use crate::event::{Event, EventKind, Observer, RunId};
use crate::graph::{Graph, NodeKind};

/// An [`Observer`] that draws runs live in the terminal: a line per run and per step, each
/// step pending, running (with a spinner and its elapsed time), retrying (the delay and the
/// last failure), done (its time) or failed, and compensations as they run.
///
/// Steps appear as they start; register a workflow's graph with
/// [`with_graph`](Self::with_graph) to list all its steps as pending from the start (steps
/// that never ran are shown as skipped at the end). A step that runs several times at once
/// (the body of a `map`) has one line with its counts.
///
/// It draws on standard output, and draws nothing when that is not a terminal. Print your own
/// lines with [`println`](Self::println) while it draws, so they appear above the bars.
///
/// ```
/// use flow_runtime::{ProgressObserver, Runtime};
/// let progress = ProgressObserver::new();
/// let runtime = Runtime::new().with_observer(progress.clone());
/// progress.println("starting");
/// # let _ = runtime;
/// ```
#[derive(Clone)]
pub struct ProgressObserver {
    inner: Arc<Inner>,
}

struct Inner {
    multi: MultiProgress,
    graphs: Mutex<Vec<&'static Graph>>,
    runs: Mutex<HashMap<RunId, RunLines>>,
    /// Finished runs, oldest first: only the last [`KEPT_FINISHED`] stay listed.
    finished: Mutex<std::collections::VecDeque<RunId>>,
}

/// How many finished runs stay listed (and in memory).
const KEPT_FINISHED: usize = 64;

struct RunLines {
    header: ProgressBar,
    started: Instant,
    depth: usize,
    lines: Vec<Line>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Pending,
    Running,
    Retrying,
    Done,
    Failed,
    Compensating,
    Compensated,
    CompensationFailed,
    Skipped,
}

struct Line {
    node: u32,
    /// The executions of this step in flight, by (iteration, map item) (see [`Event`]).
    in_flight: Vec<(u32, Option<u32>)>,
    bar: ProgressBar,
    state: State,
    running: u32,
    done: u32,
    /// Executions that failed.
    failed: u32,
    attempt: u32,
    started: Option<Instant>,
    elapsed: Duration,
    note: String,
    /// `note` is what the step last reported (`StepContext::report_progress`).
    progress_note: bool,
}

impl core::fmt::Debug for ProgressObserver {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ProgressObserver").finish_non_exhaustive()
    }
}

impl Default for ProgressObserver {
    fn default() -> Self {
        ProgressObserver::new()
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .with_key("t", |s: &ProgressState, w: &mut dyn core::fmt::Write| {
            let _ = write!(w, "{:.1}s", s.elapsed().as_secs_f64());
        })
        .tick_strings(&["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏", "✔"])
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

impl ProgressObserver {
    /// Draws on standard output (nothing when it is not a terminal).
    pub fn new() -> Self {
        ProgressObserver::with_draw_target(ProgressDrawTarget::stdout())
    }

    /// Draws nothing: the state is kept for [`lines`](Self::lines) (tests, logs).
    pub fn hidden() -> Self {
        ProgressObserver::with_draw_target(ProgressDrawTarget::hidden())
    }

    /// Draws on `target`.
    pub fn with_draw_target(target: ProgressDrawTarget) -> Self {
        ProgressObserver {
            inner: Arc::new(Inner {
                multi: MultiProgress::with_draw_target(target),
                graphs: Mutex::new(Vec::new()),
                runs: Mutex::new(HashMap::new()),
                finished: Mutex::new(std::collections::VecDeque::new()),
            }),
        }
    }

    /// Registers a workflow's graph: its runs list every step as pending from the start.
    pub fn with_graph(self, graph: &'static Graph) -> Self {
        lock(&self.inner.graphs).push(graph);
        self
    }

    /// Prints a line above the progress lines (or plainly, when nothing is drawn).
    pub fn println(&self, line: impl AsRef<str>) {
        if self.inner.multi.is_hidden() {
            println!("{}", line.as_ref());
        } else {
            let _ = self.inner.multi.println(line);
        }
    }

    /// The progress lines of the runs in flight or finished, as text without colours (what
    /// each line says, for tests and logs): `"  wait_up  retrying in 400ms (attempt 1 failed: ..)"`.
    pub fn lines(&self) -> Vec<String> {
        let runs = lock(&self.inner.runs);
        let mut ids: Vec<&RunId> = runs.keys().collect();
        ids.sort();
        let mut out = Vec::new();
        for id in ids {
            let r = &runs[id];
            out.push(format!("{} {}", r.header.prefix(), r.header.message()));
            for l in &r.lines {
                out.push(format!("{} {}", l.bar.prefix(), l.describe()));
            }
        }
        out
    }

    fn on(&self, e: &Event) {
        let mut runs = lock(&self.inner.runs);
        if let EventKind::RunStarted = e.kind {
            let depth = e
                .parent
                .and_then(|p| runs.get(&p))
                .map_or(0, |r| r.depth + 1);
            let pad = "  ".repeat(depth);
            let header = self.inner.multi.add(ProgressBar::new_spinner());
            header.set_style(style("{prefix:.bold} {spinner:.cyan} {msg} {t:.dim}"));
            header.set_prefix(format!("{pad}{} {}", e.workflow, e.run));
            header.set_message("running");
            header.enable_steady_tick(Duration::from_millis(100));
            let mut lines = Vec::new();
            let graph = lock(&self.inner.graphs)
                .iter()
                .copied()
                .find(|g| g.name == e.workflow);
            if let Some(g) = graph {
                for (id, n) in g.steps() {
                    let indent = if n.parent.is_some() { "  " } else { "" };
                    let label = if n.kind == NodeKind::Recovery {
                        format!("{indent}{} (recovery)", n.name)
                    } else {
                        format!("{indent}{}", n.name)
                    };
                    lines.push(self.new_line(id.0, &label, depth));
                }
            }
            runs.insert(
                e.run,
                RunLines {
                    header,
                    started: Instant::now(),
                    depth,
                    lines,
                },
            );
            return;
        }
        let Some(run) = runs.get_mut(&e.run) else {
            return;
        };
        let node = e.node.0;
        let now = Instant::now();
        let depth = run.depth;
        let line_ix = match &e.kind {
            EventKind::AttemptStarted { .. }
            | EventKind::AttemptFailed { .. }
            | EventKind::StepSucceeded { .. }
            | EventKind::StepFailed { .. }
            | EventKind::CompensationStarted
            | EventKind::CompensationSucceeded
            | EventKind::CompensationFailed { .. } => {
                match run.lines.iter().position(|l| l.node == node) {
                    Some(i) => Some(i),
                    None => {
                        // A step of a workflow whose graph was not registered: added as it starts.
                        let line = self.new_line(node, e.step, depth);
                        run.lines.push(line);
                        Some(run.lines.len() - 1)
                    }
                }
            }
            _ => None,
        };
        match (&e.kind, line_ix) {
            (EventKind::AttemptStarted { attempt }, Some(i)) => {
                let l = &mut run.lines[i];
                l.attempt = *attempt;
                if *attempt == 1 {
                    l.in_flight.push((e.iteration, e.item));
                    l.running += 1;
                    if l.started.is_none() {
                        l.started = Some(now);
                        l.bar.reset_elapsed();
                    }
                }
                l.state = State::Running;
                l.note.clear();
                l.progress_note = false;
                l.redraw();
            }
            (
                EventKind::AttemptFailed {
                    attempt,
                    error,
                    retry_in: Some(d),
                },
                Some(i),
            ) => {
                let l = &mut run.lines[i];
                l.state = State::Retrying;
                l.note = format!("retrying in {d:?} (attempt {attempt} failed: {error})");
                l.progress_note = false;
                l.redraw();
            }
            (EventKind::StepSucceeded { .. }, Some(i)) => {
                let l = &mut run.lines[i];
                l.end_execution(e);
                // A progress note ends with the step (a note of another item's failure stays).
                if l.progress_note {
                    l.note.clear();
                    l.progress_note = false;
                }
                l.done += 1;
                l.elapsed = l.started.map_or(Duration::ZERO, |s| now - s);
                if l.running == 0 {
                    l.state = if l.failed > 0 {
                        State::Failed
                    } else {
                        State::Done
                    };
                }
                l.redraw();
            }
            (EventKind::StepFailed { attempts, error }, Some(i)) => {
                let l = &mut run.lines[i];
                l.end_execution(e);
                l.failed += 1;
                l.elapsed = l.started.map_or(Duration::ZERO, |s| now - s);
                // Other executions of the step (map items) may still run.
                l.state = if l.running == 0 {
                    State::Failed
                } else {
                    State::Running
                };
                l.note = format!("failed after {attempts} attempt(s): {error}");
                l.progress_note = false;
                l.redraw();
            }
            (EventKind::CompensationStarted, Some(i)) => {
                let l = &mut run.lines[i];
                l.state = State::Compensating;
                l.redraw();
            }
            (EventKind::CompensationSucceeded, Some(i)) => {
                let l = &mut run.lines[i];
                l.state = State::Compensated;
                l.redraw();
            }
            (EventKind::CompensationFailed { error }, Some(i)) => {
                let l = &mut run.lines[i];
                l.state = State::CompensationFailed;
                l.note = format!("compensation failed: {error}");
                l.progress_note = false;
                l.redraw();
            }
            (
                EventKind::Progress {
                    fraction, message, ..
                },
                _,
            ) => {
                if let Some(l) = run.lines.iter_mut().find(|l| l.node == node) {
                    let mut note =
                        fraction.map_or_else(String::new, |f| format!("{:.0}%", f * 100.0));
                    if let Some(m) = message {
                        if !note.is_empty() {
                            note.push(' ');
                        }
                        note.push_str(m);
                    }
                    l.note = note;
                    l.progress_note = true;
                    l.redraw();
                }
            }
            (EventKind::Caught { error }, _) => {
                if let Some(l) = run.lines.iter_mut().find(|l| l.node == node) {
                    l.note = format!("caught, recovering: {error}");
                    l.progress_note = false;
                    l.redraw();
                }
            }
            (
                EventKind::RunCompleted | EventKind::RunFailed { .. } | EventKind::RunCancelled,
                _,
            ) => {
                let took = secs(now - run.started);
                let msg = match &e.kind {
                    EventKind::RunCompleted => format!("completed in {took}"),
                    EventKind::RunFailed { .. } => format!("failed after {took}"),
                    _ => format!("cancelled after {took}"),
                };
                for l in &mut run.lines {
                    if l.state == State::Running || l.state == State::Retrying {
                        l.state = State::Failed;
                        l.note = "dropped: the run ended".to_owned();
                        l.progress_note = false;
                    }
                    l.finish();
                }
                run.header.set_style(style("{prefix:.bold} {msg}"));
                run.header.finish_with_message(msg);
                // Finished runs stay listed, up to a bound.
                let mut finished = lock(&self.inner.finished);
                finished.push_back(e.run);
                while finished.len() > KEPT_FINISHED {
                    if let Some(old) = finished.pop_front()
                        && let Some(r) = runs.remove(&old)
                    {
                        r.header.finish_and_clear();
                        for l in r.lines {
                            l.bar.finish_and_clear();
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn new_line(&self, node: u32, name: &str, depth: usize) -> Line {
        let bar = self.inner.multi.add(ProgressBar::new_spinner());
        bar.set_prefix(format!("{}  {name:<24}", "  ".repeat(depth)));
        let line = Line {
            node,
            in_flight: Vec::new(),
            bar,
            state: State::Pending,
            running: 0,
            done: 0,
            failed: 0,
            attempt: 0,
            started: None,
            elapsed: Duration::ZERO,
            note: String::new(),
            progress_note: false,
        };
        line.redraw();
        line
    }
}

impl Line {
    /// One execution of the step ended: exactly that one leaves the in-flight set.
    fn end_execution(&mut self, e: &Event) {
        if let Some(i) = self
            .in_flight
            .iter()
            .position(|x| *x == (e.iteration, e.item))
        {
            self.in_flight.remove(i);
        }
        self.running = u32::try_from(self.in_flight.len()).unwrap_or(u32::MAX);
    }

    /// What the line says (without the spinner and the ticking time).
    fn describe(&self) -> String {
        let mut s = match self.state {
            State::Pending => "pending".to_owned(),
            State::Running if self.running > 1 || self.done > 0 => {
                format!("running ({} in flight, {} done)", self.running, self.done)
            }
            State::Running if self.attempt > 1 => format!("running (attempt {})", self.attempt),
            State::Running => "running".to_owned(),
            State::Retrying => String::new(),
            State::Done if self.done > 1 => {
                format!("done ×{} in {}", self.done, secs(self.elapsed))
            }
            State::Done if self.attempt > 1 => {
                format!("done in {} (attempt {})", secs(self.elapsed), self.attempt)
            }
            State::Done => format!("done in {}", secs(self.elapsed)),
            State::Failed => String::new(),
            State::Compensating => "compensating".to_owned(),
            State::Compensated => "compensated (undone)".to_owned(),
            State::CompensationFailed => String::new(),
            State::Skipped => "not run".to_owned(),
        };
        if !self.note.is_empty() {
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(&self.note);
        }
        s
    }

    fn redraw(&self) {
        let (template, tick) = match self.state {
            State::Pending | State::Skipped => ("{prefix:.dim} {msg:.dim}", false),
            State::Running => ("{prefix} {spinner:.cyan} {msg} {t:.dim}", true),
            State::Retrying => ("{prefix} {spinner:.yellow} {msg:.yellow} {t:.dim}", true),
            State::Compensating => ("{prefix} {spinner:.magenta} {msg:.magenta}", true),
            State::Done => ("{prefix} {msg:.green}", false),
            State::Compensated => ("{prefix} {msg:.magenta}", false),
            State::Failed | State::CompensationFailed => ("{prefix} {msg:.red}", false),
        };
        let icon = match self.state {
            State::Pending | State::Skipped => "·",
            State::Done => "✔",
            State::Failed | State::CompensationFailed => "✘",
            State::Compensated => "↶",
            State::Running | State::Retrying | State::Compensating => "",
        };
        self.bar.set_style(style(template));
        let msg = if icon.is_empty() {
            self.describe()
        } else {
            format!("{icon} {}", self.describe())
        };
        self.bar.set_message(msg);
        if tick {
            self.bar.enable_steady_tick(Duration::from_millis(100));
        } else {
            self.bar.disable_steady_tick();
            self.bar.tick();
        }
    }

    fn finish(&mut self) {
        if self.state == State::Pending {
            self.state = State::Skipped;
        }
        self.redraw();
        let msg = self.bar.message();
        self.bar.finish_with_message(msg);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Observer for ProgressObserver {
    fn on_event(&self, event: &Event) {
        self.on(event);
    }
}
