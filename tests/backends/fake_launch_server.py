"""Stand-in for ``python -m sglang.launch_server`` in the launcher tests.

Takes the same options the launcher passes (argparse rejects anything else,
so a wrong command line fails the test) and serves the contract server on
``--host``/``--port``. ``FAKE_SGLANG_STARTING`` sets how many health probes
answer 503 first; ``FAKE_SGLANG_EXIT`` makes it exit at once with that code.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading

from sglang_contract import ContractServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mem-fraction-static", type=float)
    parser.add_argument("--max-running-requests", type=int)
    parser.add_argument("--schedule-policy", choices=["lpm", "random", "fcfs", "dfs-weight"])
    parser.add_argument("--enable-metrics", action="store_true")
    args = parser.parse_args()
    if "FAKE_SGLANG_EXIT" in os.environ:
        sys.exit(int(os.environ["FAKE_SGLANG_EXIT"]))
    starting = int(os.environ.get("FAKE_SGLANG_STARTING", "0"))
    server = ContractServer(args.model_path, starting_requests=starting, port=args.port, host=args.host)
    with server:
        threading.Event().wait()  # serve until killed


if __name__ == "__main__":
    main()
