//! [`Queue::wait_for_work`](flow_runtime::store::Queue::wait_for_work) on LISTEN/NOTIFY: the
//! store's writes that give a queue work call `pg_notify('flow_work', '<schema>:<queue>')` in
//! their transaction; one connection per store LISTENs on `flow_work` in a background task
//! and wakes the waiters of that queue. When that connection drops, the task connects again
//! (with backoff) and then wakes every waiter, since a notification may have been missed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::future::poll_fn;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, Config, NoTls, Notification};

use crate::retry::Backoff;

/// The channel of the store's notifications.
pub(crate) const CHANNEL: &str = "flow_work";

/// The workers waiting for work, by queue.
#[derive(Default)]
pub(crate) struct Waiters {
    queues: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Waiters {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        // Every change is one map operation: a panic cannot leave the map half changed.
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the waiters of `queue`.
    fn wake(&self, queue: &str) {
        if let Some(notify) = self.lock().get(queue) {
            notify.notify_waiters();
        }
    }

    /// Wakes every waiter.
    fn wake_all(&self) {
        for notify in self.lock().values() {
            notify.notify_waiters();
        }
    }

    /// Waits until `queue` is woken, or `timeout`.
    pub(crate) async fn wait(&self, queue: &str, timeout: Duration) {
        let notify = self.lock().entry(queue.to_owned()).or_default().clone();
        // Forgets the queue when its last waiter is gone, also if this future is dropped.
        struct Leave<'a> {
            waiters: &'a Waiters,
            queue: &'a str,
            notify: Arc<Notify>,
        }
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                let mut queues = self.waiters.lock();
                // The map's reference and ours: nobody else waits on this queue.
                if Arc::strong_count(&self.notify) == 2
                    && queues
                        .get(self.queue)
                        .is_some_and(|n| Arc::ptr_eq(n, &self.notify))
                {
                    queues.remove(self.queue);
                }
            }
        }
        let leave = Leave {
            waiters: self,
            queue,
            notify,
        };
        // A `Notified` receives `notify_waiters` from its creation on, before its first poll.
        let _ = tokio::time::timeout(timeout, leave.notify.notified()).await;
    }
}

/// The listening connection: its client (dropping it closes the connection) and the
/// notifications it receives (`None` once the connection has ended).
struct Listening {
    _client: Client,
    notifications: mpsc::UnboundedReceiver<Notification>,
    driver: JoinHandle<()>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Connects and LISTENs.
async fn listen(config: &Config) -> Result<Listening, tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (tx, notifications) = mpsc::unbounded_channel();
    // The connection must be polled for the client's requests to be answered; its
    // notifications are forwarded to the listener task.
    let driver = tokio::spawn(async move {
        while let Some(message) = poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    let listening = Listening {
        _client: client,
        notifications,
        driver,
    };
    listening
        ._client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await?;
    Ok(listening)
}

/// Connects the listener (trying again with backoff for `retry_for`), then hands it to a
/// background task that wakes `waiters` on the notifications of `schema`'s queues until it
/// is aborted, connecting again whenever the connection drops.
pub(crate) async fn start(
    config: Config,
    schema: String,
    waiters: Arc<Waiters>,
    retry_for: Duration,
) -> Result<JoinHandle<()>, tokio_postgres::Error> {
    let mut backoff = Backoff::new(retry_for);
    let first = loop {
        match listen(&config).await {
            Ok(l) => break l,
            Err(e) => match backoff.next_delay() {
                Some(delay) if crate::error::kind_before_send(&e) != crate::error::Kind::Final => {
                    tokio::time::sleep(delay).await;
                }
                _ => return Err(e),
            },
        }
    };
    let prefix = format!("{schema}:");
    Ok(tokio::spawn(async move {
        let mut listening = first;
        loop {
            while let Some(n) = listening.notifications.recv().await {
                if n.channel() == CHANNEL
                    && let Some(queue) = n.payload().strip_prefix(&prefix)
                {
                    waiters.wake(queue);
                }
            }
            // The connection ended: connect again, for as long as the store lives (the
            // task is aborted when it is dropped).
            drop(listening);
            let mut backoff = Backoff::forever();
            listening = loop {
                if let Ok(l) = listen(&config).await {
                    break l;
                }
                tokio::time::sleep(backoff.next_delay().unwrap_or(Duration::from_secs(5))).await;
            };
            // Work may have come while nobody listened.
            waiters.wake_all();
        }
    }))
}
