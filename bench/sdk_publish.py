"""Benchmark the SDK alone: round trips/s and client CPU per call against an echo consumer.

No scheduler and no database: a child process consumes the ingress queue of a
scratch vhost and answers every request with an ok reply at once, so the
figures are the SDK's (and the broker's) cost. CPU is the client process's
own (user + system, from getrusage), divided by the calls it made:

    .venv/bin/python bench/sdk_publish.py --calls 5000 --concurrency 1 32

To measure another version of the SDK, put its tree first on PYTHONPATH
(e.g. a ``git archive`` of an older commit unpacked as ``<dir>/aiosd/sdk``).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import httpx

import aiosd.sdk
from aiosd.sdk import Client

HOST = "127.0.0.1"
ECHO = """
import sys, pika
from aiosd.sdk.protocol import INGRESS_EXCHANGE, INGRESS_QUEUE, Reply, decode_request, encode
conn = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))
ch = conn.channel()
ch.exchange_declare(INGRESS_EXCHANGE, "topic", durable=True)
ch.queue_declare(INGRESS_QUEUE, durable=True, arguments={"x-max-priority": 9})
ch.queue_bind(INGRESS_QUEUE, INGRESS_EXCHANGE, "#")
ch.basic_qos(prefetch_count=1000)
def echo(ch, method, props, body):
    req = decode_request(body)
    reply = encode(Reply.ok(props.message_id, req.syscall, {}))
    out = pika.BasicProperties(correlation_id=props.correlation_id, content_type="application/json")
    ch.basic_publish("", props.reply_to, reply, out)
ch.basic_consume(INGRESS_QUEUE, echo, auto_ack=True)
print("ready", flush=True)
ch.start_consuming()
"""


def cpu_seconds() -> float:
    """CPU time (user + system) of this process so far, children excluded."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(client: Client, calls: int, concurrency: int) -> tuple[float, float]:
    """Make ``calls`` round trips from ``concurrency`` threads; return (calls/s, client CPU ms per call)."""
    per_thread = calls // concurrency

    def loop(_: int) -> None:
        for _ in range(per_thread):
            client.call("memory.get", {"id": "echo"})

    cpu, start = cpu_seconds(), time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(loop, range(concurrency)))
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    made = per_thread * concurrency
    return made / wall, cpu * 1000 / made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000, help="round trips per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32], help="threads sharing one client")
    parser.add_argument("--label", default="", help="printed with the figures (e.g. before/after)")
    args = parser.parse_args()
    mgmt = httpx.Client(
        base_url=f"http://{HOST}:{os.environ.get('AIOSD_AMQP_MGMT_PORT', '15672')}/api", auth=("guest", "guest")
    )
    vhost = f"aiosd-bench-{uuid.uuid4().hex[:8]}"
    mgmt.put(f"/vhosts/{vhost}").raise_for_status()
    mgmt.put(f"/permissions/{vhost}/guest", json={"configure": ".*", "write": ".*", "read": ".*"}).raise_for_status()
    url = f"amqp://guest:guest@{HOST}:{os.environ.get('AIOSD_AMQP_PORT', '5672')}/{quote(vhost, safe='')}"
    echo = subprocess.Popen([sys.executable, "-c", ECHO, url], stdout=subprocess.PIPE)
    try:
        assert echo.stdout is not None and echo.stdout.readline().strip() == b"ready", "echo consumer did not start"
        with Client(url, timeout=60) as client:
            measure(client, 200, 4)  # warm up: connections, imports, the broker's queues
            print(f"sdk {os.path.dirname(aiosd.sdk.__file__)} {args.label}")
            for concurrency in args.concurrency:
                rate, cpu_ms = measure(client, args.calls, concurrency)
                print(f"concurrency {concurrency:3}  {rate:7.0f} round trips/s  {cpu_ms:6.3f} client CPU ms/call")
    finally:
        echo.terminate()
        echo.wait(10)
        mgmt.delete(f"/vhosts/{vhost}")


if __name__ == "__main__":
    main()
