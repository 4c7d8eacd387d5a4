"""Fine-tuning from a trained model (train --from), vocabulary extension, and models reading stereo and charged
molecules they have no tokens for. Real RDKit, real selfies, a real tiny model."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from molvae import MolVAE, finetune_config, train
from molvae.model import sequences_to_tensor

from conftest import cli

#: Molecules with stereocentres, a stereo double bond and charges: tokens a model trained on MOSES lacks.
SERIES = [
    "C[C@@H](N)Cc1ccccc1", "C[C@H](N)Cc1ccccc1", "C[C@@H](O)c1ccccc1", "C[C@H](O)c1ccc(Cl)cc1",
    "N[C@@H](Cc1ccccc1)C(=O)O", "N[C@H](Cc1ccc(O)cc1)C(=O)O", "C/C=C/c1ccccc1", "C/C=C\\c1ccccc1",
    "O=C(O)/C=C/c1ccccc1", "CC[NH3+]", "C[NH3+]", "CC(=O)[O-]", "O=C([O-])c1ccccc1", "C[C@@H]1CCCN1",
    "C[C@H]1CCCO1", "OC[C@@H](O)CO", "C[C@@H](Cl)CC", "C[C@H](F)c1ccccc1", "N[C@@H](C)C(=O)O",
    "N[C@H](CO)C(=O)O", "C[C@@H](CC)c1ccccc1", "CC/C=C/CC", "C/C(Cl)=C/C", "C[C@H](N)c1ccccc1",
]


@pytest.fixture(scope="module")
def base_file(tiny_model, tmp_path_factory):
    """The tiny model saved to a file, as a base model is (its SHA-256 is recorded)."""
    path = tmp_path_factory.mktemp("base") / "base.pt"
    tiny_model.save(path)
    return path


@pytest.fixture(scope="module")
def series_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("series") / "series.csv"
    pd.DataFrame({"smiles": SERIES}).to_csv(path, index=False)
    return path


def _new_tokens(model: MolVAE) -> list[str]:
    from molvae import chem

    tokens = []
    for s in SERIES:
        res = chem.process_smiles(s)
        tokens += [t for t in res.tokens if t not in model.vocab]
    return list(dict.fromkeys(tokens))


def _teacher_forced(model: MolVAE, smiles: list[str], z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ids = [model.tokenize(s) for s in smiles]
    assert all(not isinstance(i, str) for i in ids), ids
    tokens, lengths = sequences_to_tensor(ids, model.vocab.eos_id, model.vocab.pad_id)
    model.net.eval()
    with torch.no_grad():
        return model.net.decoder_logits(z, tokens, lengths)


def test_new_tokens_leave_the_old_tokens_logits_bit_identical(tiny_model):
    new = _new_tokens(tiny_model)
    assert len(new) >= 5, new
    extended, added = tiny_model.with_tokens(new)
    assert added == new
    assert extended.vocab.tokens[:len(tiny_model.vocab)] == tiny_model.vocab.tokens
    molecules = ["CCO", "c1ccccc1CCN", "CC(=O)Nc1ccc(O)cc1", "CCOC(=O)C1CCN(C)CC1"]
    z = torch.randn(len(molecules), tiny_model.config.latent_dim, generator=torch.Generator().manual_seed(0)) * 2
    old, targets = _teacher_forced(tiny_model, molecules, z)
    ext, ext_targets = _teacher_forced(extended, molecules, z)
    n_old = len(tiny_model.vocab)
    assert torch.equal(targets, ext_targets)
    assert torch.equal(old, ext[:, :n_old])
    p_old, p_ext = torch.softmax(old.double(), -1), torch.softmax(ext.double(), -1)
    assert float((p_old - p_ext[:, :n_old]).abs().max()) < 1e-6
    assert float(p_ext[:, n_old:].sum(-1).max()) < 1e-6
    # Decoding writes the same molecules as before.
    zs = torch.randn(64, tiny_model.config.latent_dim, generator=torch.Generator().manual_seed(1))
    assert tiny_model.net.generate(zs, 40, greedy=True) == extended.net.generate(zs, 40, greedy=True)


def test_a_new_token_starts_from_its_stereo_free_parent(tiny_model):
    extended, added = tiny_model.with_tokens(["[C@@H1]", "[Se]"])
    emb = extended.net.embedding.weight.detach()
    c, new_c, se = tiny_model.vocab.index["[C]"], extended.vocab.index["[C@@H1]"], extended.vocab.index["[Se]"]
    assert torch.equal(emb[new_c], emb[c])
    offset = math.log(2) + 15.0
    bias = extended.net.output.bias.detach()
    assert float(bias[new_c]) == pytest.approx(float(bias[c]) - offset, abs=1e-5)
    assert not torch.equal(emb[se], emb[c])  # no parent: the mean of the old rows


def test_finetuning_adds_the_series_tokens_and_they_learn(base_file, series_csv, tmp_path):
    base = MolVAE.load(base_file)
    new = sorted(_new_tokens(base))  # added in the prepared vocabulary's (sorted) order
    before, _ = base.with_tokens(new)
    tc = finetune_config(base, epochs=30, learning_rate=3e-3, batch_size=8, device="cpu", show_progress=False)
    res = train(series_csv, tmp_path / "ft", base=str(base_file), train_config=tc)
    model = res.model
    assert model.vocab.tokens == before.vocab.tokens
    record = model.metadata["base"]
    assert record["name"] == str(base_file) and record["added_tokens"] == new
    from molvae.data import file_hash

    assert record["sha256"] == file_hash(base_file)
    written = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert written["metadata"]["base"]["sha256"] == record["sha256"]
    # The probability the model gives the series' new tokens where they are the target rose from ~e^-17
    # (where the extension starts them) by orders of magnitude: the new rows learnt.
    stereo = [s for s in SERIES if "@" in s or "/" in s]
    z = torch.zeros(len(stereo), base.config.latent_dim)
    new_ids = torch.tensor([before.vocab.index[t] for t in new])

    def mean_log_p_new(m):
        logits, targets = _teacher_forced(m, stereo, z)
        logp = torch.log_softmax(logits.double(), -1).gather(1, targets.unsqueeze(1)).squeeze(1)
        return float(logp[torch.isin(targets, new_ids)].mean())

    assert mean_log_p_new(before) < -15
    assert mean_log_p_new(model) > mean_log_p_new(before) + 10
    # The settings: the base's β and free bits, the fine-tuning schedule.
    assert model.train_config.kl_weight == base.train_config.kl_weight
    assert model.train_config.kl_schedule == "constant"


def test_finetuning_refits_the_base_prior(base_file, small_csv, tmp_path):
    from molvae.sample import fit_prior

    base = MolVAE.load(base_file)
    fit_prior(base, pd.read_csv(small_csv)["smiles"].tolist(), n_components=4, name="gmm", seed=0)
    base.default_prior = "gmm"
    with_prior = base.save(tmp_path / "base_gmm.pt")
    subset = tmp_path / "subset.csv"
    pd.read_csv(small_csv).iloc[:120].to_csv(subset, index=False)
    tc = finetune_config(MolVAE.load(with_prior), epochs=2, device="cpu", show_progress=False)
    res = train(subset, tmp_path / "ft", base=str(with_prior), train_config=tc)
    stored = MolVAE.load(tmp_path / "ft" / "model.pt")
    assert stored.default_prior == "gmm"
    # One component per 50 training molecules: 108 training molecules -> 2.
    assert stored.priors["gmm"].n_components == 2
    assert res.model.metadata["base"]["prior"] == {"name": "gmm", "n_components": 4}
    assert len(stored.sample(20, seed=0)) == 20


def test_finetune_defaults_and_overrides(tiny_model):
    tc = finetune_config(tiny_model)
    assert (tc.learning_rate, tc.batch_size, tc.kl_schedule, tc.early_stopping, tc.keep) == \
        (6e-4, 32, "constant", None, "last")
    assert tc.kl_weight == tiny_model.train_config.kl_weight
    assert finetune_config(tiny_model, learning_rate=1e-3, epochs=3).learning_rate == 1e-3


def test_cli_train_from_a_model(base_file, series_csv, tmp_path):
    res = cli("train", series_csv, "--from", base_file, "--out", tmp_path / "ft", "--epochs", "2", "--no-progress",
              "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "token(s) the base model" in res.output and "[C@@H1]" in res.output
    # The run resumes like any other, in its extended vocabulary.
    res = cli("train", "--resume", tmp_path / "ft", "--epochs", "3", "--no-progress")
    assert res.exit_code == 0, res.output
    assert len(MolVAE.load(tmp_path / "ft").history) == 3
    assert MolVAE.load(tmp_path / "ft").metadata["base"]["name"] == str(base_file)


@pytest.mark.parametrize("extra, needle", [
    (["--hidden-dim", "32"], "--from keeps the base model's sizes; drop --hidden-dim"),
    (["--resume", "somewhere"], "drop --from"),
])
def test_cli_from_refuses_what_it_cannot_do(base_file, series_csv, tmp_path, extra, needle):
    res = cli("train", series_csv, "--from", base_file, "--out", tmp_path / "x", *extra)
    assert res.exit_code == 2 and needle in res.output, res.output
    assert not (tmp_path / "x").exists()


def test_cli_from_an_unknown_model_is_one_line(series_csv, tmp_path):
    res = cli("train", series_csv, "--from", "no-such-model", "--out", tmp_path / "x")
    assert res.exit_code == 1
    assert [line for line in res.output.splitlines() if line.startswith("Error:")] == [
        line for line in res.output.splitlines() if "no-such-model" in line and line.startswith("Error:")]
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- reading what the model lacks

def test_a_stereo_free_model_reads_a_stereo_molecule_as_its_stereo_free_form(tiny_model, caplog):
    import logging

    assert not any("@" in t for t in tiny_model.vocab.tokens)
    logger = logging.getLogger("molvae")  # the CLI stops propagation to the root logger caplog listens on
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level("WARNING", logger="molvae"):
            z, reasons = tiny_model.encode(["C[C@@H](N)Cc1ccccc1", "C/C=C/c1ccccc1", "CC(N)Cc1ccccc1"])
    finally:
        logger.removeHandler(caplog.handler)
    assert reasons == [None, None, None]
    flat, _ = tiny_model.encode(["CC(N)Cc1ccccc1", "CC=Cc1ccccc1"])
    np.testing.assert_array_equal(z[0], flat[0])
    np.testing.assert_array_equal(z[1], flat[1])
    notes = [r.getMessage() for r in caplog.records if "stereochemistry" in r.getMessage()]
    assert notes == [notes[0]] and notes[0].startswith("2 of 3 molecules"), notes


def test_an_element_the_model_never_saw_says_what_would_help(tiny_model):
    _, reasons = tiny_model.encode(["C[Se]C"])
    assert "[Se]" in reasons[0] and "--from" in reasons[0]


def test_neutralize_reads_charged_molecules_as_neutral_ones(tiny_model):
    ids, read, how = tiny_model.read("CC[NH3+]")
    assert isinstance(ids, str) and "--neutralize" in ids
    tiny_model.neutralize = True
    try:
        ids, read, how = tiny_model.read("CC[NH3+]")
    finally:
        tiny_model.neutralize = False
    assert (read, how) == ("CCN", "charge")
    assert ids == tiny_model.tokenize("CCN")


def test_cli_commands_read_stereo_molecules_and_say_so_once(tiny_run, tmp_path):
    src = tmp_path / "in.smi"
    src.write_text("C[C@@H](N)Cc1ccccc1\nC[C@H](O)c1ccccc1\nCCO\nCC[NH3+]\n")
    for command in ("encode", "score", "reconstruct"):
        out = tmp_path / f"{command}.csv"
        res = cli(command, src, "--model", tiny_run.run_dir, "--out", out)
        assert res.exit_code == 0, res.output
        assert res.output.count("2 of 4 molecules read without their stereochemistry") == 1, res.output
    rec = pd.read_csv(tmp_path / "reconstruct.csv")
    assert rec["input"].tolist()[:2] == ["C[C@@H](N)Cc1ccccc1", "C[C@H](O)c1ccccc1"]
    res = cli("encode", src, "--model", tiny_run.run_dir, "--out", tmp_path / "n.csv", "--neutralize")
    assert "1 of 4 molecules read as their neutral form" in res.output, res.output
    assert pd.read_csv(tmp_path / "n.csv")["reason"].isna().all()


def test_keep_last_puts_the_last_epoch_in_model_pt(small_csv, tmp_path):
    from conftest import TINY_MODEL, tiny_train_config

    from molvae.checkpoint import load_checkpoint

    res = train(small_csv, tmp_path / "r", model_config=TINY_MODEL, train_config=tiny_train_config(keep="last"))
    model = load_checkpoint(tmp_path / "r" / "model.pt")
    last = load_checkpoint(tmp_path / "r" / "checkpoint.pt")
    assert all(torch.equal(model["state_dict"][k], last["state_dict"][k]) for k in last["state_dict"])
    best = train(small_csv, tmp_path / "b", model_config=TINY_MODEL, train_config=tiny_train_config())
    assert [h["val_loss"] for h in res.history] == [h["val_loss"] for h in best.history]


def test_a_property_head_is_fine_tuned_with_its_base_scaling(small_csv, series_csv, tmp_path):
    from conftest import TINY_MODEL, tiny_train_config

    base_run = train(small_csv, tmp_path / "base", model_config=TINY_MODEL, train_config=tiny_train_config(),
                     property_columns=("qed",))
    base_stats = base_run.model.metadata["property_stats"]
    tc = finetune_config(base_run.model, epochs=2, device="cpu", show_progress=False)
    res = train(series_csv, tmp_path / "ft", base=str(tmp_path / "base"), train_config=tc)
    assert res.model.config.property_names == ("qed",)  # RDKit computes the base's target: the head is kept
    assert res.model.metadata["property_stats"] == base_stats
    before = base_run.model.net.property_head[0].weight
    after = res.model.net.property_head[0].weight
    assert before.shape == after.shape and not torch.equal(before, after)  # and trained
    # A head for another target starts afresh.
    res = train(series_csv, tmp_path / "ft2", base=str(tmp_path / "base"), train_config=tc, property_columns=("logp",))
    assert res.model.config.property_names == ("logp",)
