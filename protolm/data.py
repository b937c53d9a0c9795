"""Labelled text-classification data from a named task, a hub dataset or the user's files.

A ``DataSource`` names exactly one of:

* ``task``: a benchmark in ``TASKS``, read from ``<data_dir>/<task>/<split>.jsonl.gz`` when
  that file exists (``data_dir``: ``--data-dir`` or ``$PROTOLM_DATA_DIR``), else from the Hugging Face hub;
* ``dataset``: any hub dataset, ``"name"`` or ``"name:config"``;
* ``files``: ``(split, path)`` pairs of CSV / TSV / JSONL / JSON / Parquet files, optionally gzipped.

Whatever the source, rows pass the same checks (non-empty text, a label in every row) and
labels the same mapping to ids, so a bad row raises the same ``DataError`` everywhere.
Only numpy is imported here; pandas and datasets are imported by the functions that need them.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from core.errors import ConfigError, DataError
from core.options import env_name

DEFAULT_MAX_LENGTH = 128
FILE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}
_INT_LITERAL = re.compile(r"[+-]?\d+")


@dataclass(frozen=True, eq=False)  # eq=False: numpy arrays have no boolean ==
class TextClassificationData:
    texts: list[str]
    text_pairs: list[str] | None  # None for single-text tasks
    labels: np.ndarray  # int64 ids into label_names
    label_names: list[str]
    name: str  # e.g. "sst2:train" or "reviews.csv"

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels, dtype=np.int64)
        object.__setattr__(self, "labels", labels)
        if labels.ndim != 1 or len(labels) != len(self.texts):
            raise ValueError(f"{self.name}: {len(self.texts)} texts but labels of shape {labels.shape}")
        if self.text_pairs is not None and len(self.text_pairs) != len(self.texts):
            raise ValueError(f"{self.name}: {len(self.texts)} texts but {len(self.text_pairs)} text pairs")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.label_names)):
            raise ValueError(f"{self.name}: label ids outside 0..{len(self.label_names) - 1}")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def is_pair(self) -> bool:
        return self.text_pairs is not None

    def subset(self, indices: Sequence[int] | np.ndarray) -> TextClassificationData:
        """The rows at ``indices`` (integer positions or a boolean mask), in that order."""
        positions = np.asarray(indices)
        if positions.dtype == bool:
            positions = np.flatnonzero(positions)
        positions = positions.astype(np.int64).reshape(-1)
        return dataclasses.replace(
            self,
            texts=[self.texts[i] for i in positions],
            text_pairs=None if self.text_pairs is None else [self.text_pairs[i] for i in positions],
            labels=self.labels[positions],
        )

    def sample(self, n: int | None, seed: int) -> TextClassificationData:
        """``n`` rows drawn without replacement (kept in their original order); all rows if
        ``n`` is None or at least ``len(self)``."""
        if n is None or n >= len(self):
            return self
        if n < 0:
            raise ConfigError(f"cannot sample {n} rows from {self.name}")
        chosen = np.random.default_rng(seed).choice(len(self), size=n, replace=False)
        return self.subset(np.sort(chosen))

    def split(self, fraction: float, seed: int) -> tuple[TextClassificationData, TextClassificationData]:
        """Seeded random (rest, held-out) split with ``fraction`` of the rows held out, e.g. to
        make a validation set for a source that has none. Both parts keep the original order."""
        if not 0.0 < fraction < 1.0:
            raise ConfigError(f"split fraction must be between 0 and 1 (exclusive), got {fraction}")
        if len(self) < 2:
            raise DataError(f"{self.name} has {len(self)} row(s); at least 2 are needed to split it")
        held_out = min(max(round(len(self) * fraction), 1), len(self) - 1)
        order = np.random.default_rng(seed).permutation(len(self))
        rest = dataclasses.replace(self.subset(np.sort(order[held_out:])), name=f"{self.name}/train")
        held = dataclasses.replace(self.subset(np.sort(order[:held_out])), name=f"{self.name}/validation")
        return rest, held


@dataclass(frozen=True)
class TaskSpec:
    name: str
    hub_path: str
    hub_config: str | None
    text_field: str
    pair_field: str | None
    label_field: str
    splits: dict[str, str]  # our split name -> hub split name; local file is f"{split}.jsonl.gz"
    validation_split: str
    max_length: int  # default max tokens
    label_names: list[str]


def _glue(name: str, text: str, pair: str, labels: list[str], splits: tuple[str, ...] = ("train", "validation"),
          validation: str = "validation") -> TaskSpec:
    return TaskSpec(name, "glue", name, text, pair, "label", {s: s for s in splits}, validation, 128, labels)


TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec("sst2", "glue", "sst2", "sentence", None, "label",
                     {"train": "train", "validation": "validation"}, "validation", 50, ["negative", "positive"]),
    "sst5": TaskSpec("sst5", "SetFit/sst5", None, "text", None, "label",
                     {"train": "train", "validation": "validation", "test": "test"}, "validation", 50,
                     ["very negative", "negative", "neutral", "positive", "very positive"]),
    "rte": _glue("rte", "sentence1", "sentence2", ["entailment", "not_entailment"]),
    "wnli": _glue("wnli", "sentence1", "sentence2", ["not_entailment", "entailment"]),
    "mrpc": _glue("mrpc", "sentence1", "sentence2", ["not_equivalent", "equivalent"]),
    "qnli": _glue("qnli", "question", "sentence", ["entailment", "not_entailment"]),
    "mnli": _glue("mnli", "premise", "hypothesis", ["entailment", "neutral", "contradiction"],
                  splits=("train", "validation_matched", "validation_mismatched"),
                  validation="validation_matched"),
    "imdb": TaskSpec("imdb", "imdb", None, "text", None, "label",
                     {"train": "train", "test": "test"}, "test", 256, ["negative", "positive"]),
}


@dataclass(frozen=True)
class DataSource:
    task: str | None = None  # a named task from TASKS
    dataset: str | None = None  # any Hugging Face hub dataset, "name" or "name:config"
    files: tuple[tuple[str, str], ...] = ()  # (split, path) pairs of the user's own files
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    data_dir: str | None = None  # holds <task>/<split>.jsonl.gz (the CLI fills it from $PROTOLM_DATA_DIR)

    def __post_init__(self) -> None:
        files = self.files.items() if isinstance(self.files, dict) else self.files or ()
        try:
            normalized = tuple((str(split), os.fspath(path)) for split, path in files)
        except (TypeError, ValueError) as exc:
            raise DataError(f"files must be (split, path) pairs, got {self.files!r}") from exc
        object.__setattr__(self, "files", normalized)

    def _kind(self) -> str:
        """"task", "dataset" or "files", after checking the source is well formed."""
        chosen = [kind for kind in ("task", "dataset", "files") if getattr(self, kind)]
        if len(chosen) != 1:
            got = " and ".join(chosen) if chosen else "none of them"
            raise DataError(f"a data source needs exactly one of task, dataset or files; got {got}")
        if self.task and self.task not in TASKS:
            raise DataError(f"unknown task {self.task!r}; known tasks: {', '.join(TASKS)}")
        splits = [split for split, _ in self.files]
        if len(set(splits)) != len(splits):
            raise DataError(f"a split is given more than one file: {', '.join(splits)}")
        return chosen[0]

    def describe(self) -> str:
        """Short human name for logs and manifests."""
        kind = self._kind()
        if kind == "task":
            return str(self.task)
        if kind == "dataset":
            return f"hub:{self.dataset}"
        return ", ".join(f"{split}={Path(path).name}" for split, path in self.files)


def load_split(source: DataSource, split: str, label_names: list[str] | None = None) -> TextClassificationData:
    """One split of ``source``. Load the training split first and pass its ``label_names``
    when loading the others, so that every split maps labels to the same ids."""
    kind = source._kind()
    if kind == "task":
        return _load_task(TASKS[str(source.task)], source, split, label_names)
    if kind == "dataset":
        return _load_hub_dataset(source, split, label_names)
    paths = dict(source.files)
    if split not in paths:
        raise DataError(f"no file given for split {split!r}; files were given for: {', '.join(paths)}")
    path = Path(paths[split]).expanduser()
    return _to_data(_read_table(path), source.text_column, source.text_pair_column, source.label_column,
                    label_names, fixed_names=None, where=str(path), name=path.name)


def default_max_length(source: DataSource) -> int:
    """The task's default max tokens; 128 for hub datasets and files."""
    return TASKS[str(source.task)].max_length if source._kind() == "task" else DEFAULT_MAX_LENGTH


