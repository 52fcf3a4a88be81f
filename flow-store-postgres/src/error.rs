//! Our words for the failures of PostgreSQL, of the connection to it and of the pool, and
//! which of them are worth trying again.

use std::error::Error as _;

use flow_runtime::store::StoreError;

/// How a failed statement may be tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// It failed before reaching the server, or the server refused it for a reason that
    /// passes (a serialization failure, a deadlock, a shutdown): nothing was committed.
    Transient,
    /// The connection was lost while the statement was in flight: it may or may not have
    /// committed.
    InDoubt,
    /// Trying again would fail the same way (the store's own errors, a bug, a bad schema).
    Final,
}

/// The SQLSTATEs that the store's functions raise (class `FL`, which PostgreSQL does not
/// use), with the message as the store's `what`.
const NOT_FOUND: &str = "FLNF0";
const CONFLICT: &str = "FLCF0";
const INVALID: &str = "FLIV0";
const LEASE_LOST: &str = "FLLL0";
const DUPLICATE: &str = "FLDP0";

/// Whether a server error `code` means the transaction was rolled back for a reason that
/// passes: serialization failure, deadlock, the server shutting down or starting, too many
/// connections, and every connection exception (class 08).
fn transient_code(code: &str) -> bool {
    matches!(
        code,
        "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "53300"
    ) || code.starts_with("08")
}

/// `e` with its causes, as one line.
pub(crate) fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// Whether `e` is a failure of the connection itself (not an answer of the server).
fn is_connection_failure(e: &tokio_postgres::Error) -> bool {
    if e.as_db_error().is_some() {
        return false;
    }
    if e.is_closed() {
        return true;
    }
    let mut source = e.source();
    while let Some(cause) = source {
        if cause.is::<std::io::Error>() {
            return true;
        }
        source = cause.source();
    }
    let text = e.to_string();
    text.starts_with("error connecting")
        || text.starts_with("error communicating")
        || text.starts_with("timeout")
}

/// How a statement that failed with `e` after it was sent may be tried again.
pub(crate) fn kind_after_send(e: &tokio_postgres::Error) -> Kind {
    match e.code() {
        Some(code) if transient_code(code.code()) => Kind::Transient,
        Some(_) => Kind::Final,
        None if is_connection_failure(e) => Kind::InDoubt,
        None => Kind::Final,
    }
}

/// How a failure before the statement was sent (getting a connection, preparing) may be
/// tried again: a connection failure passes, nothing was written.
pub(crate) fn kind_before_send(e: &tokio_postgres::Error) -> Kind {
    match e.code() {
        Some(code) if transient_code(code.code()) => Kind::Transient,
        Some(_) => Kind::Final,
        None if is_connection_failure(e) => Kind::Transient,
        None => Kind::Final,
    }
}

/// The store's error for `e`, a failure of a statement against the server at `server`.
pub(crate) fn store_error(e: &tokio_postgres::Error, server: &str) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let what = db.message().to_owned();
        return match db.code().code() {
            NOT_FOUND => StoreError::NotFound { what },
            CONFLICT => StoreError::Conflict { what },
            INVALID => StoreError::Invalid { what },
            // The client knows the run and the epoch: it fills them in (`fenced`).
            LEASE_LOST => StoreError::LeaseLost {
                run: String::new(),
                epoch: 0,
            },
            DUPLICATE => StoreError::Duplicate {
                key: String::new(),
                run: db.detail().unwrap_or_default().to_owned(),
            },
            // A unique key held by another record (a restarted run whose deduplication key
            // another run in flight holds now).
            "23505" => StoreError::Conflict {
                what: format!("{what} ({})", db.detail().unwrap_or_default()),
            },
            code => StoreError::Backend {
                message: format!("PostgreSQL at {server}: {what} (SQLSTATE {code})"),
            },
        };
    }
    if is_connection_failure(e) {
        StoreError::Io {
            message: format!("PostgreSQL at {server}: {}", describe(e)),
        }
    } else {
        StoreError::Backend {
            message: format!("PostgreSQL at {server}: {}", describe(e)),
        }
    }
}

/// The error of a pool that could not hand out a connection.
pub(crate) fn pool_error(e: &deadpool_postgres::PoolError, server: &str) -> (Kind, StoreError) {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Backend(e) => (
            kind_before_send(e),
            match e.as_db_error() {
                // The server answered, and refused (authentication, no such database).
                Some(db) => StoreError::Io {
                    message: format!(
                        "cannot connect to PostgreSQL at {server}: {} (SQLSTATE {})",
                        db.message(),
                        db.code().code()
                    ),
                },
                None => StoreError::Io {
                    message: format!("cannot connect to PostgreSQL at {server}: {}", describe(e)),
                },
            },
        ),
        PoolError::Timeout(_) => (
            Kind::Transient,
            StoreError::Io {
                message: format!("cannot connect to PostgreSQL at {server}: {e}"),
            },
        ),
        PoolError::Closed => (Kind::Final, StoreError::Closed),
        other => (
            Kind::Final,
            StoreError::Backend {
                message: format!("the connection pool for PostgreSQL at {server}: {other}"),
            },
        ),
    }
}
