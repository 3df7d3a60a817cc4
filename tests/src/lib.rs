//! Integration and fault tests for Weir. The tests live in `tests/tests/`; helper programs they
//! drive (for example the storage crash child) live in `src/bin/`; code shared between the two
//! lives here.

pub mod crash;
pub mod process_cluster;
pub mod raft_cluster;
pub mod workload;

/// Logs to the test's output when `RUST_LOG` is set (`RUST_LOG=info cargo test ...`).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
