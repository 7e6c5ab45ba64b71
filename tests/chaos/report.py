"""The human summary of a chaos run and its JSON report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.chaos.harness import Result


def summary(result: Result) -> str:
    cfg = result.config
    rep = result.report()
    ops = rep["operations"]
    lines = [
        f"chaos run: seed {cfg.seed}, {cfg.nodes} nodes, {cfg.duration:.0f}s of traffic, "
        f"{cfg.clients or 2 * cfg.nodes} clients{' + TTL client' if cfg.ttl else ''}, "
        f"{cfg.watchers} watchers{' + 1 long-poller' if cfg.poller else ''}",
        "timings: " + ", ".join(f"{k} {v}s" for k, v in result.timings.items()),
        f"operations: {ops['total']} ({ops['per_second']}/s)",
    ]
    for kind, counts in ops["by_kind"].items():
        outcome = ", ".join(f"{k} {v}" for k, v in counts.items())
        lines.append(f"  {kind:7s} {outcome}")
    faults = rep["faults"]
    by_kind = ", ".join(f"{k} {v}" for k, v in faults["by_kind"].items())
    lines.append(f"faults: {faults['total']} ({by_kind}); {faults['errors']} could not be"
                 " injected as planned")  # fmt: skip
    lines += [f"  {f.describe()}" for f in result.faults]
    lines.append("checks:")
    for v in result.verdicts:
        mark = {True: "PASS", False: "FAIL", None: "UNDECIDED"}[v.ok]
        lines.append(f"  {mark:9s} {v.name}: {v.summary}")
        lines += [f"            {e}" for e in v.evidence[:40]]
    if not result.ok:
        lines.append(
            f"VIOLATION (seed {cfg.seed}): reproduce with `python -m tests.chaos.run "
            f"--seed {cfg.seed} --nodes {cfg.nodes} --duration {cfg.duration:.0f}`; "
            f"the nodes' data and logs are kept in {result.data_dir}"
        )
        if result.linearizability is not None and result.linearizability.ok is not True:
            lines.append("history slice (linearizability):")
            lines.append(result.linearizability.explain())
    else:
        lines.append("all checks passed")
    return "\n".join(lines)


def write(result: Result, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    body = result.report()
    if extra:
        body.update(extra)
    Path(path).write_text(json.dumps(body, indent=2, default=str) + "\n")
