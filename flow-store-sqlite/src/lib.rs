//! The embedded SQLite store of [`flow`](https://docs.rs/flow): the durable state of runs in
//! one file, behind the [`Store`] trait of `flow_runtime::store`.
//!
//! ```
//! use std::sync::Arc;
//! use flow_runtime::store::{NewRun, StepCommit, StepKey, StepOutcome, Store, new_run_id};
//! use flow_store_sqlite::SqliteStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let path = std::env::temp_dir().join(format!("flow-doc-{}.db", new_run_id()));
//! let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path)?);
//!
//! let run = store
//!     .create_run(NewRun {
//!         id: "order-1234".into(), // a workflow id: creating it again returns this run
//!         workflow: "provision".into(),
//!         fingerprint: 0x1234,
//!         node_fingerprints: Default::default(),
//!         input: br#"{"nodes":3}"#.to_vec(),
//!     })
//!     .await?;
//! assert!(run.created);
//!
//! let step = StepKey::new("order-1234", "launch_nodes");
//! let commit = StepCommit {
//!     key: step.clone(),
//!     outcome: StepOutcome::Completed(b"[1,2,3]".to_vec()),
//!     attempts: Vec::new(),
//!     compensations: Vec::new(),
//! };
//! assert!(store.commit_step(commit.clone()).await?.first);
//! assert!(!store.commit_step(commit).await?.first); // idempotent
//! assert_eq!(store.steps_of("order-1234").await?.len(), 1);
//!
//! drop(store);
//! for suffix in ["", "-wal", "-shm"] {
//!     let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Durability
//!
//! On open the store sets, and reads back (failing if a setting did not take):
//!
//! - `journal_mode=WAL`: a commit appends to the write-ahead log instead of rewriting pages,
//!   and readers never block the writer;
//! - `synchronous` as [`Options::synchronous`] asks, by default [`Synchronous::Full`]: the log
//!   is fsynced at every commit, so a commit survives a power loss or an OS crash, not only a
//!   crash of the process. A durable run promises that a recorded step is not executed again
//!   and that a created run id is never lost, and only `FULL` keeps that promise when the
//!   machine goes down. [`Synchronous::Normal`] (fsync only at checkpoints) is safe against
//!   process crashes, and much faster per commit, but the last commits before a power loss
//!   may be lost: choose it for runs that can be repeated;
//! - `busy_timeout` ([`Options::busy_timeout`]): how long a writer waits for another
//!   connection (another process on the same file) before giving up with
//!   [`StoreError::Busy`];
//! - `foreign_keys=ON`: a step, compensation or signal cannot outlive its run.
//!
//! Every write runs in a `BEGIN IMMEDIATE` transaction, which takes the write lock at once
//! (a deferred transaction that upgrades from read to write can fail with `SQLITE_BUSY`
//! without waiting).
//!
//! # Group commit
//!
//! SQLite is synchronous, so the store owns two threads: a writer with the read-write
//! connection and a reader with a read-only one. A write made while the store is idle
//! (nothing queued, the connection free) runs at once on the calling thread, in a transaction
//! of its own ([`Options::inline_writes`], on by default): handing it to another thread and
//! back costs more than the commit (two thread wake-ups, about 50 us on the machines
//! measured). A write that finds the store busy is queued to the writer, which takes
//! everything queued (up to [`Options::max_batch`]) and commits it in one transaction, each
//! request in its own savepoint (a failing request is rolled back alone). One fsync serves
//! many concurrent runs, which is what makes tens of thousands of durable steps a second
//! possible with `synchronous=FULL`. A write's answer comes after its commit. A request is
//! run or queued when the method is called: dropping the future does not cancel it.
//!
//! # What a run writes
//!
//! A run started in place is one transaction ([`Store::create_running`]: the run, already
//! running, with its nodes' fingerprints in its row), then one a step, then one for its end: 12 for a
//! 10-step run. A step's commit is a single `INSERT` of its row, with nothing read back (its
//! record is what was written); only a step that has a row already (a retried step's
//! progress, or a commit made before) takes a second statement. With `NORMAL`, a step costs
//! about three bare SQLite transactions of one row each (BENCHMARKS.md); most of the rest is
//! SQLite's own work: the WAL frames of the pages a commit changes (a run's creation changes
//! five b-trees: the run and four indexes), and the locks it takes and releases.
//!
//! # Schema
//!
//! The `flow_schema` table holds the schema version ([`SCHEMA_VERSION`]); migrations run in
//! order, one transaction each. A file written by a newer version of flow is refused with
//! [`StoreError::NewerSchema`] before anything is written to it. The tables: `flow_runs`
//! (key: `id`; since schema version 5 its `nodes` column holds each node's fingerprint, one
//! JSON object, where version 1 had a table `flow_run_nodes`), `flow_steps`
//! (`run_id, node, occurrence, item`), `flow_step_attempts` (the step's key and `number`),
//! `flow_compensations` (`run_id, seq`), `flow_signals` (`run_id, seq`), `flow_graphs`
//! (`workflow, fingerprint`: the graphs that tools without the workflow's code draw runs
//! with; since schema version 2), `flow_history` (`run_id, seq`: what was done to a run from
//! outside its code; since schema version 3). `flow_runs` is indexed for listing in creation
//! order: all runs, by status, by workflow, and by workflow and status together (since
//! schema version 4), so that every page of a listing reads only its own runs.

