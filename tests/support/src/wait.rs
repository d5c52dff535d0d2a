//! Waiting for a condition instead of sleeping.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// A deadline long enough for anything a healthy test waits for on a busy
/// two-core machine.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);

/// How often a condition is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Polls `condition` until it returns `true`.
///
/// # Panics
/// If `timeout` passes first; the message names `what` was awaited.
///
/// ```no_run
/// # async fn demo(upstream: weir_testsupport::Upstream) {
/// use std::time::Duration;
/// weir_testsupport::wait_until("two hits", Duration::from_secs(5), || async {
///     upstream.hits() == 2
/// })
/// .await;
/// # }
/// ```
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(what, timeout, || {
        let fut = condition();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// Polls `probe` until it returns `Some`, and returns that value.
///
/// # Panics
/// If `timeout` passes first; the message names `what` was awaited.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    let deadline = started + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn returns_once_the_condition_holds() {
        let polls = AtomicU32::new(0);
        wait_until("third poll", Duration::from_secs(5), || async {
            polls.fetch_add(1, Ordering::SeqCst) >= 2
        })
        .await;
        assert_eq!(polls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn wait_for_returns_the_value() {
        let polls = AtomicU32::new(0);
        let v = wait_for("a value", Duration::from_secs(5), || async {
            let n = polls.fetch_add(1, Ordering::SeqCst);
            (n == 1).then_some(n * 10)
        })
        .await;
        assert_eq!(v, 10);
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "waiting for the impossible")]
    async fn panics_naming_what_was_awaited() {
        wait_until("the impossible", Duration::from_secs(1), || async { false }).await;
    }
}
