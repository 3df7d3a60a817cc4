#!/usr/bin/env python3
"""Weir from Python, through stubs generated from proto/weir/v1/weir.proto by standard gRPC tooling.

Against a running cluster (any node accepts any request), this example:

1. waits until the node reports SERVING on the standard gRPC health service (grpc.health.v1);
2. creates a topic with 3 partitions, replication factor 3 and a per-topic setting
   (Admin.CreateTopic with `configs`);
3. produces records with keys, values and headers to partition 0 (Broker.Produce, acks=ALL),
   notes the time, produces more to partition 0, then produces keyed records without naming a
   partition, which the broker routes by key exactly as Kafka's default partitioner would;
4. reads partition 0 from the earliest offset, replays it from an offset and from the noted time
   (Broker.Fetch with START_FROM_EARLIEST / START_FROM_OFFSET / START_FROM_TIMESTAMP, and
   Broker.ListOffsets with a timestamp), and reads the keyed records where their keys put them;
5. follows partition 0 live with the server-streaming Broker.Subscribe, sees a record produced
   while subscribed, and cancels the stream;
6. describes the topic (Admin.DescribeTopic) and compares its settings and high watermarks with
   what it wrote.

Every answer is checked (offsets, keys, values, headers, timestamps). The script exits 0 after
printing "all checks passed"; on any mismatch or gRPC error it prints what it expected and what it
got, and exits 1.

The stubs are not generated here: `run.sh setup` (see README.md) runs
`python -m grpc_tools.protoc -I proto --python_out=gen --grpc_python_out=gen
proto/weir/v1/weir.proto`; `--stubs` points at that directory.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Optional, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

HERE = os.path.dirname(os.path.abspath(__file__))

# Filled in by load_stubs(): the generated message module and service stubs of weir.v1.
pb = None
rpc = None

# Every single RPC gives up after this long (the overall --timeout bounds the retries).
RPC_TIMEOUT_S = 15.0
# How long a fetch may wait (long poll) when no record is committed at its position yet.
FETCH_WAIT_MS = 2000
# Pause between retries of UNAVAILABLE answers ("no leader yet ... retry after a short wait").
RETRY_PAUSE_S = 0.2


class Mismatch(Exception):
    """An answer differs from what the example expected; the message says both."""


class RpcFailed(Exception):
    """A gRPC call failed with a status that is not worth retrying, or kept failing until the
    deadline."""

    def __init__(self, what: str, error: grpc.RpcError, retried: bool = False):
        super().__init__(f"{what} failed: {error.code().name}: {error.details()}")
        self.code = error.code()
        # Whether an earlier attempt answered UNAVAILABLE (it may still have taken effect).
        self.retried = retried


def load_stubs(directory: str) -> None:
    """Imports weir/v1/weir_pb2.py and weir_pb2_grpc.py from the directory protoc wrote them to."""
    global pb, rpc
    if not os.path.isfile(os.path.join(directory, "weir", "v1", "weir_pb2_grpc.py")):
        sys.exit(
            f"error: no generated stubs in {directory} (weir/v1/weir_pb2_grpc.py); "
            "generate them first: examples/python/run.sh setup"
        )
    sys.path.insert(0, directory)
    from weir.v1 import weir_pb2, weir_pb2_grpc  # noqa: E402  (generated code)

    pb, rpc = weir_pb2, weir_pb2_grpc


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def expect(what: str, got, want) -> None:
    """Raises Mismatch unless got == want."""
    if got != want:
        raise Mismatch(f"{what}: expected {want!r}, got {got!r}")


def call(what: str, method: Callable, request, deadline: float):
    """One unary RPC. UNAVAILABLE (node still loading metadata, no partition leader yet, not
    enough replicas) is retried until `deadline`, as the proto documents; every other error is
    final."""
    retries = 0
    while True:
        try:
            return method(request, timeout=RPC_TIMEOUT_S)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() >= deadline:
                raise RpcFailed(what, error, retried=retries > 0) from None
            if retries == 0:
                print(f"  {what}: UNAVAILABLE ({error.details()}); retrying")
            retries += 1
            time.sleep(RETRY_PAUSE_S)


# --- Records: what is written, and how it must read back -----------------------------------------


@dataclass
class Rec:
    """One record as produced; `None` means the field is absent (not the same as empty)."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)

    def to_proto(self):
        record = pb.Record(
            headers=[
                pb.Header(key=k, value=v) if v is not None else pb.Header(key=k) for k, v in self.headers
            ]
        )
        # proto3 `optional bytes`: assigning (even b"") marks the field present; not assigning
        # leaves it absent.
        if self.key is not None:
            record.key = self.key
        if self.value is not None:
            record.value = self.value
        return record


