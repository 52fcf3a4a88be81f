//! A canary rollout as a `flow!` pipeline: map with a concurrency limit, catch, branch and
//! compensation, over real app server processes.
//!
//! ```text
//! deploy_canary [compensate = retire_canary]
//!   -> plan_batches
//!   -> map(probe_batch [timeout = "5s", catch(count_breach, when = is_slo_breach)], concurrency = 4)
//!   -> summarize
//!   -> branch(|s: &Summary| s.verdict) {
//!         Verdict::Healthy => signal("approve", timeout = "10m") -> |s, a: Approval| decide(s, a),
//!         Verdict::Failing => rollback,
//!      }
//! ```
//!
//! - `deploy_canary` starts the new version as its own process next to the stable one.
//! - `map` sends 8 batches of real requests to the canary, at most 4 batches at a time.
//! - A batch whose error rate breaks the SLO fails its step; `catch(.., when = is_slo_breach)`
//!   routes that failure to `count_breach`, which turns it into a data point for the verdict,
//!   so one bad batch does not abort the rollout. Any other failure (the canary unreachable,
//!   a timeout) is not caught: the flow fails and the compensation retires the canary.
//! - `branch` waits for an operator's approval of a healthy canary (a signal: type `approve`
//!   or `reject` on stdin, or pass `--auto-approve`, as CI does), then promotes it (the old
//!   stable version is retired) or rolls it back; a failing one is rolled back at once (the
//!   canary is retired).
//!
//! The program runs the same flow twice: v1.1 (healthy, promoted), then v1.2 (failing,
//! rolled back). Every app process is retired at exit.
//!
//! Run it:
//!
//! ```text
//! cargo run --example canary_rollout                  # asks for each approval on stdin
//! cargo run --example canary_rollout -- --auto-approve
//! ```

#[path = "support/canary.rs"]
mod canary;

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use flow::prelude::*;

use canary::App;

/// Batches of probe requests sent to a canary.
const BATCHES: u32 = 8;
/// Requests per batch.
const REQUESTS_PER_BATCH: u32 = 25;
/// A batch breaks the SLO when more than this percentage of its requests fail.
const SLO_MAX_ERROR_PCT: u32 = 10;

// ---------------------------------------------------------------------------------------
// The "load balancer": which app serves stable traffic and which is the canary.
// ---------------------------------------------------------------------------------------

struct Router {
    stable: Option<Arc<App>>,
    canary: Option<Arc<App>>,
}

static ROUTER: Mutex<Router> = Mutex::new(Router {
    stable: None,
    canary: None,
});

fn router() -> MutexGuard<'static, Router> {
    ROUTER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Retires an app that the router no longer routes to (kills and reaps its process).
async fn retire_app(app: Arc<App>) -> Result<(), RolloutError> {
    match Arc::try_unwrap(app) {
        Ok(app) => {
            let (version, pid) = (app.version.clone(), app.pid());
            canary::retire(app).await?;
            println!("      retired v{version} (pid {})", fmt_pid(pid));
            Ok(())
        }
        Err(app) => Err(RolloutError::Router(format!(
            "v{} is still in use, cannot retire it",
            app.version
        ))),
    }
}

fn fmt_pid(pid: Option<u32>) -> String {
    pid.map_or_else(|| "gone".to_owned(), |p| p.to_string())
}

// ---------------------------------------------------------------------------------------
// Data on the flow's edges.
// ---------------------------------------------------------------------------------------

/// What to roll out.
#[derive(Debug, Clone)]
struct Release {
    version: String,
    /// Percentage of requests the build answers with `500` (it is a simulation after all).
    fail_rate: u8,
}

/// A deployed canary (the process itself is held by the router).
#[derive(Debug, Clone)]
struct Canary {
    version: String,
}

/// One batch of probe requests.
struct Batch {
    number: u32,
    requests: u32,
    app: Arc<App>,
}

/// What one batch saw.
#[derive(Debug)]
struct BatchResult {
    ok: u32,
    failed: u32,
    breached: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Healthy,
    Failing,
}

/// What the probes saw overall.
#[derive(Debug)]
struct Summary {
    version: String,
    ok: u32,
    failed: u32,
    breached_batches: usize,
    verdict: Verdict,
}

/// What the rollout did.
#[derive(Debug)]
enum Outcome {
    Promoted { version: String },
    RolledBack { version: String, reason: String },
}

#[derive(Debug)]
enum RolloutError {
    Io(io::Error),
    /// A batch broke the SLO.
    SloBreached {
        batch: u32,
        ok: u32,
        failed: u32,
    },
    /// The router is not in the state the step expects.
    Router(String),
}

impl fmt::Display for RolloutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RolloutError::Io(e) => write!(f, "{e}"),
            RolloutError::SloBreached { batch, ok, failed } => write!(
                f,
                "batch {batch} broke the SLO: {failed} of {} requests failed (max {SLO_MAX_ERROR_PCT}%)",
                ok + failed
            ),
            RolloutError::Router(msg) => write!(f, "router: {msg}"),
        }
    }
}

