//! `weir.v1.Admin`: topics (create, list, describe, delete) and the cluster (join, reassign,
//! rebalance, decommission). Changes run on the controller leader: a node that does not lead the
//! controller forwards them there through the [`Router`].

use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use weir_controller::TopicConfig;
use weir_proto::v1::admin_client::AdminClient;
use weir_proto::v1::admin_server::Admin;
use weir_proto::v1::{
    AlterTopicConfigRequest, AlterTopicConfigResponse, CreatePartitionsRequest,
    CreatePartitionsResponse, CreateTopicRequest, CreateTopicResponse, DecommissionBrokerRequest,
    DecommissionBrokerResponse, DeleteTopicRequest, DeleteTopicResponse, DescribeTopicRequest,
    DescribeTopicResponse, JoinClusterRequest, JoinClusterResponse, ListOffsetsRequest,
    ListTopicsRequest, ListTopicsResponse, ReassignPartitionRequest, ReassignPartitionResponse,
    RebalanceRequest, RebalanceResponse,
};

use crate::fetch::ReadPath;
use weir_controller::security::Operation;

use crate::auth::Resource;
use crate::router::{Found, Hops, Router, forward_hops, forwarded, relayed, topic_info};
use crate::status::{from_controller, from_metadata};

/// The Admin service of a node.
#[derive(Debug, Clone)]
pub(crate) struct AdminService {
    pub(crate) router: Router,
    /// Partition offsets for `DescribeTopic`.
    pub(crate) reads: ReadPath,
}

impl AdminService {
    /// Writes a change's outcome to the audit log (on the node that made it).
    fn audit<T>(
        &self,
        hops: &Hops,
        operation: &'static str,
        resource: String,
        outcome: &Result<T, Status>,
    ) {
        self.router
            .access
            .audit
            .change(&hops.caller, operation, resource, outcome);
    }

