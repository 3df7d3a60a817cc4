"""Publish and consume through Weir's Kafka listener with librdkafka (confluent-kafka), the same
workload `weir bench` runs over gRPC: PRODUCERS processes publish MESSAGE_SIZE-byte records of random bytes
to one topic as fast as acks=all allows (idempotent, uncompressed, linger 5 ms, 1 MB batches: the
settings of `weir bench`), CONSUMERS processes read it;
after WARMUP seconds, DURATION seconds are measured. Prints one JSON object:
{"publish": {"mb_per_s", "msgs_per_s"}, "consume": {...}} (acknowledged and consumed bytes in the
measured window).

  python kafka_bench.py --bootstrap HOST:PORT --topic T --producers 4 --consumers 1 \
      --message-size 1024 --warmup 5 --duration 20
"""

import argparse
import json
import multiprocessing as mp
import time


def produce(args, start_at, end_at, out):
    import os

    from confluent_kafka import Producer

    failed = []
    producer = Producer({
        "bootstrap.servers": args.bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "compression.type": "none",
        "linger.ms": 5,
        "batch.size": 1000000,
        # At most this much published and not yet acknowledged, as `weir bench --buffer-memory`.
        "queue.buffering.max.kbytes": max(1, args.in_flight_bytes // 1024),
        # Failures only: a Python callback per acknowledged record would cost more CPU than the
        # broker spends on it.
        "delivery.report.only.error": True,
        "on_delivery": lambda err, msg: err is not None and failed.append(err),
    })
    pool = os.urandom(args.message_size * 64)
    payloads = [pool[i * args.message_size:(i + 1) * args.message_size] for i in range(64)]
    produced = 0
    marks = {}  # "start"/"end" -> records acknowledged by then: produced minus still queued

    def mark(name):
        if name not in marks and time.time() >= (start_at if name == "start" else end_at):
            marks[name] = produced - len(producer)

    # produce_batch queues a list in one call (librdkafka's rd_kafka_produce_batch): the Python
    # cost per record is what it would be in a client written for throughput.
    chunk = [{"value": payloads[i % 64]} for i in range(128)]
    while time.time() < end_at:
        pending = chunk
        while pending:
            try:
                queued = producer.produce_batch(args.topic, pending)
            except BufferError:
                queued = 0
            produced += queued
            pending = pending[queued:]
            if pending:
                # Full: wait for acknowledgements (blocking, no spinning), then the rest.
                producer.poll(0.05)
        producer.poll(0)
        mark("start")
    mark("start")
    mark("end")
    producer.flush(30)
    if failed:
        raise SystemExit(f"{len(failed)} records failed: {failed[0]}")
    records = marks["end"] - marks["start"]
    out.put(("publish", records, records * args.message_size))


def consume(args, ready, go, window, out):
    from confluent_kafka import Consumer

    consumer = Consumer({
        "bootstrap.servers": args.bootstrap,
        "group.id": f"bench-{time.time()}",
        "auto.offset.reset": "latest",
        "enable.auto.commit": False,
        "fetch.max.bytes": 52428800,
    })
    consumer.subscribe([args.topic])
    # Joined and assigned before the clock starts (the group's join is not part of the run).
    deadline = time.time() + 60
    while not consumer.assignment() and time.time() < deadline:
        consumer.poll(0.2)
    ready.put(bool(consumer.assignment()))
    go.wait()
    start_at, end_at = window[0], window[1]
    records = size = 0
    while time.time() < end_at:
        for msg in consumer.consume(num_messages=1000, timeout=0.5):
            if msg.error() is None and start_at <= time.time() <= end_at:
                records += 1
                size += len(msg.value())
    consumer.close()
    out.put(("consume", records, size))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--producers", type=int, default=4)
    parser.add_argument("--consumers", type=int, default=1)
    parser.add_argument("--message-size", type=int, default=1024)
    parser.add_argument("--warmup", type=float, default=5)
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--in-flight-bytes", type=int, default=1 << 20)
    args = parser.parse_args()
    out, ready, go = mp.Queue(), mp.Queue(), mp.Event()
    window = mp.Array("d", 2)
    consumers = [mp.Process(target=consume, args=(args, ready, go, window, out))
                 for _ in range(args.consumers)]
    for c in consumers:
        c.start()
    if not all(ready.get(timeout=90) for _ in consumers):
        raise SystemExit("a consumer got no partitions within 60 s")
    start_at = time.time() + args.warmup
    end_at = start_at + args.duration
    window[0], window[1] = start_at, end_at
    go.set()
    producers = [mp.Process(target=produce, args=(args, start_at, end_at, out))
                 for _ in range(args.producers)]
    for p in producers:
        p.start()
    workers = consumers + producers
    totals = {"publish": [0, 0], "consume": [0, 0]}
    for _ in workers:
        kind, records, size = out.get()
        totals[kind][0] += records
        totals[kind][1] += size
    for w in workers:
        w.join()
    result = {kind: {"mb_per_s": round(size / args.duration / 1e6, 2),
                     "msgs_per_s": round(records / args.duration)}
              for kind, (records, size) in totals.items()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
