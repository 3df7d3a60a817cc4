//! [`eventually`]: the one way tests wait for a condition. It polls with a short backoff and, when
//! time runs out, fails with a message naming what it waited for, how long, and the last error or
//! observation — so a failing wait says what did not happen, not only that something timed out.
//!
//! A probe returns `Ok(value)` when the condition holds and an error saying what it saw instead
//! (`anyhow::bail!("leader is still node {id}")`). An error wrapped with [`abort`] ends the wait
//! at once: for states the condition can no longer reach (a child process exited).

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// The first pause between attempts; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// The longest pause between attempts.
pub const MAX_BACKOFF: Duration = Duration::from_millis(200);

/// An error that ends an [`eventually`] wait at once (see [`abort`]).
#[derive(Debug)]
pub struct Abort(pub anyhow::Error);

impl std::fmt::Display for Abort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for Abort {}

/// Wraps `err` so that the [`eventually`] wait it is returned to fails at once with it.
pub fn abort(err: impl Into<anyhow::Error>) -> anyhow::Error {
    anyhow::Error::new(Abort(err.into()))
}

/// Runs `probe` until it returns `Ok`, pausing 10 ms, then twice as long each time up to 200 ms,
/// between attempts; an attempt still running when `timeout` is up is cancelled. Fails with
/// "`what`: not within `timeout` (N attempts); last: ..." and the last error, or at once with an
/// [`abort`]ed one.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let started = Instant::now();
    let deadline = started + timeout;
    let mut backoff = FIRST_BACKOFF;
    let mut attempts = 0u32;
    let mut last: Option<String> = None;
    loop {
        attempts += 1;
        match tokio::time::timeout_at(deadline, probe()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(err)) => match err.downcast::<Abort>() {
                Ok(Abort(err)) => {
                    return Err(err.context(format!(
                        "{what}: gave up after {:.1?} ({attempts} attempts)",
                        started.elapsed()
                    )));
                }
                Err(err) => last = Some(format!("{err:#}")),
            },
            Err(_) => {
                let before = last.as_deref().unwrap_or("nothing");
                last = Some(format!(
                    "the last attempt was still running at the deadline (the one before: {before})"
                ));
            }
        }
        let now = Instant::now();
        if now >= deadline {
            anyhow::bail!(
                "{what}: not within {timeout:?} ({attempts} attempts); last: {}",
                last.as_deref().unwrap_or("no attempt finished")
            );
        }
        tokio::time::sleep(backoff.min(deadline - now)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// [`eventually`] for tests without an async runtime: `probe` runs on this thread, so an attempt
/// that blocks is not cancelled (it is checked against the deadline when it returns).
pub fn eventually_blocking<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let started = std::time::Instant::now();
    let deadline = started + timeout;
    let mut backoff = FIRST_BACKOFF;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let last = match probe() {
            Ok(value) => return Ok(value),
            Err(err) => match err.downcast::<Abort>() {
                Ok(Abort(err)) => {
                    return Err(err.context(format!(
                        "{what}: gave up after {:.1?} ({attempts} attempts)",
                        started.elapsed()
                    )));
                }
                Err(err) => err,
            },
        };
        let now = std::time::Instant::now();
        if now >= deadline {
            anyhow::bail!("{what}: not within {timeout:?} ({attempts} attempts); last: {last:#}");
        }
        std::thread::sleep(backoff.min(deadline - now));
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_first_success() -> anyhow::Result<()> {
        let mut calls = 0;
        let got = eventually(Duration::from_secs(5), "third call", || {
            calls += 1;
            let calls = calls;
            async move {
                anyhow::ensure!(calls >= 3, "only {calls} calls");
                Ok(calls)
            }
        })
        .await?;
        assert_eq!(got, 3);
        Ok(())
    }

    #[tokio::test]
    async fn names_what_it_waited_for_and_the_last_error() {
        let err = eventually(
            Duration::from_millis(100),
            "the moon to turn blue",
            || async { Err::<(), _>(anyhow::anyhow!("it is grey")) },
        )
        .await
        .expect_err("never holds");
        let message = format!("{err:#}");
        assert!(
            message.starts_with("the moon to turn blue: not within 100ms")
                && message.ends_with("last: it is grey"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn cancels_an_attempt_that_outlives_the_deadline() {
        let started = Instant::now();
        let err = eventually(Duration::from_millis(100), "a hung call", || async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        })
        .await
        .expect_err("never finishes");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(
            format!("{err:#}").contains("still running at the deadline"),
            "{err:#}"
        );
    }

    #[tokio::test]
    async fn an_aborted_probe_ends_the_wait_at_once() {
        let started = Instant::now();
        let err = eventually(Duration::from_secs(60), "a child to be ready", || async {
            Err::<(), _>(abort(anyhow::anyhow!("the child exited with 1")))
        })
        .await
        .expect_err("aborted");
        assert!(started.elapsed() < Duration::from_secs(10));
        let message = format!("{err:#}");
        assert!(
            message.starts_with("a child to be ready: gave up after")
                && message.ends_with("the child exited with 1"),
            "{message}"
        );
    }

    #[test]
    fn the_blocking_form_names_what_it_waited_for() {
        let mut calls = 0;
        assert_eq!(
            eventually_blocking(Duration::from_secs(5), "second call", || {
                calls += 1;
                anyhow::ensure!(calls >= 2, "first call");
                Ok(calls)
            })
            .expect("holds on the second call"),
            2
        );
        let err = eventually_blocking(Duration::from_millis(50), "never", || {
            Err::<(), _>(anyhow::anyhow!("nope"))
        })
        .expect_err("never holds");
        assert!(format!("{err:#}").ends_with("last: nope"), "{err:#}");
    }
}
