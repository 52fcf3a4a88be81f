//! Every keyword the macros understand, in one place.

pub(crate) const RETRY: &str = "retry";
pub(crate) const TIMEOUT: &str = "timeout";
pub(crate) const COMPENSATE: &str = "compensate";
pub(crate) const CATCH: &str = "catch";
pub(crate) const SETTLE: &str = "settle";
/// `#[label(name)]` on a step statement in `#[workflow]`: the step's name and identity.
pub(crate) const LABEL: &str = "label";
/// `#[workflow(durable)]`: runs recorded in a store and resumed after a restart.
pub(crate) const DURABLE: &str = "durable";

/// Step policies (attributes in `#[workflow]`, `[...]` lists in `flow!`).
pub(crate) const STEP_POLICIES: &[&str] = &[RETRY, TIMEOUT, COMPENSATE, CATCH];

pub(crate) const MAX_ATTEMPTS: &str = "max_attempts";
pub(crate) const BACKOFF: &str = "backoff";
pub(crate) const MAX_DELAY: &str = "max_delay";
pub(crate) const JITTER: &str = "jitter";
pub(crate) const MAX_ELAPSED: &str = "max_elapsed";
pub(crate) const WHEN: &str = "when";
pub(crate) const ON: &str = "on";

/// Keys of `retry(...)`.
pub(crate) const RETRY_KEYS: &[&str] = &[
    MAX_ATTEMPTS,
    BACKOFF,
    MAX_DELAY,
    JITTER,
    MAX_ELAPSED,
    WHEN,
    ON,
];

pub(crate) const EXPONENTIAL: &str = "exponential";
pub(crate) const CONSTANT: &str = "constant";
pub(crate) const NONE: &str = "none";
pub(crate) const BACKOFF_KINDS: &[&str] = &[EXPONENTIAL, CONSTANT, NONE];

pub(crate) const FULL: &str = "full";
pub(crate) const EQUAL: &str = "equal";
pub(crate) const JITTER_KINDS: &[&str] = &[NONE, FULL, EQUAL];

pub(crate) const ANY: &str = "any";
pub(crate) const ERRORS: &str = "errors";
pub(crate) const TIMEOUTS: &str = "timeouts";
pub(crate) const ON_KINDS: &[&str] = &[ANY, ERRORS, TIMEOUTS];
pub(crate) const PANICS: &str = "panics";
/// `catch(recover, on = ..)`: a catch may also take panics.
pub(crate) const CATCH_ON_KINDS: &[&str] = &[ANY, ERRORS, TIMEOUTS, PANICS];

pub(crate) const NAME: &str = "name";
pub(crate) const ERROR: &str = "error";
pub(crate) const CRATE: &str = "crate";
pub(crate) const COMPENSATION_TIMEOUT: &str = "compensation_timeout";
pub(crate) const COMPENSATE_ON_DROP: &str = "compensate_on_drop";
/// Options of `#[workflow(...)]`.
pub(crate) const WORKFLOW_OPTIONS: &[&str] = &[
    DURABLE,
    TIMEOUT,
    NAME,
    CRATE,
    COMPENSATION_TIMEOUT,
    COMPENSATE_ON_DROP,
];
/// Options of a `flow!` header.
pub(crate) const FLOW_OPTIONS: &[&str] = &[
    NAME,
    DURABLE,
    TIMEOUT,
    ERROR,
    CRATE,
    COMPENSATION_TIMEOUT,
    COMPENSATE_ON_DROP,
];

pub(crate) const MAP: &str = "map";
pub(crate) const BRANCH: &str = "branch";
pub(crate) const SIGNAL: &str = "signal";
pub(crate) const CONCURRENCY: &str = "concurrency";
pub(crate) const TOLERATE: &str = "tolerate";
pub(crate) const MAP_KEYS: &[&str] = &[CONCURRENCY, TOLERATE];
