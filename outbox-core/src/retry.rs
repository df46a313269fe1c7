//! [`RetryPolicy`]: exponential backoff with jitter, a cap, and a maximum number of attempts.
//!
//! The delay is computed from the attempt count stored with the message, not from an iterator's state,
//! so any relay can compute the next delay of any message after a restart.

use std::time::Duration;

use rand::Rng;

use crate::error::{Error, Result};

/// How the computed delay is randomized, so that many failures do not retry in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Jitter {
    /// The exact exponential delay.
    None,
    /// A uniform delay between half the exponential delay and the delay (the default).
    #[default]
    Equal,
    /// A uniform delay between zero and the exponential delay.
    Full,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again after this delay.
    RetryAfter(Duration),
    /// Attempts are used up: park the message in the dead letters.
    DeadLetter,
}

/// Exponential backoff: attempt `n` (1-based) that failed waits `initial * multiplier^(n-1)`, capped at
/// `max_delay` and jittered; after `max_attempts` attempts the message is dead-lettered.
///
/// The default: 1 s initial delay, ×2, capped at 10 minutes, equal jitter, 25 attempts.
///
/// ```
/// use outbox_engine::{RetryPolicy, RetryDecision, Jitter};
/// use std::time::Duration;
///
/// let policy = RetryPolicy::builder()
///     .initial_delay(Duration::from_millis(100))
///     .max_delay(Duration::from_secs(5))
///     .max_attempts(3)
///     .jitter(Jitter::None)
///     .build()?;
/// assert_eq!(policy.decide(1), RetryDecision::RetryAfter(Duration::from_millis(100)));
/// assert_eq!(policy.decide(2), RetryDecision::RetryAfter(Duration::from_millis(200)));
/// assert_eq!(policy.decide(3), RetryDecision::DeadLetter);
/// # Ok::<(), outbox_engine::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    initial_delay: Duration,
    max_delay: Duration,
    multiplier: f64,
    max_attempts: u32,
    jitter: Jitter,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(600),
            multiplier: 2.0,
            max_attempts: 25,
            jitter: Jitter::Equal,
        }
    }
}

impl RetryPolicy {
    /// A builder starting from the defaults.
    pub fn builder() -> RetryPolicyBuilder {
        RetryPolicyBuilder { policy: Self::default() }
    }

    /// Attempts before a message is dead-lettered.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The decision after attempt number `attempts` (1-based) failed, with the thread-local RNG.
    pub fn decide(&self, attempts: u32) -> RetryDecision {
        self.decide_with_rng(attempts, &mut rand::rng())
    }

    /// The decision after attempt number `attempts` failed, with the given RNG (for tests).
    pub fn decide_with_rng<R: Rng + ?Sized>(&self, attempts: u32, rng: &mut R) -> RetryDecision {
        if attempts >= self.max_attempts {
            RetryDecision::DeadLetter
        } else {
            RetryDecision::RetryAfter(self.delay_with_rng(attempts, rng))
        }
    }

    /// The jittered delay after attempt number `attempts` failed.
    pub fn delay_with_rng<R: Rng + ?Sized>(&self, attempts: u32, rng: &mut R) -> Duration {
        let exponent = attempts.saturating_sub(1).min(1024) as i32;
        let base = self.initial_delay.as_secs_f64() * self.multiplier.powi(exponent);
        let capped = base.min(self.max_delay.as_secs_f64());
        let secs = match self.jitter {
            Jitter::None => capped,
            Jitter::Equal => capped / 2.0 + rng.random::<f64>() * capped / 2.0,
            Jitter::Full => rng.random::<f64>() * capped,
        };
        Duration::from_secs_f64(secs)
    }
}

/// Builds a validated [`RetryPolicy`].
#[derive(Debug, Clone)]
pub struct RetryPolicyBuilder {
    policy: RetryPolicy,
}

impl RetryPolicyBuilder {
    /// Delay after the first failed attempt (default 1 s).
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.policy.initial_delay = delay;
        self
    }
    /// Longest delay (default 10 minutes).
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.policy.max_delay = delay;
        self
    }
    /// Growth factor per attempt, at least 1 (default 2).
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.policy.multiplier = multiplier;
        self
    }
    /// Attempts before dead-lettering, at least 1 (default 25).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.policy.max_attempts = attempts;
        self
    }
    /// Randomization (default [`Jitter::Equal`]).
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.policy.jitter = jitter;
        self
    }
    /// Checks the values and returns the policy.
    pub fn build(self) -> Result<RetryPolicy> {
        let p = self.policy;
        if p.max_attempts == 0 {
            return Err(Error::invalid_config("retry max_attempts must be at least 1"));
        }
        if !(p.multiplier.is_finite() && p.multiplier >= 1.0) {
            return Err(Error::invalid_config("retry multiplier must be a finite number >= 1"));
        }
        if p.max_delay < p.initial_delay {
            return Err(Error::invalid_config("retry max_delay must not be shorter than initial_delay"));
        }
        if p.max_delay > Duration::from_secs(365 * 24 * 3600) {
            return Err(Error::invalid_config("retry max_delay must not exceed one year"));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn delays_grow_exponentially_and_are_capped() {
        let p = RetryPolicy::builder()
            .initial_delay(Duration::from_secs(1))
            .max_delay(Duration::from_secs(10))
            .jitter(Jitter::None)
            .build()
            .unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        let delays: Vec<u64> = (1..=6).map(|n| p.delay_with_rng(n, &mut rng).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        assert_eq!(p.delay_with_rng(u32::MAX, &mut rng), Duration::from_secs(10));
    }

    #[test]
    fn equal_jitter_stays_within_half_and_whole() {
        let p = RetryPolicy::default();
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 1..24 {
            let exact = (2f64.powi(attempt as i32 - 1)).min(600.0);
            let d = p.delay_with_rng(attempt, &mut rng).as_secs_f64();
            assert!(d >= exact / 2.0 - 1e-9 && d <= exact + 1e-9, "attempt {attempt}: {d} vs {exact}");
        }
    }

    #[test]
    fn default_dead_letters_after_25_attempts() {
        let p = RetryPolicy::default();
        assert!(matches!(p.decide(24), RetryDecision::RetryAfter(_)));
        assert_eq!(p.decide(25), RetryDecision::DeadLetter);
    }

    #[test]
    fn invalid_values_are_rejected() {
        assert!(RetryPolicy::builder().max_attempts(0).build().is_err());
        assert!(RetryPolicy::builder().multiplier(f64::NAN).build().is_err());
        assert!(RetryPolicy::builder().multiplier(0.5).build().is_err());
        assert!(RetryPolicy::builder()
            .initial_delay(Duration::from_secs(5))
            .max_delay(Duration::from_secs(1))
            .build()
            .is_err());
    }
}
