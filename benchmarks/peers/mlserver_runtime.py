"""A Seldon MLServer 1.7.1 runtime over a protolm bundle: the peer the load test compares with.

It runs in ``.venv-peers`` (MLServer pins protobuf < 7), never in protolm's environment, and
serves what protolm serves: the bundle's own ONNX graph (the variant named in the model
settings' ``parameters.extra.variant``, by default the optimised fp32 graph) in one ONNX
Runtime session with protolm's session options, and the bundle's ``tokenizer.json``
configured and padded by the same torch-free ``core`` functions the service uses
(truncation to the manifest's ``max_length``, each batch padded to its longest input).

Request: a BYTES tensor ``text`` (and ``text_pair`` for pair models) of N UTF-8 strings.
Response: ``logits`` FP32 [N, classes], in the manifest's label order. MLServer's adaptive
batcher (``max_batch_size`` / ``max_batch_time`` in model-settings.json) merges concurrent
requests into one ``predict`` call and splits the logits back.

Not a protolm server: no queue by length, no explanations, no prototypes; only the forward
pass a plain MLServer deployment of the same graph would run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri
from tokenizers import Tokenizer

from core.bundle import TOKENIZER_FILE, read_manifest
from core.graph_inputs import configure_tokenizer, encode_batch

DEFAULT_VARIANT = "optimized"
TEXT, TEXT_PAIR, LOGITS = "text", "text_pair", "logits"


def session_options() -> onnxruntime.SessionOptions:
    """protolm's (``service.backend.OnnxBackend.session_options`` with its defaults)."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 0
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


class ProtolmRuntime(MLModel):
    """Logits of a protolm bundle's graph for batches of texts."""

    async def load(self) -> bool:
        bundle = Path(await get_model_uri(self.settings))
        manifest = read_manifest(bundle)
        extra = (self.settings.parameters.extra if self.settings.parameters else None) or {}
        wanted = extra.get("variant", DEFAULT_VARIANT)
        variant = next((v for v in manifest.variants if v.name == wanted), None)
        if variant is None:
            raise InferenceError(f"variant {wanted!r} is not in {bundle}; it has {', '.join(v.name for v in manifest.variants)}")
        self._is_pair = manifest.is_pair
        self._input_names = manifest.graph.inputs
        self._tokenizer = configure_tokenizer(Tokenizer.from_file(str(bundle / TOKENIZER_FILE)), manifest.max_length)
        self._session = onnxruntime.InferenceSession(str(bundle / variant.file), sess_options=session_options(),
                                                     providers=["CPUExecutionProvider"])
        self._logits(["warm-up"], ["warm-up"] if self._is_pair else None)
        return True

    def _logits(self, texts: list[str], text_pairs: list[str] | None) -> np.ndarray:
        feeds = encode_batch(self._tokenizer, texts, text_pairs, self._input_names)
        return self._session.run([LOGITS], feeds)[0]

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        inputs = {tensor.name: tensor for tensor in payload.inputs}
        expected = (TEXT, TEXT_PAIR) if self._is_pair else (TEXT,)
        if set(inputs) != set(expected):
            raise InferenceError(f"expected the BYTES inputs {', '.join(expected)}; got {', '.join(inputs) or 'none'}")
        texts = StringCodec.decode_input(inputs[TEXT])
        text_pairs = StringCodec.decode_input(inputs[TEXT_PAIR]) if self._is_pair else None
        if text_pairs is not None and len(text_pairs) != len(texts):
            raise InferenceError(f"{len(texts)} texts but {len(text_pairs)} text pairs")
        logits = self._logits(texts, text_pairs)
        return InferenceResponse(model_name=self.name, model_version=self.version, outputs=[NumpyCodec.encode_output(LOGITS, logits)])
