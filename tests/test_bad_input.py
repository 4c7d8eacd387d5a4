"""Bad input everywhere a file or value comes in: one test per file of ``tests/data/bad/``.

Every case is either refused (exit code 1, one ``Error:`` line naming the file and the row or
column and what was expected) or trained on with each unusable row listed in ``rejected.csv``
with its row and reason, so that kept + rejected = rows in the file. Never a traceback.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pandas as pd
import pytest

from molvae.cli import main
from molvae.data import prepare, read_molecules
from molvae.errors import InvalidInputError

from conftest import cli
from conftest import one_error as refused

BAD = Path(__file__).parent / "data" / "bad"
TINY = ["--epochs", "1", "--batch-size", "8", "--embedding-dim", "8", "--hidden-dim", "8",
        "--decoder-hidden-dim", "8", "--latent-dim", "2", "--device", "cpu", "--no-progress", "--n-jobs", "1",
        "--threads", "1"]



@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """A preprocessing cache of this test's own: no state shared with other runs or the user's cache."""
    monkeypatch.setenv("MOLVAE_CACHE_DIR", str(tmp_path / "molvae-cache"))

def test_every_corpus_file_has_a_test():
    text = Path(__file__).read_text()
    missing = [p.name for p in BAD.iterdir() if f'"{p.name}"' not in text]
    assert not missing, f"files in tests/data/bad without a test: {missing}"


# ----------------------------------------------------------------------------- helpers



def bad_option(res, option: str) -> None:
    """click.BadParameter: usage error (exit 2) naming the option."""
    assert res.exit_code == 2, res.output
    assert f"Invalid value for '{option}" in res.output or f"Invalid value for {option}" in res.output, res.output
    assert "Traceback" not in res.output


def data_rows(path: Path) -> int:
    """Records in a CSV (header excluded, blank lines skipped), counted without molvae."""
    text = path.read_bytes().decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(text)))
    return sum(1 for r in rows[1:] if any(field.strip() for field in r))


def train_ok(tmp_path: Path, name: str, *extra: str) -> tuple[Path, pd.DataFrame, dict]:
    """Train on a corpus file; check every input row is either used or listed in rejected.csv."""
    run = tmp_path / "run"
    res = cli("train", BAD / name, "--out", run, *TINY, *extra)
    assert res.exit_code == 0, res.output
    rejected = pd.read_csv(run / "rejected.csv", keep_default_na=False)
    meta = json.loads((run / "config.json").read_text())["metadata"]
    assert meta["n_molecules"] + len(rejected) == meta["n_input"]
    assert rejected["row"].is_unique and (rejected["reason"] != "").all()
    return run, rejected, meta


def accounted(table: pd.DataFrame, prep) -> None:
    """Library level: kept rows and rejected rows partition the rows read."""
    kept = set(int(r) for r in prep.rows)
    rejected = set(int(r) for r in prep.rejected["row"])
    assert not kept & rejected
    assert kept | rejected == set(int(r) for r in table["row"])


# ----------------------------------------------------------------------------- refused files

def test_empty_file(tmp_path, tiny_run):
    path = BAD / "empty.csv"
    refused(cli("train", path, "--out", tmp_path / "r", *TINY), str(path), "empty", "expected SMILES")
    # the same reader guards every command that takes a molecule file
    refused(cli("generate", "--n", "2", "--model", tiny_run.run_dir, "--novel-vs", path), str(path), "empty")
    with pytest.raises(InvalidInputError, match="empty"):
        read_molecules(path)


def test_header_only(tmp_path):
    path = BAD / "header_only.csv"
    refused(cli("train", path, "--out", tmp_path / "r", *TINY), str(path), "header but no rows",
            "expected at least one SMILES")


def test_no_smiles_column(tmp_path):
    path = BAD / "no_smiles_column.csv"
    refused(cli("train", path, "--out", tmp_path / "r", *TINY), str(path), "no 'smiles' column",
            "['name', 'mw']", "--smiles-column")
    # pointing at a column of names: nothing survives, and the message says which row failed and why
    refused(cli("train", path, "--smiles-column", "name", "--out", tmp_path / "r", *TINY), str(path),
            "no molecule survived cleaning", "2 rows read, 2 rejected", "row 1", "could not parse")
    refused(cli("train", path, "--smiles-column", "Smiles", "--out", tmp_path / "r", *TINY), str(path),
            "no column 'Smiles'")


def test_ambiguous_smiles_column(tmp_path):
    path = BAD / "ambiguous_columns.csv"
    refused(cli("train", path, "--out", tmp_path / "r", *TINY), str(path), "ambiguous SMILES column",
            "CanonicalSMILES", "IsomericSMILES", "--smiles-column")
    table = read_molecules(path, smiles_column="IsomericSMILES")
    assert table["input"].tolist() == ["CCO", "CC(=O)O"]


def test_non_utf8_bytes(tmp_path, tiny_run):
    path = BAD / "non_utf8.csv"
    line = refused(cli("train", path, "--out", tmp_path / "r", *TINY), str(path), "line 3", "not valid UTF-8",
                   "expected a UTF-8 text file")
    assert "0xe9" in line
    refused(cli("generate", "--n", "2", "--model", tiny_run.run_dir, "--novel-vs", path), str(path), "line 3")


def test_row_longer_than_header(tmp_path):
    """pandas would silently shift such a row into the wrong columns; molvae refuses it."""
    path = BAD / "row_longer_than_header.csv"
    refused(cli("train", path, "--out", tmp_path / "r", *TINY), str(path), "row 1 has more fields than",
            "['smiles', 'name']", "quote fields that contain the separator")


def test_unterminated_quote(tmp_path):
    path = BAD / "unterminated_quote.csv"
    refused(cli("train", path, "--out", tmp_path / "r", *TINY), str(path), "not a valid CSV table",
            "EOF inside string")


def test_not_gzip(tmp_path):
    path = BAD / "not_gzip.csv.gz"
    refused(cli("train", path, "--out", tmp_path / "r", *TINY), str(path), "could not read the file",
            "Not a gzipped file")


def _tar_gz(path: Path, files: dict[str, str]) -> Path:
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_tar_archive_of_one_file_is_read_as_that_file(tmp_path):
    # ZINC250k's zinc250k.txt.gz is a gzipped tar of one text file: read as text, its first line
    # would carry the tar header and be rejected.
    smiles = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1"]
    one = _tar_gz(tmp_path / "zinc.txt.gz", {"zinc.txt": "smiles\n" + "\n".join(smiles) + "\n"})
    table = read_molecules(one)
    assert table["input"].tolist() == smiles and table["row"].tolist() == [1, 2, 3]
    prep = prepare(table)
    assert len(prep.rejected) == 0
    # Text that happens to hold tar's magic word where a tar header has it is still text.
    lookalike = tmp_path / "lookalike.csv"
    lookalike.write_text("smiles,name\nCCO," + "x" * (257 - len("smiles,name\nCCO,")) + "ustar\n")
    assert read_molecules(lookalike)["input"].tolist() == ["CCO"]
    two = _tar_gz(tmp_path / "two.tar.gz", {"a.smi": "CCO\n", "b.smi": "CCN\n"})
    refused(cli("train", two, "--out", tmp_path / "r", *TINY), str(two), "tar archive of 2 files (a.smi, b.smi)",
            "expected one file of molecules")


def test_missing_file_and_folder(tmp_path):
    refused(cli("train", tmp_path / "nope.csv", "--out", tmp_path / "r", *TINY), "nope.csv", "no such file")
    res = cli("train", BAD, "--out", tmp_path / "r", *TINY)  # click's own check: a usage error
    assert res.exit_code == 2 and "is a directory" in res.output
    with pytest.raises(InvalidInputError, match="is a folder"):
        read_molecules(BAD)


def test_property_column_with_no_numbers(tmp_path):
    path = BAD / "all_property_missing.csv"
    refused(cli("train", path, "--property", "logp", "--out", tmp_path / "r", *TINY),
            "property column 'logp' has no numeric value", "expected numbers")
    refused(cli("train", path, "--property", "pIC50", "--out", tmp_path / "r", *TINY),
            "no property column 'pIC50'")


# ----------------------------------------------------------------------------- files trained on, rows reported

def test_invalid_smiles_rows_are_rejected_with_reasons(tmp_path):
    assert data_rows(BAD / "invalid_smiles.csv") == 8
    run, rejected, meta = train_ok(tmp_path, "invalid_smiles.csv")
    assert meta["n_input"] == 8 and meta["n_molecules"] == 3
    reasons = dict(zip(rejected["row"], rejected["reason"]))
    assert sorted(reasons) == [2, 4, 5, 6, 8]
    assert "could not parse" in reasons[2] and "syntax error" in reasons[2]        # C1CC: ring not closed
    assert "syntax error" in reasons[4]                                             # xyz
    assert "impossible valence" in reasons[5] and "C, 5" in reasons[5]              # pentavalent carbon
    assert reasons[6] == "empty SMILES"
    assert reasons[8] == "duplicate of row 1"
    assert rejected.set_index("row").loc[4, "input"] == "xyz"


def test_windows_line_endings(tmp_path):
    table = read_molecules(BAD / "windows_crlf.csv")
    assert table["input"].tolist() == ["CCO", "c1ccccc1O", "CC(=O)O", "CCN"]
    assert not any("\r" in str(v) for v in table["name"])
    prep = prepare(table)
    accounted(table, prep)
    assert len(prep) == 4


def test_quoted_fields_with_commas(tmp_path):
    table = read_molecules(BAD / "quoted_commas.csv")
    assert table["input"].tolist() == ["CCO", "c1ccccc1O", "CC(=O)O"]
    assert table["name"].tolist() == ["ethanol, absolute", "phenol", "acetic acid, glacial"]
    assert table["note"].tolist()[2] == 'quoted "SMILES" field'
    prep = prepare(table)
    accounted(table, prep)
    assert len(prep) == 3


def test_huge_molecule_beyond_max_len(tmp_path, tiny_model):
    run, rejected, meta = train_ok(tmp_path, "huge_molecule.csv", "--max-len", "60")
    assert rejected["row"].tolist() == [2]
    assert rejected["reason"].iloc[0] == "400 SELFIES tokens, longer than max_len 60"
    assert meta["n_molecules"] == 3
    # at encode time the model's own maximum applies
    z, reasons = tiny_model.encode(["C" * 400, "CCO"])
    assert "longer than the model's maximum" in reasons[0] and reasons[1] is None


def test_salts_and_mixtures(tmp_path):
    table = read_molecules(BAD / "salts_mixtures.csv")
    prep = prepare(table)
    accounted(table, prep)
    assert prep.smiles == ["CC(=O)[O-]", "[Cl-]", "Oc1ccccc1", "CCN", "CCO"]
    strict = prepare(table, largest_fragment=False)
    accounted(table, strict)
    assert strict.smiles == ["CCO"]
    assert set(strict.rejected["row"]) == {1, 2, 3, 4}
    assert all("several fragments" in r for r in strict.rejected["reason"])
    run, rejected, meta = train_ok(tmp_path, "salts_mixtures.csv", "--all-fragments")
    assert rejected["row"].tolist() == [1, 2, 3, 4]


def test_charges_isotopes_stereo_and_aromatic_edge_cases(tmp_path):
    table = read_molecules(BAD / "charges_isotopes_stereo_aromatic.csv")
    prep = prepare(table)
    accounted(table, prep)
    reasons = dict(zip(prep.rejected["row"], prep.rejected["reason"]))
    assert sorted(reasons) == [7, 8]
    assert all("aromatic ring cannot be kekulized" in reasons[r] for r in (7, 8))
    kept = " ".join(prep.smiles)
    # isotopes, stereo and charges survive cleaning and SELFIES
    for part in ("[13CH3]", "[2H]", "C[C@H](N)", "F/C=C/F", "C[N+](C)(C)C", "[N+]([O-])", "c1cc[nH]c1"):
        assert part in kept, part
    run, rejected, meta = train_ok(tmp_path, "charges_isotopes_stereo_aromatic.csv")
    assert rejected["row"].tolist() == [7, 8] and meta["n_molecules"] == 8


def test_metals_outside_the_vocabulary_at_encode_time(tmp_path, tiny_model):
    table = read_molecules(BAD / "metals_and_rare_elements.csv")
    z, reasons = tiny_model.encode(table["input"].tolist())
    assert len(reasons) == len(table) == 5
    for i in range(4):
        assert "not in the model's vocabulary" in reasons[i], reasons[i]
    assert "[Pt]" in reasons[0] and "[Hg]" in reasons[1] and "[U]" in reasons[2] and "[Se]" in reasons[3]
    assert reasons[4] is None
    assert pd.isna(z[:4]).all() and not pd.isna(z[4]).any()
    # training on them is fine: the vocabulary is built from the data
    prep = prepare(table)
    accounted(table, prep)
    assert len(prep) == 5 and {"[Pt]", "[Hg]", "[U]", "[Se]"} <= set(prep.vocab.tokens)


def test_missing_property_values_are_masked_and_reported(tmp_path):
    assert data_rows(BAD / "missing_property.csv") == 10
    run = tmp_path / "run"
    res = cli("train", BAD / "missing_property.csv", "--property", "logp", "--out", run, *TINY)
    assert res.exit_code == 0, res.output
    # empty, NaN, text and inf values: reported with their rows, trained without a target
    assert "property 'logp': 4 of 10 rows have no numeric value (rows 2, 3, 4, 5)" in res.output
    meta = json.loads((run / "config.json").read_text())["metadata"]
    assert meta["n_molecules"] == 10
    stats = meta["property_stats"]
    assert all(pd.notna(stats["mean"])) and all(pd.notna(stats["std"]))
    hist = pd.read_csv(run / "history.csv")
    assert hist["train_property_mse"].notna().all()


def test_no_header_row(tmp_path):
    table = read_molecules(BAD / "no_header.csv")
    assert table["input"].tolist() == ["CCO", "c1ccccc1O", "CC(=O)O"]  # the first molecule is not lost
    assert table["row"].tolist() == [1, 2, 3]


def test_blank_lines_and_spaces(tmp_path):
    table = read_molecules(BAD / "blank_lines_and_spaces.smi")
    assert table["input"].tolist() == ["CCO", "c1ccccc1O", "CC(=O)O"]
    assert table["row"].tolist() == [1, 4, 6]  # line numbers in the file
    assert table["name"].tolist() == ["ethanol", "phenol", ""]


def test_sd_record_that_does_not_parse(tmp_path):
    table = read_molecules(BAD / "bad_record.sdf")
    prep = prepare(table)
    accounted(table, prep)
    assert prep.rejected["row"].tolist() == [2]
    assert "SD record 2 could not be read" in prep.rejected["reason"].iloc[0]
    run, rejected, meta = train_ok(tmp_path, "bad_record.sdf")
    assert rejected["row"].tolist() == [2] and meta["n_molecules"] == 2


# ----------------------------------------------------------------------------- option values

@pytest.mark.parametrize("args, option", [
    (["--n", "-5"], "--n"),
    (["--n", "0"], "--n"),
    (["--temperature", "0"], "--temperature"),
    (["--temperature", "-1"], "--temperature"),
    (["--batch-size", "0"], "--batch-size"),
    (["--out", "molecules.json"], "--out"),
    (["--threads", "0"], "--threads"),
])
def test_generate_bad_option_values(tmp_path, tiny_run, args, option):
    res = cli("generate", "--model", tiny_run.run_dir, *args)
    bad_option(res, option)
    assert not (tmp_path / "molecules.json").exists()


@pytest.mark.parametrize("args, option", [
    (["--batch-size", "0"], "--batch-size"),
    (["--epochs", "0"], "--epochs"),
    (["--lr", "-0.1"], "--lr"),
    (["--val-fraction", "1.5"], "--val-fraction"),
    (["--max-len", "0"], "--max-len"),
    (["--kl-schedule", "exponential"], "--kl-schedule"),
    (["--checkpoint-every", "-1"], "--checkpoint-every"),
    (["--max-bad-steps", "0"], "--max-bad-steps"),
    (["--word-dropout", "1"], "--word-dropout"),
])
def test_train_bad_option_values(tmp_path, small_csv, args, option):
    res = cli("train", small_csv, "--out", tmp_path / "r", *args)
    bad_option(res, option)
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- the other commands

def needs(command: str) -> None:
    if command not in main.commands:
        pytest.skip(f"no `molvae {command}` in this checkout")


def test_encode_reports_rows_outside_the_vocabulary(tmp_path, tiny_run):
    needs("encode")
    out = tmp_path / "z.csv"
    res = cli("encode", BAD / "metals_and_rare_elements.csv", "--model", tiny_run.run_dir, "--out", out)
    assert res.exit_code == 0, res.output
    z = pd.read_csv(out, keep_default_na=False)
    assert z["row"].tolist() == [1, 2, 3, 4, 5]  # one output row per input row, in order
    assert all("not in the model's vocabulary" in r for r in z["reason"][:4]) and z["reason"][4] == ""
    assert "4 of 5 rows could not be encoded" in res.output


@pytest.mark.parametrize("command", ["encode", "reconstruct", "score"])
def test_nothing_encodable_exits_nonzero_and_keeps_every_row(tmp_path, tiny_run, command):
    # Only the four molecules outside the vocabulary: the job produced nothing usable, so it must
    # fail for a script, yet the table with every row's reason is still written, in input order.
    needs(command)
    src = pd.read_csv(BAD / "metals_and_rare_elements.csv").iloc[:4]
    inp = tmp_path / "metals.csv"
    src.to_csv(inp, index=False)
    out = tmp_path / "out.csv"
    res = cli(command, inp, "--model", tiny_run.run_dir, "--out", out)
    refused(res, str(inp), "none of the 4 molecules could be encoded", "not in the model's vocabulary", str(out))
    table = pd.read_csv(out, keep_default_na=False)
    assert table["row"].tolist() == [1, 2, 3, 4]
    assert all("not in the model's vocabulary" in r for r in table["reason"])


@pytest.mark.parametrize("name, needle", [("empty.csv", "empty"), ("non_utf8.csv", "line 3"),
                                          ("ambiguous_columns.csv", "ambiguous SMILES column")])
def test_encode_refuses_unreadable_files(tmp_path, tiny_run, name, needle):
    needs("encode")
    res = cli("encode", BAD / name, "--model", tiny_run.run_dir, "--out", tmp_path / "z.csv")
    refused(res, str(BAD / name), needle)
    assert not (tmp_path / "z.csv").exists()


def test_evaluate_refuses_unreadable_files(tmp_path):
    needs("evaluate")
    refused(cli("evaluate", BAD / "header_only.csv", "-j", "1"), str(BAD / "header_only.csv"), "no rows")
    refused(cli("evaluate", BAD / "windows_crlf.csv", "--train", BAD / "non_utf8.csv", "-j", "1"),
            str(BAD / "non_utf8.csv"), "line 3", "UTF-8")


@pytest.mark.parametrize("args, option", [
    (["--objective", "bogus"], "--objective"),
    (["--objective", "qed", "--budget", "-5"], "--budget"),
])
def test_optimize_bad_option_values(tiny_run, args, option):
    needs("optimize")
    bad_option(cli("optimize", "--model", tiny_run.run_dir, *args), option)


@pytest.mark.parametrize("device, needle", [
    ("mps", "device 'mps' is not supported; expected auto, cpu, cuda or cuda:N"),
    ("cuda", "no CUDA GPU is available; use --device cpu"),
])
def test_an_unusable_device_fails_before_the_data_is_read(tmp_path, device, needle):
    import torch
    from conftest import cli

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    data = tmp_path / "d.csv"
    data.write_text("smiles\nnot-a-smiles\n")  # read after the device check, this would fail on its own
    res = cli("train", data, "--device", device, "--out", tmp_path / "r")
    assert res.exit_code == 1 and needle in res.output, res.output
    assert not (tmp_path / "r").exists()


def test_threads_are_capped_at_the_cores(tmp_path):
    from conftest import cli

    res = cli("generate", "--model", "moses", "--n", "3", "--threads", "10000", "--out", tmp_path / "g.csv")
    assert res.exit_code == 0, res.output
    assert "--threads 10000: this machine has" in res.output
    import torch

    from molvae.workers import available_cpus

    assert torch.get_num_threads() <= available_cpus()


def test_a_validation_share_that_leaves_few_to_train_on_is_warned_about(tmp_path, caplog):
    import logging

    from conftest import TINY_MODEL, tiny_train_config

    from molvae import train

    data = tmp_path / "d.csv"
    data.write_text("smiles\n" + "\n".join(["CCO", "CCN", "CCC", "CCCl", "c1ccccc1", "CC(=O)O", "CCOC", "CCNC"]))
    logger = logging.getLogger("molvae")  # the CLI stops propagation to the root logger caplog listens on
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level("WARNING", logger="molvae"):
            train(data, tmp_path / "r", model_config=TINY_MODEL,
                  train_config=tiny_train_config(epochs=1, val_fraction=0.999))
    finally:
        logger.removeHandler(caplog.handler)
    assert any("leaves 1 of 8 molecules to train on" in r.getMessage() for r in caplog.records), caplog.records


def test_a_huge_batch_size_is_capped_and_said(tmp_path, tiny_run):
    """``--batch-size 1000000000`` once held 7 GB and ignored SIGTERM for minutes: the batch is capped (on the
    CPU at MolVAE.CPU_BATCH_CAP), stderr says so, and the molecules are those of the capped batch size."""
    from molvae import MolVAE

    cap = MolVAE.CPU_BATCH_CAP
    big, capped = tmp_path / "big.csv", tmp_path / "at_cap.csv"
    res = cli("generate", "--n", cap + 50, "--model", tiny_run.run_dir, "--seed", "3", "--batch-size", "1000000000",
              "--device", "cpu", "--out", big, "--no-progress")
    assert res.exit_code == 0, res.output
    assert f"--batch-size 1000000000 capped at {cap} on cpu" in res.output
    res = cli("generate", "--n", cap + 50, "--model", tiny_run.run_dir, "--seed", "3", "--batch-size", cap,
              "--device", "cpu", "--out", capped, "--no-progress")
    assert res.exit_code == 0 and "capped at" not in res.output
    assert big.read_text() == capped.read_text() and len(pd.read_csv(big)) == cap + 50
