//! The live status of a `weir bench` run on standard error: the phase and the current publish
//! and consume rates, from counters every producer and consumer task bumps ([`Live`]).
//!
//! On a terminal it is an indicatif status line, redrawn in place and cleared at the end. When
//! standard error is not a terminal there is no status line; without `--json` a plain line is
//! printed per phase and every 10 s instead. Standard output is never written to here, so
//! `--json` output stays one clean object.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::stats::thousands;

/// Counters every task of the run adds to (relaxed: only the status line reads them live;
/// figures in the report come from each task's own counts).
#[derive(Debug, Default)]
pub(crate) struct Live {
    pub(crate) published: AtomicU64,
    pub(crate) published_bytes: AtomicU64,
    pub(crate) consumed: AtomicU64,
    pub(crate) consumed_bytes: AtomicU64,
    pub(crate) errors: AtomicU64,
}

impl Live {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> [u64; 5] {
        [
            self.published.load(Ordering::Relaxed),
            self.published_bytes.load(Ordering::Relaxed),
            self.consumed.load(Ordering::Relaxed),
            self.consumed_bytes.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        ]
    }
}

#[derive(Debug)]
struct Inner {
    bar: Option<ProgressBar>,
    /// Print plain lines (standard error is not a terminal, and no `--json`).
    plain: bool,
    phase: Mutex<String>,
    started: Instant,
}

/// The status display (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct Progress(Arc<Inner>);

/// How often the status line is refreshed, and how often a plain line is printed.
const TICK: Duration = Duration::from_millis(500);
const PLAIN_EVERY: Duration = Duration::from_secs(10);

impl Progress {
    pub(crate) fn new(json: bool) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = terminal.then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed}] {msg}") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self(Arc::new(Inner {
            bar,
            plain: !terminal && !json,
            phase: Mutex::new(String::new()),
            started: Instant::now(),
        }))
    }

    /// Starts a new phase (shown until the next one).
    pub(crate) fn phase(&self, text: &str) {
        *self.0.phase.lock().unwrap_or_else(|e| e.into_inner()) = text.to_string();
        if let Some(bar) = &self.0.bar {
            bar.set_message(text.to_string());
        }
        if self.0.plain {
            eprintln!(
                "weir bench [{:>6.1}s] {text}",
                self.0.started.elapsed().as_secs_f64()
            );
        }
    }

    /// Shows rates from `live` until the returned guard is dropped.
    pub(crate) fn watch(&self, live: Arc<Live>) -> Watch {
        let inner = Arc::clone(&self.0);
        Watch(tokio::spawn(async move {
            let mut last = live.snapshot();
            let mut last_at = Instant::now();
            let mut last_plain = Instant::now();
            let mut ticks = tokio::time::interval(TICK);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let now = Instant::now();
                let current = live.snapshot();
                let secs = now.duration_since(last_at).as_secs_f64().max(1e-3);
                let rate = |i: usize| (current[i].saturating_sub(last[i])) as f64 / secs;
                let phase = inner
                    .phase
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                let text = format!(
                    "{phase} | pub {}/s {:.1} MB/s | con {}/s {:.1} MB/s | lag {} | err {}",
                    thousands(rate(0).round() as u64),
                    rate(1) / 1e6,
                    thousands(rate(2).round() as u64),
                    rate(3) / 1e6,
                    thousands(current[0].saturating_sub(current[2])),
                    current[4],
                );
                if let Some(bar) = &inner.bar {
                    bar.set_message(text);
                } else if inner.plain && now.duration_since(last_plain) >= PLAIN_EVERY {
                    eprintln!(
                        "weir bench [{:>6.1}s] {text}",
                        inner.started.elapsed().as_secs_f64()
                    );
                    last_plain = now;
                }
                last = current;
                last_at = now;
            }
        }))
    }

    /// Clears the status line.
    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.0.bar {
            bar.finish_and_clear();
        }
    }
}

/// Stops the rate display when dropped.
#[derive(Debug)]
pub(crate) struct Watch(tokio::task::JoinHandle<()>);

impl Drop for Watch {
    fn drop(&mut self) {
        self.0.abort();
    }
}
