//! The PostgreSQL store of [`flow`](https://docs.rs/flow): the durable state of runs in a
//! PostgreSQL database that many worker processes, on many machines, share. It implements
//! the [`Store`] and [`Queue`] traits of `flow_runtime::store`: runs enqueued on named
//! queues, claimed by workers under leases, every write of a worker fenced by its lease.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use flow_runtime::store::{Claim, Enqueue, NewRun, Queue, QueueOptions, Store, new_run_id};
//! use flow_store_postgres::{Options, PgStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let options = Options {
//!     schema: Some("flow".into()), // created, and migrated, if missing
//!     ..Options::default()
//! };
//! let store = Arc::new(
//!     PgStore::connect_with("postgres://postgres@127.0.0.1:5432/test", options).await?,
//! );
//!
//! // A producer enqueues a run ...
//! let run = NewRun {
//!     id: "order-1234".into(), // enqueueing this id again returns this run
//!     workflow: "provision".into(),
//!     fingerprint: 0x1234,
//!     node_fingerprints: Default::default(),
//!     input: br#"{"nodes":3}"#.to_vec(),
//! };
//! store.enqueue(Enqueue::new(run, "provisioning")).await?;
//!
//! // ... and a worker claims it, and writes under its lease.
//! let claim = Claim {
//!     worker: "host-1:4242".into(),
//!     queue: "provisioning".into(),
//!     options: QueueOptions::default(),
//!     max: 8,
//!     lease: Duration::from_secs(30),
//! };
//! for run in store.claim(claim).await? {
//!     let epoch = run.lease.as_ref().map_or(0, |l| l.epoch);
//!     let fenced: Arc<dyn Store> = store.clone().fenced(&run.id, epoch);
//!     // ... execute the run with `fenced` as its store ...
//! #   let _ = fenced;
//! }
//! store.wait_for_work("provisioning", Duration::from_secs(5)).await;
//! # Ok(())
//! # }
//! ```
//!
//! # Connections
//!
//! [`PgStore::connect`] takes a URL (`postgres://user:password@host:port/database`) or a
//! key-value string (`host=... user=...`), as `tokio-postgres` reads them. Connections are
//! **not encrypted** (`NoTls`): use the store on a trusted network, or through a local
//! proxy that adds TLS. The store keeps a pool of [`Options::pool_size`] connections, and
//! one more that LISTENs for work ([`Queue::wait_for_work`]).
//!
//! [`Options::schema`] isolates a store in a schema of its own: every pooled connection sets
//! its `search_path` to it, and the store creates it if it is missing. Without it, the store
//! uses the connection's current schema (usually `public`).
//!
//! # Failures, and trying again
//!
//! A failure to connect, a connection lost, and the server's transient refusals
//! (serialization failure `40001`, deadlock `40P01`, shutdown `57P01`, connection exceptions
//! `08xxx`) are tried again with exponential backoff (50 ms doubling to 2 s, with jitter) for
//! up to [`Options::retry_for`] (30 s by default), then reported: [`StoreError::Io`] names
//! the server. The store's own refusals are reported at once: [`StoreError::NotFound`],
//! [`StoreError::Conflict`], [`StoreError::Invalid`], [`StoreError::LeaseLost`],
//! [`StoreError::Duplicate`]; anything else is [`StoreError::Backend`] with the server's
//! message and SQLSTATE.
//!
//! Every method is one statement, in a transaction of its own: one round trip. A statement
//! that failed before it was sent, or that the server refused, committed nothing and is
//! sent again. (Writes of one kind made at once may share a statement: see "Batches" below;
//! what follows holds for them too.) A connection lost while a statement was in flight is the ambiguous case: it
//! may have committed. The methods that can be sent again then are sent again, and stay
//! correct:
//!
//! - `create_run` and `enqueue` carry a random token stored with the run: a retry finds the
//!   run its lost attempt created and still reports `created: true`;
//! - `commit_step` carries a token stored with the step: a retry finds its own commit and
//!   reports it as the first, with the compensation entries it pushed (applied once);
//! - `set_status`: a retry that finds the run already finished with the status and result
//!   asked for reports success, not a conflict;
//! - `save_progress`, `save_graph`, `reset_steps`, `renew` and the reads do the same thing
//!   when done twice; `take_signal_into_step` then finds the step committed with the signal,
//!   and returns `None` (the step's record holds the signal's payload);
//! - `release` sent again returns `false` if its lost attempt released the lease.
//!
//! The others are not sent again after a connection was lost in flight, since doing them
//! twice would do something twice: `send_signal` and `record_history` (a second signal or
//! entry), `take_signal` (a second signal taken), `update_compensations` (entries pushed
//! twice), `claim` (runs leased twice; those of the lost attempt are claimable again when
//! their leases expire). They report [`StoreError::Io`], saying that the outcome is unknown.
//!
//! # Batches
//!
//! Writes of one kind made while two of their kind are in flight wait for one of them to
//! end, and then go together in one statement, one transaction, one WAL flush (a group
//! commit, in the client): step commits (`commit_step`, but those that change
//! compensations), runs created or enqueued (but those with a deduplication key), status
//! changes (`set_status`, but a result given with an unfinished status) and signals taken
//! (`take_signal`). Each write of a batch is checked on its own (its fencing, its run's
//! existence, its conflicts) and answered on its own, as if it had been sent alone, and
//! only once the batch's transaction is durable: one refused does not stop the others. A
//! batch the server refuses as a whole (not for a lost connection) is sent again one write a
//! statement. A write never waits for others to come: alone, it is sent at once, in its own
//! statement. A busy worker's writes so go out in batches as large as what came in during
//! one round trip, and a lone run's as before. [`Options::max_batch`] caps a batch (`1`: no
//! batches); [`PgStore::batching`] counts what went alone and what went together.
//!
//! # Clock
//!
//! Every time the store takes (creation and update times, lease expiries, a queue's rate
//! window, `not_before_ms` comparisons) is read from the **database server's clock**
//! (`clock_timestamp()`), one clock for every worker: a worker whose own clock is off cannot
//! hold a lease longer than granted, nor take one over early. Times given by callers
//! (`not_before_ms`, attempts' times) are compared with it as they are.
//!
//! # Queues, leases and fencing
//!
//! A claim is one transaction that takes the queue's runs by priority, then age, with `FOR
//! NO KEY UPDATE SKIP LOCKED`, so that concurrent claims pass each other and never take the
//! same run. A queue with a concurrency or rate limit is claimed under an advisory lock on
//! its name (`pg_advisory_xact_lock`), so that the counts are exact across workers. Each
//! claim raises the run's `lease_epoch`. A fenced store ([`Queue::fenced`]) checks the
//! epoch in the transaction of each write, holding the run's row (`FOR SHARE`, or `FOR NO
//! KEY UPDATE` when the write changes it) until it commits: a write of a worker whose lease
//! was taken over fails with [`StoreError::LeaseLost`] and writes nothing.
//!
//! Enqueueing a run, releasing a lease, finishing a run and restarting one
//! (`reset_steps`) notify the queue in the same transaction (`pg_notify('flow_work',
//! '<schema>:<queue>')`).
//!
//! # Schema
//!
//! The `flow_schema` table holds the schema version ([`SCHEMA_VERSION`]); migrations run in
//! order, one transaction each, under an advisory lock, so that workers starting together
//! migrate once. A schema written by a newer version of flow is refused with
//! [`StoreError::NewerSchema`] before anything is written to it. The tables mirror the
//! SQLite store's: `flow_runs` (with the queue columns `queue`, `priority`, `dedup_key`,
//! `not_before_ms`, `started_ms`, `lease_worker`, `lease_epoch`, `lease_until_ms`),
//! `flow_run_nodes`, `flow_steps`, `flow_step_attempts`, `flow_compensations`,
//! `flow_signals`, `flow_graphs`, `flow_history`; the writes are PL/pgSQL functions
//! (`flow_commit_step`, `flow_claim`, ...) installed by the migrations. `flow_runs` is
//! indexed for listing in creation order: all runs, by status, by workflow, and by workflow
//! and status together (since schema version 3), so that every page of a listing reads only
//! its own runs.