mod ops;
mod schema;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use flow_runtime::store::{
    Committed, CompensationOp, CompensationRecord, Created, HistoryRecord, NewHistory, NewRun,
    RunFilter, RunPage, RunRecord, RunStatus, SignalRecord, StepCommit, StepKey, StepProgress,
    StepRecord, Store, StoreError, StoreFuture,
};

pub use crate::schema::SCHEMA_VERSION;
use crate::worker::{Job, ReadJob, WriteJob, Writes};

/// When SQLite waits for the disk ([`Options::synchronous`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Synchronous {
    /// `synchronous=FULL`: fsync the log at every commit. A commit survives power loss. The
    /// default.
    #[default]
    Full,
    /// `synchronous=NORMAL`: fsync only at checkpoints. In WAL mode a commit survives a crash
    /// of the process, but not always a power loss or an OS crash.
    Normal,
}

impl Synchronous {
    fn pragma(self) -> (&'static str, i64) {
        match self {
            Synchronous::Full => ("FULL", 2),
            Synchronous::Normal => ("NORMAL", 1),
        }
    }
}

/// How [`SqliteStore::open_with`] sets up the store. `Options::default()` is what
/// [`SqliteStore::open`] uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// When SQLite waits for the disk. Default: [`Synchronous::Full`].
    pub synchronous: Synchronous,
    /// How long a write waits for another connection's lock. Default: 5 seconds.
    pub busy_timeout: Duration,
    /// The most requests committed in one transaction (group commit). Default: 512.
    pub max_batch: usize,
    /// Whether a write made while the store is idle (nothing queued, the connection free)
    /// runs at once on the calling thread, in a transaction of its own, instead of going to
    /// the writer thread. Default: `true`. Handing a write to another thread and back costs
    /// more than the commit itself on the machines measured (about 50 us for the two
    /// wake-ups, against 12 us for a commit with `NORMAL`), so one run at a time commits
    /// much sooner; under load writes still queue and are committed in groups. The calling
    /// thread waits for the commit, fsync included with `FULL`: set `false` to keep every
    /// write off the caller's thread (a runtime whose threads must never wait on the disk).
    pub inline_writes: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            synchronous: Synchronous::Full,
            busy_timeout: Duration::from_secs(5),
            max_batch: 512,
            inline_writes: true,
        }
    }
}

/// A [`Store`] in one SQLite file. See the [crate documentation](crate) for its guarantees.
///
/// Share it as `Arc<dyn Store>` (or `Arc<SqliteStore>`). Several stores, in one process or
/// in several, may open the same file: SQLite's locks serialize their writes. Dropping the
/// store ends its threads once the requests already queued are done.
pub struct SqliteStore {
    // `None` only while dropping.
    writer: Option<mpsc::Sender<Box<dyn WriteJob>>>,
    reader: Option<mpsc::Sender<ReadJob>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    writes: Arc<Writes>,
    /// [`Options::inline_writes`].
    inline: bool,
    path: PathBuf,
}

