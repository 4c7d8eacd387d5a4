"""Benchmark ``molvae evaluate``: the full MOSES suite for N molecules, cold and warm.

Samples N molecules (fixed seed) from the MOSES test set, evaluates them against the
MOSES test, scaffold-test and training sets, first with an empty reference cache
(cold: every reference statistic is computed) and then again with the cache filled
(warm: the usual case), and prints one JSON object: per-stage times of both runs,
every figure, the counts, the cache status, versions and the machine load, which
matters on a shared machine.

    python benchmarks/bench_metrics.py --test ../shared/moses/test.csv.gz \\
        --test-scaffolds ../shared/moses/test_scaffolds.csv.gz --train ../shared/moses/train.csv.gz \\
        --n 10000 --seed 0 --n-jobs 2

Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--test", required=True)
    parser.add_argument("--test-scaffolds", required=True)
    parser.add_argument("--train", required=True)
    parser.add_argument("--generated", help="evaluate this file instead of a sample of the test set")
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warm-repeats", type=int, default=1, help="warm runs (the median is reported)")
    parser.add_argument("--cache-dir", help="reference cache to use (default: a fresh temporary folder)")
    parser.add_argument("--warm-only", action="store_true", help="skip the cold run (needs a filled --cache-dir)")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)

    from molvae import __version__
    from molvae.data import read_molecules
    from molvae.metrics import evaluate

    if args.generated:
        generated = read_molecules(args.generated)["input"].tolist()
        source = args.generated
    else:
        test = read_molecules(args.test)["input"].tolist()
        rng = np.random.default_rng(args.seed)
        idx = rng.choice(len(test), size=min(args.n, len(test)), replace=False)
        generated = [test[i] for i in idx]
        source = f"{len(generated)} molecules sampled from {args.test} with seed {args.seed}"

    temporary = args.cache_dir is None
    cache = Path(args.cache_dir) if args.cache_dir else Path(tempfile.mkdtemp(prefix="molvae-bench-cache-"))
    kwargs = dict(train=args.train, test=args.test, test_scaffolds=args.test_scaffolds, n_jobs=args.n_jobs,
                  device=args.device, cache_dir=cache, progress=False)
    report: dict = {
        "benchmark": "molvae evaluate, full MOSES suite",
        "generated": source, "n": len(generated), "seed": args.seed, "n_jobs": args.n_jobs, "device": args.device,
        "machine": {"platform": platform.platform(), "cpus_visible": os.cpu_count(),
                    "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                    "load_average_at_start": _load()},
        "versions": {"molvae": __version__, "python": platform.python_version()},
    }
    try:
        if not args.warm_only:
            metrics_dir = cache / "metrics"
            if metrics_dir.exists() and any(metrics_dir.iterdir()):
                raise SystemExit(f"{cache} already holds cached statistics; a cold run needs an empty cache "
                                 "(use --warm-only or another --cache-dir)")
            t = time.perf_counter()
            cold = evaluate(generated, **kwargs)
            report["cold"] = {"total_s": round(time.perf_counter() - t, 2), "stages_s": cold.timings,
                              "cache": cold.cache, "load_average_after": _load()}
        warm_runs = []
        for _ in range(max(1, args.warm_repeats)):
            t = time.perf_counter()
            warm = evaluate(generated, **kwargs)
            warm_runs.append((time.perf_counter() - t, warm))
        totals = [w[0] for w in warm_runs]
        median_run = sorted(warm_runs, key=lambda w: w[0])[len(warm_runs) // 2][1]
        report["warm"] = {"total_s": round(statistics.median(totals), 2), "all_totals_s": [round(x, 2) for x in totals],
                          "stages_s": median_run.timings, "cache": median_run.cache, "load_average_after": _load()}
        if "cold" in report and cold.metrics != warm.metrics:
            report["warning"] = "cold and warm figures differ"
        report["metrics"] = warm.to_dict()["metrics"]
        report["counts"] = warm.to_dict()["counts"]
        report["notes"] = warm.notes
        report["versions"].update(warm.settings.get("versions", {}))
    finally:
        if temporary:
            shutil.rmtree(cache, ignore_errors=True)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
