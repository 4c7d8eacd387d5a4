#!/usr/bin/env python
r"""Reconstruction accuracy and anomaly-score separation of a molvae model, as JSON.

    python scripts/latent_quality.py --model runs/sample/model.pt \
        --held-out ../shared/moses/test.csv.gz --n 1000 --seed 0 \
        --ood data/out_of_distribution.smi --out results/latent_quality.json

Held-out in-distribution molecules: a seeded subset of ``--n`` molecules of ``--held-out``
(any file the data reader accepts; use molecules the model never saw, e.g. the MOSES test
set for a model trained on the shipped MOSES sample). Out-of-distribution molecules:
``--ood`` (default ``data/out_of_distribution.smi``, see ``data/README.md``).

Reported:

- reconstruction (``molvae reconstruct``): exact canonical match of the greedy decode of μ
  (``accuracy``), mean Morgan-2 Tanimoto of the decode to the input, and with
  ``--n-decodes K`` the mean share of K posterior samples that decode to the input;
- latent smoothness (:func:`molvae.sample.perturbation_quality`): each held-out molecule's
  μ + s·σ·ε is decoded greedily for each ``--scales`` s (default 0.5, 1, 2; one ε per molecule);
  reported per s: the median (and mean) Morgan-2 Tanimoto of the decode to the input, the share
  decoding exactly to the input, and the share passing the MOSES filters. A smooth latent space
  keeps close, drug-like analogues at s ≤ 1 and still passes the filters at s = 2;
- anomaly score (``molvae score``, negative ELBO in nats, mean over ``--score-samples``
  posterior samples): mean and median for both sets, per molecule and per SELFIES token, and
  the AUROC of the score as a detector of the out-of-distribution set (Mann–Whitney U
  statistic / (n_ood · n_in); 0.5 = no separation, 1 = every outlier scores above every
  held-out molecule).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counted half."""
    pos, neg = np.asarray(positive, float), np.asarray(negative, float)
    pos, neg = pos[np.isfinite(pos)], neg[np.isfinite(neg)]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


def summary(table, column: str) -> dict[str, float]:
    values = table.loc[table["encoded"], column].to_numpy(float)
    return {"mean": round(float(np.mean(values)), 3), "median": round(float(np.median(values)), 3),
            "std": round(float(np.std(values)), 3)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model file, run folder or shipped model name")
    ap.add_argument("--held-out", required=True, help="in-distribution molecules the model never saw")
    ap.add_argument("--n", type=int, default=1000, help="seeded subset of --held-out (0 = all)")
    ap.add_argument("--ood", default=str(ROOT / "data" / "out_of_distribution.smi"))
    ap.add_argument("--n-decodes", type=int, default=10, help="posterior samples decoded per molecule")
    ap.add_argument("--score-samples", type=int, default=8, help="posterior samples per anomaly score")
    ap.add_argument("--scales", default="0.5,1,2", help="comma-separated s of the smoothness figure")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)

    import torch

    from molvae import MolVAE
    from molvae.data import read_molecules
    from molvae.sample import perturbation_quality, reconstruct, reconstruction_accuracy, score

    if args.threads:
        torch.set_num_threads(args.threads)
    model = MolVAE.load(args.model)
    held = read_molecules(args.held_out)["input"].tolist()
    if args.n and args.n < len(held):
        idx = np.sort(np.random.default_rng(args.seed).choice(len(held), size=args.n, replace=False))
        held = [held[i] for i in idx]
    ood = read_molecules(args.ood)["input"].tolist()

    t = time.perf_counter()
    greedy = reconstruction_accuracy(reconstruct(model, held, n_decodes=1, seed=args.seed))
    sampled = reconstruction_accuracy(reconstruct(model, held, n_decodes=args.n_decodes, seed=args.seed))
    t_recon = time.perf_counter() - t
    t = time.perf_counter()
    scales = [float(x) for x in args.scales.split(",") if x.strip()]
    smooth = perturbation_quality(model, held, scales=scales, seed=args.seed)
    t_smooth = time.perf_counter() - t
    t = time.perf_counter()
    s_in = score(model, held, n_samples=args.score_samples, seed=args.seed)
    s_out = score(model, ood, n_samples=args.score_samples, seed=args.seed)
    t_score = time.perf_counter() - t

    report = {
        "model": str(args.model),
        "model_epochs": len(model.history) if getattr(model, "history", None) else None,
        "held_out": {"file": args.held_out, "n": len(held), "seed": args.seed},
        "ood": {"file": args.ood, "n": len(ood)},
        "reconstruction": {
            "greedy_mu": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in greedy.items()},
            f"{args.n_decodes}_posterior_samples": {k: (round(v, 4) if isinstance(v, float) else v)
                                                   for k, v in sampled.items()},
        },
        "smoothness": {k: ({m: round(x, 4) for m, x in v.items()} if isinstance(v, dict) else v)
                       for k, v in smooth.items()},
        "anomaly_score": {
            "score_samples": args.score_samples,
            "held_out": {"n_encoded": int(s_in["encoded"].sum()), "score": summary(s_in, "score"),
                         "score_per_token": summary(s_in, "score_per_token")},
            "ood": {"n_encoded": int(s_out["encoded"].sum()), "score": summary(s_out, "score"),
                    "score_per_token": summary(s_out, "score_per_token"),
                    "rejected": s_out.loc[~s_out["encoded"], ["input", "reason"]].to_dict("records")},
            "auroc_score": round(auroc(s_out["score"].to_numpy(), s_in["score"].to_numpy()), 4),
            "auroc_score_per_token": round(auroc(s_out["score_per_token"].to_numpy(),
                                                 s_in["score_per_token"].to_numpy()), 4),
        },
        "seconds": {"reconstruction": round(t_recon, 1), "smoothness": round(t_smooth, 1), "score": round(t_score, 1)},
        "torch_threads": torch.get_num_threads(),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
