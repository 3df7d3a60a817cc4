//! Replication tests on in-process clusters over a fault-injecting transport.

use std::time::Duration;

use weir_storage::LogConfig;
use weir_tests::init_tracing;
use weir_tests::raft_cluster::{RaftCluster, record_batch};

const GROUP: &str = "t/0";
const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_replicate_and_agree_on_offsets() -> anyhow::Result<()> {
    init_tracing();
    let mut cluster = RaftCluster::start(3, 1).await?;
    cluster
        .create_group(GROUP, &[1, 2, 3], LogConfig::default())
        .await?;
    let mut last = None;
    for i in 0..50 {
        let applied = cluster
            .write(GROUP, record_batch(&format!("v{i}")), WAIT)
            .await?;
        assert_eq!(applied.base_offset, i);
        assert_eq!(applied.next_offset, i + 1);
        last = Some(applied);
    }
    assert!(last.is_some());
    let leader = cluster.leader(GROUP, WAIT).await?;
    let last_index = cluster
        .group(leader, GROUP)
        .and_then(|g| g.progress().borrow().applied_index);
    cluster
        .wait_applied(GROUP, last_index.unwrap_or(0), WAIT)
        .await?;
    let expected: Vec<(u64, String)> = (0..50).map(|i| (i, format!("v{i}"))).collect();
    for node in cluster.node_ids() {
        assert_eq!(
            cluster.read_all(node, GROUP, true)?,
            expected,
            "node {node}"
        );
    }
    cluster.shutdown().await;
    Ok(())
}