impl std::error::Error for RolloutError {}

impl From<io::Error> for RolloutError {
    fn from(e: io::Error) -> Self {
        RolloutError::Io(e)
    }
}

// ---------------------------------------------------------------------------------------
// Steps.
// ---------------------------------------------------------------------------------------

/// Starts the new version as a canary process next to the stable one.
async fn deploy_canary(release: Release) -> Result<Canary, RolloutError> {
    let app = canary::deploy(&release.version, release.fail_rate).await?;
    println!(
        "      deployed canary v{} (pid {}, port {})",
        app.version,
        fmt_pid(app.pid()),
        app.port
    );
    let previous = router().canary.replace(Arc::new(app));
    if let Some(previous) = previous {
        retire_app(previous).await?;
    }
    Ok(Canary {
        version: release.version,
    })
}

/// Compensation of `deploy_canary`: if the rollout fails later, take the canary down.
async fn retire_canary(c: Canary) -> Result<(), RolloutError> {
    let app = {
        let mut r = router();
        match &r.canary {
            Some(app) if app.version == c.version => r.canary.take(),
            _ => None,
        }
    };
    match app {
        Some(app) => retire_app(app).await,
        None => Ok(()),
    }
}

/// Splits the probe traffic into batches.
async fn plan_batches(c: Canary) -> Result<Vec<Batch>, RolloutError> {
    let app = router()
        .canary
        .clone()
        .ok_or_else(|| RolloutError::Router(format!("no canary deployed for v{}", c.version)))?;
    Ok((1..=BATCHES)
        .map(|number| Batch {
            number,
            requests: REQUESTS_PER_BATCH,
            app: Arc::clone(&app),
        })
        .collect())
}

/// Sends one batch of real requests to the canary; fails when the batch breaks the SLO.
async fn probe_batch(b: Batch) -> Result<BatchResult, RolloutError> {
    let (ok, failed) = canary::probe(&b.app, b.requests).await?;
    if failed * 100 > SLO_MAX_ERROR_PCT * (ok + failed) {
        return Err(RolloutError::SloBreached {
            batch: b.number,
            ok,
            failed,
        });
    }
    Ok(BatchResult {
        ok,
        failed,
        breached: false,
    })
}

/// Which failures of `probe_batch` are caught: SLO breaches only.
fn is_slo_breach(e: &RolloutError) -> bool {
    matches!(e, RolloutError::SloBreached { .. })
}

/// Recovery for a caught SLO breach: the batch counts against the canary instead of
/// aborting the rollout.
async fn count_breach(e: StepError<RolloutError>) -> Result<BatchResult, RolloutError> {
    match e.into_error() {
        Some(RolloutError::SloBreached { ok, failed, .. }) => Ok(BatchResult {
            ok,
            failed,
            breached: true,
        }),
        Some(other) => Err(other),
        None => Err(RolloutError::Router("probe failed without an error".into())),
    }
}

/// Adds the batches up and decides.
async fn summarize(results: Vec<BatchResult>) -> Result<Summary, RolloutError> {
    let version = router()
        .canary
        .as_ref()
        .map(|a| a.version.clone())
        .ok_or_else(|| RolloutError::Router("the canary disappeared during probing".into()))?;
    let ok = results.iter().map(|r| r.ok).sum();
    let failed = results.iter().map(|r| r.failed).sum();
    let breached_batches = results.iter().filter(|r| r.breached).count();
    let verdict = if breached_batches == 0 {
        Verdict::Healthy
    } else {
        Verdict::Failing
    };
    println!(
        "      v{version}: {ok} ok, {failed} failed, {breached_batches}/{} batches broke the SLO -> {verdict:?}",
        results.len()
    );
    Ok(Summary {
        version,
        ok,
        failed,
        breached_batches,
        verdict,
    })
}

/// The canary becomes the stable version; the old stable version is retired.
async fn promote(s: Summary) -> Result<Outcome, RolloutError> {
    let old = {
        let mut r = router();
        let canary = r
            .canary
            .take()
            .ok_or_else(|| RolloutError::Router("no canary to promote".into()))?;
        r.stable.replace(canary)
    };
    println!(
        "      v{} now serves all traffic ({} of {} probe requests ok)",
        s.version,
        s.ok,
        s.ok + s.failed
    );
    if let Some(old) = old {
        retire_app(old).await?;
    }
    Ok(Outcome::Promoted { version: s.version })
}

/// An operator's answer to "promote this canary?", sent to the run as the `approve` signal.
#[derive(Clone, Debug)]
struct Approval {
    approved: bool,
    by: String,
}

