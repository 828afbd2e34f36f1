//! How provider calls are retried: bounded attempts with exponential backoff and jitter
//! (backon, with the sleeper injected), a provider's Retry-After honoured, all inside a time
//! budget, behind a per-provider circuit breaker that opens after repeated transient failures.
//! Time, randomness and sleeping are injected, so the policy is tested without waiting.

use super::lock;
use crate::clock::{Clock, Timestamp};
use crate::gateway::ProviderError;
use crate::random::Random;
use backon::{ExponentialBuilder, Retryable};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Waits out a retry delay. Production sleeps on the tokio timer; tests record the delay or
/// move a manual clock instead.
pub trait Sleeper: Send + Sync + 'static {
    /// A future that completes after `d`.
    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// Sleeps on the tokio timer.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioSleeper;

impl Sleeper for TokioSleeper {
    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(tokio::time::sleep(d))
    }
}

/// Adapts the injected [`Sleeper`] to backon's (a named type: a closure here defeats the
/// compiler's proof that the retry future is `Send`).
struct BackonSleeper(Arc<dyn Sleeper>);

impl backon::Sleeper for BackonSleeper {
    type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn sleep(&self, dur: Duration) -> Self::Sleep {
        self.0.sleep(dur)
    }
}

/// The limits of the policy.
#[derive(Clone, Copy, Debug)]
pub(super) struct RetryLimits {
    /// Calls per operation, the first included (transient failures only).
    pub(super) attempts: u32,
    /// First backoff delay; doubles per retry, plus up to as much again of jitter.
    pub(super) backoff_base: Duration,
    /// No retry starts that would end later than this after the first call began.
    pub(super) budget: Duration,
    /// Consecutive transient failures that open a provider's circuit.
    pub(super) breaker_threshold: u32,
    /// How long an open circuit rejects calls.
    pub(super) breaker_cooldown: Duration,
}

#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Timestamp>,
}

/// Whether a failure may go away by itself (worth a retry, and counted by the breaker).
pub(super) fn is_transient(e: &ProviderError) -> bool {
    matches!(e, ProviderError::Transient { .. } | ProviderError::Other(_))
}

/// One failed attempt, and whether another may follow.
struct Failed {
    error: ProviderError,
    retry: bool,
}

/// Retries and circuit breakers of the provider calls made by issuance.
pub(super) struct RetryPolicy {
    limits: RetryLimits,
    clock: Arc<dyn Clock>,
    random: Arc<dyn Random>,
    sleeper: Arc<dyn Sleeper>,
    breakers: Mutex<HashMap<String, Breaker>>,
}

fn until(from: Timestamp, to: Timestamp) -> Duration {
    Duration::from_millis(u64::try_from(to.as_millis() - from.as_millis()).unwrap_or(0))
}

