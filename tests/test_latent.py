"""encode / decode / reconstruct / interpolate / neighbors / score, from the API and the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from molvae import ModelConfig, TrainConfig, chem, train
from molvae.cli import main
from molvae.errors import InvalidInputError
from molvae.sample import (PROPERTY_COLUMNS, interpolate, load_latents, neighbors, posterior, reconstruct,
                           reconstruction_accuracy, save_latents, score, slerp)

REPO = Path(__file__).resolve().parents[1]

# Input with rejects in the middle: unparsable, a token outside any MOSES vocabulary, empty.
MIXED = ["CCOc1ccccc1", "not_a_smiles(", "CC(=O)Nc1ccc(O)cc1", "[U]", "", "O=C(O)c1ccccc1"]
GOOD = [0, 2, 5]


def _run(args, cwd=None):
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    return res


# ----------------------------------------------------------------------------- encode / decode

def test_encode_rows_aligned_with_rejects(tiny_model):
    z, reasons = tiny_model.encode(MIXED)
    assert z.shape == (len(MIXED), tiny_model.config.latent_dim)
    for i in range(len(MIXED)):
        assert np.isfinite(z[i]).all() == (i in GOOD)
        assert (reasons[i] is None) == (i in GOOD)
    mu, logvar, reasons2 = posterior(tiny_model, MIXED)
    assert np.allclose(mu[GOOD], z[GOOD], atol=1e-6) and reasons2 == reasons
    assert np.isnan(logvar[1]).all()


def test_one_encode_path(tiny_model):
    """MolVAE.encode and sample.posterior are one computation: the same bits, not just close."""
    z, reasons = tiny_model.encode(MIXED * 3, batch_size=4)
    mu, _, reasons2 = posterior(tiny_model, MIXED * 3, batch_size=4)
    assert np.array_equal(z, mu, equal_nan=True) and reasons == reasons2
    import molvae.sample

    assert not hasattr(molvae.sample, "_generator")  # one seeding helper: core.torch_generator


def test_seed_none_means_torchs_global_random_state(tiny_model):
    """seed=None draws from torch's global state (repeatable with torch.manual_seed), and a call that
    draws nothing (greedy decoding) leaves that state as it was."""
    from molvae.core import torch_generator

    assert torch_generator(None, "cpu") is None
    smi = [MIXED[i] for i in GOOD]
    torch.manual_seed(11)
    a, _ = tiny_model.encode(smi, sample=True)
    torch.manual_seed(11)
    b, _ = tiny_model.encode(smi, sample=True)
    assert np.array_equal(a, b)
    torch.manual_seed(11)
    score_a = score(tiny_model, smi, n_samples=2, seed=None)
    torch.manual_seed(11)
    score_b = score(tiny_model, smi, n_samples=2, seed=None)
    assert score_a.equals(score_b)
    torch.manual_seed(5)
    tiny_model.decode(a, greedy=True)
    after_greedy = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after_greedy, torch.rand(3))


def test_encode_decode_round_trip_is_reconstruct(tiny_model):
    smi = [MIXED[i] for i in GOOD]
    z, _ = tiny_model.encode(smi)
    decoded = tiny_model.decode(z)
    rec = reconstruct(tiny_model, smi)
    assert decoded["smiles"].tolist() == rec["reconstructed"].tolist()
    assert decoded["valid"].all()


def test_latent_files_round_trip(tmp_path, tiny_model):
    z, reasons = tiny_model.encode(MIXED)
    meta = pd.DataFrame({"input": MIXED, "reason": [r or "" for r in reasons]})
    for suffix in (".npy", ".csv"):
        p = save_latents(tmp_path / f"z{suffix}", z, meta)
        back = load_latents(p)
        assert back.shape == z.shape
        assert np.array_equal(np.isnan(back), np.isnan(z))
        assert np.allclose(back[GOOD], z[GOOD], atol=1e-6)
    with pytest.raises(InvalidInputError, match="must end in"):
        save_latents(tmp_path / "z.txt", z)
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InvalidInputError, match="no latent columns"):
        load_latents(tmp_path / "bad.csv")


def test_parquet_latents_or_clear_message(tmp_path, tiny_model):
    z, _ = tiny_model.encode(MIXED[:3])
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(InvalidInputError, match="pip install pyarrow"):
            save_latents(tmp_path / "z.parquet", z)
        return
    back = load_latents(save_latents(tmp_path / "z.parquet", z))
    assert np.array_equal(np.isnan(back), np.isnan(z))


def test_cli_encode_decode(tmp_path, tiny_run):
    model = str(tiny_run.run_dir)
    inp = tmp_path / "in.csv"
    pd.DataFrame({"name": list("abcdef"), "smiles": MIXED}).to_csv(inp, index=False)
    res = _run(["encode", str(inp), "--out", str(tmp_path / "z.csv"), "-m", model,
                "--rejected", str(tmp_path / "rej.csv")])
    assert "3 of 6 rows could not be encoded" in res.stderr and "row 2" in res.stderr
    table = pd.read_csv(tmp_path / "z.csv", keep_default_na=False)
    assert table["row"].tolist() == [1, 2, 3, 4, 5, 6]
    assert table["input"].tolist() == MIXED
    assert [bool(r) for r in table["reason"]] == [i not in GOOD for i in range(6)]
    rej = pd.read_csv(tmp_path / "rej.csv")
    assert rej["row"].tolist() == [2, 4, 5] and rej["reason"].str.len().min() > 0

    _run(["encode", str(inp), "--out", str(tmp_path / "z.npy"), "-m", model, "--sample", "--seed", "1"])
    z = np.load(tmp_path / "z.npy")
    assert z.shape == (6, 4) and np.isnan(z[1]).all() and np.isfinite(z[0]).all()

    _run(["decode", str(tmp_path / "z.npy"), "--out", str(tmp_path / "dec.csv"), "-m", model, "--properties"])
    dec = pd.read_csv(tmp_path / "dec.csv", keep_default_na=False)
    assert len(dec) == 6 and dec["row"].tolist() == list(range(1, 7))
    assert dec["valid"].tolist() == [i in GOOD for i in range(6)]
    assert set(PROPERTY_COLUMNS) <= set(dec.columns)
    assert all(chem.to_mol(s) is not None for s in dec["smiles"][dec["valid"]])


def test_cli_decode_wrong_dimension_is_one_line(tmp_path, tiny_run):
    np.save(tmp_path / "z.npy", np.zeros((2, 7), dtype=np.float32))
    res = CliRunner().invoke(main, ["decode", str(tmp_path / "z.npy"), "-m", str(tiny_run.run_dir)])
    assert res.exit_code == 1 and "7 dimensions" in res.output and "Traceback" not in res.output


# ----------------------------------------------------------------------------- reconstruct

def test_reconstruct_flags_and_accuracy(tiny_model):
    rec = reconstruct(tiny_model, MIXED)
    assert len(rec) == len(MIXED) and rec["input"].tolist() == MIXED
    assert rec["encoded"].tolist() == [i in GOOD for i in range(6)]
    for _, r in rec.iterrows():
        assert r["exact"] == (r["encoded"] and r["reconstructed"] == r["smiles"])
        if r["encoded"]:
            assert 0.0 <= r["tanimoto"] <= 1.0
            assert r["tanimoto"] == pytest.approx(chem.tanimoto(r["smiles"], r["reconstructed"]))
            if r["exact"]:
                assert r["tanimoto"] == 1.0
        else:
            assert r["reason"] and not r["reconstructed"]
    summary = reconstruction_accuracy(rec)
    assert summary["n_encoded"] == 3 and summary["n_rejected"] == 3
    assert summary["accuracy"] == pytest.approx(rec["exact"][rec["encoded"]].mean())


def test_reconstruct_k_decodes_seeded(tiny_model):
    a = reconstruct(tiny_model, MIXED, n_decodes=4, seed=3)
    b = reconstruct(tiny_model, MIXED, n_decodes=4, seed=3)
    pd.testing.assert_frame_equal(a, b)
    enc = a[a["encoded"]]
    assert enc["exact_fraction"].between(0, 1).all() and enc["n_distinct"].between(1, 4).all()
    with pytest.raises(InvalidInputError):
        reconstruct(tiny_model, MIXED, n_decodes=0)


def test_cli_reconstruct(tmp_path, tiny_run):
    inp = tmp_path / "in.smi"
    inp.write_text("\n".join(s for s in MIXED if s) + "\n")
    res = _run(["reconstruct", str(inp), "-m", str(tiny_run.run_dir), "-k", "2", "--out", str(tmp_path / "r.csv")])
    assert "reconstruction accuracy" in res.stderr and "2 not encodable" in res.stderr
    df = pd.read_csv(tmp_path / "r.csv", keep_default_na=False)
    assert {"row", "input", "smiles", "reconstructed", "exact", "tanimoto", "exact_fraction", "reason"} <= set(df)
    assert len(df) == 5


# ----------------------------------------------------------------------------- interpolate

def test_slerp_end_points_and_norm():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(8), rng.standard_normal(8)
    b *= np.linalg.norm(a) / np.linalg.norm(b)
    path = slerp(a, b, np.linspace(0, 1, 7))
    assert np.allclose(path[0], a) and np.allclose(path[-1], b)
    assert np.allclose(np.linalg.norm(path, axis=1), np.linalg.norm(a))  # equal norms stay on the sphere
    assert np.allclose(slerp(a, 2 * a, [0.5])[0], 1.5 * a)  # parallel vectors: straight line


@pytest.mark.parametrize("spherical", [False, True])
def test_interpolation_end_points_reproduce_reconstructions(tiny_model, spherical):
    a, b = "CCOc1ccccc1", "CC(=O)Nc1ccc(O)cc1"
    full = interpolate(tiny_model, a, b, steps=7, spherical=spherical, dedupe=False)
    assert len(full) == 7 and full["position"].tolist() == pytest.approx(np.linspace(0, 1, 7), abs=1e-6)
    rec = reconstruct(tiny_model, [a, b])["reconstructed"].tolist()
    # The path starts at μ(A) and ends at μ(B): its ends are A and B whenever reconstruction gives them back.
    assert full["smiles"].iloc[0] == rec[0] and full["smiles"].iloc[-1] == rec[1]
    short = interpolate(tiny_model, a, b, steps=7, spherical=spherical)
    assert short["smiles"].is_unique and short["n_points"].sum() == 7
    assert short["position"].is_monotonic_increasing and short["position"].iloc[0] == 0
    assert set(short["smiles"]) == set(full["smiles"])
    for col in ("tanimoto_a", "tanimoto_b"):
        assert short[col].between(0, 1).all()


def test_interpolate_errors(tiny_model):
    with pytest.raises(InvalidInputError, match="molecule B"):
        interpolate(tiny_model, "CCO", "[U]")
    with pytest.raises(InvalidInputError, match="steps"):
        interpolate(tiny_model, "CCO", "CCN", steps=1)


def test_cli_interpolate_grid_and_error(tmp_path, tiny_run):
    model = str(tiny_run.run_dir)
    res = _run(["interpolate", "CCOc1ccccc1", "CC(=O)Nc1ccc(O)cc1", "--steps", "5", "--spherical", "-m", model,
                "--properties", "--grid", str(tmp_path / "path.svg"), "--out", str(tmp_path / "p.csv")])
    df = pd.read_csv(tmp_path / "p.csv")
    assert {"position", "smiles", "qed", "mw"} <= set(df.columns)
    assert "<svg" in (tmp_path / "path.svg").read_text()
    res = CliRunner().invoke(main, ["interpolate", "CCO", "bogus((", "-m", model])
    assert res.exit_code == 1 and "molecule B" in res.output and len(res.output.strip().splitlines()) <= 2


# ----------------------------------------------------------------------------- neighbors

def test_neighbors_sorted_distinct_with_properties(tiny_model):
    lead = "CC(=O)Nc1ccc(O)cc1"
    df = neighbors(tiny_model, lead, n=10, radius=1.0, seed=1, max_draws=120)
    assert 0 < len(df) <= 10 and df["smiles"].is_unique
    assert chem.canonicalize(lead) not in set(df["smiles"])
    assert df["tanimoto"].is_monotonic_decreasing
    assert set(PROPERTY_COLUMNS) <= set(df.columns) and (df["count"] >= 1).all() and (df["distance"] > 0).all()
    again = neighbors(tiny_model, lead, n=10, radius=1.0, seed=1, max_draws=120)
    pd.testing.assert_frame_equal(df, again)


def test_cli_neighbors(tmp_path, tiny_run):
    res = _run(["neighbors", "CC(=O)Nc1ccc(O)cc1", "--n", "5", "--radius", "1.0", "-m", str(tiny_run.run_dir),
                "--grid", str(tmp_path / "nb.png")])
    df = pd.read_csv(__import__("io").StringIO(res.stdout))
    assert list(df.columns[:4]) == ["smiles", "tanimoto", "distance", "count"] and "qed" in df.columns
    assert (tmp_path / "nb.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- score

def test_score_is_recon_plus_kl_seeded_with_rejects(tiny_model):
    a = score(tiny_model, MIXED, n_samples=3, seed=0)
    b = score(tiny_model, MIXED, n_samples=3, seed=0)
    pd.testing.assert_frame_equal(a, b)
    assert a["encoded"].tolist() == [i in GOOD for i in range(6)]
    enc = a[a["encoded"]]
    assert np.allclose(enc["score"], enc["recon"] + enc["kl"])
    assert (enc["score"] > 0).all() and (enc["kl"] >= 0).all()
    assert np.allclose(enc["score_per_token"], enc["score"] / enc["n_tokens"])
    assert a.loc[~a["encoded"], "score"].isna().all() and (a.loc[~a["encoded"], "reason"].str.len() > 0).all()


def test_score_matches_forward_with_one_sample(tiny_model):
    """With the posterior noise switched off, the score is the forward pass's recon + KL at μ."""
    from molvae.model import sequences_to_tensor

    smi = "CC(=O)Nc1ccc(O)cc1"
    ids = tiny_model.tokenize(smi)
    tokens, lengths = sequences_to_tensor([ids], tiny_model.vocab.eos_id, tiny_model.vocab.pad_id)
    with torch.no_grad():
        out = tiny_model.net(tokens, lengths, sample=False)
    s = score(tiny_model, [smi], n_samples=16, seed=0)
    assert s["kl"].iloc[0] == pytest.approx(float(out.kl[0]), rel=1e-4)
    assert s["n_tokens"].iloc[0] == len(ids) + 1
    # E_q[recon] is close to recon at μ for a smooth decoder; a loose check of the plumbing.
    assert s["recon"].iloc[0] == pytest.approx(float(out.recon[0]), rel=0.25)


