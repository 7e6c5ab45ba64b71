"""Run seeded whole-node simulations: ``make sim NODE_SEEDS=N`` or replay ``make sim NODE_SEED=n``.

Seeds alternate between 3-node (even) and 5-node (odd) clusters. A failure
prints the property that broke and the command that replays it; the last
line says how many seeds ran and how fast.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback

from concordance.testing.node_sim import NodeSimulation, SimFailure


def run_one(seed: int, verbose: bool = False) -> str | None:
    """Run one seed; the failure text, or None if every property held."""
    sim = NodeSimulation(seed)
    try:
        sim.run()
    except SimFailure as e:
        return str(e)
    except Exception:  # the simulation itself broke: a failure of this seed too
        return f"seed {seed}: the simulation raised\n{traceback.format_exc()}"
    if verbose:
        print(f"seed {seed}: ok, trace {sim.trace_hash[:16]}, {len(sim.history)} ops, {sim.stats}")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--seeds", type=int, help="run seeds [from, from + N)")
    group.add_argument("--seed", type=int, help="replay one seed (prints its trace hash)")
    parser.add_argument("--from", dest="start", type=int, default=0)
    parser.add_argument("--progress", type=int, default=0, help="a line every N seeds")
    args = parser.parse_args(argv)
    seeds = [args.seed] if args.seed is not None else range(args.start, args.start + args.seeds)
    began, cpu = time.monotonic(), time.process_time()
    failures = ran = 0
    for seed in seeds:
        ran += 1
        failure = run_one(seed, verbose=args.seed is not None)
        if failure:
            failures += 1
            print(f"FAIL {failure}\n  replay: make sim NODE_SEED={seed}", flush=True)
        if args.progress and ran % args.progress == 0:
            took = time.monotonic() - began
            print(f"... {ran} seeds (to {seed}), {failures} failed, {ran / took:.2f}/s", flush=True)
    took = max(time.monotonic() - began, 1e-9)
    used = max(time.process_time() - cpu, 1e-9)
    print(
        f"{ran} node seeds ran, {failures} failed, in {took:.1f}s ({ran / took:.2f} seeds/s;"
        f" {ran / used:.2f} per CPU second)"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
