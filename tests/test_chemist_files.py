"""A chemist's own files read whole: SD data fields as columns, one reason for an unreadable record in every
command, and predict keeping the true values beside its predictions."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import TINY_MODEL, cli, tiny_train_config
from rdkit import Chem

from molvae import train
from molvae.data import read_molecules


@pytest.fixture()
def sol_sdf(tmp_path, small_csv):
    path = tmp_path / "sol.sdf"
    writer = Chem.SDWriter(str(path))
    for i, smi in enumerate(pd.read_csv(small_csv)["smiles"].iloc[:40]):
        mol = Chem.MolFromSmiles(smi)
        mol.SetProp("_Name", f"cpd{i}")
        if i != 3:
            mol.SetProp("SOL", f"{-1.0 - 0.05 * i:.2f}")
        mol.SetProp("ID", f"ID-{i}")
        mol.SetProp("name", "series A")  # collides with the reader's own column
        writer.write(mol)
    writer.close()
    return path


def test_every_sd_data_field_is_a_column(sol_sdf):
    table = read_molecules(sol_sdf)
    assert list(table.columns) == ["row", "input", "name", "SOL", "ID", "name_sd"]
    assert table["SOL"].dtype.kind == "f" and pd.isna(table["SOL"][3]) and table["SOL"][0] == -1.0
    assert table["ID"][5] == "ID-5" and table["name"][5] == "cpd5" and table["name_sd"][0] == "series A"


def test_train_learns_an_sd_field(sol_sdf, tmp_path):
    res = train(sol_sdf, tmp_path / "r", model_config=TINY_MODEL, train_config=tiny_train_config(epochs=1),
                property_columns=("SOL",))
    assert res.model.config.property_names == ("SOL",)


def test_an_unreadable_sd_record_has_one_reason_in_every_command(data_dir, tiny_run, tmp_path):
    sdf = data_dir / "bad" / "bad_record.sdf"
    res = cli("train", sdf, "--out", tmp_path / "t", "--epochs", "1", "--hidden-dim", "8", "--latent-dim", "2",
              "--decoder-hidden-dim", "8", "--no-progress")
    assert res.exit_code == 0, res.output
    reason = pd.read_csv(tmp_path / "t" / "rejected.csv")["reason"][0]
    assert reason.startswith("SD record 2 could not be read by RDKit")
    for command in ("encode", "score", "reconstruct"):
        out = tmp_path / f"{command}.csv"
        res = cli(command, sdf, "--model", tiny_run.run_dir, "--out", out)
        assert res.exit_code == 0, res.output
        assert pd.read_csv(out)["reason"][1] == reason, command
        assert "empty SMILES" not in res.output


def test_predict_keeps_the_true_values_and_reports_r2(tiny_run, sol_sdf, tmp_path):
    head = train(sol_sdf, tmp_path / "r", model_config=TINY_MODEL, train_config=tiny_train_config(epochs=1),
                 property_columns=("SOL",))
    out = tmp_path / "pred.csv"
    res = cli("predict", sol_sdf, "--model", head.run_dir, "--out", out)
    assert res.exit_code == 0, res.output
    pred = pd.read_csv(out)
    assert list(pred.columns[:5]) == ["row", "input", "smiles", "SOL", "SOL_predicted"]
    assert pred["SOL"][0] == -1.0 and pd.isna(pred["SOL"][3]) and pred["SOL_predicted"].notna().all()
    assert "SOL: R² " in res.output and "over 39 molecules with a true value" in res.output


def test_the_property_head_has_validation_figures_per_epoch(small_csv, tmp_path):
    import numpy as np
    import torch

    from molvae.data import split_indices

    res = train(small_csv, tmp_path / "r", model_config=TINY_MODEL,
                train_config=tiny_train_config(epochs=2, keep="last"), property_columns=("qed", "logp"))
    history = pd.read_csv(tmp_path / "r" / "history.csv")
    for name in ("qed", "logp"):
        assert history[f"val_mse_{name}"].notna().all() and (history[f"val_mse_{name}"] > 0).all()
    # Recomputed from the last epoch's model (model.pt with keep="last") on the validation split.
    model, prepared = res.model, res.prepared
    _, val_idx = split_indices(len(prepared), 0.1, 0)
    stats = model.metadata["property_stats"]
    true = (prepared.properties.to_numpy(dtype=np.float32)[val_idx] - np.array(stats["mean"])) / np.array(stats["std"])
    mu, _ = model.encode([prepared.smiles[i] for i in val_idx])
    with torch.no_grad():
        pred = model.net.property_head(torch.from_numpy(mu)).numpy()
    for j, name in enumerate(("qed", "logp")):
        mse = float(((pred[:, j] - true[:, j]) ** 2).mean())
        assert history[f"val_mse_{name}"].iloc[-1] == pytest.approx(mse, rel=1e-4)
        assert history[f"val_r2_{name}"].iloc[-1] == pytest.approx(1 - mse / float(true[:, j].var()), rel=1e-4)


def test_evaluate_reads_each_file_by_its_own_smiles_column(small_csv, tmp_path):
    smiles = pd.read_csv(small_csv)["smiles"].tolist()
    gen, test = tmp_path / "gen.csv", tmp_path / "test.csv"
    pd.DataFrame({"id": range(30), "smi": smiles[:30]}).to_csv(gen, index=False)
    pd.DataFrame({"SMILES": smiles[30:80], "pIC50": 6.0}).to_csv(test, index=False)
    res = cli("evaluate", gen, "--test", test, "--smiles-column", "smi", "--no-fcd", "--no-cache",
              "--json", tmp_path / "m.json")
    assert res.exit_code == 0, res.output
    assert "has no column 'smi'; its SMILES column is found by name" in res.output
    assert str(test) in res.output and str(gen) + " has no" not in res.output
    record = json.loads((tmp_path / "m.json").read_text())
    assert record["counts"]["generated"]["n_total"] == 30 and record["counts"]["test"]["n_total"] == 50
    assert record["metrics"]["SNN/Test"] > 0
    # a file that has none of the names and no detectable column is still refused in one line
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"a": smiles[:5], "b": smiles[5:10]}).to_csv(bad, index=False)
    res = cli("evaluate", gen, "--test", bad, "--smiles-column", "smi", "--no-fcd", "--no-cache")
    assert res.exit_code == 1 and "Traceback" not in res.output
