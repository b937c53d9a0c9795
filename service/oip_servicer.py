"""The Open Inference Protocol (KServe V2, gRPC package ``inference``) on the protolm engine.

A thin servicer like :mod:`service.servicer`: tensors in, the same ``Engine.classify`` and
``Engine.explain`` (so the same batcher) as protolm.v1, tensors out. Errors propagate to the
interceptor, which maps them to status codes as for every other call.

Inputs: ``text`` and, for pair models, ``text_pair``: BYTES tensors of shape [N] or [N, 1],
UTF-8, in ``contents.bytes_contents`` or in ``raw_input_contents`` (each element a 4-byte
little-endian length, then its bytes). Outputs: ``label`` BYTES [N] and ``probabilities``
FP32 [N, classes] (label-id order; the response's ``labels`` parameter lists the classes).
With the request parameter ``explain`` = true, also, padded to the longest input:
``token_weights`` FP32 [N, T], ``token_offsets`` INT32 [N, T, 2] (start, end in code points
of the segment's text), ``token_segments`` INT32 [N, T] (0 text, 1 text_pair, -1 padding),
``token_counts`` INT32 [N], and per input the ``top_prototypes`` (parameter, default 3) most
similar prototypes: ``prototype_ids`` INT32 [N, K], ``prototype_labels`` BYTES [N, K],
``prototype_similarities`` FP32 [N, K] and ``exemplar_ids`` INT64 [N, K] (the training
example each prototype was projected onto; -1 where the bundle has none). The parameter
``granularity`` = "token" gives word pieces instead of words. A response comes back raw
(``raw_output_contents``) when its request was raw, else in typed contents.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from importlib import metadata
from typing import Callable, Sequence

import numpy as np

from core.errors import InvalidInputError, NotFoundError
from core.explanation import DEFAULT_TOP_PROTOTYPES, Explanation
from service.engine import Engine, ExplainOptions, Served, ServingModel, deadline_from
from service.grpc_api import grpc_predict_v2_pb2 as oip
from service.grpc_api import grpc_predict_v2_pb2_grpc as oip_grpc
from service.interceptors import current_request_id
from service.preprocess import TextInput

OIP_SERVICE = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
# Probes: they pass the interceptor untouched, like grpc.health.v1 (no token, answered while draining).
OIP_PROBES = frozenset(f"/{OIP_SERVICE}/{name}" for name in ("ServerLive", "ServerReady", "ModelReady"))
PLATFORM = "onnxruntime_onnx"
TEXT, TEXT_PAIR = "text", "text_pair"
# datatype -> (InferTensorContents field, numpy dtype of its raw little-endian form)
NUMERIC = {"FP32": ("fp32_contents", "<f4"), "INT32": ("int_contents", "<i4"), "INT64": ("int64_contents", "<i8")}
LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class OutputSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: variable; 0 stands for the model's number of classes
    explain: bool


OUTPUTS = (
    OutputSpec("label", "BYTES", (-1,), False),
    OutputSpec("probabilities", "FP32", (-1, 0), False),
    OutputSpec("token_weights", "FP32", (-1, -1), True),
    OutputSpec("token_offsets", "INT32", (-1, -1, 2), True),
    OutputSpec("token_segments", "INT32", (-1, -1), True),
    OutputSpec("token_counts", "INT32", (-1,), True),
    OutputSpec("prototype_ids", "INT32", (-1, -1), True),
    OutputSpec("prototype_labels", "BYTES", (-1, -1), True),
    OutputSpec("prototype_similarities", "FP32", (-1, -1), True),
    OutputSpec("exemplar_ids", "INT64", (-1, -1), True),
)
OUTPUT_BY_NAME = {spec.name: spec for spec in OUTPUTS}


def _server_version() -> str:
    try:
        return metadata.version("protolm")
    except metadata.PackageNotFoundError:
        return "unknown"


def served_model(engine: Engine, name: str, version: str) -> ServingModel:
    """The served model if ``name`` (and ``version``, when given) is it."""
    model = engine.current_model()
    if name != model.name or version not in ("", model.version):
        asked = f"{name!r}" + (f" version {version!r}" if version else "")
        raise NotFoundError(f"model {asked} is not served here; this server serves {model.name!r} version {model.version!r}")
    return model


def _split_bytes(raw: bytes, name: str) -> list[bytes]:
    """The elements of a raw BYTES tensor: each a 4-byte little-endian length, then its bytes."""
    items, position = [], 0
    while position < len(raw):
        if position + LENGTH.size > len(raw):
            raise InvalidInputError(f"input {name}: raw contents end inside an element's 4-byte length")
        (size,) = LENGTH.unpack_from(raw, position)
        position += LENGTH.size
        if position + size > len(raw):
            raise InvalidInputError(f"input {name}: raw contents end inside an element of {size} bytes")
        items.append(raw[position : position + size])
        position += size
    return items


def _texts(tensor, raw: bytes | None) -> list[str]:
    name = tensor.name
    if tensor.datatype != "BYTES":
        raise InvalidInputError(f"input {name} has datatype {tensor.datatype or '(none)'}; it must be BYTES (UTF-8 text)")
    shape = list(tensor.shape)
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 0:
        raise InvalidInputError(f"input {name} has shape {shape}; send [N] or [N, 1]: one text per row")
    if raw is not None:
        if tensor.HasField("contents"):
            raise InvalidInputError(f"input {name} has contents although the request uses raw_input_contents")
        elements = _split_bytes(raw, name)
    else:
        elements = list(tensor.contents.bytes_contents)
    if len(elements) != shape[0]:
        raise InvalidInputError(f"input {name} has shape {shape} but {len(elements)} elements")
    try:
        return [element.decode("utf-8") for element in elements]
    except UnicodeDecodeError as error:
        raise InvalidInputError(f"input {name}: an element is not valid UTF-8 ({error.reason})") from None


def decode_inputs(request, is_pair: bool) -> list[TextInput]:
    """A ModelInferRequest's ``text`` (and ``text_pair``) tensors as the engine's inputs."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidInputError(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs; send one per input")
    tensors: dict[str, list[str]] = {}
    for position, tensor in enumerate(request.inputs):
        if tensor.name not in (TEXT, TEXT_PAIR):
            raise InvalidInputError(f"unknown input {tensor.name!r}; the inputs are {TEXT!r} and, for pair models, {TEXT_PAIR!r}")
        if tensor.name in tensors:
            raise InvalidInputError(f"input {tensor.name} is sent twice")
        tensors[tensor.name] = _texts(tensor, raw[position] if raw else None)
    if TEXT not in tensors:
        raise InvalidInputError(f"the request has no {TEXT!r} input tensor")
    texts, pairs = tensors[TEXT], tensors.get(TEXT_PAIR)
    if pairs is None:
        if is_pair:
            raise InvalidInputError(f"this model classifies text pairs; send a {TEXT_PAIR!r} tensor too")
        return [TextInput(text) for text in texts]
    if not is_pair:
        raise InvalidInputError(f"this model classifies single texts; send no {TEXT_PAIR!r} tensor")
    if len(pairs) != len(texts):
        raise InvalidInputError(f"{len(texts)} texts but {len(pairs)} text_pairs; send one pair per text")
    return [TextInput(text, pair) for text, pair in zip(texts, pairs)]


