//! Waiting on a condition with a deadline: the only way tests wait for something another task or
//! process does (no fixed sleeps, no unbounded loops).

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

/// How often a condition is polled. Polling is not synchronisation: only the condition decides.
const POLL: Duration = Duration::from_millis(20);

/// Polls `probe` until it returns `Ok(value)` and returns that value; panics naming `what` and the
/// last `Err` seen when `within` has passed first.
pub async fn wait_for<T, E, F, Fut>(within: Duration, what: &str, mut probe: F) -> T
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let last = match probe().await {
            Ok(value) => return value,
            Err(last) => last,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}; last seen: {last:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `cond` until it holds; panics naming `what` when `within` has passed first.
pub async fn wait_until<F, Fut>(within: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(within, what, || {
        let holds = cond();
        async move { if holds.await { Ok(()) } else { Err(()) } }
    })
    .await;
}

/// [`wait_until`] for a condition that needs no `await` (a counter, a file, a child's exit).
pub async fn wait_until_sync(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    wait_until(within, what, || std::future::ready(cond())).await;
}
