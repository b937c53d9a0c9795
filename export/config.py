"""``protolm export`` options: every one a flag and a ``PROTOLM_*`` variable."""

from __future__ import annotations

from dataclasses import dataclass

from export.indexes import INDEX_KINDS
from core.options import option


@dataclass(frozen=True)
class ExportConfig:
    variants: str = option("optimized,int8,fp16", "comma-separated variants to build besides fp32: optimized, int8 (CPU), fp16 (GPU); empty for none")
    min_agreement: float = option(0.99, "a variant is servable when its predictions agree with the PyTorch model's on at least this share of the validation set")
    max_accuracy_drop: float = option(0.003, "a variant is servable only when its validation accuracy is also at most this far below the PyTorch model's (0.003: 0.3 points)")
    example_index: str = option("flat", "index over the training examples: flat (exact), ivf or hnsw (approximate, for large training sets)", choices=INDEX_KINDS)
    ivf_nprobe: int = option(16, "IVF lists searched per query")
    hnsw_m: int = option(32, "HNSW neighbours per node")
    hnsw_ef_search: int = option(128, "HNSW candidates kept while searching")
    opset: int = option(17, "ONNX opset (at least 17)")
    batch_size: int = option(64, "batch size of the encoding and measuring passes")
    model_name: str | None = option(None, "model name in the manifest; default: the model directory's name")
    model_version: str | None = option(None, "model version in the manifest; default: export time and a hash of the weights")
    data_dir: str | None = option(None, "where named-task data lives, if not where training.json says")
    overwrite: bool = option(False, "replace an existing bundle directory")
    progress: bool = option(True, "show progress bars")