def from_fetched(record) -> Rec:
    """A fetched record in the same shape, keeping absent apart from empty."""
    return Rec(
        key=record.key if record.HasField("key") else None,
        value=record.value if record.HasField("value") else None,
        headers=[(h.key, h.value if h.HasField("value") else None) for h in record.headers],
    )


def check_records(what: str, fetched, first_offset: int, want: list[Rec]) -> None:
    """Fetched records must be exactly `want`, at consecutive offsets from `first_offset`."""
    expect(f"{what}: number of records", len(fetched), len(want))
    for i, (got, wanted) in enumerate(zip(fetched, want)):
        expect(f"{what}: offset of record {i}", got.offset, first_offset + i)
        expect(f"{what}: record at offset {got.offset}", from_fetched(got), wanted)
        if got.timestamp_ms <= 0:
            raise Mismatch(f"{what}: record at offset {got.offset} has no timestamp ({got.timestamp_ms})")


def show(rec) -> str:
    key = "-" if not rec.HasField("key") else rec.key.decode(errors="replace")
    value = "(absent)" if not rec.HasField("value") else repr(rec.value.decode(errors="replace"))
    headers = ",".join(
        f"{h.key}={h.value.decode(errors='replace') if h.HasField('value') else '(absent)'}"
        for h in rec.headers
    )
    return f"    offset {rec.offset}  key {key}  value {value}  headers [{headers}]"


# Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2): the documented key → partition
# rule. Computed here only to check that the broker put each key where the proto says.
def murmur2(data: bytes) -> int:
    m, mask = 0x5BD1E995, 0xFFFFFFFF
    h = (0x9747B28C ^ len(data)) & mask
    whole = len(data) // 4 * 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & mask
        k ^= k >> 24
        k = (k * m) & mask
        h = ((h * m) & mask) ^ k
    tail = data[whole:]
    if len(tail) >= 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h ^= tail[0]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h  # unsigned; Kafka's signed int has the same low 31 bits


def partition_for_key(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions


# --- The example ------------------------------------------------------------------------------


def wait_until_serving(channel: grpc.Channel, broker: str, deadline: float) -> None:
    """Polls grpc.health.v1.Health/Check (overall status "") until the node says SERVING."""
    health = health_pb2_grpc.HealthStub(channel)
    last = "no answer yet"
    while True:
        try:
            # wait_for_ready: wait for the connection (the node may still be starting) instead of
            # failing at once, but only for this call's short timeout.
            answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2.0, wait_for_ready=True)
            if answer.status == health_pb2.HealthCheckResponse.SERVING:
                print(f"{broker} is SERVING")
                return
            last = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
        except grpc.RpcError as error:
            last = f"{error.code().name}: {error.details()}"
        if time.monotonic() >= deadline:
            raise Mismatch(f"{broker} did not report SERVING in time (last answer: {last})")
        time.sleep(RETRY_PAUSE_S)


