"""The PMO benchmark's oracles (Gao et al. 2022, ``mol_opt``) as molvae objective plugins.

Each offline PMO task is a function ``name(smiles: list[str]) -> list[float]`` here, so any
molvae command takes it like a user's plugin::

    molvae optimize --objective benchmarks/pmo_oracles.py:celecoxib_rediscovery --budget 10000

The scores come from GuacaMol's scoring functions (Brown et al. 2019, ``guacamol`` 0.5.5): PMO's
``tdc.Oracle`` implements these same GuacaMol tasks, but PyTDC cannot run here (its oracle module
imports ``rdkit.six``, which RDKit removed, and installing it with its requirements replaces
molvae's RDKit, NumPy and pandas with 2022-23 versions). Nothing is rewritten: each task is the
GuacaMol benchmark object with the parameters of GuacaMol's ``goal_directed_suite_v2`` and
PMO's task list.

Tasks that cannot run offline (``OFFLINE_MISSING``): ``drd2``, ``gsk3b``, ``jnk3`` are classifiers
(scikit-learn models) that ``tdc.Oracle`` downloads at first use; neither they nor their training
data ship in a package, and they are not GuacaMol tasks.

GuacaMol is installed without its requirements (``pip install --no-deps guacamol==0.5.5``; the
``pmo`` extra holds the rest): it requires ``rdkit-pypi``, which would overwrite RDKit. Its
``guacamol.utils.chemistry`` imports ``scipy.histogram``, an alias of ``numpy.histogram`` that
SciPy 1.12 removed; :func:`_guacamol` restores that alias before importing it, and puts RDKit's
log back as it was (GuacaMol switches it off at import).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["PMO_TASKS", "OFFLINE_MISSING", "TASKS", "oracle"]

#: The 23 tasks of the PMO benchmark, in its table's order.
PMO_TASKS = ("albuterol_similarity", "amlodipine_mpo", "celecoxib_rediscovery", "deco_hop", "drd2",
             "fexofenadine_mpo", "gsk3b", "isomers_c7h8n2o2", "isomers_c9h10n2o2pf2cl", "jnk3", "median1",
             "median2", "mestranol_similarity", "osimertinib_mpo", "perindopril_mpo", "qed", "ranolazine_mpo",
             "scaffold_hop", "sitagliptin_mpo", "thiothixene_rediscovery", "troglitazone_rediscovery",
             "valsartan_smarts", "zaleplon_mpo")

#: Tasks that need model files downloaded at run time, with the reason.
OFFLINE_MISSING = {
    "drd2": "tdc.Oracle downloads its scikit-learn DRD2 classifier (drd2_current.pkl) at first use",
    "gsk3b": "tdc.Oracle downloads its scikit-learn GSK3B classifier (gsk3b_current.pkl) at first use",
    "jnk3": "tdc.Oracle downloads its scikit-learn JNK3 classifier (jnk3_current.pkl) at first use",
}

# PMO task -> (GuacaMol standard_benchmarks function, its arguments), as in goal_directed_suite_v2.
_SPECS: dict[str, tuple[str, dict]] = {
    "qed": ("qed_benchmark", {}),
    "celecoxib_rediscovery": ("similarity", dict(
        smiles="CC1=CC=C(C=C1)C1=CC(=NN1C1=CC=C(C=C1)S(N)(=O)=O)C(F)(F)F", name="Celecoxib", fp_type="ECFP4",
        threshold=1.0, rediscovery=True)),
    "troglitazone_rediscovery": ("similarity", dict(
        smiles="Cc1c(C)c2OC(C)(COc3ccc(CC4SC(=O)NC4=O)cc3)CCc2c(C)c1O", name="Troglitazone", fp_type="ECFP4",
        threshold=1.0, rediscovery=True)),
    "thiothixene_rediscovery": ("similarity", dict(
        smiles="CN(C)S(=O)(=O)c1ccc2Sc3ccccc3C(=CCCN4CCN(C)CC4)c2c1", name="Thiothixene", fp_type="ECFP4",
        threshold=1.0, rediscovery=True)),
    "albuterol_similarity": ("similarity", dict(
        smiles="CC(C)(C)NCC(O)c1ccc(O)c(CO)c1", name="Albuterol", fp_type="FCFP4", threshold=0.75)),
    "mestranol_similarity": ("similarity", dict(
        smiles="COc1ccc2[C@H]3CC[C@@]4(C)[C@@H](CC[C@@]4(O)C#C)[C@@H]3CCc2c1", name="Mestranol", fp_type="AP",
        threshold=0.75)),
    "isomers_c7h8n2o2": ("isomers_c7h8n2o2", {}),
    "isomers_c9h10n2o2pf2cl": ("isomers_c9h10n2o2pf2cl", {}),
    "median1": ("median_camphor_menthol", {}),
    "median2": ("median_tadalafil_sildenafil", {}),
    "osimertinib_mpo": ("hard_osimertinib", {}),
    "fexofenadine_mpo": ("hard_fexofenadine", {}),
    "ranolazine_mpo": ("ranolazine_mpo", {}),
    "perindopril_mpo": ("perindopril_rings", {}),
    "amlodipine_mpo": ("amlodipine_rings", {}),
    "sitagliptin_mpo": ("sitagliptin_replacement", {}),
    "zaleplon_mpo": ("zaleplon_with_other_formula", {}),
    "valsartan_smarts": ("valsartan_smarts", {}),
    "deco_hop": ("decoration_hop", {}),
    "scaffold_hop": ("scaffold_hop", {}),
}

#: The tasks this module scores offline.
TASKS = tuple(t for t in PMO_TASKS if t in _SPECS)

_cache: dict[str, Callable[[list[str]], list[float]]] = {}


def _guacamol():
    from rdkit import rdBase

    # GuacaMol silences RDKit's whole log when imported; put back what was on.
    before = dict(line.split(":") for line in rdBase.LogStatus().splitlines() if ":" in line)
    try:
        import numpy
        import scipy

        if not hasattr(scipy, "histogram"):
            scipy.histogram = numpy.histogram  # removed in SciPy 1.12; guacamol 0.5.5 imports it
        from guacamol import standard_benchmarks
    except ImportError as exc:
        raise ImportError(f"the PMO oracles need GuacaMol ({exc}): pip install 'molvae[pmo]' && "
                          "pip install --no-deps guacamol==0.5.5") from None
    finally:
        for name, status in before.items():
            (rdBase.EnableLog if status == "enabled" else rdBase.DisableLog)(name)
    return standard_benchmarks


def oracle(task: str) -> Callable[[Sequence[str]], list[float]]:
    """The scoring function of PMO task ``task``: a list of SMILES -> a list of floats.

    Raises:
        KeyError: ``task`` is not an offline PMO task (the message says why, for drd2/gsk3b/jnk3).
    """
    if task not in _cache:
        if task in OFFLINE_MISSING:
            raise KeyError(f"PMO task {task!r} cannot run offline: {OFFLINE_MISSING[task]}")
        if task not in _SPECS:
            raise KeyError(f"unknown PMO task {task!r}; expected one of {list(PMO_TASKS)}")
        fn_name, kwargs = _SPECS[task]
        module = _guacamol()
        from rdkit import rdBase

        with rdBase.BlockLogs():  # GuacaMol's fingerprints print an RDKit deprecation warning per molecule
            scoring = getattr(module, fn_name)(**kwargs).objective

        def score(smiles: Sequence[str], _f=scoring) -> list[float]:
            with rdBase.BlockLogs():
                return [float(v) for v in _f.score_list(list(smiles))]

        _cache[task] = score
    return _cache[task]


def _plugin(task: str):
    def score(smiles: list[str]) -> list[float]:
        return oracle(task)(smiles)

    score.__name__ = score.__qualname__ = task
    score.__doc__ = f"PMO task {task} (GuacaMol's scoring function): scores of a list of SMILES."
    return score


# One module-level function per offline task, so that ``pmo_oracles.py:<task>`` is a plugin.
for _task in TASKS:
    globals()[_task] = _plugin(_task)
del _task
