//! One Kafka connection: size-prefixed frames in, one answer per request out, in request order.
//!
//! Invariants: a frame larger than [`MAX_FRAME_BYTES`] closes the connection before it is read
//! (nothing is allocated by a size the client declared beyond that bound); a request whose API
//! key or version is not served closes it too (as a Kafka broker does), except ApiVersions,
//! which is answered with UNSUPPORTED_VERSION and the supported table so the client can
//! downgrade; requests are answered in the order they arrived.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::Instrument;

use crate::api::{self, codes};
use crate::backend::{Backend, QuotaKind, Session};
use crate::group_api;
use crate::groups::Coordinator;
use crate::sasl::{self, Exchange, Step};
use crate::versions;

/// What every connection of one Kafka listener shares: the node, and the groups it coordinates.
#[derive(Debug)]
pub struct Listener<B> {
    pub backend: B,
    pub groups: Coordinator,
}

impl<B: Backend> Listener<B> {
    pub fn new(backend: B) -> Self {
        Self {
            backend,
            groups: Coordinator::default(),
        }
    }

    /// Expires silent group members and overdue rebalances, twice a second, forever.
    pub async fn run_expiry(self: std::sync::Arc<Self>) {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
        loop {
            tick.tick().await;
            self.groups.expire(std::time::Instant::now());
        }
    }
}

/// The largest request frame accepted (Kafka's `socket.request.max.bytes` is 100 MiB; Weir's
/// largest batch is far smaller).
pub const MAX_FRAME_BYTES: usize = 100 * 1024 * 1024;

/// Why a connection was closed.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("a request frame of {0} bytes (at most {MAX_FRAME_BYTES})")]
    FrameTooLarge(i64),
    #[error("unsupported request: API key {key} version {version}")]
    Unsupported { key: i16, version: i16 },
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error(
        "{0:?} before authenticating (this listener requires SASL or a mapped client certificate)"
    )]
    Unauthenticated(ApiKey),
    #[error("SASL authentication failed")]
    AuthenticationFailed,
}

/// Produce requests of idempotent producers answered at once on one connection, at most
/// (librdkafka keeps up to 5 in flight with idempotence). Their order on a partition is kept by
/// the partition leader's sequence check: a batch that overtakes an earlier one is refused
/// (ABORTED) and retried once the earlier one is in (see `api::produce`).
pub const PIPELINE: usize = 5;

/// Serves one connection until the client closes it or breaks the protocol.
///
/// Requests are answered in the order they came. Produce requests of idempotent producers run
/// concurrently ([`PIPELINE`] at most); any other request first waits for those to be answered
/// and then runs alone, as every request does on a Kafka broker (which is what keeps the
/// batches of a producer that is not idempotent in order).
pub async fn serve<S, B>(
    stream: S,
    listener: Arc<Listener<B>>,
    mut session: Session,
) -> Result<(), ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: Backend,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    // Frames are read by a task of their own: reading is not cancel-safe, receiving is.
    let (frames_tx, mut frames) = tokio::sync::mpsc::channel::<Result<Bytes, ConnError>>(PIPELINE);
    let reading = tokio::spawn(async move {
        loop {
            let frame = read_frame(&mut reader).await;
            let end = !matches!(frame, Ok(Some(_)));
            let sent = match frame {
                Ok(Some(frame)) => frames_tx.send(Ok(frame)).await,
                Ok(None) => break,
                Err(err) => frames_tx.send(Err(err)).await,
            };
            if end || sent.is_err() {
                break;
            }
        }
    });
    let _reading = AbortOnDrop(reading);
    let mut sasl = None;
    let mut pipeline = FuturesOrdered::new();
    loop {
        tokio::select! {
            Some(answer) = pipeline.next(), if !pipeline.is_empty() => {
                write(&mut writer, answer?).await?;
            }
            frame = frames.recv(), if pipeline.len() < PIPELINE => {
                let Some(frame) = frame else {
                    while let Some(answer) = pipeline.next().await {
                        write(&mut writer, answer?).await?;
                    }
                    return Ok(());
                };
                let frame = frame?;
                if idempotent_produce(&frame, &session, listener.backend.security_enabled()) {
                    let listener = Arc::clone(&listener);
                    let mut session = session.clone();
                    pipeline.push_back(async move {
                        let mut no_sasl = None;
                        handle(frame, listener.as_ref(), &mut session, &mut no_sasl)
                            .await
                            .map(|(answer, _)| answer)
                    });
                    continue;
                }
                while let Some(answer) = pipeline.next().await {
                    write(&mut writer, answer?).await?;
                }
                let (answer, close) = handle(frame, listener.as_ref(), &mut session, &mut sasl).await?;
                write(&mut writer, answer).await?;
                if close {
                    // A failed authentication is answered, then the connection ends (as Kafka
                    // does).
                    return Err(ConnError::AuthenticationFailed);
                }
            }
        }
    }
}