mod batch;
mod error;
mod jobs;
mod listen;
mod retry;
mod rows;
mod schema;
mod store;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::task::JoinHandle;
use tokio_postgres::config::Host;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use flow_runtime::store::StoreError;
#[cfg(doc)]
use flow_runtime::store::{Queue, Store};

pub use crate::batch::BatchCounts;
use crate::error::Kind;
use crate::listen::Waiters;
use crate::retry::Backoff;
pub use crate::schema::SCHEMA_VERSION;

/// How [`PgStore::connect_with`] sets up the store. `Options::default()` is what
/// [`PgStore::connect`] uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The schema that holds the store's tables: every pooled connection sets its
    /// `search_path` to it, and the store creates it if it is missing. A name of lowercase
    /// ASCII letters, digits and `_`, not starting with a digit, at most 63 bytes. `None`
    /// (the default): the connection's current schema (usually `public`).
    pub schema: Option<String>,
    /// The most connections the pool opens (besides the one that listens for work).
    /// Default: 16.
    pub pool_size: usize,
    /// How long a failing connection or a transient failure is tried again before it is
    /// reported. Default: 30 seconds.
    pub retry_for: Duration,
    /// How long one attempt to connect may take. Default: 10 seconds.
    pub connect_timeout: Duration,
    /// The most writes of one kind sent in one statement: step commits, runs created or
    /// enqueued, runs' status changes, and signals taken. Writes made while earlier ones are in flight wait for them and go
    /// together (a group commit: one round trip, one transaction, one WAL flush for all of
    /// them; each still checked and answered on its own, and only once durable). A write
    /// never waits for others to arrive: alone, it is sent at once. `1` sends every write
    /// in a statement of its own. Default: 64.
    pub max_batch: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            schema: None,
            pool_size: 16,
            retry_for: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_batch: 64,
        }
    }
}