def read_partition(
    broker, topic: str, partition: int, until: int, deadline: float, **start
) -> tuple[list, int]:
    """Reads `partition` from a start position (`start` holds the FetchRequest fields `from`,
    `offset`, `timestamp_ms`) until offset `until`, the end of what this example produced. A
    fetch returns at most `max_bytes`, and a node that is not the leader serves only what it has
    committed so far, so this may take several fetches; `max_wait_ms` lets a fetch wait for
    records not there yet. Acknowledged records must be readable at once: an empty answer below
    `until` is a mismatch. Returns the records and the offset the first fetch started at."""
    request = pb.FetchRequest(
        topic=topic, partition=partition, max_bytes=64 * 1024, max_wait_ms=FETCH_WAIT_MS, **start
    )
    records: list = []
    first_offset = None
    while True:
        answer = call(f"Fetch {topic}/{partition}", broker.Fetch, request, deadline)
        if first_offset is None:
            first_offset = answer.records[0].offset if answer.records else answer.next_offset
        records.extend(answer.records)
        if answer.next_offset >= until:
            return records, first_offset
        if not answer.records:
            raise Mismatch(
                f"Fetch {topic}/{partition}: no records at offset {answer.next_offset} after a "
                f"{FETCH_WAIT_MS} ms wait, though offsets up to {until - 1} were acknowledged "
                f"(the answer's high watermark: {answer.high_watermark})"
            )
        # Continue where this answer ended.
        request = pb.FetchRequest(
            topic=topic,
            partition=partition,
            max_bytes=64 * 1024,
            max_wait_ms=FETCH_WAIT_MS,
            offset=answer.next_offset,
            **{"from": pb.START_FROM_OFFSET},
        )


def connect(broker_addr: str, ca_file: Optional[str], token: Optional[str]) -> grpc.Channel:
    """A channel to the node: plaintext, or TLS checked against the cluster's CA, with a bearer
    token sent on every call (`authorization: Bearer <token>`) when one is given."""
    # Reconnect quickly while the node starts (gRPC's default backoff grows to two minutes).
    options = [
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]
    if ca_file is None:
        if token is not None:
            raise SystemExit("--token needs --ca: a token is sent only over TLS")
        return grpc.insecure_channel(broker_addr, options=options)
    with open(ca_file, "rb") as f:
        credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    if token is not None:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(token)
        )
    return grpc.secure_channel(broker_addr, credentials, options=options)


