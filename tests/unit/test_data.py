import argparse
import gzip
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.options import add_options, env_name
from protolm.config import DataConfig
from protolm.data import (
    TASKS,
    DataSource,
    TextClassificationData,
    default_max_length,
    load_split,
    validation_split_name,
)
from core.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[2]
DATA_DIR_ENV = env_name("data_dir")
DATA_DIR = Path(os.environ.get(DATA_DIR_ENV) or REPO.parent / "shared" / "datasets")
needs_data = pytest.mark.skipif(
    not DATA_DIR.is_dir(), reason=f"benchmark data dir {DATA_DIR} not found (set {DATA_DIR_ENV})"
)

# (task, validation split, rows, label counts in label-id order), from the datasets README
VALIDATION_SPLITS = [
    ("sst2", "validation", 872, [428, 444]),
    ("sst5", "validation", 1101, [139, 289, 229, 279, 165]),
    ("rte", "validation", 277, [146, 131]),
    ("wnli", "validation", 71, [40, 31]),
    ("mrpc", "validation", 408, [129, 279]),
    ("qnli", "validation", 5463, [2702, 2761]),
    ("mnli", "validation_matched", 9815, [3479, 3123, 3213]),
    ("imdb", "test", 25000, [12500, 12500]),
]
PAIR_TASKS = {"rte", "wnli", "mrpc", "qnli", "mnli"}

TEXTS = ["a good film ", "  NA", "null", 'said "hi", then left', "line one\nline two", "ünïcode ✓"]
STRING_LABELS = ["pos", "neg", "pos", "neutral", "neg", "pos"]


def frame(labels=STRING_LABELS, **extra) -> pd.DataFrame:
    return pd.DataFrame({"text": TEXTS, "label": labels, **extra})


def write(df: pd.DataFrame, path: Path) -> Path:
    name = path.name.removesuffix(".gz")
    compression = "gzip" if path.name.endswith(".gz") else None
    if name.endswith(".csv"):
        df.to_csv(path, index=False, compression=compression)
    elif name.endswith(".tsv"):
        df.to_csv(path, sep="\t", index=False, compression=compression)
    elif name.endswith(".jsonl"):
        df.to_json(path, orient="records", lines=True, force_ascii=False, compression=compression)
    elif name.endswith(".json"):
        df.to_json(path, orient="records", force_ascii=False, compression=compression)
    elif name.endswith(".parquet"):
        df.to_parquet(path, index=False)
    else:
        path.write_text("whatever")
    return path


def load_file(path: Path, split: str = "train", label_names=None, **columns) -> TextClassificationData:
    return load_split(DataSource(files=((split, str(path)),), **columns), split, label_names)


# --- named tasks -------------------------------------------------------------------------


@needs_data
@pytest.mark.parametrize("task,split,rows,counts", VALIDATION_SPLITS)
def test_named_task_validation_split_loads_from_data_dir(task, split, rows, counts):
    source = DataSource(task=task, data_dir=str(DATA_DIR))
    assert validation_split_name(source) == split
    data = load_split(source, split)
    assert data.name == f"{task}:{split}"
    assert len(data) == rows
    assert data.is_pair == (task in PAIR_TASKS)
    assert data.labels.dtype == np.int64
    assert np.bincount(data.labels).tolist() == counts
    assert data.label_names == TASKS[task].label_names
    assert all(t.strip() for t in data.texts)


@needs_data
@pytest.mark.parametrize("task", sorted(TASKS))
def test_task_label_names_match_labels_json(task):
    assert TASKS[task].label_names == json.loads((DATA_DIR / task / "labels.json").read_text())


@needs_data
def test_named_task_text_is_kept_exactly():
    data = load_split(DataSource(task="sst2", data_dir=str(DATA_DIR)), "validation")
    with gzip.open(DATA_DIR / "sst2" / "validation.jsonl.gz", "rt", encoding="utf-8") as handle:
        first = json.loads(handle.readline())
    assert data.texts[0] == first["text"] and data.texts[0].endswith(" ")
    assert data.labels[0] == first["label"]


@needs_data
def test_mnli_mismatched_split():
    data = load_split(DataSource(task="mnli", data_dir=str(DATA_DIR)), "validation_mismatched")
    assert len(data) == 9832 and data.is_pair