impl RetryPolicy {
    pub(super) fn new(
        limits: RetryLimits,
        clock: Arc<dyn Clock>,
        random: Arc<dyn Random>,
        sleeper: Arc<dyn Sleeper>,
    ) -> Self {
        Self {
            limits,
            clock,
            random,
            sleeper,
            breakers: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn set_random(&mut self, random: Arc<dyn Random>) {
        self.random = random;
    }

    pub(super) fn set_sleeper(&mut self, sleeper: Arc<dyn Sleeper>) {
        self.sleeper = sleeper;
    }

    /// How delays are waited out (shared with the retries of a refresh result's write).
    pub(super) fn sleeper(&self) -> &Arc<dyn Sleeper> {
        &self.sleeper
    }

    /// Each provider's circuit: (provider, open now) for every provider seen so far.
    pub(super) fn circuit_states(&self) -> Vec<(String, bool)> {
        let now = self.clock.now();
        lock(&self.breakers)
            .iter()
            .map(|(p, b)| (p.clone(), b.open_until.is_some_and(|u| now < u)))
            .collect()
    }

    /// When the provider's circuit is open at `now`, until when.
    fn open_until(&self, provider: &str, now: Timestamp) -> Option<Timestamp> {
        lock(&self.breakers)
            .get(provider)
            .and_then(|b| b.open_until)
            .filter(|u| now < *u)
    }

    fn record(&self, provider: &str, transient: bool) {
        let mut breakers = lock(&self.breakers);
        let b = breakers.entry(provider.to_owned()).or_default();
        if transient {
            b.failures += 1;
            if b.failures >= self.limits.breaker_threshold {
                b.open_until = Some(self.clock.now().plus(self.limits.breaker_cooldown));
                tracing::warn!(provider, "provider circuit opened after repeated failures");
            }
        } else {
            *b = Breaker::default();
        }
    }

    /// Runs `call` against `provider` until it succeeds, fails for good, or the attempts or the
    /// budget run out; an open circuit fails at once without calling.
    pub(super) async fn run<T, F, Fut>(&self, provider: &str, call: F) -> Result<T, ProviderError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        let started = self.clock.now();
        let attempts = AtomicU32::new(0);
        let (this, attempt, call) = (self, &attempts, &call);
        let once = move || async move {
            let n = attempt.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::Span::current().record("attempts", n);
            let now = this.clock.now();
            if let Some(open_until) = this.open_until(provider, now) {
                return Err(Failed {
                    error: ProviderError::Transient {
                        detail: format!(
                            "provider {provider} is failing; calls paused (circuit open)"
                        ),
                        retry_after: Some(until(now, open_until)),
                    },
                    retry: false,
                });
            }
            let result = call().await;
            let transient = result.as_ref().err().is_some_and(is_transient);
            this.record(provider, transient);
            result.map_err(|error| Failed {
                error,
                retry: transient,
            })
        };
        let backoff = ExponentialBuilder::new()
            .with_min_delay(self.limits.backoff_base)
            .with_factor(2.0)
            .without_max_delay()
            .with_max_times(self.limits.attempts.saturating_sub(1) as usize);
        let sleeper = self.sleeper.clone();
        once.retry(backoff)
            .sleep(BackonSleeper(sleeper))
            .when(|f: &Failed| f.retry)
            .adjust(|f: &Failed, next: Option<Duration>| {
                // backon multiplies in f32; whole milliseconds keep the delays exact.
                let backoff = Duration::from_millis(u64::try_from(next?.as_millis()).ok()?);
                let retry_after = match &f.error {
                    ProviderError::Transient { retry_after, .. } => *retry_after,
                    _ => None,
                };
                let delay =
                    retry_after.unwrap_or_else(|| backoff + self.random.fraction().of(backoff));
                let elapsed = until(started, self.clock.now());
                (elapsed + delay <= self.limits.budget).then_some(delay)
            })
            .notify(|f: &Failed, delay: Duration| {
                tracing::info!(
                    provider,
                    attempt = attempts.load(Ordering::Relaxed),
                    delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    error = %f.error,
                    "refresh failed; retrying"
                );
            })
            .await
            .map_err(|f| f.error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::random::{FixedRandom, Fraction};
    use std::sync::atomic::AtomicUsize;

    /// Records each delay and moves the manual clock by it: no test waits.
    struct ClockSleeper {
        clock: ManualClock,
        slept: Mutex<Vec<Duration>>,
    }

    impl Sleeper for ClockSleeper {
        fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
            self.clock.advance(d);
            lock(&self.slept).push(d);
            Box::pin(std::future::ready(()))
        }
    }

    struct Harness {
        clock: ManualClock,
        sleeper: Arc<ClockSleeper>,
        policy: RetryPolicy,
        calls: AtomicUsize,
    }

    fn harness(jitter: Fraction) -> Harness {
        let clock = ManualClock::new(Timestamp::from_millis(1_700_000_000_000));
        let sleeper = Arc::new(ClockSleeper {
            clock: clock.clone(),
            slept: Mutex::new(Vec::new()),
        });
        let limits = RetryLimits {
            attempts: 3,
            backoff_base: Duration::from_millis(200),
            budget: Duration::from_secs(30),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(30),
        };
        let policy = RetryPolicy::new(
            limits,
            Arc::new(clock.clone()),
            Arc::new(FixedRandom(jitter)),
            sleeper.clone(),
        );
        Harness {
            clock,
            sleeper,
            policy,
            calls: AtomicUsize::new(0),
        }
    }

    fn server_error() -> ProviderError {
        ProviderError::Transient {
            detail: "500".into(),
            retry_after: None,
        }
    }

    impl Harness {
        /// Calls that fail with `errors` in turn, then succeed.
        async fn run(&self, errors: &[ProviderError]) -> Result<(), ProviderError> {
            let this_run = AtomicUsize::new(0);
            self.policy
                .run("p", || async {
                    self.calls.fetch_add(1, Ordering::SeqCst);
                    let n = this_run.fetch_add(1, Ordering::SeqCst);
                    errors.get(n).cloned().map_or(Ok(()), Err)
                })
                .await
        }

        fn slept(&self) -> Vec<Duration> {
            lock(&self.sleeper.slept).clone()
        }

        fn calls(&self) -> usize {
            self.calls.swap(0, Ordering::SeqCst)
        }
    }

    #[tokio::test]
    async fn transient_failures_back_off_exponentially_with_the_injected_jitter() {
        let h = harness(Fraction::from_bits(1 << 31)); // half the backoff again
        assert!(h.run(&[server_error(), server_error()]).await.is_ok());
        assert_eq!(h.calls(), 3);
        assert_eq!(
            h.slept(),
            [Duration::from_millis(300), Duration::from_millis(600)]
        );
    }

    #[tokio::test]
    async fn attempts_are_bounded_and_permanent_failures_are_not_retried() {
        let h = harness(Fraction::ZERO);
        let err = h.run(&vec![server_error(); 5]).await.unwrap_err();
        assert!(matches!(err, ProviderError::Transient { .. }));
        assert_eq!(h.calls(), 3);
        let err = h
            .run(&[ProviderError::Permanent("invalid_grant".into())])
            .await
            .unwrap_err();
        assert!(matches!(err, ProviderError::Permanent(_)));
        assert_eq!(h.calls(), 1);
    }

    #[tokio::test]
    async fn retry_after_is_honoured_within_the_budget() {
        let h = harness(Fraction::ZERO);
        let limited = |secs| ProviderError::Transient {
            detail: "429".into(),
            retry_after: Some(Duration::from_secs(secs)),
        };
        assert!(h.run(&[limited(1)]).await.is_ok());
        assert_eq!(h.slept(), [Duration::from_secs(1)]);
        // A Retry-After past the budget ends the attempts at once.
        assert!(h.run(&[limited(31)]).await.is_err());
        assert_eq!(h.calls(), 3); // 2 for the first run, 1 for the second
        assert_eq!(h.slept(), [Duration::from_secs(1)]);
    }

    #[tokio::test]
    async fn the_circuit_opens_after_repeated_failures_and_closes_after_the_cooldown() {
        let h = harness(Fraction::ZERO);
        // Five transient failures in a row (two operations) open the circuit.
        let _ = h.run(&vec![server_error(); 3]).await;
        let _ = h.run(&[server_error(), server_error()]).await;
        assert_eq!(h.calls(), 5);
        assert_eq!(h.policy.circuit_states(), [("p".to_owned(), true)]);
        let err = h.run(&[]).await.unwrap_err();
        assert_eq!(h.calls(), 0, "an open circuit does not call the provider");
        let ProviderError::Transient { retry_after, .. } = err else {
            panic!("{err:?}")
        };
        assert!(retry_after.is_some_and(|d| d <= Duration::from_secs(30)));
        h.clock.advance(Duration::from_secs(31));
        assert!(h.run(&[]).await.is_ok());
        assert_eq!(h.calls(), 1);
        assert_eq!(h.policy.circuit_states(), [("p".to_owned(), false)]);
    }
}