def _parameter(parameters, name: str, kind: str, default):
    if name not in parameters:
        return default
    value = parameters[name]
    if value.WhichOneof("parameter_choice") != kind:
        raise InvalidInputError(f"parameter {name} must be a {kind}")
    return getattr(value, kind)


def explain_options(request) -> ExplainOptions | None:
    """The request's explanation options, or None when it asks for no explanation."""
    parameters = request.parameters
    if not _parameter(parameters, "explain", "bool_param", False):
        asked = [o.name for o in request.outputs if o.name in OUTPUT_BY_NAME and OUTPUT_BY_NAME[o.name].explain]
        if asked:
            raise InvalidInputError(f"output {asked[0]} is an explanation: set the request parameter explain = true")
        return None
    top = _parameter(parameters, "top_prototypes", "int64_param", DEFAULT_TOP_PROTOTYPES)
    if top < 0:
        raise InvalidInputError(f"parameter top_prototypes is {top}; it must not be negative")
    granularity = _parameter(parameters, "granularity", "string_param", "word")
    if granularity not in ("word", "token"):
        raise InvalidInputError(f"parameter granularity is {granularity!r}; it must be 'word' or 'token'")
    return ExplainOptions(top_prototypes=top, words=granularity == "word")


def requested_outputs(request, explain: bool) -> list[str]:
    names = [o.name for o in request.outputs]
    for name in names:
        if name not in OUTPUT_BY_NAME:
            raise InvalidInputError(f"unknown output {name!r}; the outputs are {', '.join(OUTPUT_BY_NAME)}")
    if len(set(names)) != len(names):
        raise InvalidInputError("an output is requested twice")
    return names or [spec.name for spec in OUTPUTS if explain or not spec.explain]


def _bytes_array(rows: Sequence[Sequence[str]], width: int) -> np.ndarray:
    array = np.empty((len(rows), width), dtype=object)
    for i, row in enumerate(rows):
        array[i, :] = [value.encode("utf-8") for value in row]
    return array


