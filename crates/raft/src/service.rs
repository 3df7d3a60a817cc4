//! The server side of the peer transport: decodes requests, finds the group in the node's
//! [`GroupRegistry`] and hands the request to its openraft node. A request for a group this node
//! does not run (yet) is answered NOT_FOUND, which the sender treats as unreachable and retries.
//!
//! With TLS, the node's server puts the caller's proven node id ([`PeerIdentity`], from its node
//! certificate) on each request; a vote, append or snapshot that claims to come from another
//! node is refused (PERMISSION_DENIED): a node certificate speaks only for its own node.

use std::sync::Arc;

use openraft::Snapshot;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use tonic::{Request, Response, Status};
use weir_format::batch::ValidBatch;
use weir_proto::peer::peer_server::Peer;
use weir_proto::peer::{AppendEntriesRequest as WireAppend, RaftReply, RaftRequest};

use crate::entry::batch_to_entry;
use crate::group::{GroupHandle, GroupRegistry};
use crate::log_store::LogBoundary;
use crate::network::{AppendHeader, SnapshotRequest, decode, encode};
use crate::tls::PeerIdentity;
use crate::types::{NodeId, SnapshotData, TypeConfig};

/// Refuses a message whose vote names a node other than the one the caller proved to be.
fn check_sender<T>(request: &Request<T>, vote: &openraft::Vote<NodeId>) -> Result<(), Status> {
    let Some(PeerIdentity(proven)) = request.extensions().get::<PeerIdentity>() else {
        return Ok(());
    };
    match vote.leader_id().voted_for() {
        Some(claimed) if claimed != *proven => Err(Status::permission_denied(format!(
            "the caller's certificate names node {proven}, but the message claims node {claimed}"
        ))),
        _ => Ok(()),
    }
}

/// The `weir.peer.v1.Peer` service of one node.
#[derive(Debug, Clone)]
pub struct PeerService {
    registry: Arc<GroupRegistry>,
}

impl PeerService {
    pub fn new(registry: Arc<GroupRegistry>) -> Self {
        Self { registry }
    }

    fn group(&self, id: &str) -> Result<GroupHandle, Status> {
        self.registry
            .get(id)
            .ok_or_else(|| Status::not_found(format!("group {id} is not running on this node")))
    }
}

fn bad(err: impl std::fmt::Display) -> Status {
    Status::invalid_argument(err.to_string())
}

fn reply<T: serde::Serialize>(value: &T) -> Result<Response<RaftReply>, Status> {
    let body = encode(value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftReply { body }))
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(
        &self,
        request: Request<WireAppend>,
    ) -> Result<Response<RaftReply>, Status> {
        let (vote, prev_log_id, leader_commit): AppendHeader =
            decode(&request.get_ref().header).map_err(bad)?;
        check_sender(&request, &vote)?;
        let request = request.into_inner();
        let group = self.group(&request.group)?;
        let entries = request
            .entries
            .into_iter()
            .map(|bytes| {
                let batch = ValidBatch::new(bytes).map_err(bad)?;
                batch_to_entry(&batch).map_err(bad)
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let rpc = AppendEntriesRequest::<TypeConfig> {
            vote,
            prev_log_id,
            leader_commit,
            entries,
        };
        reply(&group.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let rpc: VoteRequest<NodeId> = decode(&request.get_ref().body).map_err(bad)?;
        check_sender(&request, &rpc.vote)?;
        let request = request.into_inner();
        let group = self.group(&request.group)?;
        reply(&group.raft.vote(rpc).await)
    }

    async fn write(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let request = request.into_inner();
        let group = self.group(&request.group)?;
        reply(&crate::group::write_local(&group.raft, &group.fault, request.body).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let (vote, meta, data): SnapshotRequest = decode(&request.get_ref().body).map_err(bad)?;
        check_sender(&request, &vote)?;
        let request = request.into_inner();
        let group = self.group(&request.group)?;
        if let Some(last) = meta.last_log_id {
            let boundary: crate::state_machine::SnapshotBoundary =
                crate::state_machine::snapshot_boundary(&data).map_err(bad)?;
            debug_assert_eq!(boundary.next_index, last.index + 1);
            group.expect_boundary(LogBoundary {
                next_index: boundary.next_index,
                next_offset: boundary.next_offset,
            });
        }
        let snapshot = Snapshot::<TypeConfig> {
            meta,
            snapshot: Box::new(SnapshotData(data)),
        };
        reply(&group.raft.install_full_snapshot(vote, snapshot).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vote_request(candidate: NodeId) -> Result<Request<RaftRequest>, Box<dyn std::error::Error>> {
        let rpc = VoteRequest::<NodeId> {
            vote: openraft::Vote::new(3, candidate),
            last_log_id: None,
        };
        Ok(Request::new(RaftRequest {
            group: "g".into(),
            body: encode(&rpc)?,
        }))
    }

    #[tokio::test]
    async fn a_node_certificate_speaks_only_for_its_node() -> Result<(), Box<dyn std::error::Error>>
    {
        let service = PeerService::new(GroupRegistry::new());
        // Node 2's certificate, a vote for node 3: refused before anything else.
        let mut forged = vote_request(3)?;
        forged.extensions_mut().insert(PeerIdentity(2));
        let refused = service.vote(forged).await.err().map(|s| s.code());
        assert_eq!(refused, Some(tonic::Code::PermissionDenied));
        // Its own vote passes the check (and finds no group here).
        let mut own = vote_request(2)?;
        own.extensions_mut().insert(PeerIdentity(2));
        let answer = service.vote(own).await.err().map(|s| s.code());
        assert_eq!(answer, Some(tonic::Code::NotFound));
        // Without TLS there is no proven identity to check.
        let plain = service.vote(vote_request(3)?).await.err().map(|s| s.code());
        assert_eq!(plain, Some(tonic::Code::NotFound));
        Ok(())
    }
}