    /// A topic's settings by their public names, as `DescribeTopic` shows them, without asking
    /// its partitions for offsets: settings are metadata, so this answers while a partition is
    /// between leaders (Kafka's DescribeConfigs, which clients read right after a change).
    pub(crate) async fn topic_configs(
        &self,
        request: Request<DescribeTopicRequest>,
    ) -> Result<Vec<(String, String)>, Status> {
        let hops = &forward_hops(&request);
        self.router.authorize(
            &request,
            Operation::Describe,
            Resource::Topic(&request.get_ref().name),
        )?;
        let request = request.into_inner();
        let configs = match self.router.topic(&request.name, hops).await? {
            Found::Here(topic) => topic
                .config
                .to_pairs()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            Found::AskController(addr) => {
                let mut client = self.router.client::<AdminClient<Channel>>(&addr, hops)?;
                let answer = client
                    .describe_topic(forwarded(request, hops))
                    .await
                    .map_err(relayed)?
                    .into_inner();
                answer
                    .topic
                    .map(|t| t.configs.into_iter().collect())
                    .unwrap_or_default()
            }
        };
        Ok(configs)
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_topic(
        &self,
        request: Request<CreateTopicRequest>,
    ) -> Result<Response<CreateTopicResponse>, Status> {
        let hops = &forward_hops(&request);
        self.router.authorize(
            &request,
            Operation::Create,
            Resource::Topic(&request.get_ref().name),
        )?;
        let request = request.into_inner();
        if let Some(mut leader) = self.router.controller_leader(hops)? {
            return leader
                .create_topic(forwarded(request, hops))
                .await
                .map_err(relayed);
        }
        tracing::info!(topic = %request.name, partitions = request.partitions, replication_factor = request.replication_factor, "create topic");
        let created = self
            .router
            .controller
            .create_topic(
                &request.name,
                request.partitions,
                request.replication_factor,
                TopicConfig::from_pairs(
                    request
                        .configs
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str())),
                )
                .map_err(from_metadata)?,
                hops.caller.forwarded_principal(),
            )
            .await
            .map_err(from_controller);
        self.audit(
            hops,
            "create-topic",
            format!("topic {:?}", request.name),
            &created,
        );
        let topic = created?;
        let metadata = self.router.controller.metadata();
        Ok(Response::new(CreateTopicResponse {
            topic: Some(topic_info(&metadata, &topic, &self.router.partitions)),
        }))
    }

    async fn list_topics(
        &self,
        request: Request<ListTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        let hops = &forward_hops(&request);
        if !self.router.controller.ready() {
            return Err(crate::status::unavailable(
                "this node is still loading the cluster metadata; retry shortly",
            ));
        }
        // Answer from the controller leader's view, so a topic just created is listed.
        if let Some(mut leader) = self.router.controller_leader(hops)? {
            return leader
                .list_topics(forwarded(request.into_inner(), hops))
                .await
                .map_err(relayed);
        }
        let metadata = self
            .router
            .controller
            .latest_metadata()
            .await
            .map_err(from_controller)?;
        Ok(Response::new(ListTopicsResponse {
            // Only the topics the caller may describe.
            topics: metadata
                .topics
                .values()
                .filter(|t| {
                    self.router.access.allows(
                        &hops.caller,
                        Operation::Describe,
                        Resource::Topic(&t.name),
                    )
                })
                .map(|t| topic_info(&metadata, t, &self.router.partitions))
                .collect(),
        }))
    }

    async fn describe_topic(
        &self,
        request: Request<DescribeTopicRequest>,
    ) -> Result<Response<DescribeTopicResponse>, Status> {
        let hops = &forward_hops(&request);
        self.router.authorize(
            &request,
            Operation::Describe,
            Resource::Topic(&request.get_ref().name),
        )?;
        let request = request.into_inner();
        let span = tracing::debug_span!("describe_topic", topic = %request.name);
        async move {
            let topic = match self.router.topic(&request.name, hops).await? {
                Found::Here(topic) => topic,
                Found::AskController(addr) => {
                    let mut client = self.router.client::<AdminClient<Channel>>(&addr, hops)?;
                    return client
                        .describe_topic(forwarded(request, hops))
                        .await
                        .map_err(relayed);
                }
            };
            let metadata = self.router.controller.metadata();
            let mut info = topic_info(&metadata, &topic, &self.router.partitions);
            let offsets = info.partitions.iter().map(|p| {
                self.reads.list_offsets_inner(
                    Request::new(ListOffsetsRequest {
                        topic: topic.name.clone(),
                        partition: p.partition,
                        timestamp_ms: None,
                    }),
                    hops,
                )
            });
            let offsets = futures::future::try_join_all(offsets).await?;
            for (partition, offsets) in info.partitions.iter_mut().zip(offsets) {
                partition.log_start_offset = offsets.log_start_offset;
                partition.high_watermark = offsets.high_watermark;
            }
            Ok(Response::new(DescribeTopicResponse { topic: Some(info) }))
        }
        .instrument(span)
        .await
    }

    async fn delete_topic(
        &self,
        request: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        let hops = &forward_hops(&request);
        self.router.authorize(
            &request,
            Operation::Delete,
            Resource::Topic(&request.get_ref().name),
        )?;
        let request = request.into_inner();
        tracing::info!(topic = %request.name, "delete topic");
        if !self
            .router
            .controller
            .metadata()
            .topics
            .contains_key(&request.name)
        {
            return Err(from_metadata(weir_controller::MetadataError::UnknownTopic(
                request.name,
            )));
        }
        let resource = format!("topic {:?}", request.name);
        let deleted = self
            .router
            .controller
            .propose(weir_controller::MetadataCommand::DeleteTopic { name: request.name })
            .await
            .map_err(from_controller);
        self.audit(hops, "delete-topic", resource, &deleted);
        deleted?;
        Ok(Response::new(DeleteTopicResponse {}))
    }

    async fn join_cluster(
        &self,
        request: Request<JoinClusterRequest>,
    ) -> Result<Response<JoinClusterResponse>, Status> {
        let hops = &forward_hops(&request);
        self.router
            .authorize(&request, Operation::ClusterAction, Resource::Cluster)?;
        let request = request.into_inner();
        if request.id == 0 {
            return Err(Status::invalid_argument("node id 0 is reserved"));
        }
        for (field, value) in [
            ("address", &request.address),
            ("external_address", &request.external_address),
        ] {
            let optional = field == "external_address" && value.is_empty();
            if !optional && crate::config::check_host_port(field, value).is_err() {
                return Err(Status::invalid_argument(format!(
                    "{field} {value:?} is not HOST:PORT"
                )));
            }
        }
        tracing::info!(node = request.id, addr = %request.address, external = %request.external_address, "join request");
        if let Some(mut leader) = self.router.controller_leader(hops)? {
            return leader
                .join_cluster(forwarded(request, hops))
                .await
                .map_err(relayed);
        }
        let rack = (!request.rack.is_empty()).then(|| request.rack.clone());
        let external =
            (!request.external_address.is_empty()).then(|| request.external_address.clone());
        let admitted = self
            .router
            .controller
            .admit(request.id, &request.address, external, rack)
            .await
            .map_err(from_controller);
        self.audit(
            hops,
            "join-cluster",
            format!("broker {}", request.id),
            &admitted,
        );
        admitted?;
        Ok(Response::new(JoinClusterResponse {}))
    }

    async fn reassign_partition(
        &self,
        request: Request<ReassignPartitionRequest>,
    ) -> Result<Response<ReassignPartitionResponse>, Status> {
        let hops = &forward_hops(&request);
        self.router
            .authorize(&request, Operation::Alter, Resource::Cluster)?;
        let request = request.into_inner();
        let resource = format!("partition {}/{}", request.topic, request.partition);
        tracing::info!(topic = %request.topic, partition = request.partition, replicas = ?request.replicas, "reassign partition");
        let moved = self
            .router
            .controller
            .propose(weir_controller::MetadataCommand::ReassignPartition {
                topic: request.topic,
                partition: request.partition,
                replicas: request.replicas,
            })
            .await
            .map_err(from_controller);
        self.audit(hops, "reassign-partition", resource, &moved);
        moved?;
        Ok(Response::new(ReassignPartitionResponse {}))
    }

    async fn rebalance(
        &self,
        request: Request<RebalanceRequest>,
    ) -> Result<Response<RebalanceResponse>, Status> {
        let hops = &forward_hops(&request);
        self.router
            .authorize(&request, Operation::Alter, Resource::Cluster)?;
        let request = request.into_inner();
        if let Some(mut leader) = self.router.controller_leader(hops)? {
            return leader
                .rebalance(forwarded(request, hops))
                .await
                .map_err(relayed);
        }
        let limit = match request.max_moves {
            0 => 100,
            n => n as usize,
        };
        let moves = self
            .router
            .controller
            .rebalance(limit)
            .await
            .map_err(from_controller);
        self.audit(hops, "rebalance", "cluster".into(), &moves);
        let moves = moves?;
        tracing::info!(moves, "rebalance proposed");
        Ok(Response::new(RebalanceResponse {
            moves: u32::try_from(moves).unwrap_or(u32::MAX),
        }))
    }

    async fn decommission_broker(
        &self,
        request: Request<DecommissionBrokerRequest>,
    ) -> Result<Response<DecommissionBrokerResponse>, Status> {
        let hops = &forward_hops(&request);
        self.router
            .authorize(&request, Operation::Alter, Resource::Cluster)?;
        let request = request.into_inner();
        tracing::info!(broker = request.id, "decommission broker");
        let drained = self
            .router
            .controller
            .decommission(request.id)
            .await
            .map_err(from_controller);
        self.audit(
            hops,
            "decommission-broker",
            format!("broker {}", request.id),
            &drained,
        );
        drained?;
        Ok(Response::new(DecommissionBrokerResponse {}))
    }

    async fn create_partitions(
        &self,
        request: Request<CreatePartitionsRequest>,
    ) -> Result<Response<CreatePartitionsResponse>, Status> {
        let hops = &forward_hops(&request);
        self.router.authorize(
            &request,
            Operation::Alter,
            Resource::Topic(&request.get_ref().topic),
        )?;
        let request = request.into_inner();
        if let Some(mut leader) = self.router.controller_leader(hops)? {
            return leader
                .create_partitions(forwarded(request, hops))
                .await
                .map_err(relayed);
        }
        let span = tracing::info_span!("create_partitions", topic = %request.topic, partitions = request.partitions, validate_only = request.validate_only);
        let grown = self
            .router
            .controller
            .add_partitions(&request.topic, request.partitions, request.validate_only)
            .instrument(span)
            .await
            .map_err(from_controller);
        if !request.validate_only {
            self.audit(
                hops,
                "create-partitions",
                format!(
                    "topic {:?} to {} partitions",
                    request.topic, request.partitions
                ),
                &grown,
            );
        }
        let topic = grown?;
        let metadata = self.router.controller.metadata();
        Ok(Response::new(CreatePartitionsResponse {
            topic: Some(topic_info(&metadata, &topic, &self.router.partitions)),
        }))
    }

    async fn alter_topic_config(
        &self,
        request: Request<AlterTopicConfigRequest>,
    ) -> Result<Response<AlterTopicConfigResponse>, Status> {
        let hops = &forward_hops(&request);
        self.router.authorize(
            &request,
            Operation::Alter,
            Resource::Topic(&request.get_ref().topic),
        )?;
        let request = request.into_inner();
        if let Some(mut leader) = self.router.controller_leader(hops)? {
            return leader
                .alter_topic_config(forwarded(request, hops))
                .await
                .map_err(relayed);
        }
        let span = tracing::info_span!("alter_topic_config", topic = %request.topic, validate_only = request.validate_only);
        let names: Vec<&str> = request
            .set
            .keys()
            .chain(&request.reset)
            .map(String::as_str)
            .collect();
        let resource = format!("topic {:?} settings {}", request.topic, names.join(","));
        let altered = self
            .router
            .controller
            .alter_topic_config(
                &request.topic,
                request.set.into_iter().collect(),
                request.reset,
                request.validate_only,
            )
            .instrument(span)
            .await
            .map_err(from_controller);
        if !request.validate_only {
            self.audit(hops, "alter-topic-config", resource, &altered);
        }
        let topic = altered?;
        let metadata = self.router.controller.metadata();
        Ok(Response::new(AlterTopicConfigResponse {
            topic: Some(topic_info(&metadata, &topic, &self.router.partitions)),
        }))
    }
}