impl Drop for SqliteStore {
    /// Closes the channels and waits for the threads: the requests already queued are done
    /// and the connections closed when `drop` returns, so the file can be reopened, copied or
    /// removed at once.
    fn drop(&mut self) {
        self.writer.take();
        self.reader.take();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// The settings of a store's write connection, as SQLite reports them
/// ([`SqliteStore::settings`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// `PRAGMA journal_mode`: `wal`.
    pub journal_mode: String,
    /// `PRAGMA synchronous`.
    pub synchronous: Synchronous,
    /// `PRAGMA foreign_keys`.
    pub foreign_keys: bool,
    /// `PRAGMA busy_timeout`.
    pub busy_timeout: Duration,
    /// The schema version in `flow_schema`.
    pub schema_version: u32,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Our words for a SQLite failure.
pub(crate) fn sql_error(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    match &e {
        rusqlite::Error::SqliteFailure(err, _) => match err.code {
            C::DatabaseBusy | C::DatabaseLocked => StoreError::Busy,
            C::NotADatabase | C::DatabaseCorrupt => StoreError::Corrupt {
                what: format!("not a valid SQLite database ({e})"),
            },
            C::CannotOpen
            | C::SystemIoFailure
            | C::DiskFull
            | C::PermissionDenied
            | C::ReadOnly
            | C::FileLockingProtocolFailed => StoreError::Io {
                message: e.to_string(),
            },
            _ => StoreError::Backend {
                message: e.to_string(),
            },
        },
        _ => StoreError::Backend {
            message: e.to_string(),
        },
    }
}

fn in_file(path: &Path, e: StoreError) -> StoreError {
    let at = path.display();
    match e {
        StoreError::Corrupt { what } => StoreError::Corrupt {
            what: format!("{at}: {what}"),
        },
        StoreError::Io { message } => StoreError::Io {
            message: format!("{at}: {message}"),
        },
        StoreError::Backend { message } => StoreError::Backend {
            message: format!("{at}: {message}"),
        },
        other => other,
    }
}

fn connect(
    path: &Path,
    flags: OpenFlags,
    busy_timeout: Duration,
) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(path, flags).map_err(sql_error)?;
    conn.busy_timeout(busy_timeout).map_err(sql_error)?;
    // Every statement the store runs stays prepared (rusqlite keeps 16 by default, fewer than
    // the store's statements: a full cache parsed statements again at every use).
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// How many prepared statements a connection keeps: more than the store has.
const STATEMENT_CACHE: usize = 128;

/// Sets `pragma` to `value` and reads it back: `want` or an error.
fn pragma(conn: &Connection, name: &str, value: &str, want: &str) -> Result<(), StoreError> {
    conn.pragma_update(None, name, value).map_err(sql_error)?;
    let got: String = conn
        .pragma_query_value(None, name, |r| {
            // journal_mode reads back as text, the others as integers.
            Ok(match r.get_ref(0)? {
                rusqlite::types::ValueRef::Integer(i) => i.to_string(),
                other => other.as_str().unwrap_or_default().to_owned(),
            })
        })
        .map_err(sql_error)?;
    if got.eq_ignore_ascii_case(want) {
        Ok(())
    } else {
        Err(StoreError::Backend {
            message: format!("PRAGMA {name} = {value} did not take: it reads back as {got}"),
        })
    }
}

impl SqliteStore {
    /// Opens (or creates) the store in file `path`, with the default [`Options`]
    /// (`synchronous=FULL`).
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] if the file cannot be opened (its directory is missing, for
    /// example), [`StoreError::Corrupt`] if it is not a SQLite database or not a flow store,
    /// [`StoreError::NewerSchema`] if a newer version of flow wrote it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, Options::default())
    }

    /// Opens (or creates) the store in file `path`, set up as `options` says.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open), and [`StoreError::Backend`] if a pragma does not read back as
    /// it was set.
    pub fn open_with(path: impl AsRef<Path>, options: Options) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        Self::open_inner(&path, &options).map_err(|e| in_file(&path, e))
    }

    fn open_inner(path: &Path, options: &Options) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
            && !dir.is_dir()
        {
            return Err(StoreError::Io {
                message: format!("directory {} does not exist", dir.display()),
            });
        }
        let mut conn = connect(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            options.busy_timeout,
        )?;
        // Refuse a newer schema (or another program's database) before writing anything.
        schema::check_version(&conn)?;
        pragma(&conn, "journal_mode", "WAL", "wal")?;
        let (sync, level) = options.synchronous.pragma();
        pragma(&conn, "synchronous", sync, &level.to_string())?;
        pragma(&conn, "foreign_keys", "ON", "1")?;
        schema::migrate(&mut conn)?;

        let read = connect(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            options.busy_timeout,
        )?;
        pragma(&read, "query_only", "ON", "1")?;

