"""One self-contained HTML page about a training run.

``build_report(run_dir)`` writes ``run_dir/report.html``: the run's configuration and
package versions, training curves, a grid of sampled molecules, a metrics table
(``metrics.json`` from ``molvae evaluate`` when the run folder has one, else a few quick
figures computed here), property histograms of generated vs training molecules and the
top of any optimization results found in the folder. Images are embedded as base64 data
URIs, so the file can be mailed or archived alone. Without matplotlib the page is still
written, with a note where the plots would be.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import chem, plots
from .errors import InvalidInputError

__all__ = ["build_report", "quick_metrics", "find_optimization_results"]

log = logging.getLogger(__name__)

# CSV files of a run folder that are never optimization results.
_KNOWN_CSV = {"history.csv", "rejected.csv"}


# ----------------------------------------------------------------------------- figures

def quick_metrics(generated: pd.DataFrame, reference: list[str] | None) -> dict[str, Any]:
    """Basic figures of sampled molecules, each with its denominator, by :mod:`molvae.metrics`' definitions.

    ``validity`` over all samples; ``uniqueness`` (distinct canonical molecules) over valid ones;
    ``novelty`` (share of unique valid molecules absent from ``reference``, both canonical) when a
    reference is given; ``internal_diversity`` = MOSES IntDiv (1 − mean pairwise Morgan-2 Tanimoto over
    the valid molecules); mean QED, logP, SA and MW of the unique ones.
    """
    from . import metrics

    smiles = [s if isinstance(s, str) else "" for s in generated["smiles"]]
    n = len(smiles)
    gen = metrics.describe(smiles) if n else None
    n_valid = gen.n_valid if gen is not None else 0
    n_unique = gen.n_unique if gen is not None else 0
    out: dict[str, Any] = {
        "n_samples": n,
        "validity": n_valid / n if n else math.nan,
        "n_valid": n_valid,
        "uniqueness": n_unique / n_valid if n_valid else math.nan,
        "n_unique": n_unique,
    }
    if reference is not None:
        novelty = metrics.novelty(smiles, reference) if n_unique else None
        out["novelty"] = novelty if novelty is not None else math.nan
        out["n_novel"] = int(round(novelty * n_unique)) if novelty is not None else 0
        out["n_reference"] = len(set(reference))
    if n_valid > 1:
        out["internal_diversity"] = metrics.internal_diversity(smiles)
    props = chem.compute_properties(list(gen.canonical or []) if gen is not None else [], ("qed", "logp", "sa", "mw"))
    for name, values in props.items():
        finite = values[np.isfinite(values)]
        out[f"mean_{name}"] = float(finite.mean()) if len(finite) else math.nan
    return out


def find_optimization_results(run_dir: str | os.PathLike) -> list[Path]:
    """CSV files in ``run_dir`` (and one level of subfolders) with ``smiles`` and ``score`` columns."""
    run = Path(run_dir)
    found = []
    for p in sorted(list(run.glob("*.csv")) + list(run.glob("*/*.csv"))):
        if p.name in _KNOWN_CSV:
            continue
        try:
            head = pd.read_csv(p, nrows=0)
        except Exception:
            continue
        cols = {c.lower() for c in head.columns}
        if "smiles" in cols and "score" in cols:
            found.append(p)
    return found


# ----------------------------------------------------------------------------- html helpers

def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isnan(v):
            return "–"
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:.4g}" if abs(v) < 100 else f"{v:,.1f}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v) if len(v) <= 8 else json.dumps(list(v)[:8])[:-1] + ", …]"
    return str(v)


def _kv_table(rows: list[tuple[str, Any]], css: str = "kv", table_id: str | None = None) -> str:
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(_fmt(v))}</td></tr>" for k, v in rows)
    ident = f' id="{_esc(table_id)}"' if table_id else ""
    return f'<table class="{css}"{ident}>{body}</table>'


def _df_table(df: pd.DataFrame, table_id: str | None = None) -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{_esc(_fmt(v))}</td>" for v in row) + "</tr>"
                   for row in df.itertuples(index=False))
    ident = f' id="{_esc(table_id)}"' if table_id else ""
    return f'<table class="grid"{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _img(data: bytes, alt: str, mime: str = "image/png") -> str:
    b64 = base64.b64encode(data).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:{mime};base64,{b64}">'


def _flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(d, dict):
        rows = []
        for k, v in d.items():
            rows.extend(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return rows
    return [(prefix, d)]


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


_CSS = """
body{font-family:-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d2327;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px 28px 48px}
header{background:#1f3a5f;color:#fff;padding:22px 28px}
header h1{margin:0 0 6px;font-size:24px} header p{margin:2px 0;opacity:.9;font-size:14px}
section{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:16px 20px;margin:18px 0}
h2{font-size:18px;margin:0 0 12px;color:#1f3a5f}
h3{font-size:15px;margin:14px 0 8px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{border:1px solid #dde1e6;padding:4px 9px;text-align:left;vertical-align:top}
table.kv th{background:#f0f3f6;font-weight:600;white-space:nowrap}
table.grid thead th{background:#f0f3f6}
td{font-variant-numeric:tabular-nums;word-break:break-all}
.cols{display:flex;flex-wrap:wrap;gap:24px} .cols>div{flex:1 1 340px}
img{max-width:100%;height:auto;border:1px solid #eef0f2;border-radius:4px;background:#fff}
.note{color:#5f6b76;font-size:13px}
.summary{display:flex;flex-wrap:wrap;gap:12px;margin:0}
.card{background:#f0f3f6;border-radius:6px;padding:10px 14px;min-width:150px}
.card b{display:block;font-size:20px;color:#1f3a5f} .card span{font-size:12px;color:#5f6b76}
details{margin:8px 0;font-size:13px} summary{cursor:pointer;color:#1f3a5f}
footer{color:#5f6b76;font-size:12px;text-align:center;margin-top:20px}
"""


# ----------------------------------------------------------------------------- the report

def _read_reference(path: str | os.PathLike | None, largest_fragment: bool, limit: int | None = None
                    ) -> list[str] | None:
    if not path or not Path(path).is_file():
        return None
    from .data import read_molecules

    try:
        table = read_molecules(path)
    except Exception as exc:  # a report should not fail because the training file moved or changed
        log.warning("could not read the training data %s (%s)", path, exc)
        return None
    inputs = table["input"].tolist()
    if limit is not None and len(inputs) > limit:
        idx = np.sort(np.random.default_rng(0).choice(len(inputs), size=limit, replace=False))
        inputs = [inputs[i] for i in idx]
    out = []
    for s in inputs:
        c = chem.canonicalize(s, keep_largest_fragment=largest_fragment)
        if c:
            out.append(c)
    return out


@dataclass
class _Run:
    """What the sections of a report read: the run folder, its model and files, the samples."""

    path: Path
    model: Any
    config: dict[str, Any]
    history: pd.DataFrame
    meta: dict[str, Any]
    ref: list[str] | None
    ref_path: Any
    samples: pd.DataFrame
    n_samples: int
    seed: int
    mpl: bool


_NO_MPL = "matplotlib is not installed (pip install 'molvae[plots]'); plot left out."


def _load_run(run: Path, model, n_samples: int, seed: int, reference, max_reference: int | None) -> _Run:
    """Read the run folder (``model.pt``, ``config.json``, ``history.csv``, the training data) and sample."""
    from .core import MolVAE

    if not run.is_dir():
        raise InvalidInputError(f"{run}: no such run folder")
    if model is None:
        if not (run / "model.pt").is_file():
            raise InvalidInputError(f"{run}: no model.pt; expected a run folder written by `molvae train`")
        model = MolVAE.load(run / "model.pt")
    config: dict[str, Any] = {}
    if (run / "config.json").is_file():
        try:
            config = json.loads((run / "config.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("could not read %s (%s)", run / "config.json", exc)
    history = pd.read_csv(run / "history.csv") if (run / "history.csv").is_file() else pd.DataFrame(model.history)
    meta = {**(config.get("metadata") or {}), **model.metadata}
    largest = bool(model.train_config.largest_fragment) if model.train_config else True
    ref_path = reference or config.get("data") or meta.get("data_path")
    ref = _read_reference(ref_path, largest, max_reference)
    samples = model.sample(n_samples, seed=seed) if n_samples > 0 else pd.DataFrame({"smiles": [], "valid": []})
    return _Run(run, model, config, history, meta, ref, ref_path, samples, n_samples, seed, plots.have_matplotlib())


def _summary_section(r: _Run) -> str:
    from .diagnostics import best_epoch

    best = None
    if not r.history.empty:
        tc = r.model.train_config
        chosen = best_epoch(r.history.to_dict("records"), tc.kl_weight if tc is not None else None)
        best = pd.Series(chosen) if chosen is not None else None
    cards = [("molecules used for training", r.meta.get("n_molecules", "–")),
             ("epochs", len(r.history) if not r.history.empty else "–"),
             ("best validation −ELBO (nats)", best["val_nelbo"] if best is not None else math.nan),
             ("reconstruction accuracy", best["val_recon_acc"] if best is not None and "val_recon_acc" in best
              else math.nan),
             ("active units", f"{int(best['active_units'])}/{r.model.config.latent_dim}"
              if best is not None and "active_units" in best else "–"),
             ("parameters", r.model.net.n_parameters())]
    return ('<section><h2>Summary</h2><div class="summary">' + "".join(
        f'<div class="card"><b>{_esc(_fmt(v))}</b><span>{_esc(k)}</span></div>' for k, v in cards)
        + ("<p class=\"note\">Kept epoch (lowest validation reconstruction + β<sub>max</sub>·KL, the "
           "−ELBO when β<sub>max</sub> = 1): "
           f"{int(best['epoch'])}; accuracy = greedy decode of μ reproduces the canonical SMILES.</p>"
           if best is not None else "") + "</div></section>")


def _curves_section(r: _Run) -> str:
    history = r.history
    if (r.path / "training_curves.png").is_file():
        body = _img((r.path / "training_curves.png").read_bytes(), "training curves")
    elif history.empty:
        body = _note("No training history in this run folder.")
    elif r.mpl:
        with tempfile.TemporaryDirectory() as tmp:
            body = _img(plots.training_curves(history, Path(tmp) / "c.png").read_bytes(), "training curves")
    else:
        body = _note(_NO_MPL)
    if not history.empty:
        cols = [c for c in ("epoch", "beta", "train_recon", "train_kl", "val_recon", "val_kl", "val_nelbo",
                            "val_token_acc", "val_recon_acc", "active_units", "epoch_time_s") if c in history]
        cols += [c for c in history if c == "train_property_mse" or c.startswith(("val_mse_", "val_r2_"))]
        body += "<h3>Per epoch</h3>" + _df_table(history[cols], "history")
    return f"<section><h2>Training curves</h2>{body}</section>"


def _valid_samples(r: _Run) -> pd.DataFrame:
    return r.samples[r.samples["valid"]] if len(r.samples) else r.samples


def _samples_section(r: _Run, grid_size: int) -> str:
    valid = _valid_samples(r)
    uniq = list(dict.fromkeys(valid["smiles"].tolist()))[:grid_size] if len(valid) else []
    if uniq:
        qeds = chem.compute_properties(uniq, ["qed"])["qed"]
        grid = plots.molecule_grid(uniq, [f"QED {q:.2f}" for q in qeds], mols_per_row=6, sub_img_size=(220, 190))
        body = (_img(grid, "sampled molecules")
                + _note(f"The first {len(uniq)} distinct valid molecules of {r.n_samples} sampled from the prior "
                        f"z ~ N(0, I) (seed {r.seed}), with their QED."))
    else:
        body = _note("No valid molecule was sampled.")
    return f"<section><h2>Sampled molecules</h2>{body}</section>"


def _evaluate_json_rows(metrics_file: Path) -> tuple[list[tuple[str, Any]], str]:
    """Rows of ``metrics.json`` (``molvae evaluate --json``) and the HTML of its counts and notes."""
    try:
        data = json.loads(metrics_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("could not read %s (%s)", metrics_file, exc)
        return [], ""
    if not (isinstance(data, dict) and isinstance(data.get("metrics"), dict)):
        return _flatten(data), ""
    # `molvae evaluate --json`: figures, then the counts behind them and any notes
    details = ""
    counts = _flatten(data.get("counts") or {})
    if counts:
        details += "<details><summary>Counts behind each figure</summary>" + _kv_table(counts) + "</details>"
    for note in data.get("notes") or []:
        details += _note(f"note: {note}")
    return list(data["metrics"].items()), details


def _metrics_section(r: _Run) -> str:
    metrics_file = r.path / "metrics.json"
    rows: list[tuple[str, Any]] = []
    source = details = ""
    if metrics_file.is_file():
        rows, details = _evaluate_json_rows(metrics_file)
        source = f"From {metrics_file.name} (molvae evaluate)."
    if not rows and len(r.samples):
        rows = list(quick_metrics(r.samples, r.ref).items())
        source = (f"Quick metrics of the {r.n_samples} samples above"
                  + (f"; novelty against the {len(set(r.ref)):,} training molecules of {r.ref_path}" if r.ref else
                     "; no training data found, so no novelty")
                  + ". Run `molvae evaluate ... --json RUN_DIR/metrics.json` for the full suite.")
    body = _kv_table(rows, "kv", "metrics") + _note(source) + details if rows else _note("No metrics.")
    return f"<section><h2>Metrics</h2>{body}</section>"


def _histograms_section(r: _Run) -> str:
    valid = _valid_samples(r)
    if (r.path / "property_histograms.png").is_file():
        body = _img((r.path / "property_histograms.png").read_bytes(), "property histograms")
    elif not r.mpl:
        body = _note(_NO_MPL)
    elif r.ref and len(valid):
        with tempfile.TemporaryDirectory() as tmp:
            p = plots.property_histograms(valid["smiles"].tolist(), r.ref, tmp, seed=r.seed, max_molecules=5000)
            body = _img(p.read_bytes(), "property histograms")
    else:
        body = _note("No training data found to compare the samples with (pass --reference FILE).")
    return f"<section><h2>Properties: generated vs training</h2>{body}</section>"


def _optimization_results_html(run: Path, p: Path) -> str:
    """The top 10 distinct molecules of one optimization result file, as a table and a grid."""
    try:
        df = pd.read_csv(p)
    except Exception as exc:
        return _note(f"{p.name}: could not be read ({exc})")
    df.columns = [c.lower() if c.lower() in ("smiles", "score") else c for c in df.columns]
    df = df[df["smiles"].astype(str).str.len() > 0]
    df["score"] = pd.to_numeric(df["score"], errors="coerce")
    top = df.dropna(subset=["score"]).sort_values("score", ascending=False)
    top = top.drop_duplicates("smiles").head(10)
    body = f"<h3>{_esc(p.relative_to(run))}: top {len(top)} of {len(df):,} rows</h3>"
    if len(top):
        body += _df_table(top.reset_index(drop=True))
        try:
            body += _img(plots.molecule_grid(top["smiles"].tolist(), [f"{s:.3f}" for s in top["score"]],
                                             mols_per_row=5, sub_img_size=(220, 190)),
                         f"top molecules of {p.name}")
        except InvalidInputError:
            pass
    return body


def _optimization_section(r: _Run) -> str:
    files = find_optimization_results(r.path)
    if not files:
        return ""
    body = "".join(_optimization_results_html(r.path, p) for p in files)
    return f"<section><h2>Optimization results</h2>{body}</section>"


def _config_section(r: _Run) -> str:
    from ._version import versions

    config, meta, model = r.config, r.meta, r.model
    mc = config.get("model") or model.config.to_dict()
    tc = config.get("train") or (model.train_config.to_dict() if model.train_config else {})
    data_rows = [("data file", config.get("data") or meta.get("data_path")), ("data SHA-256", meta.get("data_hash")),
                 ("rows read", meta.get("n_input")), ("molecules used", meta.get("n_molecules")),
                 ("rejected", meta.get("n_rejected")), ("duplicates", meta.get("n_duplicates")),
                 ("train / validation", f"{meta.get('n_train', '–')} / {meta.get('n_val', '–')}"),
                 ("device", meta.get("device")), ("training time (s)", meta.get("train_time_s")),
                 ("created", meta.get("created"))]
    base = meta.get("base")
    if isinstance(base, dict):
        data_rows[:0] = [("fine-tuned from", f"{base.get('name')} (SHA-256 {base.get('sha256')})"),
                         ("tokens added", " ".join(base.get("added_tokens") or []) or "none")]
    trained_with = config.get("versions") or {}
    now = versions()
    ver_rows = [(k, f"{trained_with.get(k, '–')} (now {now[k]})" if trained_with.get(k) not in (None, now[k])
                 else now[k]) for k in now]
    body = ('<div class="cols">'
            f"<div><h3>Model</h3>{_kv_table(list(mc.items()))}</div>"
            f"<div><h3>Training</h3>{_kv_table([(k, v) for k, v in tc.items() if k != 'extra'])}</div>"
            f"<div><h3>Data</h3>{_kv_table([r_ for r_ in data_rows if r_[1] is not None])}"
            f"<h3>Versions</h3>{_kv_table(ver_rows, 'kv', 'versions')}</div></div>")
    return f"<section><h2>Configuration and versions</h2>{body}</section>"


def _page(r: _Run, sections: list[str]) -> str:
    from ._version import __version__

    title = f"molvae run report: {r.path.resolve().name}"
    stamp = datetime.now().isoformat(timespec="seconds")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
            f"<header><h1>{_esc(title)}</h1><p>{_esc(r.path.resolve())}</p>"
            f"<p>SELFIES GRU VAE · latent {r.model.config.latent_dim} · vocabulary {len(r.model.vocab)} tokens</p>"
            f"</header><main>{''.join(sections)}<footer>Written by molvae {_esc(__version__)} on {_esc(stamp)}."
            f"</footer></main></body></html>\n")


def build_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *, n_samples: int = 1000,
                 seed: int = 0, reference: str | os.PathLike | None = None, model=None,
                 max_reference: int | None = 100_000, grid_size: int = 30) -> Path:
    """Write one self-contained HTML page about a run folder and return its path.

    Args:
        run_dir: a run folder from ``molvae train`` (``model.pt``, ``config.json``,
            ``history.csv``; ``metrics.json``, ``training_curves.png`` and optimization
            CSVs are used when present).
        out: where to write (default ``run_dir/report.html``).
        n_samples: molecules sampled from the prior for the grid, quick metrics and histograms.
        seed: sampling seed.
        reference: training molecules for novelty and histograms (default: the data file
            recorded in ``config.json``, when it still exists).
        model: an already loaded :class:`~molvae.core.MolVAE` (default: ``run_dir/model.pt``).
        max_reference: subsample the reference to this many molecules (seeded).
        grid_size: molecules in the sample grid.

    Raises:
        InvalidInputError: ``run_dir`` is not a run folder.
    """
    from .checkpoint import atomic_output

    run = Path(run_dir)
    r = _load_run(run, model, n_samples, seed, reference, max_reference)
    out_path = Path(out) if out else run / "report.html"
    sections = [_summary_section(r), _curves_section(r), _samples_section(r, grid_size), _metrics_section(r),
                _histograms_section(r), _optimization_section(r), _config_section(r)]
    page = _page(r, [s for s in sections if s])
    with atomic_output(out_path) as f:
        f.write(page)
    return out_path
