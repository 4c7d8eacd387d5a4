"""Training speed on a busy machine: OpenMP's spin-waiting against molvae's passive default.

Starts a competing CPU-bound process itself (a Python busy loop, killed at the end and never
older than ``--max-seconds``), then trains one epoch of ``--n-molecules`` molecules with molvae's
default model in a fresh process per configuration, alternating configurations over
``--repeats`` rounds:

- ``before``: OpenMP's default wait policy (torch imported before molvae, as every molvae did
  before the fix), torch threads = all available cores;
- ``one_thread``: the same (default wait policy) with ``num_threads=1``, the work-around of issue 17;
- ``after``: molvae's default now (``OMP_WAIT_POLICY=PASSIVE`` set before torch loads), threads =
  all available cores.

Prints JSON: device, versions, load average before the run, per-configuration epoch times
(median of the repeats) and their ratio to ``before``. A run slower than ``--timeout`` seconds
is stopped and reported as such, so the whole benchmark is bounded in time::

    python benchmarks/bench_busy_machine.py --n-molecules 200 --repeats 2 \
        --out benchmarks/results/bench_busy_machine.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
config, data, out, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if config in ("before", "one_thread"):
    import torch  # loaded first: OpenMP keeps its default (spinning) wait policy
import molvae
from molvae import TrainConfig, train
import torch
cfg = TrainConfig(epochs=1, batch_size=64, seed=0, device="cpu", show_progress=False,
                  num_threads=1 if config == "one_thread" else threads, recon_eval_size=50)
t0 = time.perf_counter()
res = train(data, out, train_config=cfg, n_jobs=1, use_cache=False)
print(json.dumps({"epoch_time_s": res.history[-1]["epoch_time_s"], "wall_s": time.perf_counter() - t0,
                  "torch_threads": torch.get_num_threads(),
                  "omp_wait_policy": __import__("os").environ.get("OMP_WAIT_POLICY"),
                  "policy_set_by_molvae": molvae.OMP_POLICY_SET_BY_MOLVAE}))
"""

BUSY_LOOP = "import time, sys\nend = time.time() + float(sys.argv[1])\nwhile time.time() < end:\n    pass\n"


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def run_once(config: str, data: Path, threads: int, timeout: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            proc = subprocess.run([sys.executable, "-c", CHILD, config, str(data), str(Path(tmp) / "run"),
                                   str(threads)], capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return {"timed_out": True, "epoch_time_s": None}
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}",
                "epoch_time_s": None}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT / "data" / "moses_sample.csv"))
    ap.add_argument("--n-molecules", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=available_cpus(), help="torch threads of before/after")
    ap.add_argument("--competitors", type=int, default=1, help="busy-loop processes to start")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds per training run at most")
    ap.add_argument("--max-seconds", type=float, default=1800.0, help="the competitors end by themselves then")
    ap.add_argument("--configs", default="before,one_thread,after")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()

    import pandas as pd

    table = pd.read_csv(args.data).head(args.n_molecules)
    tmpdir = tempfile.TemporaryDirectory()
    data = Path(tmpdir.name) / "molecules.csv"
    table.to_csv(data, index=False)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    competitors = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(args.max_seconds)])
                   for _ in range(args.competitors)]
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    runs: dict[str, list[dict]] = {c: [] for c in configs}
    t0 = time.perf_counter()
    try:
        time.sleep(1.0)  # let the competitors get going
        for r in range(args.repeats):
            for c in (configs if r % 2 == 0 else configs[::-1]):  # alternate the order between rounds
                runs[c].append(run_once(c, data, args.threads, args.timeout))
                print(f"round {r + 1} {c}: {runs[c][-1]}", file=sys.stderr)
    finally:
        for p in competitors:
            p.kill()
            p.wait()
    summary = {}
    for c, rs in runs.items():
        times = [x["epoch_time_s"] for x in rs if x.get("epoch_time_s") is not None]
        summary[c] = {"epoch_time_s_median": statistics.median(times) if times else None,
                      "epoch_times_s": [x.get("epoch_time_s") for x in rs],
                      "timed_out": sum(bool(x.get("timed_out")) for x in rs),
                      "torch_threads": next((x.get("torch_threads") for x in rs if "torch_threads" in x), None),
                      "omp_wait_policy": next((x.get("omp_wait_policy") for x in rs if "torch_threads" in x), None)}
    ref = summary.get("before", {}).get("epoch_time_s_median")
    for c, s in summary.items():
        s["speedup_vs_before"] = (ref / s["epoch_time_s_median"]) if ref and s["epoch_time_s_median"] else None
    import torch

    import molvae

    record = {
        "benchmark": "bench_busy_machine",
        "machine": {"cpus_available": available_cpus(), "processor": platform.processor() or platform.machine(),
                    "load_average_before": load_before, "competitors_started": args.competitors},
        "versions": {"molvae": molvae.__version__, "torch": torch.__version__, "python": platform.python_version()},
        "settings": {"n_molecules": len(table), "threads": args.threads, "repeats": args.repeats,
                     "batch_size": 64, "model": "molvae default", "epochs": 1},
        "results": summary,
        "total_s": round(time.perf_counter() - t0, 1),
    }
    text = json.dumps(record, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
