"""``protolm predict``: a file of texts through a bundle, written as JSONL or Parquet.

Torch-free, on the service's own pieces: the bundle is loaded as ``protolm serve`` loads it
(:func:`service.loader.load_serving_model`), inputs are tokenised by the service's bounded
:class:`~service.preprocess.Preprocessor`, cut into length-sorted batches by the batcher's
rule (:func:`service.batcher.length_sorted_batches`) and run by its ONNX Runtime backend,
and each row's result is the engine's :class:`~core.explanation.Classification` or
:class:`~core.explanation.Explanation`. Only the asyncio batcher is left out: one caller with
a whole file needs no queue, so a window of rows is tokenised at once, sorted by length,
run batch by batch, and put back in input order.

Every input row gets exactly one output line, in input order, numbered from 1 (``row``).
The output resumes: a re-run skips the rows it already holds (JSONL: its complete lines, a
half-written last line is cut off; Parquet: the parts written so far, in ``OUTPUT.parts/``,
joined into OUTPUT when the input is done). A bad row (missing, empty, not text) stops the
run with a message naming its row and column, after the rows before it are saved, or with
``--skip-bad-rows`` becomes an ``error`` line. With ``--ray`` the same records come from
Ray Data actors (``service.predict_ray``) and are written here in the same way.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ConfigError, DataError, InvalidInputError
from core.explanation import Classification, Explanation
from service.config import (
    INPUT_FORMATS,
    OUTPUT_FORMATS,
    PredictConfig,
    ServerConfig,
    file_format,
)

log = logging.getLogger(__name__)
DEFAULT_PAIR_COLUMN = "text_pair"


# ---------------------------------------------------------------------------- input


@dataclass(frozen=True)
class Row:
    number: int  # 1 = the first data row (after a CSV header)
    text: Any
    pair: Any = None
    id: Any = None


def bad_value(value: Any, column: str) -> str | None:
    """Why ``value`` cannot be classified, naming ``column``; None when it can."""
    if value is None:
        return f"column {column!r} is missing or null"
    if not isinstance(value, str):
        return f"column {column!r} is {type(value).__name__} {str(value)[:40]!r}, not text"
    if not value.strip():
        return f"column {column!r} is empty"
    return None


class InputFile:
    """Reads rows of a CSV / TSV / JSONL (each maybe gzipped) or Parquet file, streaming."""

    def __init__(self, path: str, text_column: str, pair_column: str | None, id_column: str | None):
        self.path = path
        self.format = file_format(path, INPUT_FORMATS, "input")
        self.local = "://" not in path  # Ray Data also reads s3://, gs://, hdfs://... paths
        if self.local and not os.path.isfile(path):
            raise DataError(f"{path}: no such file")
        self.text_column = text_column
        self.pair_column = pair_column
        self.id_column = id_column

    @property
    def columns(self) -> list[str]:
        return [c for c in (self.text_column, self.pair_column, self.id_column) if c is not None]

    def _open_text(self):
        if self.path.lower().endswith(".gz"):
            return io.TextIOWrapper(gzip.open(self.path), encoding="utf-8", newline="")
        return open(self.path, encoding="utf-8", newline="")

    def _check_columns(self, present: Iterable[str]) -> None:
        present = list(present)
        missing = [c for c in self.columns if c not in present]
        if missing:
            raise DataError(f"{self.path}: no column {missing[0]!r}; it has {', '.join(map(repr, present)) or 'none'} (see --text-column, --pair-column, --id-column)")

    def count(self) -> int | None:
        """Rows in the file when that is cheap to know (a local Parquet or JSONL file), else None."""
        if not self.local:
            return None
        if self.format == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(self.path).metadata.num_rows
        if self.format == "jsonl":
            with self._open_text() as handle:
                return sum(1 for line in handle if line.strip())
        return None

    def rows(self, start: int = 0) -> Iterator[Row]:
        """Rows after the first ``start``."""
        if not self.local:
            raise ConfigError(f"{self.path}: only --ray reads a remote file; here, copy it to this machine first")
        reader = {"csv": self._delimited, "tsv": self._delimited, "jsonl": self._jsonl, "parquet": self._parquet}[self.format]
        yield from reader(start)

    def _make(self, number: int, record: dict) -> Row:
        get = record.get
        return Row(number, get(self.text_column), get(self.pair_column) if self.pair_column else None, get(self.id_column) if self.id_column else None)

    def _delimited(self, start: int) -> Iterator[Row]:
        with self._open_text() as handle:
            reader = csv.DictReader(handle, delimiter="\t" if self.format == "tsv" else ",")
            self._check_columns(reader.fieldnames or [])
            for number, record in enumerate(reader, 1):
                if number > start:
                    yield self._make(number, record)

    def _jsonl(self, start: int) -> Iterator[Row]:
        with self._open_text() as handle:
            number = 0
            for line_number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                number += 1
                if number <= start:
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield Row(number, _Unreadable(f"line {line_number} is not valid JSON ({exc.msg})"))
                    continue
                if not isinstance(record, dict):
                    yield Row(number, _Unreadable(f"line {line_number} is a JSON {type(record).__name__}, not an object"))
                    continue
                if number == 1:
                    self._check_columns(record)
                yield self._make(number, record)

    def _parquet(self, start: int) -> Iterator[Row]:
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(self.path)
        self._check_columns(parquet.schema_arrow.names)
        number = 0
        for batch in parquet.iter_batches(batch_size=4096, columns=self.columns):
            if number + batch.num_rows <= start:
                number += batch.num_rows
                continue
            for record in batch.to_pylist():
                number += 1
                if number > start:
                    yield self._make(number, record)


@dataclass(frozen=True)
class _Unreadable:
    """A row that could not even be parsed; its text is this marker."""

    reason: str


def windows(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    window: list[Row] = []
    for row in rows:
        window.append(row)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


# ---------------------------------------------------------------------------- model


def server_config(config: PredictConfig, intra_op_threads: int | None = None) -> ServerConfig:
    """The settings :func:`service.loader.load_serving_model` reads, from ours."""
    return ServerConfig(
        bundle_dir=config.bundle_dir,
        device=config.device,
        variant=config.variant,
        intra_op_threads=config.intra_op_threads if intra_op_threads is None else intra_op_threads,
        metrics_port=-1,
    )


class Predictor:
    """One bundle, loaded and warmed as the server loads it; rows in, one record per row out."""

    def __init__(self, config: PredictConfig, intra_op_threads: int | None = None):
        from service.engine import ExplainOptions
        from service.loader import load_serving_model

        self.config = config
        self.model = load_serving_model(config.bundle_dir, server_config(config, intra_op_threads))
        self.model.backend.warmup()
        self.options = ExplainOptions(top_prototypes=config.top_prototypes, nearest_examples=config.nearest_examples)
        self.pair_column = pair_column(config, self.model.is_pair)
        if config.explain and config.nearest_examples and self.model.examples is None:
            raise ConfigError("this bundle has no training-example index; use --nearest-examples 0")

    def check(self, text: Any, pair: Any) -> str | None:
        if isinstance(text, _Unreadable):
            return text.reason
        reason = bad_value(text, self.config.text_column)
        if reason is None and self.model.is_pair:
            reason = bad_value(pair, self.pair_column)
        return reason

    def predict(self, rows: Sequence[tuple[Any, Any]]) -> list[dict]:
        """(text, pair) per row; a record per row, in order: the prediction or ``{"error": why}``."""
        from service.batcher import length_sorted_batches
        from service.preprocess import TextInput

        records: list[dict | None] = [None] * len(rows)
        good: list[int] = []
        for i, (text, pair) in enumerate(rows):
            reason = self.check(text, pair)
            if reason is None:
                good.append(i)
            else:
                records[i] = {"error": reason}
        inputs = [TextInput(rows[i][0], rows[i][1] if self.model.is_pair else None) for i in good]
        encoded = self._encode(inputs, good, records)
        kept = [(i, e) for i, e in zip(good, encoded) if e is not None]
        lengths = [e.length for _, e in kept]
        for batch in length_sorted_batches(lengths, self.config.max_batch_size, self.config.max_batch_tokens, self.config.max_padding):
            items = [kept[k] for k in batch]
            outputs = self.model.backend.run([e for _, e in items])
            neighbours: list[list] = [[] for _ in items]
            if self.config.explain and self.options.nearest_examples:
                neighbours = self.model.examples.search(np.stack([o.pooled for o in outputs]), self.options.nearest_examples)
            for (i, e), o, n in zip(items, outputs, neighbours):
                records[i] = self._record(e, o, n)
        return records  # type: ignore[return-value]

    def _encode(self, inputs, positions: list[int], records: list) -> list:
        """The window's inputs tokenised at once; if one has no readable token, one by one,
        so only that row is marked."""
        if not inputs:
            return []
        try:
            return self.model.preprocessor.encode(inputs)
        except InvalidInputError:
            encoded = []
            for position, item in zip(positions, inputs):
                try:
                    encoded.append(self.model.preprocessor.encode([item])[0])
                except InvalidInputError as exc:
                    column = self.pair_column if ".text_pair" in str(exc) else self.config.text_column
                    records[position] = {"error": f"column {column!r} has no readable text (blank or invisible characters only)"}
                    encoded.append(None)
            return encoded

    def _record(self, encoded, outputs, neighbours) -> dict:
        from service.engine import classification, explanation

        if not self.config.explain:
            return classification_record(classification(self.model, encoded, outputs))
        return explanation_record(explanation(self.model, encoded, outputs, self.options, neighbours), self.config.top_words, self.model.is_pair)


def pair_column(config: PredictConfig, is_pair: bool) -> str | None:
    if not is_pair:
        if config.pair_column is not None:
            raise ConfigError(f"--pair-column {config.pair_column!r}, but this bundle classifies single texts")
        return None
    return config.pair_column or DEFAULT_PAIR_COLUMN


def classification_record(c: Classification) -> dict:
    return {"label": c.label, "probabilities": {name: round(p, 6) for name, p in c.probabilities.items()}, "truncated": c.truncated}


def _exemplar(exemplar) -> dict:
    if exemplar is None:
        return {"exemplar_id": None, "exemplar": None}
    pair = {} if exemplar.text_pair is None else {"exemplar_pair": exemplar.text_pair}
    return {"exemplar_id": exemplar.example_id, "exemplar": exemplar.text, **pair}


def explanation_record(e: Explanation, top_words: int, is_pair: bool = False) -> dict:
    """The classification, the ``top_words`` words of highest attention (with the text they
    are in, 0 or 1, for a pair model), the evidence and the nearest prototypes, each with its
    exemplar: what ``protolm explain`` prints, as plain JSON-able data."""
    record = classification_record(e.classification)
    words = sorted(e.weights, key=lambda w: -w.weight)[:top_words]
    record["top_words"] = [{"word": w.text, "weight": round(w.weight, 4), **({"segment": w.segment} if is_pair else {})} for w in words]
    if e.evidence is not None:
        ev = e.evidence

        def part(c) -> dict:
            return {"prototype": c.prototype_id, "label": c.label, "contribution": round(c.contribution, 4), **_exemplar(c.exemplar)}

        record["evidence"] = {
            "label": ev.label, "versus": ev.versus, "margin": round(ev.margin, 4),
            "supporting": [part(c) for c in ev.supporting], "opposing": [part(c) for c in ev.opposing],
        }
    record["prototypes"] = [
        {"prototype": p.prototype_id, "label": p.label, "similarity": round(p.similarity, 4), **_exemplar(p.exemplar)}
        for p in e.prototypes
    ]
    if e.nearest_examples:
        record["nearest_examples"] = [
            {"example_id": n.example_id, "text": n.text, "text_pair": n.text_pair, "label": n.label, "distance": round(n.distance, 4)}
            for n in e.nearest_examples
        ]
    return record


# ---------------------------------------------------------------------------- output


class JsonlOutput:
    """Appends one line per row; resuming counts its complete lines and cuts a partial last one."""

    def __init__(self, path: str, overwrite: bool):
        self.path = Path(path)
        if overwrite and self.path.exists():
            self.path.unlink()
        self.rows = self._complete_rows()
        self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())

    def _complete_rows(self) -> int:
        if not self.path.exists():
            return 0
        with open(self.path, "rb+") as handle:
            data = handle.read()
            end = data.rfind(b"\n") + 1
            if end < len(data):
                log.warning("%s: cut a half-written last line (%d bytes)", self.path, len(data) - end)
                handle.truncate(end)
        rows = data.count(b"\n", 0, end)
        if rows:
            last = data[data.rfind(b"\n", 0, end - 1) + 1: end]
            try:
                number = json.loads(last).get("row")
            except (json.JSONDecodeError, AttributeError):
                number = None
            if number != rows:
                raise DataError(f"{self.path}: exists but its last line is not row {rows} of a `protolm predict` output; pass --overwrite to replace it")
        return rows

    def write(self, records: list[dict]) -> None:
        self._handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        self._handle.flush()
        self.rows += len(records)

    def close(self, complete: bool) -> None:
        self._handle.close()


class ParquetOutput:
    """Writes each window as a part in ``OUTPUT.parts/`` (atomically); resuming counts the
    parts' rows; when the input is done, the parts become OUTPUT."""

    def __init__(self, path: str, overwrite: bool):
        import pyarrow.parquet as pq

        self.path = Path(path)
        self.parts = Path(f"{path}.parts")
        if overwrite:
            shutil.rmtree(self.parts, ignore_errors=True)
            self.path.unlink(missing_ok=True)
        self.parts.mkdir(parents=True, exist_ok=True)
        for stale in self.parts.glob("*.tmp"):
            stale.unlink()
        if self.path.exists():  # a finished output of a shorter input: continue after it
            self.path.rename(self.parts / "part-000000.parquet")
        self.files = sorted(self.parts.glob("part-*.parquet"))
        self.rows = sum(pq.ParquetFile(f).metadata.num_rows for f in self.files)

    def write(self, records: list[dict]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not records:
            return
        keys: dict[str, None] = {}
        for r in records:
            keys.update(dict.fromkeys(r))
        keys.setdefault("error")
        table = pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in records])
        target = self.parts / f"part-{len(self.files):06d}.parquet"
        pq.write_table(table, f"{target}.tmp")
        os.replace(f"{target}.tmp", target)
        self.files.append(target)
        self.rows += len(records)

    def close(self, complete: bool) -> None:
        if not complete:
            return  # the parts stay for the next run to resume from
        import pyarrow as pa
        import pyarrow.parquet as pq

        schemas = [pq.read_schema(f) for f in self.files]
        if schemas:
            schema = pa.unify_schemas(schemas, promote_options="permissive")
            with pq.ParquetWriter(f"{self.path}.tmp", schema) as writer:
                for f in self.files:
                    writer.write_table(_conform(pq.read_table(f), schema))
            os.replace(f"{self.path}.tmp", self.path)
        shutil.rmtree(self.parts)