        let writes = Arc::new(Writes::new(conn));
        let (writer, write_rx) = mpsc::channel();
        let (reader, read_rx) = mpsc::channel();
        let spawn_error = |e: std::io::Error| StoreError::Io {
            message: format!("cannot start the store's thread: {e}"),
        };
        let (shared, max_batch) = (Arc::clone(&writes), options.max_batch);
        let threads = vec![
            std::thread::Builder::new()
                .name("flow-sqlite-writer".into())
                .spawn(move || worker::writer(shared, write_rx, max_batch))
                .map_err(spawn_error)?,
            std::thread::Builder::new()
                .name("flow-sqlite-reader".into())
                .spawn(move || worker::reader(read, read_rx))
                .map_err(spawn_error)?,
        ];
        Ok(SqliteStore {
            writer: Some(writer),
            reader: Some(reader),
            threads,
            writes,
            inline: options.inline_writes,
            path: path.to_path_buf(),
        })
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many write transactions this store has committed: with group commit, fewer than
    /// the writes it was asked for when they come concurrently.
    pub fn write_transactions(&self) -> u64 {
        self.writes.commits.load(Ordering::Relaxed)
    }

    /// The settings of the write connection, read from SQLite now: what the store really
    /// runs with.
    ///
    /// # Errors
    ///
    /// If SQLite cannot be queried, or the store is closed.
    pub async fn settings(&self) -> Result<Settings, StoreError> {
        self.write(|c| {
            let text = |name: &str| {
                c.pragma_query_value(None, name, |r| r.get::<_, String>(0))
                    .map_err(sql_error)
            };
            let int = |name: &str| {
                c.pragma_query_value(None, name, |r| r.get::<_, i64>(0))
                    .map_err(sql_error)
            };
            let synchronous = match int("synchronous")? {
                2 => Synchronous::Full,
                1 => Synchronous::Normal,
                other => {
                    return Err(StoreError::Backend {
                        message: format!("synchronous is {other}, neither FULL nor NORMAL"),
                    });
                }
            };
            let version: i64 = c
                .query_row("SELECT version FROM flow_schema WHERE id = 1", [], |r| {
                    r.get(0)
                })
                .map_err(sql_error)?;
            Ok(Settings {
                journal_mode: text("journal_mode")?,
                synchronous,
                foreign_keys: int("foreign_keys")? == 1,
                busy_timeout: Duration::from_millis(
                    u64::try_from(int("busy_timeout")?).unwrap_or(0),
                ),
                schema_version: u32::try_from(version).unwrap_or(0),
            })
        })
        .await
    }

