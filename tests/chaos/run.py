"""Command line: one or more long chaos runs, a summary on stdout and a JSON report.

    python -m tests.chaos.run --duration 120 --seed 7 --nodes 3 --report chaos-report.json

Exit status 0 iff every check of every run passed. With ``--runs N`` the seeds are
SEED..SEED+N-1 and the report holds one entry per run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from tests.chaos import report
from tests.chaos.harness import Config, run_sync
from tests.chaos.nemesis import KINDS


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tests.chaos.run", description=__doc__.split("\n")[0]
    )
    p.add_argument("--duration", type=float, default=120.0, help="seconds of traffic per run")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--runs", type=int, default=1, help="runs with seeds SEED, SEED+1, ...")
    p.add_argument("--clients", type=int, default=0, help="default: 2 per node")
    p.add_argument("--keys", type=int, default=5)
    p.add_argument("--watchers", type=int, default=2)
    p.add_argument("--faults", default="", help=f"comma-separated subset of {','.join(KINDS)}")
    p.add_argument("--hold", default="2,5", help="MIN,MAX seconds a fault is held")
    p.add_argument("--gap", default="1,3", help="MIN,MAX seconds between faults")
    p.add_argument("--report", default="chaos-report.json")
    p.add_argument("--keep-data", action="store_true", help="keep data dirs of passing runs")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
    )
    kinds = dict(KINDS)
    if args.faults:
        wanted = [k.strip() for k in args.faults.split(",") if k.strip()]
        unknown = set(wanted) - set(KINDS)
        if unknown:
            p.error(f"unknown fault kind(s): {', '.join(sorted(unknown))}")
        kinds = {k: KINDS[k] for k in wanted}
    runs = []
    failed = 0
    for i in range(args.runs):
        cfg = Config(
            seed=args.seed + i,
            nodes=args.nodes,
            duration=args.duration,
            clients=args.clients,
            keys=args.keys,
            watchers=args.watchers,
            kinds=kinds,
            hold=_pair(args.hold),
            gap=_pair(args.gap),
            keep_data=args.keep_data,
        )
        result = run_sync(cfg)
        print(report.summary(result), flush=True)
        print(flush=True)
        runs.append(result.report())
        failed += not result.ok
    body = runs[0] if len(runs) == 1 else {"ok": failed == 0, "runs": runs}
    Path(args.report).write_text(json.dumps(body, indent=2, default=str) + "\n")
    print(f"report written to {args.report}; {len(runs) - failed}/{len(runs)} runs passed")
    return 1 if failed else 0


def _pair(text: str) -> tuple[float, float]:
    lo, _, hi = text.partition(",")
    return float(lo), float(hi or lo)


if __name__ == "__main__":
    sys.exit(main())