/// How a store has sent its batched writes ([`PgStore::batching`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Batching {
    /// Step commits (those without compensation changes).
    pub commits: BatchCounts,
    /// Runs created or enqueued (those without a deduplication key).
    pub creates: BatchCounts,
    /// Runs' status changes (all but those that give a result with an unfinished status,
    /// which the store refuses).
    pub statuses: BatchCounts,
    /// Signals taken (`take_signal`: a worker's look for a cancellation, among others).
    pub takes: BatchCounts,
}

/// A [`Store`] and [`Queue`] in a PostgreSQL database. See the [crate documentation](crate)
/// for its guarantees.
///
/// Share it as `Arc<PgStore>` (which [`Queue::fenced`] takes), `Arc<dyn Queue>` or
/// `Arc<dyn Store>`. Several stores, in one process or in many, may use the same schema.
/// Dropping the store closes its connections.
pub struct PgStore {
    conn: Arc<Conn>,
    /// The schema that holds the tables.
    schema: String,
    waiters: Arc<Waiters>,
    listener: JoinHandle<()>,
    /// Step commits, and runs to create, waiting to be sent together (see
    /// [`Options::max_batch`]).
    commits: Arc<batch::Batcher<jobs::CommitJob>>,
    creates: Arc<batch::Batcher<jobs::CreateJob>>,
    statuses: Arc<batch::Batcher<jobs::StatusJob>>,
    takes: Arc<batch::Batcher<jobs::TakeJob>>,
}

/// The pool and how to use it: what the store's statements, and the tasks that send
/// batches of them, share.
struct Conn {
    pool: Pool,
    /// The server, for messages: `host:port/database`.
    server: String,
    retry_for: Duration,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("server", &self.conn.server)
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

/// Whether a statement may be sent again after the connection was lost while it was in
/// flight (it may have committed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resend {
    /// Yes: doing it twice does what doing it once does (or the store recognises its own
    /// earlier attempt).
    Safe,
    /// No: the failure is reported, its outcome unknown.
    Never,
}

/// The rows of a statement.
struct Answer {
    rows: Vec<Row>,
    /// An earlier attempt of the statement was lost in flight: it may have committed before
    /// this one ran.
    in_doubt: bool,
}

/// Why a statement failed, and whether an earlier attempt of it, lost in flight, may have
/// committed.
struct Failure {
    error: StoreError,
    in_doubt: bool,
}

/// `server` for messages, from a connection's configuration: `host:port/database`.
fn server_of(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = config
                .get_ports()
                .get(i)
                .or_else(|| config.get_ports().first())
                .copied()
                .unwrap_or(5432);
            match host {
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(dir) => format!("{}/.s.PGSQL.{port}", dir.display()),
            }
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "localhost:5432".to_owned()
    } else {
        hosts.join(",")
    };
    match config.get_dbname() {
        Some(db) => format!("{hosts}/{db}"),
        None => hosts,
    }
}

