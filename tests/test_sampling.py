"""The decoder's sampling loop: same function as the GRU module, correct token distribution,
results independent of worker processes, loud failure when a worker dies."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from molvae import MolVAE
from molvae.cli import main


def _greedy_with_gru_module(net, z: torch.Tensor, max_len: int) -> list[list[int]]:
    """Greedy decoding written the plain way, with ``nn.GRU`` itself (no <eos> restriction)."""
    h = net.initial_hidden(z)
    token = torch.full((z.shape[0],), net.bos_id, dtype=torch.long)
    rows = [[] for _ in range(z.shape[0])]
    done = torch.zeros(z.shape[0], dtype=torch.bool)
    for _ in range(max_len):
        x = torch.cat([net.embedding(token), z], dim=-1).unsqueeze(1)
        y, h = net.decoder_rnn(x, h)
        token = net.output(y[:, 0]).masked_fill(net.forbidden, -math.inf).argmax(-1)
        for i, t in enumerate(token.tolist()):
            if not done[i] and t != net.eos_id:
                rows[i].append(t)
        done |= token == net.eos_id
        if done.all():
            break
    return rows


@torch.no_grad()
@pytest.mark.parametrize("layers", [1, 2])
def test_greedy_decoding_equals_the_gru_module(tiny_model, layers):
    from molvae import ModelConfig

    if layers == 1:
        net = tiny_model.net
    else:  # an untrained two-layer decoder: the step must handle stacked layers too
        torch.manual_seed(0)
        net = MolVAE.new(ModelConfig(embedding_dim=8, hidden_dim=8, decoder_hidden_dim=12, decoder_layers=2,
                                     latent_dim=4, max_len=30), tiny_model.vocab, seed=0).net
    net.eval()
    z = torch.randn(64, net.config.latent_dim, generator=torch.Generator().manual_seed(1))
    fast = net.generate(z, 30, greedy=True)
    assert fast == _greedy_with_gru_module(net, z, 30)


@torch.no_grad()
def test_sampled_tokens_follow_the_softmax(tiny_model):
    # The first token after <bos> from one z, drawn 20,000 times, against its softmax probabilities.
    net = tiny_model.net
    z = torch.randn(1, net.config.latent_dim, generator=torch.Generator().manual_seed(2)).expand(20000, -1)
    first = [row[0] if row else net.eos_id for row in
             net.generate(z, 1, temperature=1.5, generator=torch.Generator().manual_seed(3))]
    x = torch.cat([net.embedding(torch.tensor([net.bos_id])), z[:1]], dim=-1).unsqueeze(1)
    y, _ = net.decoder_rnn(x, net.initial_hidden(z[:1]))
    p = torch.softmax(net.output(y[:, 0]).masked_fill(net.forbidden, -math.inf) / 1.5, -1)[0].numpy()
    counts = np.bincount(first, minlength=len(p))
    assert counts[net.forbidden.numpy()].sum() == 0
    expected = p * len(first)
    seen = expected > 5
    chi2 = float((((counts - expected) ** 2)[seen] / expected[seen]).sum())
    # 99.9% quantile of chi-square with (k - 1) degrees of freedom is below 2k + 20 for these k.
    assert chi2 < 2 * seen.sum() + 20, (chi2, counts[seen], expected[seen])


def test_samples_do_not_depend_on_worker_processes(tiny_model):
    one = tiny_model.sample(250, seed=5, batch_size=100)
    two = tiny_model.sample(250, seed=5, batch_size=100, n_jobs=2)
    assert one["smiles"].tolist() == two["smiles"].tolist()
    assert len(one) == 250 and one["valid"].all()
    assert one["smiles"].tolist() != tiny_model.sample(250, seed=6, batch_size=100)["smiles"].tolist()


def test_generate_cli_n_jobs(tiny_run, tmp_path):
    model = str(tiny_run.run_dir / "model.pt")
    outs = []
    for jobs in ("1", "2"):
        out = tmp_path / f"g{jobs}.smi"
        res = CliRunner().invoke(main, ["generate", "-n", "300", "--batch-size", "100", "--seed", "1", "-j", jobs,
                                        "--model", model, "--out", str(out)])
        assert res.exit_code == 0, res.output
        outs.append(out.read_text())
    assert outs[0] == outs[1] and len(outs[0].splitlines()) == 300
    bad = CliRunner().invoke(main, ["generate", "-n", "3", "-j", "-1", "--model", model])
    assert bad.exit_code == 2 and "--n-jobs" in bad.output


def test_a_dead_sampling_worker_is_a_one_line_error(tiny_model, monkeypatch):
    from molvae import core
    from molvae.errors import WorkerCrashed

    # A worker that dies (as under the out-of-memory killer) must not hang the parent.
    monkeypatch.setattr(core, "_sample_in_worker", _die)
    with pytest.raises(WorkerCrashed, match="died while sampling"):
        tiny_model.sample(300, seed=0, batch_size=100, n_jobs=2)


def _die(task):
    import os

    os._exit(3)


def test_sample_molecules_unique_and_novel_is_what_generate_writes(tiny_run, tiny_model, tmp_path):
    """The unique/novel loop lives in the library; the CLI writes exactly what it yields."""
    from molvae.sample import UNIQUE_DRAWS_FACTOR, reference_set, sample_molecules

    plain = [r for rows, _ in sample_molecules(tiny_model, 120, seed=2, batch_size=50) for r in rows]
    assert [r[0] for r in plain] == tiny_model.sample(120, seed=2, batch_size=50)["smiles"].tolist()
    reference = tmp_path / "ref.smi"
    reference.write_text("\n".join(r[0] for r in plain[:40] if r[2]) + "\n")
    exclude = reference_set(reference)
    assert exclude and all(s == s.strip() for s in exclude)
    batches = list(sample_molecules(tiny_model, 60, seed=2, batch_size=50, unique=True, exclude=exclude))
    rows = [r for b, _ in batches for r in b]
    smiles = [r[0] for r in rows]
    assert len(rows) == 60 and len(set(smiles)) == 60 and all(r[2] for r in rows)
    assert not set(smiles) & exclude
    draws = [d for _, d in batches]
    assert draws == sorted(draws) and 60 <= draws[-1] <= UNIQUE_DRAWS_FACTOR * 60
    out = tmp_path / "g.csv"
    res = CliRunner().invoke(main, ["generate", "-n", "60", "--batch-size", "50", "--seed", "2", "--unique",
                                    "--novel-vs", str(reference), "--model", str(tiny_run.run_dir / "model.pt"),
                                    "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_text().splitlines()[1:] == [f"{s},{sel},{v}" for s, sel, v in rows]


def test_the_novelty_reference_is_read_as_training_reads_it(tmp_path):
    """A salt in the training file is the molecule the model writes: ``CC(=O)[O-].[Na+]`` excludes ``CC(=O)[O-]``."""
    from molvae.sample import reference_set

    ref = tmp_path / "train.smi"
    ref.write_text("CC(=O)[O-].[Na+]\nc1ccccc1O\n")
    assert reference_set(ref) == {"CC(=O)[O-]", "Oc1ccccc1"}
    assert "CC(=O)[O-].[Na+]" in reference_set(ref, keep_largest_fragment=False)
