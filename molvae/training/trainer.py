"""The training loop: :class:`Trainer` runs epochs of steps over prepared data into a claimed run folder.

One epoch (:meth:`Trainer.train_epoch`) is length-bucketed batches in a seeded order, each a
:meth:`Trainer.step` (β and learning rate from :mod:`.schedules`, skipped when the loss or gradient is
not finite); then :meth:`Trainer.validate` measures the epoch and :meth:`Trainer.end_epoch` keeps the
best model, writes the history and a resumable checkpoint (:meth:`Trainer.save`) and decides whether
to stop. Everything a resumed run needs is :attr:`Trainer.state` (a :class:`~.state.TrainState`), the
network, the history and the generators' state, all in ``checkpoint.pt``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import data as data_mod
from ..checkpoint import load_checkpoint, save_checkpoint
from ..config import TrainConfig
from ..core import MolVAE
from ..diagnostics import active_units, autocast, greedy_reconstruction_rate, latent_means, selection_loss
from ..distributed import DistContext
from ..errors import CheckpointError, MolvaeError
from ..workers import stop_on_signals
from .inputs import TrainingData
from .parallel import evaluate_distributed, open_seen_log, shard_batches
from .run_folder import plot_curves, point_latest, write_history
from .schedules import kl_term, kl_weight_at, learning_rate_at, property_loss, use_mixed_precision
from .state import EpochSums, TrainState, capture_rng, restore_rng

__all__ = ["Trainer", "TrainingInterrupted", "TrainingDiverged"]

log = logging.getLogger(__name__)


class TrainingInterrupted(MolvaeError):
    """Raised after Ctrl-C/SIGTERM once a resumable checkpoint has been written."""


class TrainingDiverged(MolvaeError):
    """Raised when too many consecutive steps had a non-finite loss or gradient."""


class _StopFlag:
    """Set by the first Ctrl-C/SIGTERM: the loop saves a checkpoint after the current step and stops.
    A second signal raises KeyboardInterrupt at once (:func:`molvae.workers.stop_on_signals`)."""

    def __init__(self) -> None:
        self.flag = False

    def _stop(self, signum: int) -> None:
        self.flag = True
        log.warning("interrupt received: saving a checkpoint after this step")

    @contextlib.contextmanager
    def installed(self) -> Iterator[_StopFlag]:
        with stop_on_signals(self._stop):
            yield self


def _all_finite(net: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in net.parameters())


class Trainer:
    """Trains ``model`` on ``data`` into the run folder ``run`` (already claimed and locked by the caller).

    Args:
        model: the untrained (or, before :meth:`restore`, to-be-resumed) model; its network moves to ``device``.
        tc: the run's settings.
        data: prepared molecules, split and property targets.
        run: the run folder; rank 0 writes it.
        dist: who this process is under torchrun (a single-process context otherwise).
        device: where to train.
        runs_dir: where ``LATEST`` lives.
        metadata: facts about the run stored in every model file written (shared, not copied).
        on_epoch: called on rank 0 with each epoch's history row.
        show_bar: show a progress bar (rank 0 only).
    """

    def __init__(self, model: MolVAE, tc: TrainConfig, data: TrainingData, run: Path, dist: DistContext,
                 device: torch.device, *, runs_dir, metadata: dict[str, Any],
                 on_epoch: Callable[[dict[str, Any]], None] | None = None, show_bar: bool = False) -> None:
        self.model, self.tc, self.data, self.run, self.dist, self.device = model, tc, data, run, dist, device
        self.runs_dir, self.metadata, self.on_epoch, self.show_bar = runs_dir, metadata, on_epoch, show_bar
        self.net = model.net.to(device)
        self.use_amp = use_mixed_precision(tc, device)
        self.train_net = self.net  # what the step calls: DDP and/or torch.compile wrap the same module
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.train_net = DistributedDataParallel(
                self.net, device_ids=[device.index] if device.type == "cuda" else None)
        if tc.compile:
            self.train_net = torch.compile(self.train_net)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=tc.learning_rate)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and not torch.cuda.is_bf16_supported()) \
            if device.type == "cuda" else None
        self.state = TrainState()
        self._set_data_identity()
        self.sums = EpochSums.zeros(device)
        self.history: list[dict[str, Any]] = []
        self.stop = _StopFlag()
        self.pointed = False  # whether LATEST points at this run yet
        self.elapsed_before = 0.0
        self._t_start = time.perf_counter()
        self._seen_log = None

    # ------------------------------------------------------------------ state

    def restore(self, checkpoint: dict[str, Any], path: Path) -> None:
        """Continue from ``checkpoint`` (a loaded ``checkpoint.pt``): weights, Adam, scaler, position, generators.

        Raises:
            CheckpointError: the training state is incomplete or does not fit the model.
        """
        ts = checkpoint["training_state"]
        try:
            self.net.load_state_dict(checkpoint["state_dict"])
            self.optimizer.load_state_dict(ts["optimizer"])
            if self.scaler is not None and ts.get("scaler"):
                self.scaler.load_state_dict(ts["scaler"])
            self.state = TrainState.from_dict(ts, self.device)
            self.history = list(checkpoint.get("history") or [])
            self._set_data_identity()
            restore_rng(ts["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise CheckpointError(f"{path}: training state is incomplete or does not match the model "
                                  f"({type(exc).__name__}: {first})") from exc
        log.info("resuming %s at epoch %d, batch %d", self.run, self.state.epoch + 1, self.state.batch)

    def _set_data_identity(self) -> None:
        """What the run trains on, as the checkpoint records it (a resumed run may read a moved file)."""
        d = self.data
        self.state.data_path, self.state.data_hash = d.data_path, d.source_hash
        self.state.smiles_column, self.state.property_columns = d.smiles_column, tuple(d.property_columns)

    def checkpoint_state(self, epoch: int, batch: int) -> TrainState:
        """The state a run resumed at ``batch`` steps into ``epoch`` continues from (optimizer, rng taken now)."""
        return dataclasses.replace(
            self.state, epoch=epoch, batch=batch, epoch_sums=self.sums if batch else None,
            optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict() if self.scaler is not None else None,
            rng=capture_rng())

    def save(self, epoch: int, batch: int) -> None:
        """Write ``checkpoint.pt`` (rank 0), resuming at ``batch`` steps into ``epoch``; never broken weights."""
        if not self.dist.is_main:
            return
        if not _all_finite(self.net):
            log.warning("weights hold NaN or infinite values: checkpoint not written, %s keeps the last good one",
                        self.run / "checkpoint.pt")
            return
        self._record_in_model()
        save_checkpoint(self.run / "checkpoint.pt",
                        {**self.model.payload(), "training_state": self.checkpoint_state(epoch, batch).to_dict()})

    def _record_in_model(self) -> None:
        self.model.train_config, self.model.history, self.model.metadata = self.tc, self.history, self.metadata

    def elapsed(self) -> float:
        """Seconds of training in this run, including the runs it resumed."""
        return self.elapsed_before + time.perf_counter() - self._t_start

    def _over_time(self) -> bool:
        return bool(self.tc.max_time_minutes) and self.elapsed() > 60 * self.tc.max_time_minutes

    # ------------------------------------------------------------------ the loop

    def fit(self) -> bool:
        """Train from :attr:`state` to the last epoch, the time limit or early stopping.

        Returns:
            Whether the run stopped before its last epoch.

        Raises:
            TrainingInterrupted: Ctrl-C/SIGTERM (a checkpoint was written first).
            TrainingDiverged: ``max_bad_steps`` consecutive non-finite steps.
        """
        self._t_start = time.perf_counter()
        self.elapsed_before = float(self.history[-1]["elapsed_s"]) if self.history else 0.0
        self._seen_log = open_seen_log(self.dist.rank)
        self.net.train()
        start_epoch, first = self.state.epoch, self.state.batch
        try:
            with self.stop.installed():
                for epoch in range(start_epoch, self.tc.epochs):
                    stop_at = self.train_epoch(epoch, first if epoch == start_epoch else 0)
                    if self.end_epoch(epoch, self.validate(epoch), stop_at):
                        return True
            return False
        finally:
            if self._seen_log is not None:
                self._seen_log.close()
                self._seen_log = None

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        epoch_rng = np.random.default_rng([self.tc.seed, epoch])
        batches = data_mod.bucket_batches(self.data.prepared.tokens.lengths, self.data.train_idx, self.tc.batch_size,
                                          shuffle=True, rng=epoch_rng)
        if self.dist.enabled:
            batches = shard_batches(batches, self.dist.rank, self.dist.world_size)
        return batches

    def train_epoch(self, epoch: int, first: int = 0) -> int | None:
        """The steps of ``epoch`` from batch ``first`` on (the running sums of a resumed epoch continue).

        Returns:
            The number of batches taken when the time limit stopped the epoch early, else ``None``.
        """
        from tqdm.auto import tqdm

        tc = self.tc
        batches = self._epoch_batches(epoch)
        self._t_epoch = time.perf_counter()
        if first and self.state.epoch_sums is not None:
            self.sums = self.state.epoch_sums
        else:
            self.sums = EpochSums.zeros(self.device, beta=kl_weight_at(tc, epoch + first / len(batches)))
        self.state.epoch_sums = None
        bar = tqdm(total=len(batches), initial=first, desc=f"epoch {epoch + 1}/{tc.epochs}",
                   disable=not (self.show_bar and self.dist.is_main), leave=False, dynamic_ncols=True)
        try:
            for bi in range(first, len(batches)):
                self.step(epoch, bi, len(batches), batches[bi])
                bar.update(1)
                if self.show_bar and bi % 20 == 0 and self.sums.n:
                    s = self.sums
                    bar.set_postfix(recon=f"{float(s.recon) / s.n:.2f}", kl=f"{float(s.kl) / s.n:.2f}",
                                    beta=f"{s.beta:.3f}")
                if tc.checkpoint_every and self.state.global_step % tc.checkpoint_every == 0:
                    self.save(epoch, bi + 1)
                if self._stop_now(epoch, bi + 1):
                    return bi + 1 if bi + 1 < len(batches) else None
        finally:
            bar.close()
        return None

    def _stop_now(self, epoch: int, done: int) -> bool:
        """After a step: True at the time limit; on Ctrl-C save and raise :class:`TrainingInterrupted`."""
        over = self._over_time()
        if self.dist.enabled:  # every rank must stop at the same step
            over, self.stop.flag = (v > 0 for v in self.dist.all_reduce_sum([float(over), float(self.stop.flag)]))
        if over:
            log.info("time limit of %.1f minutes reached at epoch %d, step %d", self.tc.max_time_minutes,
                     epoch + 1, self.state.global_step)
            return True
        if self.stop.flag:
            self.save(epoch, done)
            raise TrainingInterrupted(
                f"interrupted at epoch {epoch + 1}, step {self.state.global_step}; checkpoint saved, "
                f"continue with: molvae train --resume {self.run}")
        return False

    def _set_learning_rate(self, epoch: int, bi: int, n_batches: int) -> None:
        tc = self.tc
        if tc.lr_schedule == "constant":
            return
        # Progress through the run: by epochs, or by the clock when --max-time ends it sooner.
        progress = (epoch + bi / n_batches) / tc.epochs
        if tc.max_time_minutes:
            progress = max(progress, self.elapsed() / (60 * tc.max_time_minutes))
        if self.dist.enabled:  # every rank must use the same rate
            progress = self.dist.all_reduce_sum([progress])[0] / self.dist.world_size
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate_at(tc, progress)

    def _batch(self, idx: np.ndarray) -> data_mod.Batch:
        if self._seen_log is not None:
            self._seen_log.write(" ".join(map(str, idx.tolist())) + "\n")
        vocab = self.model.vocab
        b = self.data.prepared.tokens.batch(idx, vocab.eos_id, vocab.pad_id)
        if self.data.prop_array is not None:
            b.properties = torch.from_numpy(self.data.prop_array[idx])
        if self.device.type == "cuda":
            b = b.pin_memory()
        return b.to(self.device, non_blocking=True)

    def step(self, epoch: int, bi: int, n_batches: int, idx: np.ndarray) -> None:
        """One optimizer step on the molecules ``idx`` (batch ``bi`` of ``n_batches`` in ``epoch``)."""
        tc, scaler = self.tc, self.scaler
        b = self._batch(idx)
        beta = self.sums.beta = kl_weight_at(tc, epoch + bi / n_batches)
        self._set_learning_rate(epoch, bi, n_batches)
        with autocast(self.device, self.use_amp):
            out = self.train_net(b.tokens, b.lengths, sample=True, word_dropout=tc.word_dropout)
        loss = out.recon.mean() + beta * kl_term(out, tc)
        ploss = property_loss(out.properties, b.properties)
        if ploss is not None:
            loss = loss + tc.property_weight * ploss
        self.optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), tc.grad_clip)
        if torch.isfinite(loss) and torch.isfinite(grad_norm):
            self.state.consecutive_bad = 0
            if scaler is not None and scaler.is_enabled():
                scaler.step(self.optimizer)
                scaler.update()
            else:
                self.optimizer.step()
            # Accumulate on the device; read back only for the progress bar and epoch end.
            n, s = len(idx), self.sums
            s.recon += out.recon.detach().sum()
            s.kl += out.kl.detach().sum()
            s.loss += loss.detach() * n
            s.n += n
            if ploss is not None:
                s.prop += float(ploss.detach()) * n
        else:
            self._skip_step(epoch)
        self.state.global_step += 1

    def _skip_step(self, epoch: int) -> None:
        """A non-finite loss or gradient: no update; too many in a row stop the run."""
        self.state.consecutive_bad += 1
        self.sums.skipped += 1
        self.optimizer.zero_grad(set_to_none=True)
        log.warning("step %d: non-finite loss or gradient, step skipped (%d in a row)",
                    self.state.global_step, self.state.consecutive_bad)
        if self.scaler is not None and self.scaler.is_enabled():
            self.scaler.update()
        if self.state.consecutive_bad >= self.tc.max_bad_steps:
            raise TrainingDiverged(
                f"{self.state.consecutive_bad} consecutive steps with a non-finite loss or gradient; "
                f"stopped at epoch {epoch + 1}, the last good checkpoint is kept in {self.run}")

    # ------------------------------------------------------------------ end of an epoch

    def _epoch_totals(self) -> tuple[float, float, float, float]:
        """``(recon, kl, loss, n)`` of the epoch's training steps per molecule, over all ranks.

        An epoch whose every step was skipped has no training loss (NaN, not 0).
        """
        s = self.sums
        if self.dist.enabled:  # sums over ranks: the epoch's loss over all molecules seen
            r_, k_, l_, n_, p_, s_ = self.dist.all_reduce_sum(
                [float(s.recon), float(s.kl), float(s.loss), s.n, s.prop, s.skipped])
            s.recon, s.kl, s.loss = (torch.tensor(v) for v in (r_, k_, l_))
            s.n, s.prop, s.skipped = int(n_), p_, int(s_)
        n_tr = s.n if s.n else math.nan
        return float(s.recon) / n_tr, float(s.kl) / n_tr, float(s.loss) / n_tr, n_tr

    def validate(self, epoch: int) -> dict[str, Any]:
        """The epoch's history row: training sums, validation loss (fp32, each rank a slice), rank 0's
        greedy reconstruction rate and active units."""
        tc, data, net = self.tc, self.data, self.net
        train_recon, train_kl, train_loss, n_tr = self._epoch_totals()
        tokens, vocab = data.prepared.tokens, self.model.vocab
        val = evaluate_distributed(net, tokens, data.val_idx, vocab, max(tc.batch_size, 256), self.device,
                                   tc.seed, self.dist)
        eval_idx = data.val_idx if len(data.val_idx) else data.train_idx
        sub = eval_idx[: tc.recon_eval_size]
        if self.dist.is_main:
            mu = latent_means(net, tokens, eval_idx[:5000], vocab, 512, self.device)
            recon_acc = greedy_reconstruction_rate(self.model, data.prepared.smiles, tokens, sub) \
                if len(sub) else math.nan
        else:  # rank 0 alone decodes for reconstruction accuracy and active units
            mu, recon_acc = np.zeros((0, net.config.latent_dim), dtype=np.float32), math.nan
        net.train()
        row = {
            "epoch": epoch + 1, "step": self.state.global_step, "beta": self.sums.beta,
            "train_loss": train_loss, "train_recon": train_recon, "train_kl": train_kl,
            "val_recon": val["recon"], "val_kl": val["kl"], "val_nelbo": val["nelbo"],
            "val_loss": selection_loss(val["recon"], val["kl"], tc.kl_weight),
            "val_token_acc": val["token_acc"], "val_recon_acc": recon_acc,
            "active_units": active_units(mu), "skipped_steps": self.sums.skipped,
            "epoch_time_s": time.perf_counter() - self._t_epoch,
            "elapsed_s": self.elapsed(),
        }
        if data.prop_array is not None:
            row["train_property_mse"] = self.sums.prop / n_tr
            if self.dist.is_main and len(data.val_idx):
                row.update(self._validation_property_figures(mu, data.val_idx[:5000]))
        log.info("epoch %d: recon %.3f kl %.3f beta %.3f | val nelbo %.3f recon_acc %.3f AU %d",
                 epoch + 1, train_recon, train_kl, row["beta"], val["nelbo"], recon_acc, row["active_units"])
        return row

    @torch.no_grad()
    def _validation_property_figures(self, mu: np.ndarray, idx: np.ndarray) -> dict[str, float]:
        """Per property of the head, on validation molecules with a value: the mean squared error of the
        standardized target (the scale of ``train_property_mse``) and R² (the same in the data's units)."""
        if self.net.property_head is None:
            return {}
        was = self.net.training
        self.net.eval()
        pred = self.net.property_head(torch.from_numpy(mu).to(self.device)).float().cpu().numpy()
        self.net.train(was)
        true = self.data.prop_array[idx]
        out = {}
        for j, name in enumerate(self.model.config.property_names):
            ok = np.isfinite(true[:, j])
            if ok.sum() < 2:
                out[f"val_mse_{name}"] = out[f"val_r2_{name}"] = math.nan
                continue
            err = float(((pred[ok, j] - true[ok, j]) ** 2).mean())
            var = float(true[ok, j].var())
            out[f"val_mse_{name}"] = err
            out[f"val_r2_{name}"] = 1.0 - err / var if var > 0 else math.nan
        return out

    def _keep_if_best(self, row: dict[str, Any]) -> None:
        """Save ``model.pt`` when this epoch has the lowest validation loss at the target β so far
        (see :func:`~molvae.diagnostics.selection_loss`: one scale for every epoch, also during warm-up),
        or, with ``keep="last"``, after every epoch whose weights are finite; early stopping counts the
        epochs without improvement either way."""
        score = row["val_loss"] if math.isfinite(row["val_loss"]) else row["train_loss"]
        finite = _all_finite(self.net)
        improved = score < self.state.best_val and finite
        if improved:
            self.state.best_val, self.state.bad_epochs = score, 0
        else:
            self.state.bad_epochs += 1
        if finite and (improved or self.tc.keep == "last"):
            self._record_in_model()
            if self.dist.is_main:
                self.model.save(self.run / "model.pt")
                if not self.pointed:  # LATEST names runs that hold a model, only
                    point_latest(self.run, self.runs_dir)
                    self.pointed = True

    def end_epoch(self, epoch: int, row: dict[str, Any], stop_at: int | None = None) -> bool:
        """Record ``row``, keep the best model, write the history and a checkpoint; True when the run stops.

        ``stop_at``: the time limit stopped the epoch after that many batches (the checkpoint resumes there).
        """
        self.history.append(row)
        if self.on_epoch and self.dist.is_main:
            self.on_epoch(row)
        self._keep_if_best(row)
        if self.dist.is_main:
            write_history(self.run, self.history)
        if stop_at is not None:
            self.save(epoch, stop_at)
            return True
        self.save(epoch + 1, 0)
        if self.stop.flag:  # Ctrl-C during validation: the epoch-end checkpoint is already written
            raise TrainingInterrupted(
                f"interrupted after epoch {epoch + 1}, step {self.state.global_step}; checkpoint saved, "
                f"continue with: molvae train --resume {self.run}")
        if self._over_time():
            return True
        if self.tc.early_stopping and self.state.bad_epochs >= self.tc.early_stopping:
            log.info("early stopping: no validation improvement in %d epochs", self.state.bad_epochs)
            return True
        return False

    # ------------------------------------------------------------------ the end

    def finish(self) -> MolVAE:
        """Store the full history in ``model.pt`` (the best model), point LATEST, draw the curves; the best model."""
        self.metadata["train_time_s"] = self.history[-1]["elapsed_s"] if self.history else 0.0
        path = self.run / "model.pt"
        if self.dist.is_main:
            best = MolVAE.from_payload(load_checkpoint(path), path)
            # Record the full history in the best model as well, so the file alone tells the story.
            best.history, best.metadata = self.history, {**best.metadata, **self.metadata}
            best.save(path)
            if not self.pointed:
                point_latest(self.run, self.runs_dir)
            write_history(self.run, self.history)
            plot_curves(self.run, self.history)
        self.dist.barrier()
        if not self.dist.is_main:
            best = MolVAE.from_payload(load_checkpoint(path), path)
        return best.to(self.device)