/// Whether `name` is a schema name the store accepts (see [`Options::schema`]).
fn valid_schema(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
        && name.len() <= 63
}

impl PgStore {
    /// Connects to the database at `url` with the default [`Options`], creating the store's
    /// tables (or migrating them) if needed.
    ///
    /// # Errors
    ///
    /// [`StoreError::Invalid`] if `url` cannot be read, [`StoreError::Io`] if the server
    /// cannot be reached within [`Options::retry_for`] (or refuses the connection),
    /// [`StoreError::NewerSchema`] if a newer version of flow wrote the schema,
    /// [`StoreError::Corrupt`] if the schema holds flow's tables without a version.
    pub async fn connect(url: &str) -> Result<PgStore, StoreError> {
        PgStore::connect_with(url, Options::default()).await
    }

    /// Connects to the database at `url`, set up as `options` says, creating the schema and
    /// the store's tables (or migrating them) if needed.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect), and [`StoreError::Invalid`] for a schema name it does
    /// not accept.
    pub async fn connect_with(url: &str, options: Options) -> Result<PgStore, StoreError> {
        let mut config: tokio_postgres::Config =
            url.parse()
                .map_err(|e: tokio_postgres::Error| StoreError::Invalid {
                    // Not the URL itself: it may hold a password.
                    what: format!("not a PostgreSQL connection string: {e}"),
                })?;
        if let Some(schema) = &options.schema {
            if !valid_schema(schema) {
                return Err(StoreError::Invalid {
                    what: format!(
                        "schema name {schema:?}: use lowercase ASCII letters, digits and `_`, \
                         not starting with a digit, at most 63 bytes"
                    ),
                });
            }
            let mut startup = config.get_options().unwrap_or_default().to_owned();
            if !startup.is_empty() {
                startup.push(' ');
            }
            startup.push_str(&format!("-c search_path={schema}"));
            config.options(startup);
        }
        config.connect_timeout(options.connect_timeout);
        if config.get_application_name().is_none() {
            config.application_name("flow");
        }
        let server = server_of(&config);
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Backend {
                message: format!("cannot set up the connection pool: {e}"),
            })?;
        let waiters = Arc::new(Waiters::default());
        let mut store = PgStore {
            conn: Arc::new(Conn {
                pool,
                server,
                retry_for: options.retry_for,
            }),
            schema: String::new(),
            waiters: waiters.clone(),
            // Replaced once the schema is known; aborting a finished task does nothing.
            listener: tokio::spawn(async {}),
            commits: Arc::new(batch::Batcher::new(options.max_batch)),
            creates: Arc::new(batch::Batcher::new(options.max_batch)),
            statuses: Arc::new(batch::Batcher::new(options.max_batch)),
            takes: Arc::new(batch::Batcher::new(options.max_batch)),
        };
        store.schema = store.prepare_schema(options.schema.as_deref()).await?;
        store.listener = listen::start(config, store.schema.clone(), waiters, options.retry_for)
            .await
            .map_err(|e| StoreError::Io {
                message: format!(
                    "cannot connect to PostgreSQL at {} to listen for work: {}",
                    store.conn.server,
                    error::describe(&e)
                ),
            })?;
        Ok(store)
    }

    /// Finds the schema (`schema`, or the connection's current one), refuses a newer one,
    /// and creates or migrates it: trying again on connection failures, within the budget.
    async fn prepare_schema(&self, schema: Option<&str>) -> Result<String, StoreError> {
        let conn = &self.conn;
        let mut backoff = Backoff::new(conn.retry_for);
        loop {
            let error = match conn.pool.get().await {
                Err(e) => error::pool_error(&e, &conn.server),
                Ok(client) => match self.migrate_on(&client, schema).await {
                    Ok(schema) => return Ok(schema),
                    Err(e @ StoreError::Io { .. }) => (Kind::Transient, e),
                    Err(e) => (Kind::Final, e),
                },
            };
            match (error, backoff.next_delay()) {
                ((Kind::Transient, _), Some(delay)) => tokio::time::sleep(delay).await,
                ((_, e), _) => return Err(conn.gave_up(e, &backoff)),
            }
        }
    }

    async fn migrate_on(
        &self,
        client: &tokio_postgres::Client,
        schema: Option<&str>,
    ) -> Result<String, StoreError> {
        let schema = match schema {
            Some(s) => s.to_owned(),
            None => rows::get_at::<Option<String>>(
                &client
                    .query_one("SELECT current_schema()::text", &[])
                    .await
                    .map_err(|e| error::store_error(&e, &self.conn.server))?,
                0,
            )?
            .ok_or_else(|| StoreError::Invalid {
                what: format!(
                    "the search_path of the connections to {} names no schema that exists: \
                         set Options::schema",
                    self.conn.server
                ),
            })?,
        };
        // Refuse a newer schema before writing anything, also the schema itself.
        schema::check_version(client, &schema, &self.conn.server).await?;
        schema::migrate(client, &schema, &self.conn.server).await?;
        Ok(schema)
    }

    /// The schema that holds the store's tables.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// How the store has sent its batched writes so far (see [`Options::max_batch`]): step
    /// commits, runs created or enqueued, status changes, and signals taken. With
    /// `max_batch` at 1 no write goes through the batches, and every count stays zero.
    pub fn batching(&self) -> Batching {
        Batching {
            commits: self.commits.counts(),
            creates: self.creates.counts(),
            statuses: self.statuses.counts(),
            takes: self.takes.counts(),
        }
    }

    /// The server, as the store names it in its messages: `host:port/database`.
    pub fn server(&self) -> &str {
        &self.conn.server
    }

    /// Runs statement `sql` (prepared once per connection) with `params`, trying again as
    /// the [crate documentation](crate) says.
    async fn exec(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        resend: Resend,
    ) -> Result<Answer, StoreError> {
        self.conn.exec(sql, params, resend).await
    }
}