def validation_split_name(source: DataSource) -> str:
    kind = source._kind()
    if kind == "task":
        return TASKS[str(source.task)].validation_split
    if kind == "files" and "validation" not in dict(source.files):
        raise DataError(f"no 'validation' file among the files given ({source.describe()})")
    return "validation"


# ---------------------------------------------------------------------------------------
# Sources


def _data_dir(source: DataSource) -> Path | None:
    return Path(source.data_dir).expanduser() if source.data_dir else None


def _load_task(spec: TaskSpec, source: DataSource, split: str,
               label_names: list[str] | None) -> TextClassificationData:
    if split not in spec.splits:
        raise DataError(f"task {spec.name!r} has no split {split!r}; known splits: {', '.join(spec.splits)}")
    name = f"{spec.name}:{split}"
    data_dir = _data_dir(source)
    if data_dir is not None:
        folder = data_dir / spec.name
        for path in (folder / f"{split}.jsonl.gz", folder / f"{split}.jsonl"):
            if path.is_file():
                names = _read_label_names(folder / "labels.json") or spec.label_names
                pair = "text_pair" if spec.pair_field else None
                return _to_data(_read_table(path), "text", pair, "label", label_names,
                                fixed_names=names, where=str(path), name=name)
        missing = f"not found under the data dir (looked for {folder / f'{split}.jsonl.gz'})"
    else:
        missing = f"not found locally (no data dir: pass --data-dir or set {env_name('data_dir')})"
    hub_name = spec.hub_path + (f"/{spec.hub_config}" if spec.hub_config else "")
    try:
        dataset = _hub_load(spec.hub_path, spec.hub_config, spec.splits[split])
    except Exception as exc:  # any failure to fetch: offline, unknown name, unknown split
        raise DataError(f"{name}: {missing}, and the Hugging Face hub could not be reached "
                        f"for {hub_name} split {spec.splits[split]!r}: {type(exc).__name__}: {exc}") from exc
    columns = [c for c in (spec.text_field, spec.pair_field, spec.label_field) if c]
    frame, _ = _hub_frame(dataset, columns, spec.label_field, where=f"hub dataset {hub_name} ({name})")
    return _to_data(frame, spec.text_field, spec.pair_field, spec.label_field, label_names,
                    fixed_names=spec.label_names, where=f"hub dataset {hub_name} ({name})", name=name)


