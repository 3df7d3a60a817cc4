"""Publish and consume through Weir's Kafka listener with librdkafka (confluent-kafka), the same
workload `weir bench` runs over gRPC: PRODUCERS processes publish MESSAGE_SIZE-byte records to one
topic as fast as acks=all allows (idempotent, lz4, linger 5 ms), CONSUMERS processes read it;
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
    from confluent_kafka import Producer

    producer = Producer({
        "bootstrap.servers": args.bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "compression.type": "lz4",
        "linger.ms": 5,
        "batch.size": 1000000,
        "queue.buffering.max.kbytes": 65536,
    })
    payload = bytes(args.message_size)
    acked = [0, 0]  # records, bytes acknowledged inside the window

    def delivered(err, msg):
        if err is None and start_at <= time.time() <= end_at:
            acked[0] += 1
            acked[1] += len(msg.value())

    while time.time() < end_at:
        for _ in range(1000):
            try:
                producer.produce(args.topic, value=payload, on_delivery=delivered)
            except BufferError:
                producer.poll(0.001)
        producer.poll(0)
    producer.flush(30)
    out.put(("publish", acked[0], acked[1]))


def consume(args, start_at, end_at, out):
    from confluent_kafka import Consumer

    consumer = Consumer({
        "bootstrap.servers": args.bootstrap,
        "group.id": f"bench-{time.time()}",
        "auto.offset.reset": "latest",
        "enable.auto.commit": False,
        "fetch.max.bytes": 52428800,
    })
    consumer.subscribe([args.topic])
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
    args = parser.parse_args()
    start_at = time.time() + args.warmup
    end_at = start_at + args.duration
    out = mp.Queue()
    workers = [mp.Process(target=consume, args=(args, start_at, end_at, out))
               for _ in range(args.consumers)]
    workers += [mp.Process(target=produce, args=(args, start_at, end_at, out))
                for _ in range(args.producers)]
    for w in workers:
        w.start()
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
