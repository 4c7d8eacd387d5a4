"""How latent vectors become molecules: token rules (sample, top-p, greedy, beam, clean) and redraws."""

from __future__ import annotations

import math

import pytest
import torch
from rdkit import Chem

from molvae import Decoding, InvalidInputError, MolVAE, chem
from molvae.model import nucleus, sequences_to_tensor

from conftest import cli


@pytest.fixture(scope="module")
def moses() -> MolVAE:
    return MolVAE.load("moses")


def _log_prob(net, z: torch.Tensor, seqs: list[list[int]]) -> torch.Tensor:
    """log p(seq + <eos> | z) under teacher forcing, with the tokens the decoder may not emit masked out."""
    tokens, lengths = sequences_to_tensor(seqs, net.eos_id, net.pad_id)
    logits, targets = net.decoder_logits(z, tokens, lengths)
    logp = torch.log_softmax(logits.float().masked_fill(net.forbidden, -math.inf), -1)
    picked = logp.gather(1, targets.unsqueeze(1)).squeeze(1)
    owner = torch.repeat_interleave(torch.arange(len(seqs)), lengths)
    return torch.zeros(len(seqs), dtype=picked.dtype).index_add_(0, owner, picked)


def test_a_beam_of_one_is_greedy_and_wider_beams_find_likelier_sequences(moses):
    net = moses.net.eval()
    z = torch.randn(40, moses.config.latent_dim, generator=torch.Generator().manual_seed(0))
    L = moses.config.max_len
    greedy = net.generate(z, L, greedy=True)
    assert net.beam_search(z, L, width=1) == greedy
    beams = net.beam_search(z, L, width=5)
    ended = [i for i in range(len(z)) if len(greedy[i]) < L and len(beams[i]) < L]
    assert len(ended) >= 30
    lp_greedy = _log_prob(net, z[ended], [greedy[i] for i in ended])
    lp_beam = _log_prob(net, z[ended], [beams[i] for i in ended])
    assert (lp_beam >= lp_greedy - 1e-4).all()
    assert (lp_beam > lp_greedy + 1e-4).any(), "a width-5 search never beat greedy decoding"


def test_beam_search_keeps_every_sample_a_molecule(tiny_model):
    table = tiny_model.sample(60, decoding=Decoding(method="beam", beam_width=3), seed=2)
    assert len(table) == 60 and table["valid"].all()
    assert all(Chem.MolFromSmiles(s) is not None for s in table["smiles"])


def test_the_nucleus_keeps_the_likeliest_tokens_holding_top_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.9, 0.03, 0.02]])
    kept = nucleus(probs, 0.75)
    assert torch.equal(kept, torch.tensor([[0.5, 0.3, 0.0, 0.0], [0.0, 0.9, 0.0, 0.0]]))
    assert torch.equal(nucleus(probs, 1.0), probs)


def test_top_p_sampling_narrows_to_greedy_and_widens_to_plain_sampling(tiny_model):
    net = tiny_model.net.eval()
    z = torch.randn(30, tiny_model.config.latent_dim, generator=torch.Generator().manual_seed(1))
    L = tiny_model.config.max_len

    def run(**kw):
        return net.generate(z, L, generator=torch.Generator().manual_seed(5), **kw)

    assert run(top_p=1e-6) == net.generate(z, L, greedy=True)
    assert run(top_p=1.0) == run()
    assert run(top_p=0.5) != run()


def test_ignored_atom_tokens_counts_what_selfies_dropped():
    assert chem.ignored_atom_tokens("[C][C][O]") == 0
    assert chem.ignored_atom_tokens("[C][F][Branch1][C][O][C]") == 2   # a branch on F and the atom after it
    assert chem.ignored_atom_tokens("[O][=C][=O][C]") == 1            # carbon dioxide has no room for a fourth atom
    assert chem.ignored_atom_tokens("[C][=Branch1][C][=O][C]") == 0   # the branch's index token is not an atom
    assert chem.ignored_atom_tokens("[C][C][C][Ring1][Ring1]") == 0


