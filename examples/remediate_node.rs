//! A health-checker service that remediates sick workers with an inline `flow!`.
//!
//! The service runs a small fleet of real worker processes (each a TCP server) and, every
//! round, sends each worker a unit of work and a health check. When a check says `SICK`, the
//! loop composes and runs a micro-workflow right there:
//!
//! ```text
//! pool.drain -> pool.replace -> pool.verify [retry(..), timeout = "2s"]
//! ```
//!
//! Its steps are methods of the service's own worker pool (`pool.drain` is a method stage on
//! a captured value): the pool knows how to reach, stop and start workers, and counts what
//! it did. Its input is the sick worker, its output the verified replacement, which goes back
//! into the fleet. Two workers are planned to turn sick; the service stops once both were
//! remediated (or after a fixed number of rounds), stops every worker and exits 0.
//!
//! Run it:
//!
//! ```text
//! cargo run --example remediate_node
//! ```

#[path = "support/fleet.rs"]
mod fleet;

use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use flow::prelude::*;

use fleet::Worker;

/// How many workers the fleet runs.
const FLEET_SIZE: usize = 3;
/// Planned faults: `(worker id, healthy checks before it turns sick)`.
const PLANNED_FAULTS: [(usize, u32); 2] = [(1, 2), (2, 4)];
/// Upper bound on the service loop.
const MAX_ROUNDS: u32 = 12;
/// Time between two health-check rounds.
const CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// Why a remediation failed.
#[derive(Debug)]
enum RemediateError {
    /// Talking to, stopping or spawning a worker failed.
    Io(io::Error),
    /// The replacement does not behave.
    Unhealthy(String),
}

