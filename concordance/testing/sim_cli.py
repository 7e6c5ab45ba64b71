"""Run seeded whole-cluster simulations: ``make sim SEEDS=N`` or ``make sim SEED=n``."""

from __future__ import annotations

import argparse
import sys
import time

from concordance.testing.sim import SafetyViolation, SimOptions, Simulation


def options_for(seed: int) -> SimOptions:
    """Seeds alternate between 3- and 5-node clusters."""
    return SimOptions(nodes=3 if seed % 2 == 0 else 5)


def run_seed(seed: int) -> str | None:
    """Run one seed; return the failure text, or None if every property held."""
    try:
        Simulation(seed, options_for(seed)).run()
    except SafetyViolation as e:
        return str(e)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--seeds", type=int, help="run seeds [start, start + N)")
    group.add_argument("--seed", type=int, help="replay one seed")
    parser.add_argument("--start", type=int, default=0)
    args = parser.parse_args(argv)
    seeds = [args.seed] if args.seed is not None else range(args.start, args.start + args.seeds)
    began = time.monotonic()
    failures = 0
    ran = 0
    for seed in seeds:
        ran += 1
        failure = run_seed(seed)
        if failure:
            failures += 1
            print(f"FAIL {failure}\n  replay: make sim SEED={seed}", flush=True)
    took = time.monotonic() - began
    print(f"{ran} seeds ran, {failures} failed, in {took:.1f}s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
