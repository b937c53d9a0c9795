"""``protolm predict --ray``: the same records, computed by Ray Data actors, one bundle each.

Ray Data reads the input (``read_csv`` / ``read_json`` / ``read_parquet``, every column as
read by Arrow), and ``map_batches`` hands windows of rows to a pool of actors, each holding
one :class:`service.predict.Predictor` (the bundle loaded once per actor, then the same
tokenising, length-sorted batches and records as a local run). The order of the rows is
preserved, so this process numbers them, writes them, resumes and stops at a bad row exactly
as a local run does. The workers need ``protolm[serve]`` installed, as the driver has it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

from core.errors import ConfigError
from service.config import PredictConfig
from service.predict import InputFile, Predictor, Row

log = logging.getLogger(__name__)
# Reading reserves no CPU: the actors hold every CPU by default (the model is the work), and a
# read that waited for one would never run.
READ_CPUS = 0


class BundleActor:
    """One bundle per Ray actor; a batch of input rows in, a JSON record per row out."""

    def __init__(self, config: PredictConfig, text_column: str, pair_column: str | None, id_column: str | None, threads: int):
        self.predictor = Predictor(config, intra_op_threads=threads)
        self.text_column, self.pair_column, self.id_column = text_column, pair_column, id_column

    def __call__(self, batch):
        import pyarrow as pa

        texts = batch.column(self.text_column).to_pylist()
        pairs = batch.column(self.pair_column).to_pylist() if self.pair_column else [None] * len(texts)
        records = self.predictor.predict(list(zip(texts, pairs)))
        columns = {"record": [json.dumps(r, ensure_ascii=False) for r in records]}
        if self.id_column:
            columns["id"] = [json.dumps(v, ensure_ascii=False, default=str) for v in batch.column(self.id_column).to_pylist()]
        return pa.table(columns)


def connect(address: str) -> bool:
    """Join (or start) the Ray cluster; True when this call started Ray and should stop it."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray Data: pip install 'protolm[ray]'") from None
    if ray.is_initialized():
        return False
    if address == "local":
        ray.init(include_dashboard=False, logging_level=logging.WARNING)
    else:
        ray.init(address=address, logging_level=logging.WARNING)
    return True


def read(source: InputFile):
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import ray.data

    columns = source.columns
    if source.format in ("csv", "tsv"):
        return ray.data.read_csv(
            source.path,
            num_cpus=READ_CPUS,
            parse_options=pacsv.ParseOptions(delimiter="\t" if source.format == "tsv" else ","),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in columns}, include_columns=columns),
        )
    if source.format == "jsonl":
        return ray.data.read_json(source.path, num_cpus=READ_CPUS).select_columns(columns)  # Arrow reads JSON lines
    return ray.data.read_parquet(source.path, columns=columns, num_cpus=READ_CPUS)


def ray_records(config: PredictConfig, source: InputFile, start: int) -> Iterator[tuple[list[Row], list[dict]]]:
    """Windows of rows (numbered here, in input order) with their records from the actors."""
    import ray
    import ray.data

    if source.local:
        for _ in source.rows():  # a missing column is named here, before any actor starts
            break
    started = connect(config.ray)
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        dataset = read(source)
        if start:
            dataset = dataset.split_at_indices([start])[1]
        cpus = ray.cluster_resources().get("CPU", 1.0)
        actors = config.ray_actors or max(1, int(cpus // config.ray_cpus_per_actor))
        threads = max(1, int(config.ray_cpus_per_actor))
        log.info("Ray: %d actors of %g CPUs on a cluster of %g CPUs", actors, config.ray_cpus_per_actor, cpus)
        predictions = dataset.map_batches(
            BundleActor,
            fn_constructor_kwargs={
                "config": config, "text_column": source.text_column, "pair_column": source.pair_column,
                "id_column": source.id_column, "threads": threads,
            },
            batch_size=config.window,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=config.ray_cpus_per_actor,
        )
        number = start
        for batch in predictions.iter_batches(batch_size=None, batch_format="pyarrow"):
            records = [json.loads(r) for r in batch.column("record").to_pylist()]
            ids = [json.loads(v) for v in batch.column("id").to_pylist()] if source.id_column else [None] * len(records)
            rows = [Row(number + k + 1, None, None, i) for k, i in enumerate(ids)]
            number += len(records)
            yield rows, records
    finally:
        if started:
            ray.shutdown()
