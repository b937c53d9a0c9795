"""A validated bundle as the service opens it: its ONNX Runtime sessions, tokenizer, FAISS
indexes, example store and exemplars, and the smoke test of ``protolm bundle verify``.

The format itself (files, manifest, exemplars, examples) is ``core.bundle``; this module
adds what needs onnxruntime, tokenizers and faiss, each imported by the method that uses it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

import numpy as np

from core.bundle import (
    EXAMPLE_OFFSETS_FILE,
    EXAMPLES_FILE,
    EXEMPLARS_FILE,
    FULL_PRECISION_VARIANTS,
    GRAPH_OUTPUTS,
    LAST_LAYER_FILE,
    MANIFEST_FILE,
    TOKENIZER_FILE,
    VARIANT_PREFERENCE,
    ExampleStore,
    Exemplar,
    IndexInfo,
    Manifest,
    Variant,
    read_exemplars,
    read_last_layer,
    read_manifest,
)
from core.errors import BundleError, ConfigError
from core.graph_inputs import configure_tokenizer, encode_batch

# How far the graph's logits may be from last layer x similarities: fp32 heads (fp32,
# optimized, int8: its head stays fp32) and the fp16 graph.
LAST_LAYER_TOLERANCE = {False: 1e-3, True: 5e-2}


class ServedBundle:
    """A checked bundle directory; the accessors open its parts."""

    def __init__(self, path: Path, manifest: Manifest):
        self.path = path
        self.manifest = manifest

    @classmethod
    def load(cls, path: str | Path, verify_checksums: bool = True) -> "ServedBundle":
        """Read and validate; raises :class:`BundleError` naming the first bad file."""
        return cls(Path(path), read_manifest(path, verify_checksums))

    def file(self, name: str) -> Path:
        return self.path / name

    def tokenizer(self):
        """A ``tokenizers.Tokenizer`` that tokenises exactly as the model was trained."""
        from tokenizers import Tokenizer

        return configure_tokenizer(Tokenizer.from_file(str(self.file(TOKENIZER_FILE))), self.manifest.max_length)

    @functools.cached_property
    def _tokenizer(self):
        return self.tokenizer()

    def encode(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The graph's inputs for ``texts`` (and ``text_pairs``), padded to the longest."""
        if (text_pairs is not None) != self.manifest.is_pair:
            raise ConfigError(f"this bundle classifies {'text pairs' if self.manifest.is_pair else 'single texts'}")
        return encode_batch(self._tokenizer, texts, text_pairs, self.manifest.graph.inputs)

    def choose_variant(self, device: str = "cpu", preferred: str | None = None) -> Variant:
        """``preferred`` if given (it must be present, servable and fit the device), else the
        first servable variant in the device's order of preference."""
        if device not in VARIANT_PREFERENCE:
            raise ConfigError(f"device must be one of {', '.join(VARIANT_PREFERENCE)}, got {device!r}")
        by_name = {v.name: v for v in self.manifest.variants}
        if preferred is not None:
            variant = by_name.get(preferred)
            if variant is None:
                raise ConfigError(f"variant {preferred!r} is not in this bundle; it has {', '.join(by_name)}")
            if not variant.servable:
                lost = "" if variant.accuracy_drop is None else f" and it lost {100 * variant.accuracy_drop:.2f} points of accuracy"
                raise ConfigError(f"variant {preferred!r} is not servable: its predictions agree with the PyTorch model's on {variant.agreement:.2%} "
                                  f"of the validation set{lost}")
            if variant.device not in ("any", device):
                raise ConfigError(f"variant {preferred!r} is built for the {variant.device}, not the {device}")
            return variant
        for name in VARIANT_PREFERENCE[device]:
            if name in by_name and by_name[name].servable:
                return by_name[name]
        raise BundleError(f"{MANIFEST_FILE}: no servable variant for the {device}")

    def session(self, variant: Variant, providers: Sequence[str] = ("CPUExecutionProvider",), options=None):
        """An ONNX Runtime session over ``variant``'s graph."""
        import onnxruntime

        try:
            return onnxruntime.InferenceSession(str(self.file(variant.file)), sess_options=options, providers=list(providers))
        except Exception as exc:  # onnxruntime raises its own exception types for a bad graph
            raise BundleError(f"{variant.file}: ONNX Runtime cannot load it ({exc})") from exc

    def _read_index(self, info: IndexInfo):
        import faiss

        try:
            index = faiss.read_index(str(self.file(info.file)))
        except RuntimeError as exc:
            raise BundleError(f"{info.file}: FAISS cannot read it ({exc})") from exc
        if index.ntotal != info.count or index.d != self.manifest.architecture.hidden_size:
            raise BundleError(f"{info.file}: {index.ntotal} vectors of size {index.d}, the manifest says {info.count}")
        return index

    def prototype_index(self):
        """FAISS index over the prototype vectors; id = prototype number."""
        return self._read_index(self.manifest.indexes.prototypes)

    def example_index(self):
        """FAISS index over the training examples' pooled encodings; id = row of the example store."""
        return self._read_index(self.manifest.indexes.examples)

    @functools.cached_property
    def prototype_vectors(self) -> np.ndarray:
        """The prototypes as the index holds them (unit length under a cosine metric); read once."""
        index = self.prototype_index()
        return index.reconstruct_n(0, index.ntotal)

    def exemplar_distances(self, session, batch_size: int = 64) -> np.ndarray:
        """Per exemplar, the distance from its prototype to its text's encoding by ``session``."""
        exemplars = self.exemplars
        pooled = []
        for start in range(0, len(exemplars), batch_size):
            chunk = exemplars[start : start + batch_size]
            feeds = self.encode([e.text for e in chunk], [e.text_pair or "" for e in chunk] if self.manifest.is_pair else None)
            pooled.append(session.run(["pooled"], feeds)[0])
        prototypes = self.prototype_vectors[[e.prototype for e in exemplars]]
        return self.manifest.metric.row_distances(np.concatenate(pooled), prototypes)

    def _check_exemplars(self, variant: Variant, session) -> str:
        """After push every prototype is its exemplar's encoding (distance 0); otherwise it is
        at the distance the bundle records. Reduced-precision graphs are measured, not held to it."""
        measured = self.exemplar_distances(session)
        if variant.name not in FULL_PRECISION_VARIANTS:
            return f"{variant.file}: exemplar encodings at distance <= {measured.max():.2g} from their prototypes (reduced precision, not checked)"
        pushed = self.manifest.architecture.prototypes_pushed
        expected = np.zeros_like(measured) if pushed else np.array([e.distance for e in self.exemplars])
        tolerance = self.manifest.metric.push_tolerance(self.prototype_vectors)[[e.prototype for e in self.exemplars]]
        worst = int(np.argmax(np.abs(measured - expected) - tolerance))
        if abs(measured[worst] - expected[worst]) > tolerance[worst]:
            exemplar = self.exemplars[worst]
            raise BundleError(
                f"{EXEMPLARS_FILE}: prototype {exemplar.prototype} is at distance {measured[worst]:.3g} from the encoding of "
                f"its exemplar (example {exemplar.example_id}) in {variant.file}; expected {expected[worst]:.3g} +- {tolerance[worst]:.0e}"
            )
        if pushed:
            return f"{variant.file}: every prototype is its exemplar's encoding (distance <= {measured.max():.1g}; tolerance {tolerance.max():.0e})"
        return (f"{variant.file}: prototypes not pushed: exemplar encodings at distance {np.median(measured):.3f} (median) "
                f"to {measured.max():.3f} (max) from their prototypes, as recorded")

    def examples(self) -> ExampleStore:
        store = ExampleStore(self.path)
        if len(store) != self.manifest.indexes.examples.count:
            raise BundleError(f"{EXAMPLE_OFFSETS_FILE}: {len(store)} rows, the example index has {self.manifest.indexes.examples.count}")
        return store

    def last_layer(self) -> np.ndarray | None:
        """The weights that turn similarities into logits; None before bundle format 3."""
        return read_last_layer(self.path, self.manifest)

    @functools.cached_property
    def exemplars(self) -> tuple[Exemplar, ...]:
        """Per prototype, the training example it was projected onto."""
        exemplars = read_exemplars(self.file(EXEMPLARS_FILE))
        if len(exemplars) != self.manifest.architecture.num_prototypes:
            raise BundleError(f"{EXEMPLARS_FILE}: {len(exemplars)} exemplars for {self.manifest.architecture.num_prototypes} prototypes")
        return exemplars

    def smoke_test(self, providers: Sequence[str] = ("CPUExecutionProvider",)) -> list[str]:
        """Run every variant on a small batch and query every index; one line per check.

        Raises :class:`BundleError` naming the file whose check failed.
        """
        texts = ["a smoke test of the serving bundle", "short"]
        feeds = self.encode(texts, texts[::-1] if self.manifest.is_pair else None)
        batch, length = feeds["input_ids"].shape
        architecture = self.manifest.architecture
        classes = len(self.manifest.labels)
        shapes = {
            "logits": (batch, classes),
            "probabilities": (batch, classes),
            "token_attention": (batch, length),
            "prototype_similarities": (batch, architecture.num_prototypes),
            "pooled": (batch, architecture.hidden_size),
        }
        report = []
        pooled = None
        last_layer = self.last_layer()
        for variant in self.manifest.variants:
            session = self.session(variant, providers)
            names = [i.name for i in session.get_inputs()]
            if names != list(self.manifest.graph.inputs):
                raise BundleError(f"{variant.file}: inputs {names}, the manifest says {list(self.manifest.graph.inputs)}")
            outputs = dict(zip(GRAPH_OUTPUTS, session.run(list(GRAPH_OUTPUTS), feeds)))
            for name, shape in shapes.items():
                value = outputs[name]
                if value.shape != shape or not np.isfinite(value).all():
                    raise BundleError(f"{variant.file}: output {name} has shape {value.shape} (expected {shape}) or non-finite values")
            if not np.allclose(outputs["probabilities"].sum(1), 1.0, atol=1e-3):
                raise BundleError(f"{variant.file}: probabilities do not sum to 1")
            if last_layer is not None:  # Explain's evidence holds only if the graph's logits are these sums
                gap = np.abs(outputs["prototype_similarities"] @ last_layer.T - outputs["logits"]).max()
                if gap > LAST_LAYER_TOLERANCE[variant.name == "fp16"]:
                    raise BundleError(f"{LAST_LAYER_FILE}: logits differ from last layer x similarities by {gap:.2g} in {variant.file}")
            pooled = outputs["pooled"] if pooled is None else pooled
            report.append(f"{variant.file}: ran a {batch}x{length} batch on {session.get_providers()[0]} (servable: {variant.servable})")
            report.append(self._check_exemplars(variant, session))
        queries = self.manifest.metric.prepare(pooled)
        indexes = self.manifest.indexes
        for info, index in ((indexes.prototypes, self.prototype_index()), (indexes.examples, self.example_index())):
            _, ids = index.search(queries, min(5, index.ntotal))
            if (ids < 0).any():
                raise BundleError(f"{info.file}: search returned fewer than {min(5, index.ntotal)} neighbours")
            report.append(f"{info.file}: {index.ntotal} vectors, {info.kind} search ok")
        store = self.examples()
        for example_id in (0, len(store) - 1):
            row = store[example_id]
            if row.id != example_id:
                raise BundleError(f"{EXAMPLES_FILE}: row {example_id} holds id {row.id!r}")
        report.append(f"{EXAMPLES_FILE}: {len(store)} rows readable by id")
        report.append(f"{EXEMPLARS_FILE}: {len(self.exemplars)} exemplars")
        return report