impl Conn {
    /// The error reported after giving up: a connection failure says for how long it was
    /// tried.
    fn gave_up(&self, e: StoreError, backoff: &Backoff) -> StoreError {
        match e {
            StoreError::Io { message } if backoff.attempts() > 1 => StoreError::Io {
                message: format!(
                    "{message} (tried {} times in {:.1} s)",
                    backoff.attempts(),
                    backoff.elapsed().as_secs_f64()
                ),
            },
            other => other,
        }
    }

    /// Runs statement `sql` (prepared once per connection) with `params`, trying again as
    /// the [crate documentation](crate) says.
    async fn exec(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        resend: Resend,
    ) -> Result<Answer, StoreError> {
        self.exec_full(sql, params, resend)
            .await
            .map_err(|f| f.error)
    }

    /// [`exec`](Self::exec), telling also whether a failed statement may have committed in
    /// an earlier attempt.
    async fn exec_full(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        resend: Resend,
    ) -> Result<Answer, Failure> {
        let mut backoff = Backoff::new(self.retry_for);
        let mut in_doubt = false;
        loop {
            let (kind, error) = match self.pool.get().await {
                Err(e) => error::pool_error(&e, &self.server),
                Ok(client) => match client.prepare_cached(sql).await {
                    Err(e) => (
                        error::kind_before_send(&e),
                        error::store_error(&e, &self.server),
                    ),
                    Ok(statement) => match client.query(&statement, params).await {
                        Ok(rows) => return Ok(Answer { rows, in_doubt }),
                        Err(e) => (
                            error::kind_after_send(&e),
                            error::store_error(&e, &self.server),
                        ),
                    },
                },
            };
            let retry = match kind {
                Kind::Transient => true,
                Kind::InDoubt if resend == Resend::Safe => {
                    in_doubt = true;
                    true
                }
                Kind::InDoubt => {
                    return Err(Failure {
                        error: StoreError::Io {
                            message: format!(
                                "{}; the connection was lost while the change was in flight: \
                                 it may or may not have been made",
                                match error {
                                    StoreError::Io { message } => message,
                                    other => other.to_string(),
                                }
                            ),
                        },
                        in_doubt: true,
                    });
                }
                Kind::Final => false,
            };
            match backoff.next_delay() {
                Some(delay) if retry => tokio::time::sleep(delay).await,
                _ => {
                    return Err(Failure {
                        error: self.gave_up(error, &backoff),
                        in_doubt,
                    });
                }
            }
        }
    }
}
