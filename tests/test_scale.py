"""Training at scale: preprocessing cache, bucketing, padded-vs-packed equality, DDP with gloo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from molvae import chem
from molvae.cache import cache_key, load_prepared, prepare_file
from molvae.config import ModelConfig
from molvae.data import TokenData, bucket_batches, prepare, process_compact, read_molecules
from molvae.model import VAE, kl_divergence

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("MOLVAE_CACHE_DIR", str(d))
    return d


# ----------------------------------------------------------------------------- preprocessing

def test_process_compact_matches_process_smiles():
    smiles = pd.read_csv(ROOT / "tests/data/small.csv")["smiles"].tolist()[:80]
    smiles += ["", "   ", "not a smiles", "CC(=O)[O-].[Na+]", "C1.C1", " CCO ", "[Fe]", "C[N+](C)(C)C.[Cl-]", "c1ccccc1"]
    for largest in (True, False):
        ref = [chem.process_smiles(s, keep_largest_fragment=largest) for s in smiles]
        for n_jobs, chunk in ((1, 5000), (2, 7)):
            res = process_compact(smiles, largest, n_jobs=n_jobs, chunk_size=chunk)
            ok, failed = list(res.ok), list(res.failed)
            for i, r in enumerate(ref):
                if isinstance(r, str):
                    assert res.reasons[failed.index(i)] == r
                else:
                    k = ok.index(i)
                    assert res.smiles[k] == r.smiles
                    toks = tuple(res.tokens[j] for j in res.ids[res.offsets[k]:res.offsets[k + 1]])
                    assert toks == r.tokens


def test_parallel_properties_equal_serial_in_input_order():
    smiles = pd.read_csv(ROOT / "tests/data/small.csv")["smiles"].tolist()[:60]
    smiles[3:3] = ["not a smiles", None, ""]
    names = ["qed", "plogp", "heavy_atoms"]
    serial = chem.compute_properties(smiles, names, n_jobs=1)
    parallel = chem.compute_properties(smiles, names, n_jobs=2, chunk_size=7)
    for n in names:
        assert len(parallel[n]) == len(smiles)
        np.testing.assert_array_equal(parallel[n], serial[n])
    assert np.isnan(parallel["qed"][3:6]).all() and np.isfinite(parallel["qed"][6:]).all()
    # values are RDKit's own, molecule by molecule
    from rdkit.Chem import QED
    assert parallel["qed"][0] == pytest.approx(QED.qed(chem.to_mol(smiles[0])))


def test_token_batch_is_padded_with_eos():
    rng = np.random.default_rng(0)
    seqs = [list(rng.integers(4, 20, size=int(n))) for n in rng.integers(1, 30, size=50)]
    td = TokenData.from_sequences(seqs)
    idx = rng.permutation(50)[:17]
    b = td.batch(idx, eos_id=2, pad_id=0)
    assert b.tokens.shape == (17, max(len(seqs[i]) for i in idx) + 1)
    for r, i in enumerate(idx):
        n = len(seqs[i])
        assert b.tokens[r, :n].tolist() == seqs[i]
        assert int(b.tokens[r, n]) == 2 and int(b.lengths[r]) == n + 1
        assert (b.tokens[r, n + 1:] == 0).all()


# ----------------------------------------------------------------------------- bucketing

@pytest.mark.parametrize("batch_size", [1, 7, 32, 1000])
def test_bucketed_batches_cover_every_molecule_once(batch_size):
    rng = np.random.default_rng(3)
    lengths = rng.integers(5, 60, size=2345)
    indices = np.sort(rng.choice(3000, size=2345, replace=False))
    lengths_full = np.zeros(3000, dtype=np.int64)
    lengths_full[indices] = lengths
    for epoch in range(3):
        batches = bucket_batches(lengths_full, indices, batch_size, shuffle=True,
                                 rng=np.random.default_rng([0, epoch]))
        seen = np.concatenate(batches)
        assert len(seen) == len(indices)
        assert np.array_equal(np.sort(seen), indices)
        assert all(len(b) <= batch_size for b in batches)
    if batch_size == 32:
        # bucketing keeps padding small: under 5% of the padded positions, lengths within a batch close
        width = sum(len(b) * lengths_full[b].max() for b in batches)
        assert (width - lengths.sum()) / width < 0.05
        assert np.mean([lengths_full[b].max() - lengths_full[b].min() for b in batches]) < 10


# ----------------------------------------------------------------------------- padded == packed == naive

def _naive_loss(net: VAE, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-molecule reconstruction and KL, one molecule at a time, no padding anywhere (z = μ)."""
    recons, kls = [], []
    for s in seqs:
        tok = torch.tensor([s + [net.eos_id]])
        emb = net.embedding(tok)
        _, h = net.encoder_rnn(emb)
        h = torch.cat([h[-2], h[-1]], -1) if net.config.bidirectional else h[-1]
        mu, logvar = net.to_mu(h), net.to_logvar(h)
        inp = torch.cat([torch.tensor([[net.bos_id]]), tok[:, :-1]], 1)
        e = net.embedding(inp)
        x = torch.cat([e, mu.unsqueeze(1).expand(-1, e.shape[1], -1)], -1)
        out, _ = net.decoder_rnn(x, net.initial_hidden(mu))
        recons.append(F.cross_entropy(net.output(out[0]), tok[0], reduction="sum"))
        kls.append(kl_divergence(mu, logvar).sum())
    return torch.stack(recons), torch.stack(kls)


