"""Training settings chosen from the machine: when bf16 autocast is used on the CPU."""

from __future__ import annotations

from molvae.core import cpu_has_fast_bf16


def test_bf16_autocast_with_amx_or_on_amd_with_avx512_bf16(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx512f avx512_bf16\n")
    assert not cpu_has_fast_bf16(str(info))      # Intel AVX-512 BF16 without AMX: slower than fp32
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx512f avx512_bf16\n")
    assert cpu_has_fast_bf16(str(info))          # Zen 4: 1.58x faster
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2\n")
    assert not cpu_has_fast_bf16(str(info))
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n")
    assert cpu_has_fast_bf16(str(info))
    assert not cpu_has_fast_bf16(str(tmp_path / "missing"))


def test_cosine_learning_rate_schedule():
    import math

    import pytest

    from molvae import TrainConfig
    from molvae.train import learning_rate_at

    const = TrainConfig(learning_rate=2e-3)
    assert learning_rate_at(const, 0.0) == learning_rate_at(const, 0.7) == 2e-3
    cos = TrainConfig(learning_rate=2e-3, lr_schedule="cosine", lr_final_ratio=0.1)
    assert learning_rate_at(cos, 0.0) == pytest.approx(2e-3)
    assert learning_rate_at(cos, 0.5) == pytest.approx(0.5 * (2e-3 + 2e-4))
    assert learning_rate_at(cos, 1.0) == learning_rate_at(cos, 3.0) == pytest.approx(2e-4)
    values = [learning_rate_at(cos, p / 10) for p in range(11)]
    assert all(a > b for a, b in zip(values, values[1:]))
    assert not math.isclose(values[3], 2e-3)


def test_training_applies_the_cosine_schedule(tmp_path, small_csv):
    import torch

    from molvae import train
    from molvae.train import learning_rate_at

    from conftest import TINY_MODEL, tiny_train_config

    tc = tiny_train_config(epochs=2, lr_schedule="cosine", lr_final_ratio=0.2, learning_rate=3e-3)
    res = train(small_csv, tmp_path / "run", model_config=TINY_MODEL, train_config=tc, runs_dir=tmp_path)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["training_state"]
    steps_per_epoch = state["global_step"] // 2
    last = (1 + (steps_per_epoch - 1) / steps_per_epoch) / 2  # progress at the last step
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest_approx(learning_rate_at(tc, last))
    assert state["optimizer"]["param_groups"][0]["lr"] < 3e-3 * 0.3
    assert res.model.train_config.lr_schedule == "cosine"


def pytest_approx(x):
    import pytest

    return pytest.approx(x, rel=1e-9)


def test_training_lowers_the_loss(tmp_path, small_csv):
    """A tiny real model on real molecules: the loss it is trained on falls, on training and validation
    molecules, below where the same model started (β constant, so the loss keeps one meaning)."""
    import numpy as np
    import torch

    from molvae import MolVAE, train
    from molvae.data import split_indices
    from molvae.diagnostics import evaluate_loss, selection_loss

    from conftest import TINY_MODEL, tiny_train_config

    torch.set_num_threads(1)
    tc = tiny_train_config(epochs=4, kl_schedule="constant", kl_weight=0.5)
    res = train(small_csv, tmp_path / "run", model_config=TINY_MODEL, train_config=tc, runs_dir=tmp_path)
    hist = res.history
    # the untrained model: the same network, vocabulary and seed as the run started from
    start = MolVAE.new(res.model.config, res.model.vocab, seed=tc.seed)
    _, val_idx = split_indices(len(res.prepared), tc.val_fraction, tc.seed)
    before = evaluate_loss(start.net, res.prepared.tokens, np.asarray(val_idx), start.vocab, 256, torch.device("cpu"))
    untrained = selection_loss(before["recon"], before["kl"], tc.kl_weight)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert hist[-1]["val_loss"] < hist[0]["val_loss"] < untrained
    assert hist[-1]["val_token_acc"] > hist[0]["val_token_acc"]

