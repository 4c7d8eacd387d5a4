"""The benchmark scripts of scripts/ (optimize_qed.py, constrained_plogp.py) end to end on a tiny
ZINC-like file and the tiny trained model: their JSON, the known-molecule design, the constrained table."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from molvae import chem
from molvae.data import file_hash

pytest.importorskip("botorch")

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="module")
def mini_zinc(tmp_path_factory, small_csv) -> Path:
    """300 molecules in the ZINC250k file format (gzipped, one SMILES per line)."""
    path = tmp_path_factory.mktemp("zinc") / "zinc_mini.txt.gz"
    smiles = pd.read_csv(small_csv)["smiles"].tolist()[:300]
    with gzip.open(path, "wt") as f:
        f.write("".join(f"{s}\n" for s in smiles))
    return path


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPTS / script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_optimize_qed_known_design(mini_zinc, tiny_model, tmp_path):
    out = tmp_path / "qed.json"
    r = _run("optimize_qed.py", str(mini_zinc), "--model", str(tiny_model.path), "--budget", "6",
             "--patience", "3", "--work-dir", str(tmp_path / "work"), "--n-jobs", "1", "--out", str(out),
             "--settings", '{"tr_length": 0.4, "batch_size": 3}')
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads(out.read_text())
    res = data["results"][0]
    assert res["method"] == "bo" and res["n_calls"] <= 6
    # --settings reach the search and are recorded; their log does not overwrite a default run's.
    assert data["settings"] == {"tr_length": 0.4, "batch_size": 3}
    # The model is recorded as the user named it, with the hash of its weights.
    assert data["model"]["model"] == str(tiny_model.path)
    assert data["model"]["sha256"] == file_hash(tiny_model.path)
    assert Path(res["log"]).name == "qed_bo_known_b6_seed0_batch_size3_tr_length0.4_log.csv"
    searched = pd.read_csv(res["log"], keep_default_na=False)
    assert searched[searched["status"] != "known"].groupby("step").size().max() <= 3
    # The known design: train-split molecules with their true QED, free, never among the results.
    known = pd.read_csv(tmp_path / "work" / "zinc_train_qed.csv", keep_default_na=False)
    assert known["qed"].iloc[0] == pytest.approx(chem.qed(chem.to_mol(known["smiles"].iloc[0])))
    assert data["best_known_score"] == pytest.approx(known["qed"].max(), abs=1e-4)
    assert 0 < res["known_in_design"] <= len(known)
    log = pd.read_csv(res["log"], keep_default_na=False)
    given = set(log[log["status"] == "known"]["smiles"])
    assert not given & set(res["top3_smiles"])
    assert int(log["oracle_call"].astype(str).eq("True").sum()) == res["n_calls"]
    assert len(res["top3_in_zinc250k"]) == len(res["top3_smiles"]) == len(res["top3_heavy_atoms"])
    assert all(n <= 38 for n in res["top3_heavy_atoms"])
    assert "JT-VAE" in r.stdout and "not in ZINC250k" in r.stdout


def test_constrained_plogp_table(mini_zinc, tiny_model, tmp_path):
    out = tmp_path / "constrained.json"
    r = _run("constrained_plogp.py", str(mini_zinc), "--model", str(tiny_model.path), "--n-molecules", "2",
             "--budget", "4", "--deltas", "0.0", "0.6", "--processes", "2", "--work-dir", str(tmp_path / "work"),
             "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads(out.read_text())
    assert set(data["results"]) == {"0.0", "0.6"}
    assert data["model"]["sha256"] == file_hash(tiny_model.path)
    rows = data["molecules"]
    assert len(rows) == 4 and {(m["delta"], m["index"]) for m in rows} == {(d, k) for d in (0.0, 0.6) for k in (0, 1)}
    for m in rows:
        assert m["n_calls"] <= 4
        if m["success"]:
            assert m["similarity"] >= m["delta"] and m["best_plogp"] > m["start_plogp"]
            assert m["improvement"] == pytest.approx(m["best_plogp"] - m["start_plogp"])
    for delta, summary in data["results"].items():
        ok = [m for m in rows if str(m["delta"]) == delta and m["success"]]
        assert summary["n"] == 2 and summary["success_rate"] == pytest.approx(100.0 * len(ok) / 2, abs=0.1)
    # The start molecules come from the test split, with their pLogP as computed there.
    test = pd.read_csv(tmp_path / "work" / "zinc_test_plogp.csv", keep_default_na=False).set_index("smiles")
    for m in rows:
        assert m["start_plogp"] == pytest.approx(float(test.loc[m["start"], "plogp"]))
