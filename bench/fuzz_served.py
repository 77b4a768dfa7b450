"""Fuzz a served app from its OpenAPI schema for a while; count answers by route and status.

schemathesis sends each operation's documented examples, then requests it generates from
``/openapi.json`` (the app needs ``docs: true``), operation after operation, until ``--seconds``
have passed. Any 5xx is a bug: the script prints the table, writes ``--json`` and exits 1.

    serve run --address local serve_app.app:app_builder run_dir=runs/demo docs=true &
    python bench/fuzz_served.py --url http://127.0.0.1:8000 --seconds 60 --json /tmp/fuzz.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation.hypothesis.examples import generate_one


def fuzz(url: str, seconds: float, headers: dict[str, str]) -> Counter:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    seen: Counter = Counter()
    deadline = time.monotonic() + seconds

    def call(op, case) -> None:
        if time.monotonic() > deadline:
            return
        response = case.call(base_url=url, headers=headers, timeout=30)
        seen[(op.path, op.method.upper(), response.status_code)] += 1

    for op in operations:
        for documented in schema.get_strategies_from_examples(op):
            call(op, generate_one(documented))
    while time.monotonic() < deadline:
        for op in operations:
            @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy())
            def one(case):
                call(op, case)

            one()
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--token", help="bearer token, when the app needs one")
    ap.add_argument("--quick", action="store_true", help="20 seconds")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    seconds = 20 if args.quick else args.seconds
    headers = {"authorization": f"Bearer {args.token}"} if args.token else {}
    seen = fuzz(args.url, seconds, headers)
    print(f"{'route':<40} {'method':<6} {'status':>6} {'answers':>8}")
    for (path, method, status), n in sorted(seen.items()):
        print(f"{path:<40} {method:<6} {status:>6} {n:>8}")
    errors = sum(n for (_, _, status), n in seen.items() if status >= 500)
    print(f"{sum(seen.values())} requests in {seconds:.0f} s, {errors} with a 5xx")
    if args.json:
        args.json.write_text(json.dumps({"url": args.url, "seconds": seconds, "requests": sum(seen.values()),
                                         "server_errors": errors,
                                         "answers": [{"route": p, "method": m, "status": s, "count": n}
                                                     for (p, m, s), n in sorted(seen.items())]}, indent=2))
    raise SystemExit(1 if errors else 0)


if __name__ == "__main__":
    main()
