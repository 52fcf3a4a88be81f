//! Step policies: retry rules, delay schedules, jitter and per-attempt timeouts.
//!
//! A [`StepPolicy`] is plain data, built by the macros from a step's attributes and borrowed by
//! the executor; a step without policies does not build one at all.

mod backoff;
mod jitter;
mod retry;

pub use self::backoff::{Backoff, Delays};
pub use self::jitter::{Jitter, SplitMix64};
pub use self::retry::{On, Retry};
pub use crate::glue::CatchOn;
pub use crate::saga::{CompensationPolicy, DEFAULT_COMPENSATION_TIMEOUT};

use core::time::Duration;

/// The policies of one step: its retry rules (in order) and its per-attempt timeout.
#[doc(hidden)]
pub struct StepPolicy<'a, E> {
    /// Retry rules, tried in order against each failure. Empty: no retries.
    pub retry: &'a [Retry<E>],
    /// Limit on each attempt. A timed-out attempt is a failed attempt and may be retried.
    pub timeout: Option<Duration>,
}

impl<E> Clone for StepPolicy<'_, E> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<E> Copy for StepPolicy<'_, E> {}

impl<E> core::fmt::Debug for StepPolicy<'_, E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("StepPolicy")
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl<E> StepPolicy<'_, E> {
    /// No retries, no timeout.
    pub const fn none() -> Self {
        StepPolicy {
            retry: &[],
            timeout: None,
        }
    }
}
