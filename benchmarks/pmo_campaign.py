#!/usr/bin/env python
r"""Run the PMO campaign: ``benchmarks/pmo.py`` for every offline task and seed, ``--jobs`` at a time.

    python benchmarks/pmo_campaign.py --jobs 2 --out benchmarks/results/pmo            # the whole plan
    python benchmarks/pmo_campaign.py --jobs 2 --dry-run                                # what it would run
    python benchmarks/pmo_campaign.py --tasks main --methods gradient                   # the five main tasks only

The plan, in this order: seed 0 of the five tasks issue 15 asks three seeds of (qed,
celecoxib_rediscovery, osimertinib_mpo, fexofenadine_mpo, median1), their seeds 1 and 2, then seed 0
of every other offline task. Each run writes its own JSON (``<oracle>_<method>_seed<S>.json``);
a run whose JSON is already in ``--out`` is skipped, so a campaign cut short by the end of a session
goes on where it stopped when started again. Each run uses one torch thread (``--jobs`` runs = cores),
and its log goes to ``<out>/logs/``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import pmo_oracles  # noqa: E402

THREE_SEEDS = ("qed", "celecoxib_rediscovery", "osimertinib_mpo", "fexofenadine_mpo", "median1")


def plan(methods: list[str], seeds: int, tasks: str = "all") -> list[tuple[str, str, int]]:
    """``(oracle, method, seed)`` in the order they run; ``tasks``: ``all``, ``main`` (the five) or ``rest``."""
    main_tasks = [(t, m, s) for s in range(seeds) for t in THREE_SEEDS for m in methods]
    rest = [(t, m, 0) for t in pmo_oracles.TASKS if t not in THREE_SEEDS for m in methods]
    return {"all": main_tasks + rest, "main": main_tasks, "rest": rest}[tasks]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="bo",
                    help="comma-separated: bo, gradient, bo-wr, gradient-wr (with weighted retraining) [bo]")
    ap.add_argument("--seeds", type=int, default=3, help="seeds of the five main tasks (others: seed 0) [3]")
    ap.add_argument("--tasks", choices=["all", "main", "rest"], default="all",
                    help="all offline tasks, the five main ones, or the rest [all]")
    ap.add_argument("--only", metavar="TASKS", help="comma-separated tasks, run in this order (seed 0 of each) "
                    "instead of --tasks")
    ap.add_argument("--budget", type=int, default=10000, help="oracle calls per run [10000]")
    ap.add_argument("--model", default="zinc250k", help="passed to pmo.py [zinc250k]")
    ap.add_argument("--init", help="passed to pmo.py: SMILES file the initial designs are drawn from [prior samples]")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each [2]")
    ap.add_argument("--out", default="benchmarks/results/pmo", help="folder of the JSON files")
    ap.add_argument("--dry-run", action="store_true", help="print the commands still to run and stop")
    args = ap.parse_args(argv)
    out = Path(args.out)
    methods = args.methods.split(",")
    if args.only:
        unknown = [t for t in args.only.split(",") if t not in pmo_oracles.TASKS]
        if unknown:
            raise SystemExit(f"--only: unknown or offline-impossible task(s) {unknown}; expected some of "
                             f"{list(pmo_oracles.TASKS)}")
        runs = [(t, m, 0) for t in args.only.split(",") for m in methods]
    else:
        runs = plan(methods, args.seeds, args.tasks)
    todo = [(t, m, s) for t, m, s in runs
            if not (out / f"{t}_{m}_seed{s}.json").is_file()]
    commands = [[sys.executable, str(HERE / "pmo.py"), "--oracle", t, "--method", m, "--seed", str(s),
                 "--budget", str(args.budget), "--model", args.model, "--threads", "1", "--out", str(out),
                 *(["--init", args.init] if args.init else [])]
                for t, m, s in todo]
    if args.dry_run:
        for cmd in commands:
            print(" ".join(["python", "benchmarks/pmo.py", *cmd[2:]]))
        return 0
    (out / "logs").mkdir(parents=True, exist_ok=True)
    running: list[tuple[subprocess.Popen, str, object]] = []
    failed = 0
    while commands or running:
        while commands and len(running) < args.jobs:
            cmd = commands.pop(0)
            name = f"{cmd[3]}_{cmd[5]}_seed{cmd[7]}"
            log = open(out / "logs" / f"{name}.log", "w")
            running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), name, log))
            print(f"{time.strftime('%H:%M:%S')} started {name}", file=sys.stderr, flush=True)
        time.sleep(2)
        for entry in list(running):
            proc, name, log = entry
            if proc.poll() is not None:
                running.remove(entry)
                log.close()
                failed += proc.returncode != 0
                print(f"{time.strftime('%H:%M:%S')} {name}: exit {proc.returncode}", file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