@pytest.mark.parametrize("config", [
    ModelConfig(embedding_dim=8, hidden_dim=12, decoder_hidden_dim=10, latent_dim=3),
    ModelConfig(embedding_dim=8, hidden_dim=12, bidirectional=False, encoder_layers=2, decoder_hidden_dim=10,
                decoder_layers=3, latent_dim=3),
    ModelConfig(embedding_dim=8, hidden_dim=12, encoder_layers=2, decoder_hidden_dim=10, latent_dim=3),
], ids=["bi", "uni-stacked", "bi-stacked"])
def test_padded_loss_equals_packed_and_naive(config):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    seqs = [list(rng.integers(4, 20, size=int(n))) for n in rng.integers(1, 25, size=13)]
    td = TokenData.from_sequences(seqs)
    b = td.batch(np.arange(len(seqs)), eos_id=2, pad_id=0)
    net = VAE(config, 20).double()
    results = {}
    for impl in ("packed", "padded"):
        net.rnn_impl = impl
        out = net(b.tokens, b.lengths, sample=False)
        loss = out.recon.mean() + out.kl.mean()
        net.zero_grad()
        loss.backward()
        results[impl] = (out, [p.grad.clone() for p in net.parameters()])
    naive_recon, naive_kl = _naive_loss(net, seqs)
    for impl, (out, grads) in results.items():
        # the model sums its losses in float32 (for mixed precision): compare at that precision
        torch.testing.assert_close(out.recon.double(), naive_recon.detach(), rtol=1e-5, atol=1e-5, msg=impl)
        torch.testing.assert_close(out.kl.double(), naive_kl.detach(), rtol=1e-5, atol=1e-5, msg=impl)
        assert out.n_tokens == sum(len(s) + 1 for s in seqs)
    (out_a, grads_a), (out_b, grads_b) = results["packed"], results["padded"]
    assert int(out_a.n_correct) == int(out_b.n_correct)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(ga, gb)


def test_rnn_impl_is_a_forward_choice_over_the_same_weights():
    """A network saved while it ran padded loads strictly into one that runs packed (and back) and
    computes the same loss: the choice of implementation is no part of the model file."""
    torch.manual_seed(1)
    cfg = ModelConfig(embedding_dim=8, hidden_dim=12, decoder_hidden_dim=10, latent_dim=3)
    padded = VAE(cfg, 20).double()
    assert padded.rnn_impl == "padded"
    packed = VAE(cfg, 20).double()
    packed.rnn_impl = "packed"
    packed.load_state_dict(padded.state_dict(), strict=True)
    b = TokenData.from_sequences([[4, 5, 6], [7], [8, 9, 10, 11, 12]]).batch(np.arange(3), eos_id=2, pad_id=0)
    a, c = padded(b.tokens, b.lengths, sample=False), packed(b.tokens, b.lengths, sample=False)
    torch.testing.assert_close(a.recon, c.recon)
    torch.testing.assert_close(a.kl, c.kl)


# ----------------------------------------------------------------------------- cache

def test_cache_hit_returns_identical_data(cache_dir, small_csv):
    first = prepare_file(small_csv, n_jobs=1)
    assert first.extra["cache"]["hit"] is False
    second = prepare_file(small_csv, n_jobs=1)
    assert second.extra["cache"]["hit"] is True
    ref = prepare(read_molecules(small_csv))
    for p in (first, second):
        assert p.smiles == ref.smiles
        assert p.vocab == ref.vocab
        assert np.array_equal(np.asarray(p.tokens.ids), ref.tokens.ids)
        assert np.array_equal(np.asarray(p.tokens.offsets), ref.tokens.offsets)
        assert np.array_equal(p.rows, ref.rows)
        assert p.n_input == ref.n_input and p.n_duplicates == ref.n_duplicates
    assert isinstance(second.tokens.ids, np.memmap)


