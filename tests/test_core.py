"""Core pipeline: chemistry helpers, vocabulary, data cleaning, model, training, sampling, CLI."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from rdkit import Chem

from molvae import MolVAE, Vocabulary, chem, train
from molvae.cli import main
from molvae.data import prepare, read_molecules, split_indices
from molvae.errors import InvalidInputError, VocabularyError
from molvae.train import kl_weight_at

from conftest import TINY_MODEL, tiny_train_config


# ----------------------------------------------------------------------------- chem

def test_helpers_return_none_on_garbage():
    assert chem.to_mol("not a smiles") is None
    assert chem.to_mol("") is None
    assert chem.canonicalize("C1CC") is None
    assert chem.to_smiles("[C][garbage") is None  # selfies refuses the unclosed token: None, not an exception
    assert chem.to_smiles("") is None and chem.to_smiles(None) is None
    assert chem.to_selfies(None) is None
    assert isinstance(chem.process_smiles("xyz"), str)


def test_canonical_and_largest_fragment():
    assert chem.canonicalize("OCC") == chem.canonicalize("CCO") == "CCO"
    res = chem.process_smiles("CC(=O)[O-].[Na+]")
    assert res.smiles == "CC(=O)[O-]"
    assert isinstance(chem.process_smiles("CC(=O)[O-].[Na+]", keep_largest_fragment=False), str)


def test_selfies_round_trip():
    res = chem.process_smiles("c1ccccc1O")
    assert chem.selfies_to_canonical(res.selfies) == res.smiles
    assert "".join(res.tokens) == res.selfies


def test_properties_match_rdkit():
    from rdkit.Chem import QED, Descriptors

    m = Chem.MolFromSmiles("CC(=O)Oc1ccccc1C(=O)O")
    assert chem.qed("CC(=O)Oc1ccccc1C(=O)O") == pytest.approx(QED.qed(m))
    assert chem.logp(m) == pytest.approx(Descriptors.MolLogP(m))
    assert math.isnan(chem.qed("nonsense"))


# ----------------------------------------------------------------------------- vocab

def test_vocab_round_trip():
    v = Vocabulary.build([["[C]", "[O]"], ["[N]", "[C]"]])
    assert v.tokens[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert v.tokens[4:] == ["[C]", "[N]", "[O]"]
    ids = v.encode(["[C]", "[O]", "[N]"])
    assert v.decode(ids + [v.eos_id, 5]) == ["[C]", "[O]", "[N]"]
    assert Vocabulary.from_list(v.to_list()) == v
    with pytest.raises(VocabularyError, match=r"\[Br\]"):
        v.encode(["[Br]"])


# ----------------------------------------------------------------------------- data

def test_rejected_rows_keep_order_and_reason(tmp_path):
    f = tmp_path / "m.csv"
    f.write_text("name,SMILES\na,CCO\nb,not_a_smiles\nc,OCC\nd,c1ccccc1\ne,\n")
    table = read_molecules(f)
    assert list(table["row"]) == [1, 2, 3, 4, 5]
    prep = prepare(table)
    assert prep.smiles == ["CCO", "c1ccccc1"]
    assert list(prep.rejected["row"]) == [2, 3, 5]
    reasons = list(prep.rejected["reason"])
    assert "parse" in reasons[0] and "duplicate of row 1" == reasons[1] and "empty" in reasons[2]
    assert prep.n_duplicates == 1


def test_max_len_rejects(tmp_path):
    f = tmp_path / "m.smi"
    f.write_text("CCO ethanol\nCCCCCCCCCCCCCCCCCCCC long\n")
    prep = prepare(read_molecules(f), max_len=5)
    assert prep.smiles == ["CCO"]
    assert "longer than max_len 5" in prep.rejected["reason"].iloc[0]


def test_missing_column_and_empty_file(tmp_path):
    f = tmp_path / "m.csv"
    f.write_text("a,b\n1,2\n")
    with pytest.raises(InvalidInputError, match="no 'smiles' column"):
        read_molecules(f)
    e = tmp_path / "e.csv"
    e.write_text("")
    with pytest.raises(InvalidInputError, match="empty"):
        read_molecules(e)


def test_split_is_seeded_and_disjoint():
    a = split_indices(100, 0.1, seed=3)
    b = split_indices(100, 0.1, seed=3)
    assert np.array_equal(a[0], b[0]) and len(a[1]) == 10
    assert set(a[0]).isdisjoint(a[1]) and len(set(a[0]) | set(a[1])) == 100


# ----------------------------------------------------------------------------- model + training

def test_kl_weight_schedules():
    cfg = tiny_train_config()
    assert kl_weight_at(cfg.replace(kl_schedule="constant"), 0) == cfg.kl_weight
    assert kl_weight_at(cfg, 0) == 0 and kl_weight_at(cfg, 1) == pytest.approx(0.5) and kl_weight_at(cfg, 5) == 1
    cyc = cfg.replace(kl_schedule="cyclical", kl_warmup_epochs=2, kl_cycle_ratio=0.5)
    assert kl_weight_at(cyc, 0.5) == pytest.approx(0.5) and kl_weight_at(cyc, 1.5) == 1 and kl_weight_at(cyc, 2.0) == 0
    sig = cfg.replace(kl_schedule="sigmoid")
    assert kl_weight_at(sig, 0) < 0.01 and kl_weight_at(sig, 1) == pytest.approx(0.5)


def test_training_reduces_loss(tiny_run):
    hist = tiny_run.history
    assert len(hist) == 3
    assert hist[-1]["train_recon"] < hist[0]["train_recon"]
    for key in ("val_nelbo", "val_recon_acc", "active_units", "beta", "val_kl"):
        assert key in hist[0]
    run = tiny_run.run_dir
    for name in ("model.pt", "checkpoint.pt", "config.json", "history.csv", "rejected.csv"):
        assert (run / name).is_file(), name
    assert (run.parent / "LATEST").read_text().strip() == run.name


def test_best_epoch_is_judged_at_the_target_beta():
    from molvae.train import best_epoch, selection_loss

    # β_max = 0.1: the KL grows while reconstruction improves; -ELBO would keep epoch 1
    hist = [{"epoch": 1, "val_recon": 40.0, "val_kl": 10.0, "val_nelbo": 50.0},
            {"epoch": 2, "val_recon": 20.0, "val_kl": 40.0, "val_nelbo": 60.0},
            {"epoch": 3, "val_recon": 15.0, "val_kl": 70.0, "val_nelbo": 85.0}]
    assert selection_loss(15.0, 70.0, 0.1) == pytest.approx(22.0)
    assert best_epoch(hist, 0.1)["epoch"] == 3        # 41, 24, 22
    assert best_epoch(hist, 1.0)["epoch"] == 1        # β_max = 1: the negative ELBO
    assert best_epoch(hist)["epoch"] == 1             # β_max unknown (old files): -ELBO
    with_loss = [{**r, "val_loss": selection_loss(r["val_recon"], r["val_kl"], 0.1)} for r in hist]
    assert best_epoch(with_loss)["epoch"] == 3        # the recorded val_loss wins
    assert best_epoch([{**hist[0], "val_recon": math.nan, "val_nelbo": math.nan}]) is None


def test_model_file_holds_the_epoch_with_the_lowest_validation_loss(tmp_path, small_csv):
    torch.set_num_threads(2)
    cfg = tiny_train_config(epochs=4, kl_weight=0.1, kl_warmup_epochs=1)
    res = train(small_csv, tmp_path / "run", model_config=TINY_MODEL, train_config=cfg, runs_dir=tmp_path)
    for row in res.history:
        assert row["val_loss"] == pytest.approx(row["val_recon"] + 0.1 * row["val_kl"])
    chosen = min(res.history, key=lambda r: r["val_loss"])
    best = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["state_dict"]
    last = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["state_dict"]
    same = all(torch.equal(best[k], last[k]) for k in best)
    assert same == (chosen["epoch"] == len(res.history))


def test_model_file_is_weights_only(tiny_run):
    data = torch.load(tiny_run.run_dir / "model.pt", weights_only=True)
    assert data["format"] == "molvae-model"
    assert data["vocab"][:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert {"molvae", "torch", "rdkit", "selfies", "python"} <= set(data["versions"])
    assert data["metadata"]["data_hash"]


def test_save_load_identical_outputs(tiny_model, tmp_path):
    path = tiny_model.save(tmp_path / "m.pt")
    again = MolVAE.load(path)
    a = tiny_model.sample(20, seed=5)
    b = again.sample(20, seed=5)
    assert a.equals(b)
    smi = ["CCOc1ccccc1", "CC(=O)Nc1ccc(O)cc1"]
    za, _ = tiny_model.encode(smi)
    zb, _ = again.encode(smi)
    assert np.array_equal(za, zb)


def test_sample_exact_n_valid_and_seeded(tiny_model):
    a = tiny_model.sample(37, seed=1, batch_size=10)
    assert len(a) == 37
    for s in a["smiles"]:
        assert Chem.MolFromSmiles(s) is not None and s
    assert a.equals(tiny_model.sample(37, seed=1, batch_size=10))
    assert not a.equals(tiny_model.sample(37, seed=2, batch_size=10))


def test_encode_reports_rejects_in_order(tiny_model):
    z, reasons = tiny_model.encode(["CCO", "garbage(", "[U]"])
    assert z.shape == (3, 4)
    assert np.isfinite(z[0]).all() and np.isnan(z[1]).all() and np.isnan(z[2]).all()
    assert reasons[0] is None and "parse" in reasons[1] and "vocabulary" in reasons[2]


# ----------------------------------------------------------------------------- CLI

def test_cli_train_then_generate(tmp_path, small_csv, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    res = runner.invoke(main, ["train", str(small_csv), "--epochs", "1", "--hidden-dim", "16",
                               "--decoder-hidden-dim", "16", "--latent-dim", "4", "--embedding-dim", "8",
                               "--no-progress", "--n-jobs", "1"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "runs" / "LATEST").is_file()
    res = runner.invoke(main, ["generate", "--n", "25", "--seed", "3"])
    assert res.exit_code == 0, res.output
    lines = [l for l in res.stdout.splitlines() if l]
    assert len(lines) == 25
    res = runner.invoke(main, ["generate", "--n", "25", "--out", "g.csv", "--seed", "3"])
    df = pd.read_csv(tmp_path / "g.csv", keep_default_na=False)
    assert list(df.columns) == ["smiles", "selfies", "valid"] and len(df) == 25 and df["valid"].all()
    assert df["smiles"].tolist() == lines


@pytest.mark.parametrize("command", [["generate", "--n", "20", "--seed", "3"], ["encode", "CCO", "--out", "z.csv"]])
def test_threads_option_sets_torch_threads_and_not_the_result(tmp_path, tiny_run, monkeypatch, command):
    # Sampling and encoding give the same molecules and vectors on any thread count. (A gradient
    # search does not: float sums in another order move its paths; it is reproducible per count.)
    monkeypatch.chdir(tmp_path)
    z_file = tmp_path / "z.csv"
    runner = CliRunner()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        plain = runner.invoke(main, [*command, "-m", str(tiny_run.run_dir)])
        assert plain.exit_code == 0, plain.output
        outputs = [plain.stdout, z_file.read_text() if z_file.exists() else ""]
        one = runner.invoke(main, [*command, "-m", str(tiny_run.run_dir), "--threads", "1"])
        assert one.exit_code == 0, one.output
        assert torch.get_num_threads() == 1
        assert [one.stdout, z_file.read_text() if z_file.exists() else ""] == outputs
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("args, needle", [
    (["train", "missing.csv"], "no such file"),
    (["generate", "--n", "5", "--model", "nope.pt"], "no such model"),
    (["generate", "--n", "5"], "no model found"),
])
def test_cli_errors_are_one_line(tmp_path, monkeypatch, args, needle):
    import molvae.core

    monkeypatch.chdir(tmp_path)
    # no ./runs here and, for this test, no shipped model either
    monkeypatch.setattr(molvae.core, "SHIPPED_MODELS_DIR", tmp_path / "no-shipped-models")
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1
    assert needle in res.output
    assert "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_cli_missing_column(tmp_path):
    f = tmp_path / "x.csv"
    f.write_text("a,b\nCCO,1\n")
    res = CliRunner().invoke(main, ["train", str(f), "--out", str(tmp_path / "r")])
    assert res.exit_code == 1 and "--smiles-column" in res.output and "Traceback" not in res.output