def _conform(table, schema):
    """``table`` with ``schema``'s columns in its order; absent or all-null ones filled with nulls."""
    import pyarrow as pa

    columns = []
    for field in schema:
        column = table.column(field.name) if field.name in table.column_names else None
        if column is not None and column.type == field.type:
            columns.append(column)  # (casting a struct with an all-null child to itself breaks it)
        elif column is not None and not pa.types.is_null(column.type):
            columns.append(column.cast(field.type))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def open_output(path: str, overwrite: bool):
    if not path:
        raise ConfigError("no output file: pass OUTPUT (.jsonl or .parquet)")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return {"jsonl": JsonlOutput, "parquet": ParquetOutput}[file_format(path, OUTPUT_FORMATS, "output")](path, overwrite)


# ---------------------------------------------------------------------------- progress and run


class Progress:
    """One line on stderr: rows done, rate, time left. Redrawn in place on a terminal, a new
    line every ``every`` seconds otherwise (logs)."""

    def __init__(self, total: int | None, start: int, enabled: bool, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.total = total
        self.start_rows = self.rows = start
        self.started = self.shown = time.monotonic()
        self.shown_rows = -1
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = 0.25 if self.tty else 10.0

    def update(self, rows: int) -> None:
        self.rows += rows
        if self.enabled and time.monotonic() - self.shown >= self.every:
            self._show(end="\r" if self.tty else "\n")

    def _show(self, end: str) -> None:
        self.shown, self.shown_rows = time.monotonic(), self.rows
        rate = (self.rows - self.start_rows) / max(self.shown - self.started, 1e-9)
        line = f"predict: {self.rows:,}"
        if self.total:
            line += f"/{self.total:,} rows ({self.rows / self.total:.0%})"
            if rate > 0 and self.total > self.rows:
                line += f", {rate:,.0f} rows/s, {(self.total - self.rows) / rate:,.0f} s left"
            else:
                line += f", {rate:,.0f} rows/s"
        else:
            line += f" rows, {rate:,.0f} rows/s"
        self.stream.write(line + end)
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled and (self.tty or self.shown_rows != self.rows):
            self._show(end="\n")


@dataclass(frozen=True)
class Summary:
    rows: int  # rows written in this run
    skipped: int  # of them, bad rows recorded as errors
    resumed_from: int  # rows the output already held
    seconds: float
    output: str

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def local_records(config: PredictConfig, source: InputFile, start: int) -> Iterator[tuple[list[Row], list[dict]]]:
    """Windows of rows with their records, computed in this process: ``config.workers``
    windows at once on one loaded bundle (the tokenizer and ONNX Runtime release the GIL, so
    one window's tokenising overlaps another's forward passes), handed back in input order."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    # the workers share the cores: ONNX Runtime threads that outnumber them only spin
    threads = config.intra_op_threads or max(1, (os.cpu_count() or 1) // config.workers)
    predictor = Predictor(config, intra_op_threads=threads)
    with ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="protolm-predict") as pool:
        pending: deque = deque()
        for window in windows(source.rows(start), config.window):
            pending.append((window, pool.submit(predictor.predict, [(r.text, r.pair) for r in window])))
            if len(pending) > config.workers:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()


def run(config: PredictConfig) -> Summary:
    """Classify (or explain) ``config.input`` into ``config.output``, resuming it."""
    from core.bundle import read_manifest

    if not config.input:
        raise ConfigError("no input file: pass INPUT (.csv, .tsv, .jsonl or .parquet)")
    manifest = read_manifest(config.bundle_dir, verify_checksums=False)
    source = InputFile(config.input, config.text_column, pair_column(config, manifest.is_pair), config.id_column)
    output = open_output(config.output, config.overwrite)
    start = output.rows
    total = source.count()
    if start:
        log.info("%s: resuming after the %d rows it holds", config.output, start)
    progress = Progress(total, start, config.progress)
    started = time.monotonic()
    skipped = 0
    complete = False
    if config.ray:
        from service.predict_ray import ray_records

        batches = ray_records(config, source, start)
    else:
        batches = local_records(config, source, start)
    try:
        for rows, records in batches:
            out = []
            for row, record in zip(rows, records):
                if "error" in record:
                    if not config.skip_bad_rows:
                        output.write(out)
                        raise DataError(
                            f"{config.input}: row {row.number}: {record['error']}. Fix it, or pass --skip-bad-rows to record it and go on "
                            f"(the {output.rows:,} rows before it are in {config.output}; a re-run resumes there)"
                        )
                    skipped += 1
                out.append({"row": row.number, **({"id": row.id} if config.id_column else {}), **record})
            output.write(out)
            progress.update(len(out))
        complete = True
    finally:
        batches.close()  # stops the workers (or Ray) now, also after a bad row
        output.close(complete)
    progress.finish()
    return Summary(output.rows - start, skipped, start, time.monotonic() - started, config.output)


def describe(summary: Summary) -> str:
    line = f"{summary.output}: {summary.rows:,} rows in {summary.seconds:.1f} s, loading included ({summary.rows_per_second:,.1f} rows/s)"
    if summary.resumed_from:
        line += f", after the {summary.resumed_from:,} rows already there"
    if summary.skipped:
        line += f"; {summary.skipped:,} bad rows recorded with an error"
    return line

