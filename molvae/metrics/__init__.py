"""MOSES metrics of generated molecules, with the MOSES definitions, computed fast.

``molvae.metrics.evaluate(generated, train=..., test=..., test_scaffolds=...)`` returns
every figure of the MOSES table (Polykovskiy et al. 2020; ``molsets`` 0.3.1) plus the
counts behind each. Definitions, with *valid* = the generated strings RDKit parses
(an empty string is invalid) and T = Tanimoto similarity of Morgan fingerprints
(radius 2, 1024 bits):

``valid``
    valid / all generated strings.
``unique@k``
    distinct canonical SMILES among the first k valid molecules / that number; when
    there are fewer than k valid molecules, all of them (as MOSES; a note says so).
``Novelty``
    unique valid canonical molecules not in the training set / unique valid canonical
    molecules; both sides are canonicalized (MOSES compares against the raw training strings).
``IntDiv``, ``IntDiv2``
    ``1 − (1/n) Σ_i ((1/n) Σ_j T_ij^p)^(1/p)`` for p = 1 and 2 over the n valid
    molecules, duplicates and self-pairs included (MOSES ``internal_diversity``).
``FCD/Test``, ``FCD/TestSF``
    Fréchet distance between Gaussians fitted to ChemNet activations of the canonical
    SMILES of the valid generated molecules and of the reference set (``fcd`` package
    weights, ``fcd_torch`` input encoding; needs ≥ 2 molecules on each side).
``SNN/Test``, ``SNN/TestSF``
    mean over valid generated molecules of the largest T to any reference molecule.
``Frag/…``, ``Scaf/…``
    cosine similarity of the count vectors of BRICS fragments and of Bemis–Murcko
    scaffolds (scaffolds with fewer than 2 rings are dropped, as in MOSES).
``Filters``
    fraction of valid molecules passing the MOSES MCF + PAINS SMARTS and the charge,
    atom-type and ring-size rules (:mod:`molvae.metrics.filters`).
``logP``, ``SA``, ``QED``, ``weight``
    Wasserstein-1 distance between the property distributions of the valid generated
    molecules and of the test set.
``Reconstruction``, ``KL``, ``ActiveUnits`` (with a model)
    on a seeded sample of held-out (test) molecules: exact canonical match of the greedy
    decode of μ, mean KL(q(z|x) || p(z)) in nats, dimensions with Var_x[μ] > 0.01.

Figures that cannot be computed (empty or all-invalid input, fewer than 2 molecules for
FCD, no reference given, ``fcd`` not installed) are ``None`` — never a division by zero.

Speed: per-molecule work runs in ``n_jobs`` processes on unique molecules only;
Tanimoto aggregates are blocked matrix products in torch (exact reduced precision, see
:mod:`molvae.metrics.similarity`); ChemNet skips the padding steps whose result is the
same for every molecule (:mod:`molvae.metrics.chemnet`); reference statistics are cached
on disk (:mod:`molvae.metrics.stats`).
"""

from __future__ import annotations

from .filters import filter_failure, passes_filters
from .stats import SetStatistics, TrainStatistics, cache_dir
from .suite import (METRIC_NAMES, Evaluation, cosine_similarity, describe, evaluate, fcd, fraction_passes_filters,
                    fraction_unique, fraction_valid, fragment_similarity, internal_diversity, novelty,
                    scaffold_similarity, snn, wasserstein_1d)

__all__ = [
    "evaluate", "Evaluation", "METRIC_NAMES", "SetStatistics", "TrainStatistics", "cache_dir", "describe",
    "fraction_valid", "fraction_unique", "novelty", "internal_diversity", "snn", "fragment_similarity",
    "scaffold_similarity", "fcd", "fraction_passes_filters", "passes_filters", "filter_failure",
    "cosine_similarity", "wasserstein_1d",
]
