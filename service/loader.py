"""Turns a validated bundle into a :class:`ServingModel`: the device's variant in ONNX Runtime,
the tokenizer, the exemplars and the example index (on the GPU when FAISS has GPUs)."""

from __future__ import annotations

import numpy as np

from core.errors import ConfigError
from service.backend import OnnxBackend, gpu_available
from service.served_bundle import ServedBundle
from service.config import ServerConfig
from service.engine import ExampleLookup, ServingModel
from service.preprocess import InputLimits, Preprocessor


def use_gpu(device: str) -> bool:
    if device == "gpu" and not gpu_available():
        raise ConfigError("--device gpu, but ONNX Runtime has no CUDA execution provider (install onnxruntime-gpu)")
    return device == "gpu" or (device == "auto" and gpu_available())


def faiss_on_gpu(index):
    """The index moved to GPU 0 when this FAISS build has GPUs, else unchanged; and its placement."""
    import faiss

    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        resources = faiss.StandardGpuResources()
        gpu_index = faiss.index_cpu_to_gpu(resources, 0, index)
        gpu_index.referenced_resources = resources  # keep the resources alive with the index
        return gpu_index, "gpu"
    return index, "cpu"


def load_serving_model(bundle_dir: str, config: ServerConfig) -> ServingModel:
    if not bundle_dir:
        raise ConfigError("no bundle directory: pass BUNDLE_DIR or set PROTOLM_BUNDLE_DIR")
    bundle = ServedBundle.load(bundle_dir)
    manifest = bundle.manifest
    gpu = use_gpu(config.device)
    variant = bundle.choose_variant("gpu" if gpu else "cpu", config.variant)
    session = bundle.session(
        variant, OnnxBackend.providers(gpu), OnnxBackend.session_options(config.intra_op_threads, config.inter_op_threads)
    )
    backend = OnnxBackend(session, use_gpu=gpu, uses_token_type_ids=manifest.architecture.uses_token_type_ids)
    info = manifest.indexes.examples
    index, placement = faiss_on_gpu(bundle.example_index())
    store = bundle.examples()
    examples = ExampleLookup(index, store.__getitem__, manifest.metric, f"{info.kind} ({placement}, {info.count} examples)")
    return ServingModel(
        name=manifest.model.name,
        version=manifest.model.version,
        labels=list(manifest.labels),
        is_pair=manifest.is_pair,
        max_length=manifest.max_length,
        encoder=manifest.encoder,
        variant=variant.name,
        format_version=manifest.format_version,
        metrics=manifest.numeric_metrics(),
        preprocessor=Preprocessor(
            bundle.tokenizer(), manifest.is_pair, InputLimits(config.max_inputs_per_request, config.max_text_chars)
        ),
        backend=backend,
        prototype_class=np.asarray(manifest.architecture.prototype_class, dtype=np.int64),
        exemplars=bundle.exemplars,
        last_layer=bundle.last_layer(),
        examples=examples,
    )