/// Promotes the canary if the operator approved it, rolls it back otherwise.
async fn decide(s: Summary, a: Approval) -> Result<Outcome, RolloutError> {
    if a.approved {
        println!("      v{}: approved by {}", s.version, a.by);
        promote(s).await
    } else {
        println!("      v{}: rejected by {}", s.version, a.by);
        let mut outcome = rollback(s).await?;
        if let Outcome::RolledBack { reason, .. } = &mut outcome {
            *reason = format!("rejected by {}", a.by);
        }
        Ok(outcome)
    }
}

/// The rollout workflow: built once per release (it is `'static`, so it can be spawned and
/// signalled through its handle).
fn rollout() -> impl Workflow<Input = Release, Output = Outcome, Error = RolloutError> + 'static {
    flow! {
        name = "canary_rollout", error = RolloutError;
        deploy_canary [compensate = retire_canary]
            -> plan_batches
            -> map(probe_batch [timeout = "5s", catch(count_breach, when = is_slo_breach)], concurrency = 4)
            -> summarize
            -> branch(|s: &Summary| s.verdict) {
                Verdict::Healthy => signal("approve", timeout = "10m") -> |s, a: Approval| decide(s, a),
                Verdict::Failing => rollback,
            }
    }
}

/// Asks the operator on stdin; end of input (no terminal, as in CI without `--auto-approve`)
/// is a rejection.
async fn ask_operator(version: String) -> Approval {
    println!("   promote v{version}? type `approve` or `reject`:");
    let line = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await;
    match line {
        Ok(Ok(l)) if l.trim() == "approve" => Approval {
            approved: true,
            by: "the operator".into(),
        },
        Ok(Ok(l)) if l.trim().is_empty() => Approval {
            approved: false,
            by: "nobody (no answer on stdin)".into(),
        },
        _ => Approval {
            approved: false,
            by: "the operator".into(),
        },
    }
}

/// The canary is taken down; the stable version keeps serving.
async fn rollback(s: Summary) -> Result<Outcome, RolloutError> {
    let app = router()
        .canary
        .take()
        .ok_or_else(|| RolloutError::Router("no canary to roll back".into()))?;
    retire_app(app).await?;
    Ok(Outcome::RolledBack {
        reason: format!(
            "{} of {} batches broke the SLO ({} of {} requests failed)",
            s.breached_batches,
            BATCHES,
            s.failed,
            s.ok + s.failed
        ),
        version: s.version,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let argv: Vec<String> = std::env::args().collect();
    // App mode first: the deployed apps are this binary, re-executed.
    if let Some(app) = canary::app_args(&argv) {
        return Ok(canary::app_main(&app).await?);
    }

    let stable = canary::deploy("1.0", 0).await?;
    println!(
        "stable v{} running (pid {}, port {})",
        stable.version,
        fmt_pid(stable.pid()),
        stable.port
    );
    router().stable = Some(Arc::new(stable));

    let runtime = Runtime::new().with_observer(|e: &Event| println!("    {e}"));
    let auto_approve = argv.iter().any(|a| a == "--auto-approve");

    let releases = [
        Release {
            version: "1.1".into(),
            fail_rate: 1,
        },
        Release {
            version: "1.2".into(),
            fail_rate: 30,
        },
    ];
    let mut failures = 0;
    for release in releases {
        println!(
            "\nrolling out v{} (build fails {}% of requests)",
            release.version, release.fail_rate
        );
        let version = release.version.clone();
        let mut handle = runtime.spawn_with_events(rollout(), release);
        // Answer the approval when the run asks for it (a message sent earlier would be kept,
        // but an operator answers what they are asked).
        while let Some(e) = handle.events().next().await {
            if matches!(e.kind, EventKind::SignalWaiting { .. }) {
                let answer = if auto_approve {
                    Approval {
                        approved: true,
                        by: "--auto-approve".into(),
                    }
                } else {
                    ask_operator(version.clone()).await
                };
                handle.signal("approve", answer)?;
            }
            if e.parent.is_none()
                && matches!(
                    e.kind,
                    EventKind::RunCompleted | EventKind::RunFailed { .. } | EventKind::RunCancelled
                )
            {
                break;
            }
        }
        match handle.await {
            Ok(Outcome::Promoted { version }) => println!("=> v{version} promoted"),
            Ok(Outcome::RolledBack { version, reason }) => {
                println!("=> v{version} rolled back: {reason}")
            }
            Err(e) => {
                println!("=> rollout failed: {e}");
                failures += 1;
            }
        }
        let serving = router().stable.as_ref().map(|a| a.version.clone());
        println!("   stable version now: v{}", serving.unwrap_or_default());
    }

    // Retire whatever is still deployed.
    let (stable, canary) = {
        let mut r = router();
        (r.stable.take(), r.canary.take())
    };
    println!("\nshutting down");
    for app in [stable, canary].into_iter().flatten() {
        retire_app(app).await?;
    }
    if failures > 0 {
        std::process::exit(1);
    }
    Ok(())
}
