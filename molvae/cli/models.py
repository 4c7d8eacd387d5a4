"""``molvae models``: the models that ship inside the package.

Each shipped model is ``molvae/models/<name>.pt``; its measured metrics, when they
have been measured, are the JSON that ``benchmarks/moses_benchmark.py --json`` wrote,
stored beside it as ``<name>.metrics.json``; ``molvae/models/README.md`` is the model card.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import click

from . import main

log = logging.getLogger(__name__)

# Figures of the MOSES table shown in the listing, in the paper's order.
MOSES_COLUMNS = ("valid", "unique@1k", "unique@10k", "FCD/Test", "FCD/TestSF", "SNN/Test", "SNN/TestSF",
                 "Frag/Test", "Frag/TestSF", "Scaf/Test", "Scaf/TestSF", "IntDiv", "IntDiv2", "Filters",
                 "Novelty")


def metrics_path(model_path: Path) -> Path:
    """Where the benchmark figures of a shipped model are stored."""
    return model_path.with_name(model_path.stem + ".metrics.json")


def describe_model(name: str, path: Path) -> dict[str, Any]:
    """Facts about one model file, read safely (``weights_only=True``) without building the network.

    Args:
        name: the name the model is selected by (``--model NAME``).
        path: its ``.pt`` file.

    Returns:
        A plain dict: name, path, size, parameters, sizes, training data and time, and
        the benchmark figures (``None`` when not measured).

    Raises:
        CheckpointError: the file is not a loadable molvae model file.
    """
    from ..checkpoint import load_checkpoint
    from ..diagnostics import best_epoch

    data = load_checkpoint(path)
    meta = dict(data.get("metadata") or {})
    config = dict(data.get("model_config") or {})
    train = dict(data.get("train_config") or {})
    history = list(data.get("history") or [])
    n_params = sum(int(t.numel()) for t in data["state_dict"].values())
    best = history[-1] if history and train.get("keep") == "last" else best_epoch(history, train.get("kl_weight"))
    info: dict[str, Any] = {
        "name": name,
        "path": str(path),
        "size_bytes": path.stat().st_size,
        "n_parameters": n_params,
        "latent_dim": config.get("latent_dim"),
        "vocab_size": len(data["vocab"]),
        "max_len": config.get("max_len"),
        "training_data": Path(str(meta["data_path"])).name if meta.get("data_path") else None,
        "n_molecules": meta.get("n_molecules"),
        "n_train": meta.get("n_train"),
        "n_val": meta.get("n_val"),
        "epochs": len(history),
        "best_epoch": best.get("epoch") if best else None,
        "train_time_s": meta.get("train_time_s"),
        "train_device": meta.get("device"),
        "seed": train.get("seed"),
        "versions": dict(data.get("versions") or {}),
        "priors": ["normal", *sorted((data.get("priors") or {}).keys())],
        "default_prior": data.get("default_prior") or "normal",
        "property_head": list(config.get("property_names") or []),
        "metrics": None,
        "base": meta.get("base"),
    }
    mpath = metrics_path(path)
    if mpath.is_file():
        try:
            record = json.loads(mpath.read_text(encoding="utf-8"))
            info["metrics"] = record.get("row")
            info["metrics_n_samples"] = record.get("n_samples")
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable metrics file (%s)", mpath, exc)
    return info


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _text(info: dict[str, Any]) -> str:
    lines = [f"{info['name']}  ({info['path']})"]
    lines.append(f"  file        {info['size_bytes'] / 1e6:.1f} MB, {info['n_parameters']:,} parameters, "
                 f"latent dim {info['latent_dim']}, {info['vocab_size']} tokens, up to {info['max_len']} tokens")
    data = info["training_data"] or "unknown data"
    if info["n_molecules"] is not None:
        data += f": {info['n_molecules']:,} molecules ({info['n_train']:,} train / {info['n_val']:,} validation)"
    lines.append(f"  trained on  {data}")
    base = info.get("base")
    if isinstance(base, dict):
        added = base.get("added_tokens") or []
        lines.append(f"  fine-tuned  from {base.get('name')} (SHA-256 {str(base.get('sha256'))[:12]}…), "
                     f"{len(added)} token(s) added")
    when = f"  training    {info['epochs']} epochs (best {info['best_epoch']}), seed {info['seed']}"
    if info["train_time_s"] is not None:
        when += f", {info['train_time_s'] / 60:.0f} min on {info['train_device']}"
    lines.append(when)
    others = [p for p in info.get("priors", ["normal"]) if p != info.get("default_prior", "normal")]
    lines.append(f"  prior       {info.get('default_prior', 'normal')} (generate's default)"
                 + (f"; also {', '.join(others)}" if others else ""))
    head = info.get("property_head")
    lines.append(f"  head        {', '.join(head)} (molvae predict; optimize's gradient method)" if head
                 else "  head        none")
    metrics = info.get("metrics")
    if metrics:
        shown = [f"{k} {_fmt(metrics[k])}" for k in MOSES_COLUMNS if k in metrics]
        lines.append(f"  metrics     MOSES, {info.get('metrics_n_samples') or '?'} samples: " + ", ".join(shown))
    else:
        lines.append("  metrics     not measured (run benchmarks/moses_benchmark.py)")
    return "\n".join(lines)


@main.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print the listing as JSON.")
def models_cmd(as_json: bool) -> None:
    """List the models that ship with molvae (select one with --model NAME)."""
    from ..core import SHIPPED_MODELS_DIR, shipped_models

    shipped = shipped_models()
    infos = [describe_model(name, path) for name, path in shipped.items()]
    if as_json:
        click.echo(json.dumps(infos, indent=2))
        return
    if not infos:
        click.echo(f"no shipped models in {SHIPPED_MODELS_DIR}", err=True)
        return
    click.echo("\n\n".join(_text(i) for i in infos))
    card = SHIPPED_MODELS_DIR / "README.md"
    if card.is_file():
        click.echo(f"\nmodel card: {card}")