def output_arrays(served: Served, explained: bool) -> dict[str, np.ndarray]:
    """Every output the served results hold, as arrays (BYTES as object arrays of bytes)."""
    labels = served.model.labels
    classifications = [e.classification for e in served.results] if explained else served.results
    arrays = {
        "label": _bytes_array([[c.label] for c in classifications], 1).reshape(-1),
        "probabilities": np.array([list(c.probabilities.values()) for c in classifications], np.float32).reshape(-1, len(labels)),
    }
    if not explained:
        return arrays
    results: list[Explanation] = served.results
    n = len(results)
    width = max(len(e.weights) for e in results)
    k = max(len(e.prototypes) for e in results)
    weights, offsets = np.zeros((n, width), np.float32), np.full((n, width, 2), -1, np.int32)
    segments = np.full((n, width), -1, np.int32)
    ids, similarities = np.full((n, k), -1, np.int32), np.zeros((n, k), np.float32)
    exemplars = np.full((n, k), -1, np.int64)
    for row, e in enumerate(results):
        for column, w in enumerate(e.weights):
            weights[row, column], offsets[row, column], segments[row, column] = w.weight, (w.start, w.end), w.segment
        for column, p in enumerate(e.prototypes):
            ids[row, column], similarities[row, column] = p.prototype_id, p.similarity
            exemplars[row, column] = p.exemplar.example_id if p.exemplar is not None else -1
    arrays.update(
        token_weights=weights,
        token_offsets=offsets,
        token_segments=segments,
        token_counts=np.array([len(e.weights) for e in results], np.int32),
        prototype_ids=ids,
        prototype_labels=_bytes_array([[p.label for p in e.prototypes] + [""] * (k - len(e.prototypes)) for e in results], k),
        prototype_similarities=similarities,
        exemplar_ids=exemplars,
    )
    return arrays


def encode_response(request, served: Served, explained: bool, names: list[str]):
    """The ModelInferResponse: outputs in ``names`` order, raw when the request was raw."""
    raw = bool(request.raw_input_contents)
    arrays = output_arrays(served, explained)
    response = oip.ModelInferResponse(model_name=served.model.name, model_version=served.model.version, id=request.id)
    for name in names:
        datatype, value = OUTPUT_BY_NAME[name].datatype, arrays[name]
        tensor = response.outputs.add(name=name, datatype=datatype, shape=value.shape)
        if datatype == "BYTES":
            if raw:
                response.raw_output_contents.append(b"".join(LENGTH.pack(len(item)) + item for item in value.ravel()))
            else:
                tensor.contents.bytes_contents.extend(value.ravel())
        else:
            field, dtype = NUMERIC[datatype]
            if raw:
                response.raw_output_contents.append(np.ascontiguousarray(value, dtype=dtype).tobytes())
            else:
                getattr(tensor.contents, field).extend(value.ravel().tolist())
    parameters = response.parameters
    parameters["labels"].string_param = json.dumps(served.model.labels, ensure_ascii=False)
    parameters["request_id"].string_param = current_request_id()
    parameters["batch_size"].int64_param = served.timing.batch_size
    parameters["queue_microseconds"].int64_param = round(served.timing.queue_seconds * 1e6)
    parameters["inference_microseconds"].int64_param = round(served.timing.inference_seconds * 1e6)
    return response


def model_metadata(model: ServingModel):
    def tensor(name: str, datatype: str, shape) -> oip.ModelMetadataResponse.TensorMetadata:
        return oip.ModelMetadataResponse.TensorMetadata(name=name, datatype=datatype, shape=[d or len(model.labels) for d in shape])

    inputs = [tensor(name, "BYTES", (-1,)) for name in ((TEXT, TEXT_PAIR) if model.is_pair else (TEXT,))]
    return oip.ModelMetadataResponse(
        name=model.name,
        versions=[model.version],
        platform=PLATFORM,
        inputs=inputs,
        outputs=[tensor(spec.name, spec.datatype, spec.shape) for spec in OUTPUTS],
    )


class InferenceServicer(oip_grpc.GRPCInferenceServiceServicer):
    """``ready`` says whether the server reports SERVING on grpc.health.v1."""

    def __init__(self, engine: Engine, ready: Callable[[], bool]):
        self.engine = engine
        self.ready = ready
        self.version = _server_version()

    async def ServerLive(self, request, context):
        return oip.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return oip.ServerReadyResponse(ready=self.ready() and self.engine.ready)

    async def ModelReady(self, request, context):
        model = self.engine.model
        matches = model is not None and request.name == model.name and request.version in ("", model.version)
        return oip.ModelReadyResponse(ready=matches and self.ready())

    async def ServerMetadata(self, request, context):
        return oip.ServerMetadataResponse(name="protolm", version=self.version)

    async def ModelMetadata(self, request, context):
        return model_metadata(served_model(self.engine, request.name, request.version))

    async def ModelInfer(self, request, context):
        model = served_model(self.engine, request.model_name, request.model_version)
        inputs = decode_inputs(request, model.is_pair)
        options = explain_options(request)
        names = requested_outputs(request, explain=options is not None)
        deadline = deadline_from(context.time_remaining())
        if options is None:
            served = await self.engine.classify(inputs, deadline)
        else:
            served = await self.engine.explain(inputs, options, deadline)
        return encode_response(request, served, options is not None, names)