def _load_hub_dataset(source: DataSource, split: str, label_names: list[str] | None) -> TextClassificationData:
    path, _, config = str(source.dataset).partition(":")
    where = f"hub dataset {source.dataset} split {split!r}"
    try:
        dataset = _hub_load(path, config or None, split)
    except Exception as exc:
        raise DataError(f"could not load {where} from the Hugging Face hub: {type(exc).__name__}: {exc}") from exc
    columns = [c for c in (source.text_column, source.text_pair_column, source.label_column) if c]
    frame, class_names = _hub_frame(dataset, columns, source.label_column, where)
    return _to_data(frame, source.text_column, source.text_pair_column, source.label_column, label_names,
                    fixed_names=class_names, where=where, name=f"{source.dataset}:{split}")


def _hub_load(path: str, config: str | None, split: str):
    import datasets

    return datasets.load_dataset(path, config, split=split)


def _hub_frame(dataset, columns: list[str], label_column: str, where: str):
    """(DataFrame of ``columns``, ClassLabel names of the label column or None)."""
    from datasets import ClassLabel

    _check_columns(list(dataset.column_names), columns, where)
    feature = dataset.features[label_column]
    class_names = list(feature.names) if isinstance(feature, ClassLabel) else None
    return dataset.select_columns(columns).to_pandas(), class_names


def _read_label_names(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: could not read label names: {exc}") from exc
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise DataError(f"{path}: expected a JSON list of label names, got {names!r}")
    return names


def _file_format(path: Path) -> tuple[str, bool]:
    """(format, gzipped) from the file name."""
    name = path.name.lower()
    gzipped = name.endswith(".gz")
    stem = name[:-3] if gzipped else name
    for extension, fmt in FILE_FORMATS.items():
        if stem.endswith(extension):
            return fmt, gzipped
    supported = ", ".join(FILE_FORMATS)
    raise DataError(f"{path}: unsupported file type; use one of {supported} (each optionally .gz)")


def _read_table(path: Path):
    """The file as a DataFrame. CSV / TSV cells are read as strings, exactly as written."""
    import pandas as pd

    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if not path.is_file():
        raise DataError(f"data file is not a file: {path}")
    fmt, gzipped = _file_format(path)
    if path.stat().st_size == 0:
        raise DataError(f"data file is empty: {path}")
    try:
        if fmt in ("csv", "tsv"):
            # dtype=str and no NA strings: a text "NA" or "007" stays as it is
            return pd.read_csv(path, sep="," if fmt == "csv" else "\t", dtype=str,
                               keep_default_na=False, encoding="utf-8-sig")
        if fmt in ("jsonl", "json"):
            return pd.read_json(path, lines=fmt == "jsonl", dtype=False, encoding="utf-8")
        if gzipped:
            with gzip.open(path, "rb") as handle:
                return pd.read_parquet(io.BytesIO(handle.read()))
        return pd.read_parquet(path)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"data file is empty: {path}") from exc
    except Exception as exc:  # parser, decoding and decompression errors alike
        raise DataError(f"{path}: could not be read as {fmt.upper()}: {type(exc).__name__}: {exc}") from exc


