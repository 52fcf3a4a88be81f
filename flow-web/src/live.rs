//! Live updates of a run's page: one poller per watched run, shared by every page that
//! watches it, alive only while one does.
//!
//! A poller reads the run (its record, steps, compensation stack and history: four reads)
//! every [`Options::poll_interval`](crate::Options::poll_interval) and publishes the page's
//! live part, rendered again, only when one of them changed. SQLite gives no change
//! notification across processes, so timed polling of cheap reads is the honest way there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::{App, pages};

/// What a watching page is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Live {
    /// Nothing read yet.
    Nothing,
    /// The live part of the page, rendered.
    Update(Arc<str>),
    /// The store could not be read: this message (the page keeps what it shows).
    Unavailable(Arc<str>),
}

/// The pollers, by run id.
#[derive(Default)]
pub(crate) struct Watchers {
    map: Mutex<HashMap<String, watch::Sender<Live>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Watchers {
    /// The number of runs watched now (one poller each).
    pub(crate) fn watched(&self) -> usize {
        lock(&self.map).len()
    }
}

/// Watches run `run`: joins its poller, or starts one.
pub(crate) fn subscribe(app: &Arc<App>, run: &str) -> watch::Receiver<Live> {
    let mut map = lock(&app.watchers.map);
    if let Some(tx) = map.get(run) {
        let mut rx = tx.subscribe();
        rx.mark_changed();
        return rx;
    }
    let (tx, rx) = watch::channel(Live::Nothing);
    map.insert(run.to_owned(), tx.clone());
    drop(map);
    tokio::spawn(poll(Arc::clone(app), run.to_owned(), tx));
    rx
}

async fn poll(app: Arc<App>, run: String, tx: watch::Sender<Live>) {
    let mut tick = tokio::time::interval(app.options.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<pages::Snapshot> = None;
    loop {
        tick.tick().await;
        {
            // Nobody watches any more: stop (under the lock, so that no one joins meanwhile).
            let mut map = lock(&app.watchers.map);
            if tx.receiver_count() == 0 {
                map.remove(&run);
                return;
            }
        }
        match pages::Snapshot::read(&app, &run).await {
            Ok(snap) => {
                if last.as_ref() != Some(&snap) {
                    let html = pages::live_part(&app, &snap).into_string();
                    tx.send_replace(Live::Update(html.into()));
                    last = Some(snap);
                }
            }
            Err(e) => {
                tx.send_replace(Live::Unavailable(e.message().into()));
                // The next good read is sent whatever it is.
                last = None;
            }
        }
    }
}