    fn write<T, F>(&self, work: F) -> StoreFuture<'static, T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let mut job: Box<dyn WriteJob> = Box::new(Job::new(work, tx));
        if self.inline {
            match self.writes.try_inline(job) {
                // Answered already: `rx` is ready.
                Ok(()) => {
                    return Box::pin(async move { rx.await.map_err(|_| StoreError::Closed)? });
                }
                Err(busy) => job = busy,
            }
        }
        let sent = match &self.writer {
            Some(writer) => {
                self.writes.queue();
                let sent = writer.send(job).is_ok();
                if !sent {
                    self.writes.unqueue();
                }
                sent
            }
            None => false,
        };
        Box::pin(async move {
            if !sent {
                return Err(StoreError::Closed);
            }
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn read<T, F>(&self, work: F) -> StoreFuture<'static, T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: ReadJob = Box::new(move |conn: &Connection| worker::answer(conn, work, tx));
        let sent = match &self.reader {
            Some(reader) => reader.send(job).is_ok(),
            None => false,
        };
        Box::pin(async move {
            if !sent {
                return Err(StoreError::Closed);
            }
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }
}

impl Store for SqliteStore {
    fn create_run(&self, new: NewRun) -> StoreFuture<'_, Created> {
        self.write(move |c| ops::create_run(c, &new, RunStatus::Pending))
    }

    fn create_running(&self, new: NewRun) -> StoreFuture<'_, Created> {
        self.write(move |c| ops::create_run(c, &new, RunStatus::Running))
    }

    fn get_run<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<RunRecord>> {
        let id = id.to_owned();
        self.read(move |c| ops::get_run(c, &id))
    }

    fn set_status<'a>(
        &'a self,
        id: &'a str,
        status: RunStatus,
        result: Option<Vec<u8>>,
    ) -> StoreFuture<'a, RunRecord> {
        let id = id.to_owned();
        self.write(move |c| ops::set_status(c, &id, status, result))
    }

    fn unfinished_runs(&self) -> StoreFuture<'_, Vec<RunRecord>> {
        self.read(ops::unfinished_runs)
    }

    fn list_runs(&self, filter: RunFilter) -> StoreFuture<'_, RunPage> {
        self.read(move |c| ops::list_runs(c, &filter))
    }

    fn save_progress(&self, progress: StepProgress) -> StoreFuture<'_, ()> {
        self.write(move |c| ops::save_progress(c, &progress))
    }

    fn commit_step(&self, commit: StepCommit) -> StoreFuture<'_, Committed> {
        self.write(move |c| ops::commit_step(c, &commit))
    }

    fn get_step<'a>(&'a self, key: &'a StepKey) -> StoreFuture<'a, Option<StepRecord>> {
        let key = key.clone();
        self.read(move |c| ops::get_step(c, &key))
    }

    fn steps_of<'a>(&'a self, run: &'a str) -> StoreFuture<'a, Vec<StepRecord>> {
        let run = run.to_owned();
        self.read(move |c| ops::steps_of(c, &run))
    }

    fn update_compensations<'a>(
        &'a self,
        run: &'a str,
        changes: Vec<CompensationOp>,
    ) -> StoreFuture<'a, Vec<u64>> {
        let run = run.to_owned();
        self.write(move |c| ops::update_compensations(c, &run, &changes))
    }

    fn compensations_of<'a>(&'a self, run: &'a str) -> StoreFuture<'a, Vec<CompensationRecord>> {
        let run = run.to_owned();
        self.read(move |c| ops::compensations_of(c, &run))
    }

    fn send_signal<'a>(
        &'a self,
        run: &'a str,
        name: &'a str,
        payload: Vec<u8>,
    ) -> StoreFuture<'a, u64> {
        let (run, name) = (run.to_owned(), name.to_owned());
        self.write(move |c| ops::send_signal(c, &run, &name, &payload))
    }

    fn take_signal<'a>(
        &'a self,
        run: &'a str,
        name: &'a str,
    ) -> StoreFuture<'a, Option<SignalRecord>> {
        let (run, name) = (run.to_owned(), name.to_owned());
        self.write(move |c| ops::take_signal(c, &run, &name))
    }

    fn take_signal_into_step<'a>(
        &'a self,
        run: &'a str,
        name: &'a str,
        key: StepKey,
    ) -> StoreFuture<'a, Option<SignalRecord>> {
        let (run, name) = (run.to_owned(), name.to_owned());
        // One writer job: one savepoint, so the take and the commit land together or not.
        self.write(move |c| {
            if ops::get_run(c, &run)?.is_none() {
                return Err(StoreError::NotFound {
                    what: format!("run `{run}`"),
                });
            }
            if ops::get_step(c, &key)?.is_some_and(|s| s.outcome.is_some()) {
                return Ok(None);
            }
            let Some(signal) = ops::take_signal(c, &run, &name)? else {
                return Ok(None);
            };
            ops::commit_step(
                c,
                &StepCommit {
                    key,
                    outcome: flow_runtime::store::StepOutcome::Completed(signal.payload.clone()),
                    attempts: Vec::new(),
                    compensations: Vec::new(),
                },
            )?;
            Ok(Some(signal))
        })
    }

    fn save_graph<'a>(
        &'a self,
        workflow: &'a str,
        fingerprint: u64,
        graph: Vec<u8>,
    ) -> StoreFuture<'a, ()> {
        let workflow = workflow.to_owned();
        self.write(move |c| ops::save_graph(c, &workflow, fingerprint, &graph))
    }

    fn get_graph<'a>(
        &'a self,
        workflow: &'a str,
        fingerprint: u64,
    ) -> StoreFuture<'a, Option<Vec<u8>>> {
        let workflow = workflow.to_owned();
        self.read(move |c| ops::get_graph(c, &workflow, fingerprint))
    }

    fn record_history<'a>(&'a self, run: &'a str, entry: NewHistory) -> StoreFuture<'a, u64> {
        let run = run.to_owned();
        self.write(move |conn| ops::record_history(conn, &run, &entry))
    }

    fn history_of<'a>(&'a self, run: &'a str) -> StoreFuture<'a, Vec<HistoryRecord>> {
        let run = run.to_owned();
        self.read(move |conn| ops::history_of(conn, &run))
    }

    fn reset_steps<'a>(&'a self, run: &'a str, nodes: Vec<String>) -> StoreFuture<'a, RunRecord> {
        let run = run.to_owned();
        self.write(move |c| ops::reset_steps(c, &run, &nodes))
    }
}
