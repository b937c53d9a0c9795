"""`protolm predict` on the tiny exported bundle: the served graph's labels, in input order,
resumable, stopping at (or recording) a bad row; Parquet in and out; the same records
through Ray Data on a local Ray instance."""

import csv
import importlib.util
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cli.main import main
from core.errors import DataError
from service.config import PredictConfig
from service.predict import Predictor, run
from service.served_bundle import ServedBundle
from tests.conftest import TINY_NEGATIVE, TINY_POSITIVE

# lengths from 3 to ~40 words, so a window holds several length-sorted batches
TEXTS = [
    f"{(TINY_POSITIVE if n % 2 else TINY_NEGATIVE)[n % 7]} number {n}" + " and so on" * (n % 13)
    for n in range(90)
]


def write_jsonl(path, texts, key="text"):
    with open(path, "w") as handle:
        handle.writelines(json.dumps({key: text, "idx": f"id-{n}"}) + "\n" for n, text in enumerate(texts))
    return path


def write_csv(path, texts):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["idx", "review"])
        writer.writerows([f"id-{n}", text] for n, text in enumerate(texts))
    return path


def read_jsonl(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle]


def assert_same_records(got: list[dict], expected: list[dict]) -> None:
    """Equal records; probabilities within 1e-5, since a resumed run batches the rest differently."""
    assert [{k: v for k, v in r.items() if k != "probabilities"} for r in got] == [
        {k: v for k, v in r.items() if k != "probabilities"} for r in expected]
    for mine, theirs in zip(got, expected):
        assert mine["probabilities"].keys() == theirs["probabilities"].keys()
        np.testing.assert_allclose(list(mine["probabilities"].values()), list(theirs["probabilities"].values()), atol=1e-5)


def config(tiny_bundle, source, output, **overrides):
    # small windows and batches: many length-sorted batches whose results must go back in order
    values = {"bundle_dir": str(tiny_bundle), "input": str(source), "output": str(output), "variant": "fp32", "window": 32,
                  "max_batch_size": 8, "progress": False}
    return PredictConfig(**{**values, **overrides})


def reference(tiny_bundle, texts):
    """Each text alone through the bundle's fp32 graph: no batching, no padding."""
    bundle = ServedBundle.load(tiny_bundle)
    session = bundle.session(bundle.choose_variant("cpu", "fp32"))
    return np.concatenate([session.run(["probabilities"], bundle.encode([t]))[0] for t in texts])