def test_cli_score(tmp_path, tiny_run):
    inp = tmp_path / "in.csv"
    pd.DataFrame({"smiles": MIXED}).to_csv(inp, index=False)
    res = _run(["score", str(inp), "-m", str(tiny_run.run_dir), "--n-samples", "2", "--properties",
                "--out", str(tmp_path / "s.csv")])
    assert "higher = less like the training data" in res.stderr
    df = pd.read_csv(tmp_path / "s.csv", keep_default_na=False)
    assert len(df) == 6 and {"score", "recon", "kl", "qed", "heavy_atoms", "reason"} <= set(df.columns)
    # one SMILES on the command line works too
    res = _run(["score", "CCOc1ccccc1", "-m", str(tiny_run.run_dir), "--n-samples", "1"])
    assert res.stdout.splitlines()[0].startswith("row,input,smiles")


# ----------------------------------------------------------------------------- anomaly score

# Molecules far from MOSES' drug-like leads, all written with MOSES' tokens (no stereo, no
# metals, no charges) so the model can read them, and about as many SELFIES tokens as MOSES
# molecules (16-44 vs a median of 34): long and branched chains, macrocycles, a crown ether,
# peptides, perhalogenated alkanes, polyenes, polyols, polysulfones.
OUT_OF_DISTRIBUTION = (REPO / "data" / "out_of_distribution.smi").read_text().split()