# ---------------------------------------------------------------------------------------
# Rows and labels


def _check_columns(available: list[str], wanted: list[str], where: str) -> None:
    for column in wanted:
        if column not in available:
            raise DataError(f"{where}: no column {column!r}; the columns are: {', '.join(map(str, available))}")


def _to_data(frame, text_column: str, pair_column: str | None, label_column: str,
             label_names: list[str] | None, fixed_names: list[str] | None,
             where: str, name: str) -> TextClassificationData:
    """Check the rows of ``frame`` and map its labels to ids. Rows are numbered from 1
    (the header, if any, is not counted)."""
    _check_columns(list(frame.columns), [c for c in (text_column, pair_column, label_column) if c], where)
    if len(frame) == 0:
        raise DataError(f"{where}: no rows")
    texts = _texts(frame[text_column].tolist(), text_column, where)
    pairs = _texts(frame[pair_column].tolist(), pair_column, where) if pair_column else None
    labels, names = _labels(frame[label_column].tolist(), label_column, label_names, fixed_names, where)
    return TextClassificationData(texts, pairs, labels, names, name)


def _texts(values: list[Any], column: str, where: str) -> list[str]:
    for row, value in enumerate(values, 1):
        if not isinstance(value, str):
            if value is None or (isinstance(value, float) and math.isnan(value)):
                raise DataError(f"{where}: row {row} has no text in column {column!r}")
            raise DataError(f"{where}: row {row} has {value!r} in column {column!r}, which is not text")
        if not value.strip():
            raise DataError(f"{where}: row {row} has empty text in column {column!r}")
    return values


def _labels(values: list[Any], column: str, label_names: list[str] | None, fixed_names: list[str] | None,
            where: str) -> tuple[np.ndarray, list[str]]:
    """Label ids and names. Integer labels are ids; string labels are names. Without known
    names, integer labels get names "0".."max" and string labels their sorted unique values
    (strings that are all integer literals, as CSV cells are, count as integers)."""
    clean: list[int | str] = [_label_value(value, row, column, where) for row, value in enumerate(values, 1)]
    if fixed_names is not None:
        if label_names is not None and list(label_names) != list(fixed_names):
            raise DataError(f"{where}: its label names {list(fixed_names)} differ from the expected "
                            f"{list(label_names)}")
        label_names = fixed_names

    if label_names is None:
        if all(isinstance(v, str) and _INT_LITERAL.fullmatch(v) for v in clean):
            clean = [int(v) for v in clean]
        if all(isinstance(v, int) for v in clean):
            for row, value in enumerate(clean, 1):
                if value < 0:  # type: ignore[operator]
                    raise DataError(f"{where}: row {row} has the negative label {value} in column {column!r}")
            label_names = [str(i) for i in range(max(clean) + 1)]  # type: ignore[type-var]
            return np.asarray(clean, dtype=np.int64), label_names
        if not all(isinstance(v, str) for v in clean):
            raise DataError(f"{where}: column {column!r} mixes integer and string labels")
        label_names = sorted(set(clean))  # type: ignore[arg-type]

    label_names = list(label_names)
    index = {label: i for i, label in enumerate(label_names)}
    ids = np.empty(len(clean), dtype=np.int64)
    for row, value in enumerate(clean, 1):
        if isinstance(value, str) and value in index:
            ids[row - 1] = index[value]
        elif isinstance(value, int) or _INT_LITERAL.fullmatch(value):
            if not 0 <= int(value) < len(label_names):
                raise DataError(f"{where}: label {value!r} (row {row}) is out of range for the "
                                f"{len(label_names)} known labels {label_names}")
            ids[row - 1] = int(value)
        else:
            raise DataError(f"{where}: unknown label {value!r} (row {row}); known labels: {label_names}")
    return ids, label_names


def _label_value(value: Any, row: int, column: str, where: str) -> int | str:
    if isinstance(value, str):
        if value == "":
            raise DataError(f"{where}: row {row} has no label in column {column!r}")
        return value
    if isinstance(value, (bool, np.bool_, int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            raise DataError(f"{where}: row {row} has no label in column {column!r}")
        if float(value).is_integer():
            return int(value)
    if value is None:
        raise DataError(f"{where}: row {row} has no label in column {column!r}")
    raise DataError(f"{where}: row {row} has the label {value!r} in column {column!r}; "
                    "labels must be integers or strings")