def test_predictions_are_the_graphs_in_input_order(tiny_bundle, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", TEXTS)
    summary = run(config(tiny_bundle, source, tmp_path / "out.jsonl", id_column="idx"))
    assert (summary.rows, summary.skipped, summary.resumed_from) == (90, 0, 0)
    records = read_jsonl(tmp_path / "out.jsonl")
    expected = reference(tiny_bundle, TEXTS)
    labels = ServedBundle.load(tiny_bundle).manifest.labels
    assert [r["row"] for r in records] == list(range(1, 91))
    assert [r["id"] for r in records] == [f"id-{n}" for n in range(90)]
    assert [r["label"] for r in records] == [labels[i] for i in expected.argmax(1)]
    got = np.array([[r["probabilities"][name] for name in labels] for r in records])
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_a_rerun_resumes_after_the_complete_lines(tiny_bundle, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", TEXTS)
    output = tmp_path / "out.jsonl"
    run(config(tiny_bundle, source, output))
    full = output.read_text()
    lines = full.splitlines(keepends=True)
    output.write_text("".join(lines[:37]) + lines[37][:20])  # killed while writing row 38
    summary = run(config(tiny_bundle, source, output))
    assert (summary.resumed_from, summary.rows) == (37, 53)
    assert output.read_text().splitlines()[:37] == full.splitlines()[:37]  # the complete lines are kept as they were
    assert_same_records(read_jsonl(output), [json.loads(line) for line in full.splitlines()])
    assert run(config(tiny_bundle, source, output)).rows == 0  # done: nothing left to do
    assert run(config(tiny_bundle, source, output, overwrite=True)).rows == 90


def test_a_bad_row_stops_the_run_naming_row_and_column_or_is_recorded(tiny_bundle, tmp_path):
    texts = list(TEXTS[:10])
    texts[6] = "   "
    source = write_csv(tmp_path / "in.csv", texts)
    output = tmp_path / "out.jsonl"
    with pytest.raises(DataError, match=r"in\.csv: row 7: column 'review' is empty\. Fix it, or pass --skip-bad-rows"):
        run(config(tiny_bundle, source, output, text_column="review"))
    assert [r["row"] for r in read_jsonl(output)] == [1, 2, 3, 4, 5, 6]  # saved up to the bad row
    summary = run(config(tiny_bundle, source, output, text_column="review", skip_bad_rows=True))
    assert (summary.resumed_from, summary.rows, summary.skipped) == (6, 4, 1)
    records = read_jsonl(output)
    assert records[6] == {"row": 7, "error": "column 'review' is empty"}
    assert [r["row"] for r in records] == list(range(1, 11)) and all("label" in r for r in records if r["row"] != 7)


def test_jsonl_rows_that_are_not_text_are_named(tiny_bundle, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "a fine film"}\n{"text": 5}\n{"other": "x"}\nnot json\n{"text": "dull"}\n')
    run(config(tiny_bundle, source, tmp_path / "out.jsonl", skip_bad_rows=True))
    errors = [r.get("error") for r in read_jsonl(tmp_path / "out.jsonl")]
    assert errors == [None, "column 'text' is int '5', not text", "column 'text' is missing or null",
                      "line 4 is not valid JSON (Expecting value)", None]
    with pytest.raises(DataError, match="no column 'review'; it has 'text'"):
        run(config(tiny_bundle, source, tmp_path / "other.jsonl", text_column="review"))


def test_parquet_in_and_out_with_explanations_resumes_from_its_parts(tiny_bundle, tmp_path):
    texts = list(TEXTS[:70])
    texts[40] = ""
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": texts}), source)
    output = tmp_path / "out.parquet"
    with pytest.raises(DataError, match="row 41: column 'text' is empty"):
        run(config(tiny_bundle, source, output, explain=True))
    assert not output.exists() and len(list((tmp_path / "out.parquet.parts").iterdir())) == 2  # 32 + 8 rows kept
    summary = run(config(tiny_bundle, source, output, explain=True, skip_bad_rows=True, nearest_examples=2))
    assert (summary.resumed_from, summary.rows, summary.skipped) == (40, 30, 1)
    assert not (tmp_path / "out.parquet.parts").exists()
    table = pq.read_table(output).to_pylist()
    assert [r["row"] for r in table] == list(range(1, 71))
    assert table[40]["error"] == "column 'text' is empty" and table[40]["label"] is None
    first = table[0]
    assert first["error"] is None and len(first["top_words"]) == 3 and len(first["prototypes"]) == 3  # "bad number 0"
    assert len(table[5]["top_words"]) == 5
    assert {w["word"] for w in first["top_words"]} <= set(texts[0].split())
    evidence = first["evidence"]
    assert evidence["label"] == first["label"] and evidence["supporting"][0]["exemplar"]
    assert table[0]["nearest_examples"] is None and len(table[69]["nearest_examples"]) == 2  # asked for on the resumed run only
    local = read_explained(tiny_bundle, texts[:1])
    assert local["evidence"]["margin"] == pytest.approx(evidence["margin"], abs=1e-4)


def read_explained(tiny_bundle, texts):
    predictor = Predictor(PredictConfig(bundle_dir=str(tiny_bundle), variant="fp32", explain=True))
    return predictor.predict([(t, None) for t in texts])[0]


def test_the_command_line_runs_predict_and_names_a_bad_row_in_one_line(tiny_bundle, tmp_path, capsys, monkeypatch):
    texts = list(TEXTS[:5])
    source = write_csv(tmp_path / "in.csv", texts)
    monkeypatch.setenv("PROTOLM_TEXT_COLUMN", "review")
    argv = ["predict", str(tiny_bundle), str(source), str(tmp_path / "out.jsonl"), "--progress", "false"]
    assert main(argv) == 0
    assert "out.jsonl: 5 rows in" in capsys.readouterr().err
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 5
    texts[2] = ""
    write_csv(tmp_path / "bad.csv", texts)
    assert main(["predict", str(tiny_bundle), str(tmp_path / "bad.csv"), str(tmp_path / "bad.jsonl"), "--progress", "false"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.csv: row 3: column 'review' is empty" in err[0]


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed (pip install 'protolm[ray]')")
def test_ray_data_gives_the_local_records(tiny_bundle, tmp_path):
    """On a local Ray instance (2 CPUs): CSV and JSONL through actors, in order, resumable."""
    import ray

    csv_source = write_csv(tmp_path / "in.csv", TEXTS)
    jsonl_source = write_jsonl(tmp_path / "in.jsonl", TEXTS)
    local = tmp_path / "local.jsonl"
    run(config(tiny_bundle, jsonl_source, local, id_column="idx"))
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        through_csv = tmp_path / "ray-csv.jsonl"
        summary = run(config(tiny_bundle, csv_source, through_csv, text_column="review", id_column="idx", ray="local"))
        assert summary.rows == 90
        assert_same_records(read_jsonl(through_csv), read_jsonl(local))
        through_jsonl = tmp_path / "ray-jsonl.jsonl"
        lines = local.read_text().splitlines(keepends=True)
        through_jsonl.write_text("".join(lines[:50]))
        summary = run(config(tiny_bundle, jsonl_source, through_jsonl, id_column="idx", ray="local", ray_actors=1))
        assert (summary.resumed_from, summary.rows) == (50, 40)
        assert_same_records(read_jsonl(through_jsonl), read_jsonl(local))
    finally:
        ray.shutdown()


NO_TORCH = r"""
import importlib.abc, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ImportError(f"{name} is not installed on a serving machine")

sys.meta_path.insert(0, NoTorch())
from cli.main import main

code = main(["predict", *sys.argv[1:], "--progress", "false", "--explain", "true"])
assert code == 0, code
print("loaded:", ",".join(sorted(m for m in ("torch", "transformers") if m in sys.modules)) or "none")
"""


def test_predict_runs_without_torch(tiny_bundle, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    source = write_jsonl(tmp_path / "in.jsonl", TEXTS[:10])
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", NO_TORCH, str(tiny_bundle), str(source), str(tmp_path / "out.parquet")],
                            capture_output=True, text=True, cwd=repo, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "loaded: none"
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 10


def test_predict_options_are_flags_and_variables(monkeypatch):
    from cli.main import build_parser
    from core.options import from_namespace

    monkeypatch.setenv("PROTOLM_RAY", "auto")
    monkeypatch.setenv("PROTOLM_PREDICT_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("PROTOLM_OVERWRITE", "true")  # export's: predict keeps resuming
    args = build_parser().parse_args(["predict", "b", "in.csv", "out.parquet", "--explain", "--ray-actors", "3"])
    config = from_namespace(PredictConfig, args)
    assert (config.bundle_dir, config.input, config.output) == ("b", "in.csv", "out.parquet")
    assert (config.ray, config.ray_actors, config.max_batch_size, config.explain, config.overwrite) == ("auto", 3, 16, True, False)