impl fmt::Display for RemediateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemediateError::Io(e) => write!(f, "{e}"),
            RemediateError::Unhealthy(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for RemediateError {}

impl From<io::Error> for RemediateError {
    fn from(e: io::Error) -> Self {
        RemediateError::Io(e)
    }
}

// ---------------------------------------------------------------------------------------
// The worker pool: the service's handle on its workers, whose methods are the remediation
// steps. Each takes the previous step's output by value.
// ---------------------------------------------------------------------------------------

/// What the service knows about running workers, and what it did to them.
#[derive(Default)]
struct Pool {
    /// Workers drained, replaced and verified so far.
    drained: AtomicUsize,
    replaced: AtomicUsize,
    verified: AtomicUsize,
}

impl Pool {
    /// Stops the sick worker from taking new work, and checks that it now refuses work.
    async fn drain(&self, w: Worker) -> Result<Worker, RemediateError> {
        fleet::drain(&w).await?;
        match fleet::work(&w, "probe-after-drain").await {
            Err(_) => {
                self.drained.fetch_add(1, Ordering::Relaxed);
                println!("      worker {} drained: new work is refused", w.id);
                Ok(w)
            }
            Ok(reply) => Err(RemediateError::Unhealthy(format!(
                "worker {} still takes work after DRAIN: {reply:?}",
                w.id
            ))),
        }
    }

    /// Kills and reaps the drained worker and starts a fresh one in its slot.
    ///
    /// Returns it shared (`Arc`): the next step is retried, and every attempt gets its own
    /// copy of its input.
    async fn replace(&self, old: Worker) -> Result<Arc<Worker>, RemediateError> {
        let (id, old_pid) = (old.id, old.pid());
        let new = fleet::replace(old).await?;
        self.replaced.fetch_add(1, Ordering::Relaxed);
        println!(
            "      worker {id}: pid {} stopped, generation {} started as pid {} on port {}",
            fmt_pid(old_pid),
            new.generation,
            fmt_pid(new.pid()),
            new.port
        );
        Ok(Arc::new(new))
    }

    /// Checks that the replacement is healthy and actually does work.
    async fn verify(&self, w: Arc<Worker>) -> Result<Arc<Worker>, RemediateError> {
        if !fleet::health(&w).await? {
            return Err(RemediateError::Unhealthy(format!(
                "replacement worker {} reports SICK",
                w.id
            )));
        }
        let reply = fleet::work(&w, "verify").await?;
        self.verified.fetch_add(1, Ordering::Relaxed);
        println!("      worker {} verified: {reply}", w.id);
        Ok(w)
    }
}

/// One health-check round over the fleet: a unit of work and a `HEALTH` per worker.
/// Returns the ids of sick workers.
async fn check_round(round: u32, fleet: &[Option<Worker>]) -> Vec<usize> {
    let mut line = format!("round {round:>2}:");
    let mut sick = Vec::new();
    for w in fleet.iter().flatten() {
        let job = format!("job-{round}-{}", w.id);
        let work = match fleet::work(w, &job).await {
            Ok(_) => "done",
            Err(_) => "refused",
        };
        let health = match fleet::health(w).await {
            Ok(true) => "OK",
            Ok(false) => {
                sick.push(w.id);
                "SICK"
            }
            Err(e) => {
                println!("  worker {} unreachable: {e}", w.id);
                sick.push(w.id);
                "UNREACHABLE"
            }
        };
        line.push_str(&format!(
            "  w{}/g{} {work:<7} {health:<4}",
            w.id, w.generation
        ));
    }
    println!("{line}");
    sick
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let argv: Vec<String> = std::env::args().collect();
    // Worker mode first: the workers are this binary, re-executed.
    if let Some(worker) = fleet::worker_args(&argv) {
        return Ok(fleet::worker_main(&worker).await?);
    }

    let mut fleet: Vec<Option<Worker>> = Vec::with_capacity(FLEET_SIZE);
    for id in 0..FLEET_SIZE {
        let sick_after = PLANNED_FAULTS
            .iter()
            .find(|(f, _)| *f == id)
            .map(|&(_, k)| k);
        match fleet::spawn_worker(id, sick_after).await {
            Ok(w) => {
                println!(
                    "started worker {id} (pid {}, port {})",
                    fmt_pid(w.pid()),
                    w.port
                );
                fleet.push(Some(w));
            }
            Err(e) => {
                stop_all(&mut fleet).await;
                return Err(e.into());
            }
        }
    }

    let runtime = Runtime::new().with_observer(|e: &Event| println!("    {e}"));
    let pool = Pool::default();
    let mut remediated = 0usize;
    let mut failed = 0usize;
    let mut round = 0;
    while round < MAX_ROUNDS && remediated + failed < PLANNED_FAULTS.len() {
        round += 1;
        for id in check_round(round, &fleet).await {
            let Some(sick) = fleet[id].take() else {
                continue;
            };
            println!("  worker {id} is sick: remediating");
            // Composed inline, where it is needed, over the service's own pool: the sick worker
            // in, a verified one out.
            let remediate = flow! {
                name = "remediate", error = RemediateError;
                pool.drain
                    -> pool.replace
                    -> pool.verify [retry(max_attempts = 5, backoff = exponential("100ms", 2.0)), timeout = "2s"]
            };
            match runtime.run(&remediate, sick).await {
                Ok(worker) => match Arc::try_unwrap(worker) {
                    Ok(worker) => {
                        println!("  worker {id} remediated: generation {}", worker.generation);
                        fleet[id] = Some(worker);
                        remediated += 1;
                    }
                    Err(_) => {
                        // Cannot happen: the flow's steps are done with their copies.
                        println!("  worker {id}: replacement still shared, dropping it");
                        failed += 1;
                    }
                },
                Err(e) => {
                    // The sick worker was consumed (and its process killed) by the flow.
                    println!("  remediation of worker {id} failed: {e}");
                    failed += 1;
                }
            }
        }
        tokio::time::sleep(CHECK_INTERVAL).await;
    }
    // One last round to show the fleet healthy again.
    round += 1;
    let still_sick = check_round(round, &fleet).await;

    let stopped = stop_all(&mut fleet).await;
    println!(
        "done after {round} rounds: {remediated} worker(s) remediated, {failed} failed, \
         {stopped} worker process(es) stopped; the pool drained {}, replaced {}, verified {}",
        pool.drained.load(Ordering::Relaxed),
        pool.replaced.load(Ordering::Relaxed),
        pool.verified.load(Ordering::Relaxed),
    );
    if failed > 0 || !still_sick.is_empty() || remediated < PLANNED_FAULTS.len() {
        std::process::exit(1);
    }
    Ok(())
}

/// Stops (kills and reaps) every worker; returns how many were stopped.
async fn stop_all(fleet: &mut [Option<Worker>]) -> usize {
    let mut stopped = 0;
    for slot in fleet.iter_mut() {
        if let Some(w) = slot.take() {
            let (id, pid) = (w.id, w.pid());
            match fleet::stop(w).await {
                Ok(()) => stopped += 1,
                Err(e) => eprintln!("stopping worker {id} (pid {}): {e}", fmt_pid(pid)),
            }
        }
    }
    stopped
}

fn fmt_pid(pid: Option<u32>) -> String {
    pid.map_or_else(|| "gone".to_owned(), |p| p.to_string())
}