/// The next request frame, or `None` at a clean end of the connection.
async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Option<Bytes>, ConnError> {
    let size = match reader.read_i32().await {
        Ok(size) => size,
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err.into()),
    };
    let size = usize::try_from(size)
        .ok()
        .filter(|s| (4..=MAX_FRAME_BYTES).contains(s))
        .ok_or(ConnError::FrameTooLarge(i64::from(size)))?;
    let mut frame = vec![0u8; size];
    reader.read_exact(&mut frame).await?;
    Ok(Some(Bytes::from(frame)))
}

async fn write<W: AsyncWrite + Unpin>(
    writer: &mut W,
    answer: Option<Bytes>,
) -> Result<(), ConnError> {
    if let Some(answer) = answer {
        writer.write_all(&answer).await?;
        writer.flush().await?;
    }
    Ok(())
}

/// Whether `frame` is a Produce request (v3+) of an idempotent producer on an authenticated
/// session: every batch of it carries a producer id. Anything unexpected says no (and the
/// request then runs alone, where it is checked in full).
fn idempotent_produce(frame: &Bytes, session: &Session, security: bool) -> bool {
    if frame.len() < 4 || (security && session.principal.is_none()) {
        return false;
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    if key != ApiKey::Produce as i16 || !(versions::PRODUCE_MIN_DECODED..=8).contains(&version) {
        return false;
    }
    let mut body = frame.clone();
    let Ok(_) = RequestHeader::decode(&mut body, ApiKey::Produce.request_header_version(version))
    else {
        return false;
    };
    let Ok(request) = ProduceRequest::decode(&mut body, version) else {
        return false;
    };
    request.transactional_id.is_none()
        && request.acks != 0
        && !request.topic_data.is_empty()
        && request.topic_data.iter().all(|t| {
            !t.partition_data.is_empty()
                && t.partition_data.iter().all(|p| {
                    p.records
                        .as_ref()
                        .and_then(|r| r.get(43..51))
                        .is_some_and(|id| {
                            i64::from_be_bytes([
                                id[0], id[1], id[2], id[3], id[4], id[5], id[6], id[7],
                            ]) >= 0
                        })
                })
        })
}

/// Aborts a task when dropped (the frame reader ends with its connection).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Answers one request frame: the response frame (size prefix included), or `None` when the
/// request expects no answer (Produce with acks=0); and whether to close the connection after
/// it (a failed authentication).
async fn handle<B: Backend>(
    mut frame: Bytes,
    listener: &Listener<B>,
    session: &mut Session,
    sasl: &mut Option<Exchange>,
) -> Result<(Option<Bytes>, bool), ConnError> {
    if frame.len() < 4 {
        return Err(ConnError::Malformed("a frame without a header".into()));
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let api = ApiKey::try_from(key).map_err(|()| ConnError::Unsupported { key, version })?;
    if api == ApiKey::ApiVersions && !versions::supports(api, version) {
        // KIP-511: answer in version 0 with the table, so the client picks a version we serve.
        let correlation_id = frame
            .get(4..8)
            .map_or(0, |b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        let mut response = api_versions();
        response.error_code = codes::UNSUPPORTED_VERSION;
        return encode(api, 0, correlation_id, &ResponseKind::ApiVersions(response))
            .map(|b| (Some(b), false));
    }
    let produce_too_old = api == ApiKey::Produce && version < versions::PRODUCE_MIN_DECODED;
    if !versions::supports(api, version) || produce_too_old {
        return Err(ConnError::Unsupported { key, version });
    }
    let header = RequestHeader::decode(&mut frame, api.request_header_version(version))
        .map_err(|err| ConnError::Malformed(format!("request header: {err}")))?;
    session.client_id = header.client_id.as_ref().map(|c| c.to_string());
    let request = RequestKind::decode(api, &mut frame, version)
        .map_err(|err| ConnError::Malformed(format!("{api:?} v{version}: {err}")))?;
    let before_auth = matches!(
        api,
        ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
    );
    if listener.backend.security_enabled() && session.principal.is_none() && !before_auth {
        return Err(ConnError::Unauthenticated(api));
    }
    let mut close = false;
    let response = match request {
        RequestKind::SaslHandshake(r) => {
            let mechanism = r.mechanism.to_string();
            let mut response = SaslHandshakeResponse::default();
            response.mechanisms = sasl::mechanisms(session.tls)
                .into_iter()
                .map(StrBytes::from_static_str)
                .collect();
            match Exchange::start(&mechanism, session.tls) {
                Some(exchange) if session.principal.is_none() => *sasl = Some(exchange),
                Some(_) => response.error_code = codes::ILLEGAL_SASL_STATE,
                None => response.error_code = codes::UNSUPPORTED_SASL_MECHANISM,
            }
            Some(ResponseKind::SaslHandshake(response))
        }
        RequestKind::SaslAuthenticate(r) => {
            let mut response = SaslAuthenticateResponse::default();
            match sasl.as_mut() {
                None => {
                    response.error_code = codes::ILLEGAL_SASL_STATE;
                    close = true;
                }
                Some(exchange) => match exchange.step(&r.auth_bytes, &Store(&listener.backend)) {
                    Step::Continue(reply) => response.auth_bytes = Bytes::from(reply),
                    Step::Done { principal, reply } => {
                        tracing::info!(peer = %session.peer, %principal, "Kafka client authenticated");
                        session.principal = Some(principal);
                        response.auth_bytes = Bytes::from(reply);
                        *sasl = None;
                    }
                    Step::Failed(reason) => {
                        tracing::debug!(peer = %session.peer, %reason, "Kafka SASL refused");
                        listener.backend.audit_refused(session, "SASL", &reason);
                        response.error_code = codes::SASL_AUTHENTICATION_FAILED;
                        response.error_message = Some(StrBytes::from_string(reason));
                        *sasl = None;
                        close = true;
                    }
                },
            }
            Some(ResponseKind::SaslAuthenticate(response))
        }
        request => {
            let span = tracing::info_span!(
                "kafka",
                api = ?api,
                version,
                correlation = header.correlation_id,
                peer = %session.peer,
                client = session.client_id.as_deref().unwrap_or(""),
            );
            let charged = listener.backend.charge_request(session);
            let mut response = dispatch(request, version, listener, session)
                .instrument(span)
                .await?;
            // Over a rate quota: the answer says how long, and goes only after that long (the
            // connection reads nothing meanwhile, as Kafka mutes a throttled channel).
            let by_bytes = match &response {
                Some(ResponseKind::Produce(r)) => u32::try_from(r.throttle_time_ms).unwrap_or(0),
                Some(ResponseKind::Fetch(r)) => u32::try_from(r.throttle_time_ms).unwrap_or(0),
                _ => 0,
            };
            let (kind, ms) = match api {
                ApiKey::Produce if by_bytes > charged => (QuotaKind::Produce, by_bytes),
                ApiKey::Fetch if by_bytes > charged => (QuotaKind::Fetch, by_bytes),
                _ => (QuotaKind::Request, charged),
            };
            if ms > 0 {
                if let Some(response) = response.as_mut() {
                    set_throttle_time_ms(response, ms);
                }
                listener.backend.hold(kind, ms).await;
            }
            response
        }
    };
    match response {
        Some(response) => {
            encode(api, version, header.correlation_id, &response).map(|b| (Some(b), close))
        }
        None => Ok((None, close)),
    }
}

/// The backend's credentials, for the SASL exchange.
struct Store<'a, B>(&'a B);

impl<B: Backend> sasl::Credentials for Store<'_, B> {
    fn scram_credential(
        &self,
        user: &str,
        mechanism: weir_controller::security::ScramMechanism,
    ) -> Option<weir_controller::security::ScramCredential> {
        self.0.scram_credential(user, mechanism)
    }
}

async fn dispatch<B: Backend>(
    request: RequestKind,
    version: i16,
    listener: &Listener<B>,
    session: &Session,
) -> Result<Option<ResponseKind>, ConnError> {
    let backend = &listener.backend;
    let groups = &listener.groups;
    Ok(Some(match request {
        RequestKind::FindCoordinator(r) => {
            ResponseKind::FindCoordinator(group_api::find_coordinator(backend, session, r).await)
        }
        RequestKind::JoinGroup(r) => ResponseKind::JoinGroup(
            group_api::join_group(backend, groups, session, r, version).await,
        ),
        RequestKind::SyncGroup(r) => {
            ResponseKind::SyncGroup(group_api::sync_group(backend, groups, session, r).await)
        }
        RequestKind::Heartbeat(r) => {
            ResponseKind::Heartbeat(group_api::heartbeat(backend, groups, session, r).await)
        }
        RequestKind::LeaveGroup(r) => {
            ResponseKind::LeaveGroup(group_api::leave_group(backend, groups, session, r).await)
        }
        RequestKind::OffsetCommit(r) => {
            ResponseKind::OffsetCommit(group_api::offset_commit(backend, groups, session, r).await)
        }
        RequestKind::OffsetFetch(r) => {
            ResponseKind::OffsetFetch(group_api::offset_fetch(backend, session, r).await)
        }
        RequestKind::ListGroups(_) => {
            ResponseKind::ListGroups(group_api::list_groups(backend, groups, session).await)
        }
        RequestKind::DescribeGroups(r) => ResponseKind::DescribeGroups(
            group_api::describe_groups(backend, groups, session, r).await,
        ),
        RequestKind::DeleteGroups(r) => {
            ResponseKind::DeleteGroups(group_api::delete_groups(backend, groups, session, r).await)
        }
        RequestKind::CreatePartitions(r) => {
            ResponseKind::CreatePartitions(api::create_partitions(backend, session, r).await)
        }
        RequestKind::IncrementalAlterConfigs(r) => ResponseKind::IncrementalAlterConfigs(
            api::incremental_alter_configs(backend, session, r).await,
        ),
        RequestKind::AlterConfigs(r) => {
            ResponseKind::AlterConfigs(api::alter_configs(backend, session, r).await)
        }
        RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(api_versions()),
        RequestKind::Metadata(r) => {
            ResponseKind::Metadata(api::metadata(backend, session, r).await)
        }
        RequestKind::Produce(r) => match api::produce(backend, session, r).await {
            Some(response) => ResponseKind::Produce(response),
            None => return Ok(None),
        },
        RequestKind::Fetch(r) => ResponseKind::Fetch(api::fetch(backend, session, r).await),
        RequestKind::ListOffsets(r) => {
            ResponseKind::ListOffsets(api::list_offsets(backend, session, r).await)
        }
        RequestKind::InitProducerId(r) => {
            ResponseKind::InitProducerId(api::init_producer_id(backend, session, r).await)
        }
        RequestKind::CreateTopics(r) => {
            ResponseKind::CreateTopics(api::create_topics(backend, session, r).await)
        }
        RequestKind::DeleteTopics(r) => {
            ResponseKind::DeleteTopics(api::delete_topics(backend, session, r).await)
        }
        RequestKind::DescribeConfigs(r) => {
            ResponseKind::DescribeConfigs(api::describe_configs(backend, session, r).await)
        }
        RequestKind::DescribeCluster(_) => {
            ResponseKind::DescribeCluster(api::describe_cluster(backend, session).await)
        }
        other => {
            return Err(ConnError::Malformed(format!(
                "not served: {:?}",
                std::mem::discriminant(&other)
            )));
        }
    }))
}

/// Sets an answer's `throttle_time_ms` (versions without the field do not encode it; SASL
/// answers have none and are never throttled).
fn set_throttle_time_ms(response: &mut ResponseKind, ms: u32) {
    let ms = i32::try_from(ms).unwrap_or(i32::MAX);
    match response {
        ResponseKind::ApiVersions(r) => r.throttle_time_ms = ms,
        ResponseKind::Metadata(r) => r.throttle_time_ms = ms,
        ResponseKind::Produce(r) => r.throttle_time_ms = ms,
        ResponseKind::Fetch(r) => r.throttle_time_ms = ms,
        ResponseKind::ListOffsets(r) => r.throttle_time_ms = ms,
        ResponseKind::InitProducerId(r) => r.throttle_time_ms = ms,
        ResponseKind::FindCoordinator(r) => r.throttle_time_ms = ms,
        ResponseKind::JoinGroup(r) => r.throttle_time_ms = ms,
        ResponseKind::SyncGroup(r) => r.throttle_time_ms = ms,
        ResponseKind::Heartbeat(r) => r.throttle_time_ms = ms,
        ResponseKind::LeaveGroup(r) => r.throttle_time_ms = ms,
        ResponseKind::OffsetCommit(r) => r.throttle_time_ms = ms,
        ResponseKind::OffsetFetch(r) => r.throttle_time_ms = ms,
        ResponseKind::ListGroups(r) => r.throttle_time_ms = ms,
        ResponseKind::DescribeGroups(r) => r.throttle_time_ms = ms,
        ResponseKind::DeleteGroups(r) => r.throttle_time_ms = ms,
        ResponseKind::CreateTopics(r) => r.throttle_time_ms = ms,
        ResponseKind::DeleteTopics(r) => r.throttle_time_ms = ms,
        ResponseKind::CreatePartitions(r) => r.throttle_time_ms = ms,
        ResponseKind::DescribeConfigs(r) => r.throttle_time_ms = ms,
        ResponseKind::AlterConfigs(r) => r.throttle_time_ms = ms,
        ResponseKind::IncrementalAlterConfigs(r) => r.throttle_time_ms = ms,
        ResponseKind::DescribeCluster(r) => r.throttle_time_ms = ms,
        _ => {}
    }
}

/// The ApiVersions answer: every key and version range served.
pub fn api_versions() -> ApiVersionsResponse {
    let mut response = ApiVersionsResponse::default();
    response.api_keys = versions::SUPPORTED
        .iter()
        .map(|(key, min, max)| {
            let mut entry = ApiVersion::default();
            entry.api_key = *key as i16;
            entry.min_version = *min;
            entry.max_version = *max;
            entry
        })
        .collect();
    response
}

/// A response frame: size, header (correlation id), body.
fn encode(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    response: &ResponseKind,
) -> Result<Bytes, ConnError> {
    let mut body = BytesMut::new();
    body.put_i32(0);
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    header
        .encode(&mut body, api.response_header_version(version))
        .map_err(|err| ConnError::Malformed(format!("encoding the response header: {err}")))?;
    response
        .encode(&mut body, version)
        .map_err(|err| ConnError::Malformed(format!("encoding {api:?} v{version}: {err}")))?;
    let size = i32::try_from(body.len() - 4).unwrap_or(i32::MAX);
    body[0..4].copy_from_slice(&size.to_be_bytes());
    Ok(body.freeze())
}