def test_decode_selfies_reports_radicals_and_ring_size():
    assert chem.decode_selfies("[C][NH1]") == chem.DecodedMolecule("C[NH]", True, 0)
    ring = chem.decode_selfies(chem.to_selfies("C1CCCCCCCCC1"))
    assert ring.smiles == "C1CCCCCCCCC1" and not ring.radical and ring.largest_ring == 10


@pytest.fixture(scope="module")
def zinc() -> MolVAE:
    return MolVAE.load("zinc250k")


def _radical(smiles: str) -> bool:
    return any(a.GetNumRadicalElectrons() for a in Chem.MolFromSmiles(smiles).GetAtoms())


def _largest_ring(smiles: str) -> int:
    mol = Chem.MolFromSmiles(smiles)  # held: ring info does not outlive its molecule
    return max((len(r) for r in mol.GetRingInfo().AtomRings()), default=0)


def test_the_default_decoding_redraws_radicals_and_large_rings(zinc):
    raw = zinc.sample(300, decoding=Decoding(allow_radicals=True, max_ring_size=0), seed=3)
    assert sum(_radical(s) for s in raw["smiles"]) > 30           # the shipped sampler writes them
    assert sum(_largest_ring(s) > 8 for s in raw["smiles"]) > 10
    table = zinc.sample(300, seed=3)
    assert len(table) == 300 and table["valid"].all()
    assert not any(_radical(s) for s in table["smiles"])
    assert max(_largest_ring(s) for s in table["smiles"]) <= 8
    counts = [b.attrs["redrawn"] for b in zinc.iter_samples(300, seed=3, batch_size=100)]
    assert sum(c["radical"] for c in counts) > 30 and sum(c["ring"] for c in counts) > 10


def test_a_ring_limit_of_six_leaves_no_larger_ring(zinc):
    table = zinc.sample(100, decoding=Decoding(max_ring_size=6), seed=4)
    assert table["valid"].all() and max(_largest_ring(s) for s in table["smiles"]) <= 6


def test_clean_decoding_returns_samples_selfies_wrote_whole(zinc):
    sampled = zinc.sample(200, decoding=Decoding(allow_radicals=True, max_ring_size=0), seed=6)
    assert sum(chem.ignored_atom_tokens(s) > 0 for s in sampled["selfies"]) > 10
    clean = zinc.sample(200, decoding=Decoding(method="clean"), seed=6)
    assert clean["valid"].all()
    assert all(chem.ignored_atom_tokens(s) == 0 for s in clean["selfies"])


def test_redraws_do_not_depend_on_worker_processes(zinc):
    one = zinc.sample(400, seed=7, batch_size=200, n_jobs=1)
    two = zinc.sample(400, seed=7, batch_size=200, n_jobs=2)
    assert one["smiles"].tolist() == two["smiles"].tolist()


def test_short_forms_and_bad_decodings():
    from molvae.core import resolve_decoding

    assert resolve_decoding(None, 0.9, False) == Decoding(temperature=0.9)
    assert resolve_decoding(None, None, False) == Decoding()
    assert resolve_decoding(Decoding(method="beam"), None, True).method == "greedy"
    with pytest.raises(InvalidInputError, match="temperature must be > 0"):
        resolve_decoding(None, 0.0, False)
    with pytest.raises(InvalidInputError, match="Decoding.method must be one of"):
        Decoding(method="nucleus")
    with pytest.raises(InvalidInputError, match="Decoding.beam_width"):
        Decoding(beam_width=0)


def test_generate_cli_decoding_options(tiny_run, tmp_path):
    out = tmp_path / "beam.csv"
    res = cli("generate", "--model", tiny_run.run_dir, "--decode", "beam", "--beam-width", "2", "--n", "12",
              "--seed", "1", "--out", out)
    assert res.exit_code == 0, res.output
    assert "decoding: beam search, width 2; redraws radicals and rings over 8 atoms" in res.output
    assert len(out.read_text().splitlines()) == 13
    for args, needle in ((("--top-p", "0"), "--top-p"), (("--decode", "nucleus"), "--decode"),
                         (("--greedy", "--decode", "beam"), "--greedy"), (("--max-ring-size", "-1"), "--max-ring-size")):
        res = cli("generate", "--model", tiny_run.run_dir, "--n", "3", *args)
        assert res.exit_code == 2 and needle in res.output, res.output
        assert "Traceback" not in res.output