@pytest.fixture(scope="module")
def moses_model(tmp_path_factory):
    """A small model trained for three quick epochs on 3,000 molecules of the shipped MOSES sample."""
    torch.set_num_threads(2)
    table = pd.read_csv(REPO / "data" / "moses_sample.csv")
    out = tmp_path_factory.mktemp("moses_small") / "run"
    result = train(table.iloc[:3000], out, model_config=ModelConfig(embedding_dim=32, hidden_dim=64,
                                                                    decoder_hidden_dim=128, latent_dim=16),
                   train_config=TrainConfig(epochs=3, batch_size=64, learning_rate=3e-3, seed=0,
                                            kl_warmup_epochs=1, recon_eval_size=20, val_fraction=0.05,
                                            show_progress=False, device="cpu"),
                   runs_dir=out.parent)
    return result.model, table["smiles"].iloc[4800:4900].tolist()  # held out: never seen in training


def test_out_of_distribution_molecules_score_higher(moses_model):
    model, held_out = moses_model
    ood = score(model, OUT_OF_DISTRIBUTION, n_samples=4, seed=0)
    ind = score(model, held_out, n_samples=4, seed=0)
    assert ood["encoded"].all(), ood.loc[~ood["encoded"], ["input", "reason"]]
    assert ind["encoded"].all()
    assert ood["score"].mean() > ind["score"].mean()
    # Not just size: per SELFIES token the outliers are also less likely.
    assert ood["score_per_token"].mean() > ind["score_per_token"].mean()
    # Ranking: AUROC of the score as an outlier detector (Mann-Whitney U / (n1·n0)).
    s_out, s_in = ood["score_per_token"].to_numpy(), ind["score_per_token"].to_numpy()
    auroc = (s_out[:, None] > s_in[None, :]).mean() + 0.5 * (s_out[:, None] == s_in[None, :]).mean()
    assert auroc > 0.7, auroc
