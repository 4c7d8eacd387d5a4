#!/usr/bin/env python
"""Preprocessing benchmark: cold (clean + tokenize + store in the cache) and warm (load from the cache).

    python benchmarks/bench_preprocess.py ../shared/moses/train.csv.gz [--n-jobs 0] [--cache-dir DIR]

Prints JSON: molecules read/kept, cold seconds, warm seconds (in-process load and a fresh
``python`` process that imports molvae and loads the entry, i.e. what a second
``molvae train`` pays before its first step), peak RSS of the parent and of the
worker processes, CPU count and the machine's load average (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WARM_SNIPPET = """
import json, resource, sys, time
t0 = time.perf_counter()
from molvae.cache import prepare_file
t1 = time.perf_counter()
p = prepare_file(sys.argv[1], cache_dir=sys.argv[2])
# touch every token, as training does within its first epoch
s = int(p.tokens.lengths.sum())
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "hit": p.extra["cache"]["hit"], "n": len(p),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="molecule file (e.g. ../shared/moses/train.csv.gz)")
    ap.add_argument("--n-jobs", type=int, default=0, help="worker processes (0 = all cores)")
    ap.add_argument("--cache-dir", help="cache folder (default: a fresh temporary folder, removed afterwards)")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)

    from molvae.cache import prepare_file
    from molvae.workers import available_cpus as _available_cpus

    tmp = None
    cache_dir = args.cache_dir
    if cache_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="molvae-bench-cache-")
        cache_dir = tmp.name
    load_before = os.getloadavg()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = ru.ru_utime + ru.ru_stime
    t0 = time.perf_counter()
    prepared = prepare_file(args.data, cache_dir=cache_dir, n_jobs=args.n_jobs)
    cold_s = time.perf_counter() - t0
    info = prepared.extra.get("cache", {})
    self_ru, child_ru = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    parent_rss, child_rss = self_ru.ru_maxrss / 1024, child_ru.ru_maxrss / 1024
    cpu_parent = self_ru.ru_utime + self_ru.ru_stime - cpu0
    cpu_workers = child_ru.ru_utime + child_ru.ru_stime

    t0 = time.perf_counter()
    again = prepare_file(args.data, cache_dir=cache_dir)
    int(again.tokens.lengths.sum())
    warm_in_process_s = time.perf_counter() - t0
    assert again.extra["cache"]["hit"], "second call missed the cache"

    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", WARM_SNIPPET, str(args.data), cache_dir], capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    warm_process_s = time.perf_counter() - t0
    warm = json.loads(res.stdout.strip().splitlines()[-1])
    entry = Path(info.get("path") or cache_dir)
    size_mb = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file()) / 2**20 if entry.exists() else None
    result = {
        "data": str(args.data),
        "n_input": prepared.n_input,
        "n_molecules": len(prepared),
        "n_rejected": int(len(prepared.rejected)),
        "cpus": _available_cpus(),
        "n_jobs": args.n_jobs,
        "cold_s": round(cold_s, 2),
        "cold_mol_per_s": round(prepared.n_input / cold_s, 1),
        # CPU seconds do not depend on other load on a shared machine. On an idle machine the
        # wall time is at most parent + workers / cpus (the parent's reading and merging are
        # counted as if they never overlapped with the workers).
        "cold_cpu_s_parent": round(cpu_parent, 1),
        "cold_cpu_s_workers": round(cpu_workers, 1),
        "cold_s_idle_estimate": round(cpu_parent + cpu_workers / max(1, min(_available_cpus(), args.n_jobs or 10**9)), 1),
        "cpu_ms_per_molecule": round(1000 * (cpu_workers + cpu_parent) / max(prepared.n_input, 1), 3),
        "warm_in_process_s": round(warm_in_process_s, 3),
        "warm_fresh_process_s": round(warm_process_s, 3),
        "warm_fresh_process_detail": warm,
        "cache_entry_mb": None if size_mb is None else round(size_mb, 1),
        "peak_rss_parent_mb": round(parent_rss, 1),
        "peak_rss_worker_mb": round(child_rss, 1),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
