#!/usr/bin/env python
r"""Unconstrained penalized-logP maximization on a ZINC250k model: the top-3 found (<= 38 heavy atoms).

    python scripts/optimize_plogp.py ../shared/zinc250k/zinc250k.txt.gz --model runs/zinc/model.pt \
        --method bo --budget 500 --out results/optimize_plogp.json

The objective is molvae's ``plogp``: unnormalized logP − SA − max(largest ring − 6, 0), the
scale of GCPN's Table 1; ``--objective plogp_zinc`` gives JT-VAE's z-scored form. The
JT-VAE numbers (5.30, 4.93, 4.49) come from its BO experiment and are quoted by GCPN beside
unnormalized scores. Without ``--model`` a small model is trained first (see optimize_qed.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import optim_common as oc  # noqa: E402

# You et al. 2018 (GCPN), Table 1.
PUBLISHED = {"JT-VAE (BO)": [5.30, 4.93, 4.49], "GCPN": [7.98, 7.85, 7.80], "ZINC250k best": [4.52, 4.30, 4.23]}

if __name__ == "__main__":
    raise SystemExit(oc.run_top3(("plogp", "plogp_zinc"), 500, PUBLISHED, __doc__))