def test_named_task_from_plain_jsonl_in_data_dir(tmp_path, monkeypatch):
    folder = tmp_path / "rte"
    folder.mkdir()
    rows = [{"text": "A man sleeps.", "text_pair": "A man is awake.", "label": 1, "idx": 0},
            {"text": "It rains.", "text_pair": "It is wet.", "label": 0, "idx": 1}]
    (folder / "validation.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))  # read once, by the options, into the data config
    parser = argparse.ArgumentParser()
    add_options(parser, DataConfig)
    data_dir = parser.parse_args([]).data_dir
    assert data_dir == str(tmp_path)
    data = load_split(DataSource(task="rte", data_dir=data_dir), "validation", label_names=["entailment", "not_entailment"])
    assert data.texts == ["A man sleeps.", "It rains."]
    assert data.text_pairs == ["A man is awake.", "It is wet."]
    assert data.labels.tolist() == [1, 0]
    with pytest.raises(DataError, match="differ from the expected"):
        load_split(DataSource(task="rte", data_dir=data_dir), "validation", label_names=["yes", "no"])


def test_named_task_missing_locally_and_hub_unreachable(tmp_path, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hugging Face Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as info:
        load_split(DataSource(task="qnli", data_dir=str(tmp_path)), "train")
    message = str(info.value)
    assert str(tmp_path / "qnli" / "train.jsonl.gz") in message
    assert "hub could not be reached" in message and "Couldn't reach the Hugging Face Hub" in message

    with pytest.raises(DataError, match=f"pass --data-dir or set {DATA_DIR_ENV}"):
        load_split(DataSource(task="sst2"), "train")


def test_named_task_unknown_split_and_unknown_task():
    with pytest.raises(DataError, match="no split 'validation'.*train, test"):
        load_split(DataSource(task="imdb"), "validation")
    with pytest.raises(DataError, match="unknown task 'sst3'.*sst2"):
        load_split(DataSource(task="sst3"), "train")


def test_task_defaults():
    assert default_max_length(DataSource(task="sst2")) == 50
    assert default_max_length(DataSource(task="sst5")) == 50
    assert default_max_length(DataSource(task="mnli")) == 128
    assert default_max_length(DataSource(task="imdb")) == 256
    assert default_max_length(DataSource(dataset="ag_news")) == 128
    assert default_max_length(DataSource(files=(("train", "a.csv"),))) == 128
    assert validation_split_name(DataSource(task="sst2")) == "validation"
    assert validation_split_name(DataSource(task="mnli")) == "validation_matched"
    assert validation_split_name(DataSource(task="imdb")) == "test"
    assert validation_split_name(DataSource(dataset="ag_news")) == "validation"
    assert validation_split_name(DataSource(files=(("train", "a.csv"), ("validation", "b.csv")))) == "validation"
    with pytest.raises(DataError, match="no 'validation' file"):
        validation_split_name(DataSource(files=(("train", "a.csv"),)))


def test_describe():
    assert DataSource(task="sst2").describe() == "sst2"
    assert DataSource(dataset="glue:sst2").describe() == "hub:glue:sst2"
    files = DataSource(files=[("train", "/x/train.csv"), ("validation", Path("/x/dev.tsv"))])
    assert files.files == (("train", "/x/train.csv"), ("validation", "/x/dev.tsv"))
    assert files.describe() == "train=train.csv, validation=dev.tsv"


@pytest.mark.parametrize("kwargs,got", [
    ({}, "none of them"),
    ({"task": "sst2", "dataset": "imdb"}, "task and dataset"),
    ({"task": "sst2", "files": (("train", "a.csv"),)}, "task and files"),
])
def test_exactly_one_source_kind(kwargs, got):
    with pytest.raises(DataError, match=f"exactly one of task, dataset or files; got {got}"):
        load_split(DataSource(**kwargs), "train")


# --- hub datasets (load_dataset faked; no network) -----------------------------------------


def test_hub_dataset_with_class_label(monkeypatch):
    import datasets

    calls = []

    def fake_load(path, config, split):
        calls.append((path, config, split))
        features = datasets.Features({"q": datasets.Value("string"), "a": datasets.Value("string"),
                                      "y": datasets.ClassLabel(names=["no", "yes"]), "extra": datasets.Value("int64")})
        return datasets.Dataset.from_dict({"q": ["Is it?", "Was it?"], "a": ["Yes.", "No."], "y": [1, 0],
                                           "extra": [5, 6]}, features=features)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    source = DataSource(dataset="someone/qa:v2", text_column="q", text_pair_column="a", label_column="y")
    data = load_split(source, "validation")
    assert calls == [("someone/qa", "v2", "validation")]
    assert data.name == "someone/qa:v2:validation"
    assert data.texts == ["Is it?", "Was it?"] and data.text_pairs == ["Yes.", "No."]
    assert data.labels.tolist() == [1, 0] and data.label_names == ["no", "yes"]
    assert load_split(source, "train", label_names=["no", "yes"]).label_names == ["no", "yes"]
    with pytest.raises(DataError, match="differ from the expected"):
        load_split(source, "train", label_names=["yes", "no"])
    with pytest.raises(DataError, match="no column 'text'; the columns are: q, a, y, extra"):
        load_split(DataSource(dataset="someone/qa"), "train")


def test_hub_dataset_unreachable(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="could not load hub dataset ag_news split 'train'.*ConnectionError: offline"):
        load_split(DataSource(dataset="ag_news"), "train")


# --- user files ------------------------------------------------------------------------------


@pytest.mark.parametrize("filename", ["d.csv", "d.tsv", "d.jsonl", "d.json", "d.parquet",
                                      "d.jsonl.gz", "d.csv.gz", "d.parquet.gz"])
def test_file_round_trip_string_labels(tmp_path, filename):
    path = write(frame(), tmp_path / filename)
    if filename == "d.parquet.gz":
        path = write(frame(), tmp_path / "d.parquet")
        path = path.rename(tmp_path / "raw.parquet")
        with gzip.open(tmp_path / filename, "wb") as handle:
            handle.write(path.read_bytes())
        path = tmp_path / filename
    data = load_file(path)
    assert data.name == filename
    assert data.texts == TEXTS  # exactly as written: spaces, "NA", "null", quotes, newlines
    assert data.text_pairs is None and not data.is_pair
    assert data.label_names == ["neg", "neutral", "pos"]
    assert [data.label_names[i] for i in data.labels] == STRING_LABELS


@pytest.mark.parametrize("filename", ["d.csv", "d.tsv", "d.jsonl", "d.parquet", "d.jsonl.gz"])
def test_file_round_trip_int_labels(tmp_path, filename):
    labels = [2, 0, 2, 1, 0, 2]
    data = load_file(write(frame(labels), tmp_path / filename))
    assert data.texts == TEXTS
    assert data.labels.dtype == np.int64 and data.labels.tolist() == labels
    assert data.label_names == ["0", "1", "2"]


def test_file_pair_and_custom_columns(tmp_path):
    df = pd.DataFrame({"premise": ["p1", "p2"], "hypothesis": ["h1 ", "h2"], "gold": ["yes", "no"]})
    data = load_file(write(df, tmp_path / "nli.csv"), text_column="premise",
                     text_pair_column="hypothesis", label_column="gold")
    assert data.is_pair
    assert data.texts == ["p1", "p2"] and data.text_pairs == ["h1 ", "h2"]
    assert data.label_names == ["no", "yes"] and data.labels.tolist() == [1, 0]


def test_validation_file_uses_training_label_names(tmp_path):
    train = load_file(write(frame(), tmp_path / "train.csv"))
    dev_df = pd.DataFrame({"text": ["x", "y"], "label": ["pos", "neg"]})
    dev = load_file(write(dev_df, tmp_path / "dev.csv"), "validation", train.label_names)
    assert dev.label_names == train.label_names and dev.labels.tolist() == [2, 0]
    # integer labels are ids into the given names
    dev_int = load_file(write(pd.DataFrame({"text": ["x"], "label": [1]}), tmp_path / "i.jsonl"),
                        "validation", ["neg", "pos"])
    assert dev_int.labels.tolist() == [1]


def test_unknown_label_names_value_file_and_known_labels(tmp_path):
    path = write(pd.DataFrame({"text": ["x", "y"], "label": ["pos", "meh"]}), tmp_path / "dev.csv")
    with pytest.raises(DataError) as info:
        load_file(path, "validation", ["neg", "pos"])
    message = str(info.value)
    assert "'meh'" in message and str(path) in message and "['neg', 'pos']" in message


def test_integer_label_out_of_range(tmp_path):
    path = write(pd.DataFrame({"text": ["x", "y"], "label": [1, 3]}), tmp_path / "dev.jsonl")
    with pytest.raises(DataError, match=r"label 3 \(row 2\) is out of range.*\['neg', 'pos'\]"):
        load_file(path, "validation", ["neg", "pos"])


def test_file_errors(tmp_path):
    with pytest.raises(DataError, match="data file not found: .*nope.csv"):
        load_file(tmp_path / "nope.csv")
    with pytest.raises(DataError, match=r"d.txt: unsupported file type; use one of \.csv"):
        load_file(write(frame(), tmp_path / "d.txt"))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="data file is empty: .*empty.csv"):
        load_file(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("text,label\n")
    with pytest.raises(DataError, match="header.csv: no rows"):
        load_file(tmp_path / "header.csv")
    (tmp_path / "blank.jsonl.gz").write_bytes(gzip.compress(b""))
    with pytest.raises(DataError, match="blank.jsonl.gz"):
        load_file(tmp_path / "blank.jsonl.gz")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="bad.json: could not be read as JSON"):
        load_file(tmp_path / "bad.json")


def test_missing_column_lists_columns(tmp_path):
    path = write(pd.DataFrame({"review": ["x"], "label": [0]}), tmp_path / "d.csv")
    with pytest.raises(DataError, match="d.csv: no column 'text'; the columns are: review, label"):
        load_file(path)
    with pytest.raises(DataError, match="no column 'second'; the columns are: review, label"):
        load_file(path, text_column="review", text_pair_column="second")


def test_empty_text_names_row(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nfine,0\n,1\n")
    with pytest.raises(DataError, match="d.csv: row 2 has empty text in column 'text'"):
        load_file(path)
    path = write(pd.DataFrame({"text": ["a", "b", None], "label": [0, 1, 0]}), tmp_path / "d.jsonl")
    with pytest.raises(DataError, match="d.jsonl: row 3 has no text in column 'text'"):
        load_file(path)
    path = write(pd.DataFrame({"text": ["a", "   "], "label": [0, 1]}), tmp_path / "d.parquet")
    with pytest.raises(DataError, match="row 2 has empty text"):
        load_file(path)


def test_missing_label_names_row(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nfine,pos\nalso fine,\n")
    with pytest.raises(DataError, match="d.csv: row 2 has no label in column 'label'"):
        load_file(path)
    path = write(pd.DataFrame({"text": ["a", "b"], "label": [None, 1]}), tmp_path / "d.jsonl")
    with pytest.raises(DataError, match="d.jsonl: row 1 has no label"):
        load_file(path)


def test_file_split_not_given(tmp_path):
    source = DataSource(files=(("train", str(tmp_path / "a.csv")),))
    with pytest.raises(DataError, match="no file given for split 'test'; files were given for: train"):
        load_split(source, "test")


# --- subsets -----------------------------------------------------------------------------------


def toy(n: int = 100, pairs: bool = True) -> TextClassificationData:
    return TextClassificationData(
        texts=[f"t{i}" for i in range(n)],
        text_pairs=[f"p{i}" for i in range(n)] if pairs else None,
        labels=np.arange(n) % 3,
        label_names=["a", "b", "c"],
        name="toy",
    )


def test_subset_keeps_rows_aligned():
    part = toy().subset([5, 2, 9])
    assert part.texts == ["t5", "t2", "t9"] and part.text_pairs == ["p5", "p2", "p9"]
    assert part.labels.tolist() == [2, 2, 0] and part.label_names == ["a", "b", "c"]
    assert toy().subset(np.arange(100) < 3).texts == ["t0", "t1", "t2"]


def test_sample_is_seeded_and_sized():
    data = toy()
    first, again, other = data.sample(10, seed=1), data.sample(10, seed=1), data.sample(10, seed=2)
    assert len(first) == 10 and len(set(first.texts)) == 10
    assert first.texts == again.texts and first.texts != other.texts
    assert first.text_pairs == [t.replace("t", "p") for t in first.texts]
    assert data.sample(None, seed=0) is data and data.sample(100, seed=0) is data and data.sample(500, seed=0) is data
    with pytest.raises(ConfigError):
        data.sample(-1, seed=0)


def test_split_is_seeded_disjoint_and_sized():
    data = toy(pairs=False)
    rest, held = data.split(0.2, seed=3)
    assert (len(rest), len(held)) == (80, 20)
    assert set(rest.texts).isdisjoint(held.texts) and set(rest.texts) | set(held.texts) == set(data.texts)
    assert [int(t[1:]) for t in held.texts] == sorted(int(t[1:]) for t in held.texts)
    again = data.split(0.2, seed=3)
    assert again[0].texts == rest.texts and again[1].texts == held.texts
    assert data.split(0.2, seed=4)[1].texts != held.texts
    assert (rest.name, held.name) == ("toy/train", "toy/validation")
    assert [len(p) for p in toy(3).split(0.01, seed=0)] == [2, 1]
    with pytest.raises(ConfigError):
        data.split(1.0, seed=0)
    with pytest.raises(DataError, match="at least 2"):
        toy(1).split(0.5, seed=0)
