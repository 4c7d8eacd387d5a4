"""``molvae optimize`` and ``molvae predict``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from . import main
from .common import (device_option, load_model, model_option, neutralize_option, positive_float, positive_int,
                     report_rejects, threads_option, with_read_errors)


OPTIMIZATION_MODEL = "zinc250k"   # the shipped model with a QED + pLogP head, trained for optimization


def _read_smiles(path: str, score_column: str | None, model) -> tuple[list[str], list[float] | None]:
    """SMILES of ``path`` that ``model`` can encode and, with ``score_column``, that column's numbers (NaN
    where not a number). Every row left out (not a molecule, a token the model lacks, too long) and every
    molecule without a number is reported on stderr (first few, with row numbers and reasons)."""
    import numpy as np
    import pandas as pd

    from ..data import read_molecules

    table = read_molecules(path)
    scores = None
    if score_column is not None:
        if score_column not in table.columns:
            have = [c for c in table.columns if c not in ("row", "input")]
            raise click.BadParameter(f"{path} has no column {score_column!r}; its columns: {have or 'none'}",
                                     param_hint="--init-scores")
        scores = pd.to_numeric(table[score_column], errors="coerce").astype(float)
    inputs = [s if isinstance(s, str) and s.strip() else None for s in table["input"]]
    reasons = [why or "" for why in with_read_errors(
        table, [why if isinstance(why, str) else None for why in model.read_many(inputs)[0]])]
    report_rejects(table, reasons, what=f"rows of --init {path}", verb="used")
    keep = np.array([not why for why in reasons], dtype=bool)
    if not keep.any():
        raise click.BadParameter(f"{path}: none of its {len(table)} rows holds a molecule the model can encode "
                                 f"(row {int(table['row'].iloc[0])}: {reasons[0]})", param_hint="--init")
    if scores is not None:
        unscored = ["" if np.isfinite(y) else f"no number in {score_column!r} ({v!r})"
                    for v, y in zip(table[score_column][keep], scores[keep])]
        report_rejects(table[keep], unscored, what=f"molecules of --init {path}",
                       verb="given a known score (they join the design unscored)")
    smiles = table["input"][keep].tolist()
    return smiles, (None if scores is None else scores[keep].tolist())


def _optional_limit(ctx, param, value):
    if value is not None and value < 0:
        raise click.BadParameter(f"must be >= 0 (0 = no limit), got {value}")
    return value


@main.command("optimize")
@neutralize_option
@model_option(shipped=OPTIMIZATION_MODEL)
@click.option("--objective", "-O", required=True, metavar="SPEC",
              help="qed, logp, plogp (unnormalized), plogp_zinc (JT-VAE normalized), sa, similarity:<SMILES>, "
                   "weighted sums like 'qed+0.5*similarity:CCO', a plugin module:function or file.py:function, "
                   "or a .json/.toml file of terms.")
@click.option("--method", type=click.Choice(["bo", "gradient"]), default="bo", show_default=True,
              help="bo: batch Bayesian optimization (BoTorch GP, TuRBO trust region); gradient: gradient "
                   "ascent on the property head (or a fitted surrogate).")
@click.option("--budget", type=int, default=1000, show_default=True, callback=positive_int,
              help="Oracle budget: distinct molecules scored (never exceeded).")
@click.option("--out", "-o", type=click.Path(dir_okay=False),
              help="CSV log of every molecule seen: step, smiles, score, method, similarity, oracle_call, status.")
@click.option("--resume", "resume_log", type=click.Path(dir_okay=False), metavar="LOG",
              help="Continue the search of LOG (an earlier --out of the same objective, e.g. one stopped by SIGTERM): "
                   "its molecules are never scored again, its oracle calls count against --budget (the total), "
                   "its best start the search; the log (--out, default LOG) holds the old rows and the new.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write a JSON summary here.")
@click.option("--top", "top_k", type=int, default=10, show_default=True, callback=positive_int,
              help="Molecules printed at the end.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same search).")
@click.option("--start", help="Start molecule (SMILES): gradient paths / the trust region start from it.")
@click.option("--min-similarity", type=float,
              help="Constrained mode: keep Tanimoto (Morgan r=2, 2048 bits) to --start at least this.")
@click.option("--init", "init_file", type=click.Path(dir_okay=False, exists=True),
              help="Molecules for the initial design (e.g. the training set), encoded; default: prior samples.")
@click.option("--init-scores", "init_score_column", metavar="COLUMN",
              help="Column of --init with the molecules' known objective values (labelled data): the search "
                   "starts from the best of them and learns from them without oracle calls; they are never "
                   "reported as found.")
@click.option("--n-init", type=int, callback=positive_int,
              help="Size of the initial design [budget/5, <= 200; with --init-scores: 200 known molecules].")
@click.option("--max-heavy-atoms", type=int, default=38, show_default=True, callback=_optional_limit,
              help="Guard: molecules with more heavy atoms are not scored (0 = no limit).")
@click.option("--max-sa", type=float, callback=positive_float, help="Guard: SA score at most this.")
@click.option("--max-ring-size", type=int, callback=positive_int, help="Guard: no ring larger than this.")
@click.option("--min-ring-size", type=int, callback=positive_int, help="Guard: no ring smaller than this.")
@click.option("--allow-radicals", is_flag=True, help="Guard off: also score molecules with unpaired electrons.")
@click.option("--batch-size", type=int, callback=positive_int, help="bo: new molecules per batch [20].")
@click.option("--acquisition", type=click.Choice(["ts", "qei", "qucb"]),
              help="bo: Thompson sampling from a local GP, q-log expected improvement or q-UCB [ts].")
@click.option("--steps", type=int, callback=positive_int, help="gradient: steps per round [40].")
@click.option("--step-size", type=float, callback=positive_float, help="gradient: step length in latent units [0.15].")
@click.option("--n-starts", type=int, callback=positive_int, help="gradient: parallel paths [16].")
@click.option("--trust-radius", type=float, callback=positive_float,
              help="gradient: max distance of a path from its start [4].")
@click.option("--prior-weight", type=float, help="gradient: weight of the -||z||^2/2 prior penalty [0.05].")
@click.option("--retrain-every", type=int, callback=positive_int, metavar="CALLS",
              help="Weighted retraining: fine-tune (a copy of) the model on the best molecules found every CALLS "
                   "oracle calls (Tripp et al. 2020) [off].")
@device_option
@threads_option
@click.option("--progress/--no-progress", default=None,
              help="Progress bar with the best score so far, on stderr [when stderr is a terminal].")
@click.option("--grid", type=click.Path(dir_okay=False),
              help="Also draw the top molecules, with their scores, as a grid image (.png or .svg).")
def optimize_cmd(model_spec, objective, method, budget, out, resume_log, json_out, top_k, seed, start, min_similarity, init_file,
                 init_score_column, n_init, max_heavy_atoms, max_sa, max_ring_size, min_ring_size, allow_radicals,
                 batch_size, acquisition, steps, step_size, n_starts, trust_radius, prior_weight, retrain_every,
                 device, progress, grid):
    """Search the latent space for molecules that maximize an objective.

    \b
    Examples:
      molvae optimize --model zinc250k --objective qed --method bo --budget 1000 --out qed.csv
      molvae optimize --objective plogp --method gradient --budget 500
      molvae optimize --objective plogp --start 'CCc1ccccc1O' --min-similarity 0.4 --budget 200
      molvae optimize --objective 'qed+0.5*similarity:CC(=O)Oc1ccccc1C(=O)O' --budget 300
      molvae optimize --objective my_scores:score --budget 300     # def score(smiles_list) -> floats
      molvae optimize --objective qed --budget 3000 --resume qed.csv   # after a stop: the rest of 3000

    The top molecules are printed as CSV on stdout (rank, smiles, score[, similarity, improvement]).
    """
    from ..config import progress_wanted
    from ..errors import InvalidInputError
    from ..objectives import Guards, parse_objective
    from ..optimize import optimize

    if min_similarity is not None and not start:
        raise click.UsageError("--min-similarity needs --start SMILES")
    if init_score_column and not init_file:
        raise click.UsageError("--init-scores needs --init FILE (the molecules the column belongs to)")
    if grid and Path(grid).suffix.lower() not in (".png", ".svg"):
        raise click.BadParameter(f"grid file {grid} must end in .png or .svg", param_hint="--grid")
    from .common import refuse_same_file

    if resume_log and out is None:
        out = resume_log
    refuse_same_file(out, init_file)
    refuse_same_file(json_out, init_file, resume_log, option="--json")
    if min_similarity is not None and not 0.0 <= min_similarity <= 1.0:
        raise click.BadParameter(f"must be in [0, 1], got {min_similarity}", param_hint="--min-similarity")
    guards = Guards(max_heavy_atoms=max_heavy_atoms or None, max_sa=max_sa, max_ring_size=max_ring_size,
                    min_ring_size=min_ring_size, allow_radicals=allow_radicals)
    try:
        obj = parse_objective(objective, guards)
    except InvalidInputError as exc:
        raise click.BadParameter(str(exc), param_hint="--objective") from None
    if method == "gradient":
        settings = {"n_init": n_init, "steps": steps, "step_size": step_size, "n_starts": n_starts,
                    "trust_radius": trust_radius, "prior_weight": prior_weight, "retrain_every": retrain_every}
        unused = {"--batch-size": batch_size, "--acquisition": acquisition}
    else:
        settings = {"n_init": n_init, "batch_size": batch_size, "acquisition": acquisition,
                    "retrain_every": retrain_every}
        unused = {"--steps": steps, "--step-size": step_size, "--n-starts": n_starts, "--trust-radius": trust_radius,
                  "--prior-weight": prior_weight}
    given = [k for k, v in unused.items() if v is not None]
    if given:
        raise click.UsageError(f"{', '.join(given)} only apply to the other --method")
    model = load_model(model_spec, device, default=OPTIMIZATION_MODEL)
    init, init_scores = _read_smiles(init_file, init_score_column, model) if init_file else (None, None)
    click.echo(f"objective {obj.name} (guards: {obj.guards.describe()}), method {method}, budget {budget}", err=True)
    res = optimize(model, obj, method=method, budget=budget, seed=seed, start=start, min_similarity=min_similarity,
                   init_smiles=init, init_scores=init_scores, log_path=out, top_k=top_k,
                   progress=progress_wanted(progress),
                   settings=settings, resume=resume_log)
    _report_result(res, min_similarity=min_similarity, out=out, json_out=json_out, grid=grid)
    if res.stop_signal:  # 130 after Ctrl-C, 143 after SIGTERM: a scheduler can tell a stop from a failure
        kept = " and ".join(p for p in (out, json_out) if p)
        click.echo(f"Error: {res.stop_reason} after {res.n_calls} of {budget} oracle calls"
                   + (f"; {kept} hold everything scored" if kept else ""), err=True)
        sys.exit(128 + res.stop_signal)


def _report_result(res, *, min_similarity, out, json_out, grid) -> None:
    """What `molvae optimize` prints and writes after the search: a summary on stderr, the log and JSON
    paths, the top molecules as CSV on stdout, and the optional grid picture."""
    click.echo(f"{res.n_calls} oracle calls in {res.elapsed_s:.1f} s ({res.stop_reason}); "
               f"{len(res.log)} distinct molecules seen", err=True)
    if res.start_smiles is not None:
        click.echo(f"start {res.start_smiles}: score {res.start_score:.4f}", err=True)
        if res.success:
            click.echo(f"best improvement {res.improvement:+.4f} at similarity {res.top['similarity'].iloc[0]:.3f}",
                       err=True)
        else:
            click.echo("no molecule above the start's score was found"
                       + (f" at similarity >= {min_similarity}" if min_similarity is not None else ""), err=True)
    if out:
        click.echo(f"log: {out}", err=True)
    if json_out:
        from ..checkpoint import atomic_output

        with atomic_output(json_out) as f:
            f.write(json.dumps(res.summary(), indent=2, default=float) + "\n")
    constrained = res.start_smiles is not None
    header = ["rank", "smiles", "score"] + (["similarity", "improvement"] if constrained else [])
    click.echo(",".join(header))
    for i, row in enumerate(res.top.itertuples(index=False), start=1):
        cells = [str(i), row.smiles, f"{row.score:.4f}"]
        if constrained:
            cells += [f"{row.similarity:.3f}", f"{row.score - res.start_score:+.4f}"]
        click.echo(",".join(cells))
    if res.top.empty:
        click.echo("no molecule could be scored; see the log for the reasons", err=True)
    elif grid:
        from ..plots import molecule_grid

        molecule_grid(res.top["smiles"].tolist(), [f"#{i} {s:.3f}" for i, s in enumerate(res.top["score"], 1)], grid)
        click.echo(f"grid: {grid}", err=True)


def _beside_true_values(pred, table, names) -> None:
    """Where INPUT has a column of a predicted property, keep it: the true values under its own name, the
    prediction as ``NAME_predicted``, and R² and MAE over the rows with both on stderr."""
    import numpy as np
    import pandas as pd

    for name in names:
        if name not in table.columns or name not in pred.columns:
            continue
        true = pd.to_numeric(table[name], errors="coerce").to_numpy(dtype=float)
        guess = pred[name].to_numpy(dtype=float)
        at = pred.columns.get_loc(name)
        pred.columns = [f"{name}_predicted" if c == name else c for c in pred.columns]
        pred.insert(at, name, true)
        both = np.isfinite(true) & np.isfinite(guess)
        if both.sum() >= 2:
            resid = true[both] - guess[both]
            ss = float(((true[both] - true[both].mean()) ** 2).sum())
            r2 = 1 - float((resid ** 2).sum()) / ss if ss > 0 else float("nan")
            click.echo(f"{name}: R² {r2:.3f}, MAE {float(np.abs(resid).mean()):.4g} over {int(both.sum())} molecules "
                       f"with a true value", err=True)


@main.command("predict")
@click.argument("input_file", metavar="INPUT")
@neutralize_option
@model_option(shipped=OPTIMIZATION_MODEL)
@click.option("--smiles-column", help="SMILES column of a CSV (default: 'smiles' in any case, or the only column).")
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="Write CSV here instead of stdout.")
@click.option("--batch-size", type=int, default=512, show_default=True, callback=positive_int,
              help="Molecules per step (memory and speed only).")
@device_option
@threads_option
def predict_cmd(input_file, model_spec, smiles_column, out, batch_size, device):
    """Predict properties of the molecules in INPUT (a file, `-` for stdin, or one SMILES) with the
    model's property head.

    Output CSV, one row per input record in order: row, input, smiles (canonical), one column
    per property (de-standardized to the training data's units), and reason (why a molecule
    could not be encoded; empty otherwise).
    """
    from ..optimize.head import predict_properties
    from .common import refuse_same_file
    from .common import read_input

    refuse_same_file(out, input_file)
    table = read_input(input_file, smiles_column)
    model = load_model(model_spec, device, default=OPTIMIZATION_MODEL)
    pred = predict_properties(model, table["input"].tolist(), batch_size=batch_size)
    pred["reason"] = [r or "" for r in with_read_errors(table, [r or None for r in pred["reason"]])]
    pred.insert(0, "input", table["input"].values)
    pred.insert(0, "row", table["row"].values)
    _beside_true_values(pred, table, model.config.property_names)
    n_bad = int((pred["reason"] != "").sum())
    if out:
        from ..checkpoint import atomic_output

        with atomic_output(out, newline="") as f:
            pred.to_csv(f, index=False, float_format="%.6g")
        click.echo(f"wrote {len(pred)} rows to {out}", err=True)
    else:
        pred.to_csv(sys.stdout, index=False, float_format="%.6g")
    if n_bad:
        click.echo(f"{n_bad} of {len(pred)} molecules could not be encoded (see the reason column)", err=True)