def test_cache_stores_rejected_rows_and_properties(cache_dir, tmp_path):
    f = tmp_path / "mols.csv"
    pd.DataFrame({"smiles": ["CCO", "CCO", "xx", "c1ccccc1O", ""], "y": ["1.5", "2", "3", "", "4"]}).to_csv(f, index=False)
    first = prepare_file(f, property_columns=("y",), n_jobs=1)
    second = prepare_file(f, property_columns=("y",), n_jobs=1)
    assert second.extra["cache"]["hit"]
    pd.testing.assert_frame_equal(first.rejected.reset_index(drop=True), second.rejected.reset_index(drop=True),
                                  check_dtype=False)
    assert len(second.rejected) == 3
    np.testing.assert_array_equal(first.properties.to_numpy(), second.properties.to_numpy())


def test_changed_setting_or_file_invalidates_cache(cache_dir, small_csv, tmp_path):
    base = prepare_file(small_csv, n_jobs=1)
    assert not base.extra["cache"]["hit"]
    for kwargs in ({"max_len": 30}, {"largest_fragment": False}, {"property_columns": ("qed",)}):
        try:
            p = prepare_file(small_csv, n_jobs=1, **kwargs)
        except Exception:  # an unavailable RDKit property is not what this test is about
            continue
        assert not p.extra["cache"]["hit"], kwargs
        assert p.extra["cache"]["path"] != base.extra["cache"]["path"]
    capped = prepare_file(small_csv, n_jobs=1, max_len=30)
    assert capped.extra["cache"]["hit"] and int(capped.tokens.lengths.max()) <= 30
    # same settings, different bytes: a different entry
    copy = tmp_path / "copy.csv"
    copy.write_text(small_csv.read_text() + "CCCCO\n")
    p = prepare_file(copy, n_jobs=1)
    assert not p.extra["cache"]["hit"] and len(p) == len(base) + 1
    assert cache_key("a" * 64, {"max_len": None}) != cache_key("b" * 64, {"max_len": None})


def test_damaged_cache_entry_is_rebuilt(cache_dir, small_csv):
    first = prepare_file(small_csv, n_jobs=1)
    entry = Path(first.extra["cache"]["path"])
    (entry / "offsets.npy").write_bytes(b"garbage")
    again = prepare_file(small_csv, n_jobs=1)
    assert not again.extra["cache"]["hit"]
    assert again.smiles == first.smiles
    assert load_prepared(entry).smiles == first.smiles


def test_train_uses_the_cache(cache_dir, small_csv, tmp_path):
    from conftest import TINY_MODEL, tiny_train_config

    from molvae import train

    cfg = tiny_train_config(epochs=1, recon_eval_size=10, cpu_amp=True)
    r1 = train(small_csv, tmp_path / "a", model_config=TINY_MODEL, train_config=cfg, runs_dir=tmp_path)
    r2 = train(small_csv, tmp_path / "b", model_config=TINY_MODEL, train_config=cfg, runs_dir=tmp_path)
    assert r1.prepared.extra["cache"]["hit"] is False
    assert r2.prepared.extra["cache"]["hit"] is True
    assert np.isfinite(r2.history[-1]["val_nelbo"])


# ----------------------------------------------------------------------------- DDP

@pytest.mark.slow
def test_ddp_two_gloo_processes(tmp_path, small_csv):
    """torchrun with 2 CPU processes: the run finishes, the checkpoint loads, the ranks saw disjoint data."""
    from molvae import MolVAE
    from molvae.checkpoint import load_checkpoint

    run = tmp_path / "ddp_run"
    seen = tmp_path / "seen"
    env = {**os.environ, "MOLVAE_DEBUG_SEEN_DIR": str(seen), "MOLVAE_CACHE_DIR": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "molvae", "train", str(small_csv), "--out", str(run), "--runs-dir", str(tmp_path),
           "--epochs", "2", "--batch-size", "16", "--device", "cpu", "--no-progress", "--threads", "1",
           "--embedding-dim", "16", "--hidden-dim", "16", "--decoder-hidden-dim", "32", "--latent-dim", "4"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = MolVAE.load(run)
    assert len(model.history) == 2 and model.metadata.get("world_size") == 2
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert int(ckpt["training_state"]["epoch"]) == 2
    ranks = []
    for r in (0, 1):
        lines = (seen / f"seen.rank{r}.txt").read_text().split("\n")
        ranks.append([np.array(line.split(), dtype=np.int64) for line in lines if line.strip()])
    assert len(ranks[0]) == len(ranks[1]) > 0  # same number of steps on both ranks
    steps = len(ranks[0]) // 2
    for epoch in range(2):
        a = np.concatenate(ranks[0][epoch * steps:(epoch + 1) * steps])
        b = np.concatenate(ranks[1][epoch * steps:(epoch + 1) * steps])
        assert len(np.intersect1d(a, b)) == 0  # disjoint within an epoch
        assert len(np.unique(a)) == len(a) and len(np.unique(b)) == len(b)
    history = pd.read_csv(run / "history.csv")
    assert len(history) == 2 and np.isfinite(history["val_nelbo"]).all()