def run(
    broker_addr: str,
    topic: str,
    timeout_s: float,
    ca_file: Optional[str] = None,
    token: Optional[str] = None,
) -> None:
    deadline = time.monotonic() + timeout_s
    channel = connect(broker_addr, ca_file, token)
    broker = rpc.BrokerStub(channel)
    admin = rpc.AdminStub(channel)

    # 1. Health.
    wait_until_serving(channel, broker_addr, deadline)

    # 2. A replicated topic with one setting of its own. UNAVAILABLE (for example while not every
    #    broker has registered yet) is retried; if an attempt that timed out did create the topic,
    #    the retry answers ALREADY_EXISTS and the topic is described instead.
    retention_ms = str(24 * 3600 * 1000)
    create = pb.CreateTopicRequest(
        name=topic, partitions=3, replication_factor=3, configs={"retention.ms": retention_ms}
    )
    try:
        info = call("CreateTopic", admin.CreateTopic, create, deadline).topic
    except RpcFailed as failed:
        if not (failed.code == grpc.StatusCode.ALREADY_EXISTS and failed.retried):
            raise  # includes a topic left by an earlier run: its offsets would not match
        info = call("DescribeTopic", admin.DescribeTopic, pb.DescribeTopicRequest(name=topic), deadline).topic
    expect("CreateTopic: name", info.name, topic)
    expect("CreateTopic: partitions", len(info.partitions), 3)
    expect("CreateTopic: replication factor", info.replication_factor, 3)
    expect("CreateTopic: configs[retention.ms]", info.configs.get("retention.ms"), retention_ms)
    print(f"created topic {topic}: 3 partitions, replication factor 3, retention.ms={retention_ms}")
    for p in info.partitions:
        print(f"  partition {p.partition}: replicas {list(p.replicas)}")

    # Wait until every partition has a leader, so the first produce does not race the elections.
    while True:
        meta = call("Metadata", broker.Metadata, pb.MetadataRequest(topics=[topic]), deadline)
        leaders = {p.partition: p.leader for t in meta.topics if t.name == topic for p in t.partitions}
        if len(leaders) == 3 and all(leaders.values()):
            print(f"  leaders: {dict(sorted(leaders.items()))} (controller: node {meta.controller})")
            break
        if time.monotonic() >= deadline:
            raise Mismatch(f"partitions of {topic} have no leader in time: {leaders}")
        time.sleep(RETRY_PAUSE_S)

    # 3. Produce. First batch: partition 0, keys, values, headers; also a record without a key,
    #    a header without a value.
    first = [
        Rec(b"order-1", b"created", [("source", b"python-example"), ("trace-id", b"t-1")]),
        Rec(b"order-2", b"created", [("source", b"python-example"), ("trace-id", b"t-2")]),
        Rec(b"order-1", b"paid", [("source", b"python-example"), ("retry", None)]),
        Rec(None, b"heartbeat without a key", []),
        Rec(b"order-3", b"created", [("source", b"python-example")]),
    ]
    answer = call(
        "Produce (partition 0)",
        broker.Produce,
        pb.ProduceRequest(topic=topic, partition=0, records=[r.to_proto() for r in first], acks=pb.ACKS_ALL),
        deadline,
    )
    expect("Produce (partition 0): partition", answer.partition, 0)
    expect("Produce (partition 0): base_offset present", answer.HasField("base_offset"), True)
    expect("Produce (partition 0): base_offset", answer.base_offset, 0)
    expect("Produce (partition 0): record_count", answer.record_count, len(first))
    print(f"produced {len(first)} records to partition 0 at offsets 0..{len(first) - 1} (acks=ALL)")

    # The noted time lies strictly after every record of the first batch (the broker stamped them
    # before answering) and strictly before the next batch: the short pauses keep the three in
    # different milliseconds. (Client and broker share a clock here; across machines, skew
    # matters.)
    time.sleep(0.005)
    mark_ms = now_ms()
    time.sleep(0.005)
    print(f"noted time {mark_ms} ms between two produce calls")

    # Second batch to partition 0: an empty value (present, zero bytes) and an absent value (a
    # tombstone, as Kafka's compaction calls it) are different things and must stay so.
    second = [
        Rec(b"order-2", b"paid", [("source", b"python-example")]),
        Rec(b"order-3", None, [("source", b"python-example"), ("reason", b"cancelled")]),
        Rec(b"order-4", b"", []),
    ]
    answer = call(
        "Produce (partition 0, after the noted time)",
        broker.Produce,
        pb.ProduceRequest(topic=topic, partition=0, records=[r.to_proto() for r in second], acks=pb.ACKS_ALL),
        deadline,
    )
    expect("second Produce: base_offset", answer.base_offset, len(first))
    expect("second Produce: record_count", answer.record_count, len(second))
    print(
        f"produced {len(second)} records to partition 0 at offsets {len(first)}..{len(first) + len(second) - 1}"
    )

    # Keyed records without a partition: the broker routes each by murmur2(key), like Kafka.
    keyed = [
        Rec(f"user-{i}".encode(), f"signed up #{i}".encode(), [("source", b"python-example")])
        for i in range(9)
    ]
    answer = call(
        "Produce (by key, no partition)",
        broker.Produce,
        pb.ProduceRequest(topic=topic, records=[r.to_proto() for r in keyed], acks=pb.ACKS_ALL),
        deadline,
    )
    by_partition: dict[int, list[Rec]] = {}
    for rec in keyed:
        by_partition.setdefault(partition_for_key(rec.key, 3), []).append(rec)
    got_counts = {p.partition: p.record_count for p in answer.partitions}
    expect(
        "Produce by key: records per partition (murmur2(key) % 3)",
        got_counts,
        {p: len(recs) for p, recs in by_partition.items()},
    )
    keyed_base = {}
    for p in answer.partitions:
        expect(
            f"Produce by key: base_offset present for partition {p.partition}",
            p.HasField("base_offset"),
            True,
        )
        keyed_base[p.partition] = p.base_offset
    # Partition 0 already holds the two batches above.
    if 0 in keyed_base:
        expect("Produce by key: base_offset in partition 0", keyed_base[0], len(first) + len(second))
    for p in (1, 2):
        if p in keyed_base:
            expect(f"Produce by key: base_offset in partition {p}", keyed_base[p], 0)
    print(
        f"produced {len(keyed)} keyed records without a partition: "
        + ", ".join(f"partition {p}: {got_counts[p]} at offset {keyed_base[p]}" for p in sorted(got_counts))
    )

    # 4. Read partition 0 from the earliest offset: everything, in order.
    partition0 = first + second + by_partition.get(0, [])
    records, start = read_partition(
        broker, topic, 0, len(partition0), deadline, **{"from": pb.START_FROM_EARLIEST}
    )
    expect("Fetch from earliest: first offset", start, 0)
    check_records("Fetch from earliest", records, 0, partition0)
    print(f"fetched partition 0 from the earliest offset: {len(records)} records, as produced")
    for rec in records:
        print(show(rec))
    for i, rec in enumerate(records):
        if i < len(first):
            if rec.timestamp_ms >= mark_ms:
                raise Mismatch(
                    f"record {rec.offset} of the first batch is stamped {rec.timestamp_ms} ms, not before the noted {mark_ms}"
                )
        elif rec.timestamp_ms <= mark_ms:
            raise Mismatch(
                f"record {rec.offset} produced after the noted time is stamped {rec.timestamp_ms} ms, not after {mark_ms}"
            )

    # Replay from an offset.
    replay_from = 2
    records, start = read_partition(
        broker, topic, 0, len(partition0), deadline, **{"from": pb.START_FROM_OFFSET, "offset": replay_from}
    )
    expect("Fetch from offset 2: first offset", start, replay_from)
    check_records("Fetch from offset 2", records, replay_from, partition0[replay_from:])
    print(f"replayed partition 0 from offset {replay_from}: {len(records)} records, as produced")

    # Replay from the noted time, two ways: ListOffsets names the offset, Fetch starts there.
    offsets = call(
        "ListOffsets",
        broker.ListOffsets,
        pb.ListOffsetsRequest(topic=topic, partition=0, timestamp_ms=mark_ms),
        deadline,
    )
    expect("ListOffsets: log_start_offset", offsets.log_start_offset, 0)
    expect("ListOffsets: high_watermark", offsets.high_watermark, len(partition0))
    expect("ListOffsets: offset_for_timestamp present", offsets.HasField("offset_for_timestamp"), True)
    expect(
        "ListOffsets: offset_for_timestamp (first record after the noted time)",
        offsets.offset_for_timestamp,
        len(first),
    )
    records, start = read_partition(
        broker,
        topic,
        0,
        len(partition0),
        deadline,
        **{"from": pb.START_FROM_TIMESTAMP, "timestamp_ms": mark_ms},
    )
    expect("Fetch from the noted time: first offset", start, len(first))
    check_records("Fetch from the noted time", records, len(first), partition0[len(first) :])
    print(
        f"replayed partition 0 from time {mark_ms}: ListOffsets says offset {offsets.offset_for_timestamp}, "
        f"Fetch returned {len(records)} records from offset {start}"
    )

    # The keyed records, in the partitions their keys chose.
    for p in (1, 2):
        want = by_partition.get(p, [])
        records, start = read_partition(
            broker, topic, p, len(want), deadline, **{"from": pb.START_FROM_EARLIEST}
        )
        check_records(f"Fetch partition {p}", records, 0, want)
        print(f"fetched partition {p}: keys {[r.key.decode() for r in records]}")

    # 5. Follow partition 0 with Subscribe from offset 6: the stream first brings what is there,
    #    then (after the produce below) the new record, as it is committed.
    follow_from = 6
    live = Rec(b"order-5", b"created while subscribed", [("source", b"python-example")])
    want = partition0[follow_from:] + [live]
    stream = broker.Subscribe(
        pb.SubscribeRequest(topic=topic, partition=0, offset=follow_from, **{"from": pb.START_FROM_OFFSET}),
        timeout=max(1.0, deadline - time.monotonic()),
    )
    streamed: list = []
    produced_live = False
    try:
        for message in stream:
            streamed.extend(message.records)
            if not produced_live and len(streamed) >= len(want) - 1:
                # Everything already stored has arrived: now produce while the stream is open.
                answer = call(
                    "Produce (while subscribed)",
                    broker.Produce,
                    pb.ProduceRequest(topic=topic, partition=0, records=[live.to_proto()]),
                    deadline,
                )
                expect("Produce while subscribed: base_offset", answer.base_offset, len(partition0))
                produced_live = True
            if len(streamed) >= len(want):
                break
    except grpc.RpcError as error:
        raise RpcFailed(f"Subscribe {topic}/0 (after {len(streamed)} records)", error) from None
    finally:
        stream.cancel()  # we have what we came for; the server ends its side
    check_records("Subscribe from offset 6", streamed, follow_from, want)
    print(
        f"subscribed to partition 0 from offset {follow_from}: got {len(streamed)} records, "
        f"including offset {len(partition0)} produced while subscribed; cancelled the stream"
    )

    # 6. DescribeTopic: the setting, and a high watermark per partition that matches the writes.
    described = call(
        "DescribeTopic", admin.DescribeTopic, pb.DescribeTopicRequest(name=topic), deadline
    ).topic
    expect("DescribeTopic: configs[retention.ms]", described.configs.get("retention.ms"), retention_ms)
    high = {p.partition: p.high_watermark for p in described.partitions}
    expect(
        "DescribeTopic: high watermarks",
        high,
        {0: len(partition0) + 1, 1: len(by_partition.get(1, [])), 2: len(by_partition.get(2, []))},
    )
    print(f"described {topic}: high watermarks {dict(sorted(high.items()))}, retention.ms={retention_ms}")
    channel.close()


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--broker", default="127.0.0.1:9092", help="HOST:PORT of any node (default %(default)s)"
    )
    parser.add_argument(
        "--topic",
        default=f"python-example-{now_ms()}-{os.getpid()}",
        help="topic to create (default: a new unique name)",
    )
    parser.add_argument(
        "--stubs",
        default=os.environ.get("WEIR_PY_STUBS", os.path.join(HERE, "gen")),
        help="directory holding the generated weir/v1/*.py (default: $WEIR_PY_STUBS or gen/ next to this file)",
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for the node and leaders"
    )
    parser.add_argument(
        "--ca",
        default=os.environ.get("WEIR_TLS_CA"),
        help="the cluster's CA certificate (PEM): connect over TLS (default: $WEIR_TLS_CA)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("WEIR_TOKEN"),
        help="a bearer token from `weir token create` (default: $WEIR_TOKEN); needs --ca",
    )
    args = parser.parse_args()
    load_stubs(args.stubs)
    try:
        run(args.broker, args.topic, args.timeout, args.ca, args.token)
    except Mismatch as mismatch:
        print(f"MISMATCH: {mismatch}", file=sys.stderr)
        return 1
    except RpcFailed as failed:
        print(f"gRPC error: {failed}", file=sys.stderr)
        return 1
    except grpc.RpcError as error:  # anything not wrapped above
        print(f"gRPC error: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
