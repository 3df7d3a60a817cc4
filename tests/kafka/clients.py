"""Kafka clients driven by tests/tests/kafka_clients.rs against Weir's Kafka listeners.

Each subcommand prints one JSON object (its findings) on the last line of stdout and exits 0,
or prints what went wrong on stderr and exits 1. The Rust test decides what the findings must be.

  produce  an idempotent confluent-kafka producer (acks=all) sends COUNT records with unique
           values; prints every acknowledged (partition, offset, value) to --acked
  group    two confluent-kafka consumers in one group: they split the partitions; one reads,
           commits and leaves; the other takes over from the committed offsets and reads the rest
  sasl     a SASL user (SCRAM or PLAIN, over TLS) produces --records records (one by default)
           and reads one back; prints the error of each step ("none" when it worked) and the
           longest throttle the brokers reported (librdkafka's throttle callback), in ms
  admin    kafka-python's admin client: create and describe topics and configs, list and
           describe groups; then grow the topic, change its settings (IncrementalAlterConfigs
           SET and DELETE, then a whole-set AlterConfigs) and delete a group
"""

import argparse
import json
import os
import sys
import time


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def produce(args):
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "batch.num.messages": 500,
            "compression.type": args.compression,
            "delivery.timeout.ms": 120000,
            "message.timeout.ms": 120000,
        }
    )
    failed = []
    acked = open(args.acked, "w")

    def delivered(err, msg):
        if err is not None:
            failed.append(str(err))
        else:
            acked.write(f"{msg.partition()} {msg.offset()} {msg.value().decode()}\n")

    started = time.time()
    for i in range(args.count):
        value = f"v{i:07d}"
        while True:
            try:
                producer.produce(args.topic, key=f"k{i % 97}", value=value, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(180)
    acked.close()
    print(json.dumps({"sent": args.count, "failed": failed[:5], "failures": len(failed),
                      "undelivered": left, "seconds": round(time.time() - started, 1)}))
    return 0


def group(args):
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    def consumer(name):
        return Consumer(
            {
                "bootstrap.servers": args.bootstrap,
                "group.id": args.group,
                "client.id": name,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 10000,
                "heartbeat.interval.ms": 1000,
                "partition.assignment.strategy": "range",
            }
        )

    a, b = consumer("a"), consumer("b")
    a.subscribe([args.topic])
    b.subscribe([args.topic])
    seen = {}  # value -> reader, for records whose offset was committed
    rewinds = 0

    def take(name, c, msgs):
        """Reads a batch and commits past it; a commit refused (a rebalance) un-reads the batch:
        the partitions' owners read it again from the committed offsets."""
        nonlocal rewinds
        msgs = [m for m in msgs if m.error() is None]
        if not msgs:
            return
        for msg in msgs:
            value = msg.value().decode()
            if value in seen:
                raise SystemExit(f"{value} read twice ({seen[value]} then {name}) after its commit")
        try:
            c.commit(asynchronous=False)
        except KafkaException as err:
            rewinds += 1
            log(f"{name}: commit of {len(msgs)} records refused ({err}); they will be read again")
            first = {}
            for msg in msgs:
                first.setdefault(msg.partition(), msg.offset())
            for partition, offset in first.items():
                try:
                    c.seek(TopicPartition(args.topic, partition, offset))
                except KafkaException:
                    pass  # no longer ours: the new owner starts at the committed offset
            return
        for msg in msgs:
            seen[msg.value().decode()] = name

    deadline = time.time() + 90
    split = None
    # Until both hold partitions and together all of them, each exactly once.
    while time.time() < deadline:
        for name, c in (("a", a), ("b", b)):
            take(name, c, c.consume(num_messages=500, timeout=0.2))
        pa = sorted(tp.partition for tp in a.assignment())
        pb = sorted(tp.partition for tp in b.assignment())
        if pa and pb and sorted(pa + pb) == list(range(args.partitions)):
            split = {"a": pa, "b": pb}
            if len(seen) >= args.expect // 3:
                break
    if split is None:
        raise SystemExit(f"the consumers never split the partitions: a={a.assignment()} b={b.assignment()}")
    read_by_a = sum(1 for r in seen.values() if r == "a")
    # a leaves (its reads are committed); b takes over every partition from those offsets.
    a.close()
    taken_over = False
    deadline = time.time() + 90
    while time.time() < deadline and len(seen) < args.expect:
        msgs = b.consume(num_messages=500, timeout=0.5)
        if len(b.assignment()) == args.partitions:
            taken_over = True
        take("b", b, msgs)
    committed = {tp.partition: tp.offset for tp in b.committed(
        [TopicPartition(args.topic, p) for p in range(args.partitions)], timeout=10)}
    b.close()
    print(json.dumps({"split": split, "read": len(seen), "read_by_a_before_leaving": read_by_a,
                      "taken_over": taken_over, "committed": committed, "rewinds": rewinds}))
    return 0


def sasl(args):
    from confluent_kafka import Consumer, Producer

    common = {
        "bootstrap.servers": args.bootstrap,
        "security.protocol": args.protocol,
        "sasl.mechanism": args.mechanism,
        "sasl.username": args.user,
        "sasl.password": args.password,
    }
    if args.ca:
        common["ssl.ca.location"] = args.ca
    if os.environ.get("WEIR_KAFKA_DEBUG"):
        common["debug"] = os.environ["WEIR_KAFKA_DEBUG"]
    # A refused authentication reaches the error callback (deliveries then time out).
    client_errors = []
    common["error_cb"] = lambda err: client_errors.append(err.name())
    # Throttles reported in answers (ThrottleEvent.throttle_time is in seconds).
    throttles = [0]
    common["throttle_cb"] = lambda event: throttles.append(round(event.throttle_time * 1000))
    results = []
    producer = Producer({**common, "message.timeout.ms": 30000})
    for i in range(args.records):
        value = b"x" if args.records == 1 else (b"%08d" % i) * (args.record_size // 8)
        producer.produce(args.topic, value=value, on_delivery=lambda err, msg: results.append(err))
    producer.flush(60)
    failed = [e for e in results if e is not None]
    if failed:
        produce_error = failed[0].name()
    else:
        produce_error = "none" if len(results) == args.records else "timeout"
    consumer = Consumer({**common, "group.id": args.group, "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    consumer.subscribe([args.topic])
    consume_error = "timeout"
    deadline = time.time() + 20
    while time.time() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        consume_error = msg.error().name() if msg.error() else "none"
        break
    consumer.close()
    auth = next((e for e in client_errors if "AUTH" in e), "none")
    print(json.dumps({"produce": produce_error, "consume": consume_error, "authentication": auth,
                      "throttled_ms": max(throttles)}))
    return 0


def admin(args):
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic

    client = KafkaAdminClient(bootstrap_servers=args.bootstrap, client_id="weir-admin-test",
                              request_timeout_ms=30000)
    client.create_topics([NewTopic(name=args.topic, num_partitions=4, replication_factor=3,
                                   topic_configs={"retention.ms": "3600000"})])
    # Every node learns of the new topic within moments (as on Kafka): ask until one answers.
    deadline = time.time() + 15
    config = {}
    while not config and time.time() < deadline:
        configs = client.describe_configs([ConfigResource(ConfigResourceType.TOPIC, args.topic)])
        config = {name: entry["value"] for name, entry in configs["topic"][args.topic].items()}
        time.sleep(0.1)
    topics = client.describe_topics([args.topic])
    groups = client.list_groups()
    described = client.describe_groups([args.group]) if args.group else {}
    offsets = client.list_group_offsets(args.group)[args.group] if args.group else {}
    print(json.dumps({
        "topics": [{"name": t["name"], "partitions": len(t["partitions"]),
                    "replicas": sorted(len(p["replica_nodes"]) for p in t["partitions"])}
                   for t in topics],
        "config": config,
        "groups": sorted(g["group_id"] for g in groups),
        "described": {g: {"state": d["group_state"], "members": len(d["members"])}
                      for g, d in described.items()},
        "offsets": {f"{tp.topic}/{tp.partition}": o.offset for tp, o in offsets.items()},
        **changes(client, args),
    }))
    client.close()
    return 0


def changes(client, args):
    """The topic grows from 4 to 6 partitions; retention.bytes is set and retention.ms reset
    (incremental), then segment.bytes set with a whole-set AlterConfigs (kafka-python carries the
    topic's other own settings over); --delete-group is deleted. Returns what each step saw."""
    from kafka.admin import ConfigResource, ConfigResourceType

    def topic_configs():
        described = client.describe_configs([ConfigResource(ConfigResourceType.TOPIC, args.topic)])
        return {name: entry["value"] for name, entry in described["topic"][args.topic].items()}

    grown = client.create_partitions({args.topic: 6}, raise_errors=False)
    grow_errors = [r.error_code for r in grown.results]
    incremental = client.alter_configs(
        [ConfigResource(ConfigResourceType.TOPIC, args.topic,
                        configs={"retention.bytes": "5000000", "retention.ms": ("DELETE", None)})],
        incremental=True)
    after_incremental = topic_configs()
    whole = client.alter_configs(
        [ConfigResource(ConfigResourceType.TOPIC, args.topic, configs={"segment.bytes": "2097152"})],
        incremental=False)
    after_whole = topic_configs()
    # A value out of range is refused with INVALID_CONFIG, and nothing changes.
    refused = client.alter_configs(
        [ConfigResource(ConfigResourceType.TOPIC, args.topic, configs={"segment.bytes": "10"})],
        incremental=True)
    shrink = client.create_partitions({args.topic: 2}, raise_errors=False)
    # {group: "OK" or the error's name}
    deleted = client.delete_groups([args.delete_group]) if args.delete_group else {}
    deleted_again = client.delete_groups([args.delete_group]) if args.delete_group else {}
    return {
        "grow_errors": grow_errors,
        "partitions_after_grow": len(client.describe_topics([args.topic])[0]["partitions"]),
        "incremental": incremental["topic"][args.topic],
        "after_incremental": after_incremental,
        "whole": whole["topic"][args.topic],
        "after_whole": after_whole,
        "refused": refused["topic"][args.topic],
        "after_refused": topic_configs(),
        "shrink_errors": [r.error_code for r in shrink.results],
        "deleted": deleted,
        "deleted_again": deleted_again,
    }


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("produce")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--acked", required=True)
    p.add_argument("--compression", default="lz4")
    g = sub.add_parser("group")
    g.add_argument("--bootstrap", required=True)
    g.add_argument("--topic", required=True)
    g.add_argument("--group", required=True)
    g.add_argument("--partitions", type=int, required=True)
    g.add_argument("--expect", type=int, required=True)
    d = sub.add_parser("sasl")
    d.add_argument("--bootstrap", required=True)
    d.add_argument("--topic", required=True)
    d.add_argument("--user", required=True)
    d.add_argument("--password", required=True)
    d.add_argument("--mechanism", default="SCRAM-SHA-256")
    d.add_argument("--protocol", default="SASL_SSL")
    d.add_argument("--ca")
    d.add_argument("--group", default="sasl-group")
    d.add_argument("--records", type=int, default=1)
    d.add_argument("--record-size", type=int, default=4000)
    a = sub.add_parser("admin")
    a.add_argument("--bootstrap", required=True)
    a.add_argument("--topic", required=True)
    a.add_argument("--group")
    a.add_argument("--delete-group")
    args = parser.parse_args()
    return {"produce": produce, "group": group, "sasl": sasl, "admin": admin}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
