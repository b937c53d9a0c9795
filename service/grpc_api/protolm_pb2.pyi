from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WeightGranularity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WEIGHT_GRANULARITY_UNSPECIFIED: _ClassVar[WeightGranularity]
    WEIGHT_GRANULARITY_WORD: _ClassVar[WeightGranularity]
    WEIGHT_GRANULARITY_TOKEN: _ClassVar[WeightGranularity]

class Segment(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEGMENT_UNSPECIFIED: _ClassVar[Segment]
    SEGMENT_TEXT: _ClassVar[Segment]
    SEGMENT_TEXT_PAIR: _ClassVar[Segment]

class TaskType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_TYPE_UNSPECIFIED: _ClassVar[TaskType]
    TASK_TYPE_SINGLE: _ClassVar[TaskType]
    TASK_TYPE_PAIR: _ClassVar[TaskType]
WEIGHT_GRANULARITY_UNSPECIFIED: WeightGranularity
WEIGHT_GRANULARITY_WORD: WeightGranularity
WEIGHT_GRANULARITY_TOKEN: WeightGranularity
SEGMENT_UNSPECIFIED: Segment
SEGMENT_TEXT: Segment
SEGMENT_TEXT_PAIR: Segment
TASK_TYPE_UNSPECIFIED: TaskType
TASK_TYPE_SINGLE: TaskType
TASK_TYPE_PAIR: TaskType

class TextInput(_message.Message):
    __slots__ = ("text", "text_pair")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TEXT_PAIR_FIELD_NUMBER: _ClassVar[int]
    text: str
    text_pair: str
    def __init__(self, text: _Optional[str] = ..., text_pair: _Optional[str] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("inputs",)
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedCompositeFieldContainer[TextInput]
    def __init__(self, inputs: _Optional[_Iterable[_Union[TextInput, _Mapping]]] = ...) -> None: ...

class ClassProbability(_message.Message):
    __slots__ = ("label", "label_id", "probability")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LABEL_ID_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    label: str
    label_id: int
    probability: float
    def __init__(self, label: _Optional[str] = ..., label_id: _Optional[int] = ..., probability: _Optional[float] = ...) -> None: ...

class Classification(_message.Message):
    __slots__ = ("label", "label_id", "probabilities", "truncated", "num_tokens")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LABEL_ID_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    label: str
    label_id: int
    probabilities: _containers.RepeatedCompositeFieldContainer[ClassProbability]
    truncated: bool
    num_tokens: int
    def __init__(self, label: _Optional[str] = ..., label_id: _Optional[int] = ..., probabilities: _Optional[_Iterable[_Union[ClassProbability, _Mapping]]] = ..., truncated: _Optional[bool] = ..., num_tokens: _Optional[int] = ...) -> None: ...

class ResponseMetadata(_message.Message):
    __slots__ = ("model_name", "model_version", "queue_seconds", "inference_seconds", "batch_size", "request_id")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    QUEUE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    queue_seconds: float
    inference_seconds: float
    batch_size: int
    request_id: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., queue_seconds: _Optional[float] = ..., inference_seconds: _Optional[float] = ..., batch_size: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("results", "metadata")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[Classification]
    metadata: ResponseMetadata
    def __init__(self, results: _Optional[_Iterable[_Union[Classification, _Mapping]]] = ..., metadata: _Optional[_Union[ResponseMetadata, _Mapping]] = ...) -> None: ...

class ExplainOptions(_message.Message):
    __slots__ = ("top_prototypes", "nearest_examples", "granularity")
    TOP_PROTOTYPES_FIELD_NUMBER: _ClassVar[int]
    NEAREST_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    top_prototypes: int
    nearest_examples: int
    granularity: WeightGranularity
    def __init__(self, top_prototypes: _Optional[int] = ..., nearest_examples: _Optional[int] = ..., granularity: _Optional[_Union[WeightGranularity, str]] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("inputs", "options")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedCompositeFieldContainer[TextInput]
    options: ExplainOptions
    def __init__(self, inputs: _Optional[_Iterable[_Union[TextInput, _Mapping]]] = ..., options: _Optional[_Union[ExplainOptions, _Mapping]] = ...) -> None: ...

class WeightedSpan(_message.Message):
    __slots__ = ("text", "start", "end", "weight", "segment")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    text: str
    start: int
    end: int
    weight: float
    segment: Segment
    def __init__(self, text: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., weight: _Optional[float] = ..., segment: _Optional[_Union[Segment, str]] = ...) -> None: ...

class Exemplar(_message.Message):
    __slots__ = ("example_id", "text", "text_pair", "label", "words", "label_id", "distance")
    EXAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TEXT_PAIR_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    WORDS_FIELD_NUMBER: _ClassVar[int]
    LABEL_ID_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    example_id: int
    text: str
    text_pair: str
    label: str
    words: _containers.RepeatedCompositeFieldContainer[WeightedSpan]
    label_id: int
    distance: float
    def __init__(self, example_id: _Optional[int] = ..., text: _Optional[str] = ..., text_pair: _Optional[str] = ..., label: _Optional[str] = ..., words: _Optional[_Iterable[_Union[WeightedSpan, _Mapping]]] = ..., label_id: _Optional[int] = ..., distance: _Optional[float] = ...) -> None: ...

class PrototypeMatch(_message.Message):
    __slots__ = ("prototype_id", "label", "label_id", "similarity", "exemplar")
    PROTOTYPE_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LABEL_ID_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    EXEMPLAR_FIELD_NUMBER: _ClassVar[int]
    prototype_id: int
    label: str
    label_id: int
    similarity: float
    exemplar: Exemplar
    def __init__(self, prototype_id: _Optional[int] = ..., label: _Optional[str] = ..., label_id: _Optional[int] = ..., similarity: _Optional[float] = ..., exemplar: _Optional[_Union[Exemplar, _Mapping]] = ...) -> None: ...

class NearestExample(_message.Message):
    __slots__ = ("example_id", "text", "text_pair", "label", "distance", "split")
    EXAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TEXT_PAIR_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    example_id: int
    text: str
    text_pair: str
    label: str
    distance: float
    split: str
    def __init__(self, example_id: _Optional[int] = ..., text: _Optional[str] = ..., text_pair: _Optional[str] = ..., label: _Optional[str] = ..., distance: _Optional[float] = ..., split: _Optional[str] = ...) -> None: ...

class Contribution(_message.Message):
    __slots__ = ("prototype_id", "label", "similarity", "weight", "contribution", "exemplar", "label_id")
    PROTOTYPE_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    EXEMPLAR_FIELD_NUMBER: _ClassVar[int]
    LABEL_ID_FIELD_NUMBER: _ClassVar[int]
    prototype_id: int
    label: str
    similarity: float
    weight: float
    contribution: float
    exemplar: Exemplar
    label_id: int
    def __init__(self, prototype_id: _Optional[int] = ..., label: _Optional[str] = ..., similarity: _Optional[float] = ..., weight: _Optional[float] = ..., contribution: _Optional[float] = ..., exemplar: _Optional[_Union[Exemplar, _Mapping]] = ..., label_id: _Optional[int] = ...) -> None: ...

class Evidence(_message.Message):
    __slots__ = ("label", "versus_label", "margin", "total", "supporting", "opposing")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    VERSUS_LABEL_FIELD_NUMBER: _ClassVar[int]
    MARGIN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    SUPPORTING_FIELD_NUMBER: _ClassVar[int]
    OPPOSING_FIELD_NUMBER: _ClassVar[int]
    label: str
    versus_label: str
    margin: float
    total: float
    supporting: _containers.RepeatedCompositeFieldContainer[Contribution]
    opposing: _containers.RepeatedCompositeFieldContainer[Contribution]
    def __init__(self, label: _Optional[str] = ..., versus_label: _Optional[str] = ..., margin: _Optional[float] = ..., total: _Optional[float] = ..., supporting: _Optional[_Iterable[_Union[Contribution, _Mapping]]] = ..., opposing: _Optional[_Iterable[_Union[Contribution, _Mapping]]] = ...) -> None: ...

class Explanation(_message.Message):
    __slots__ = ("classification", "weights", "prototypes", "nearest_examples", "evidence")
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    PROTOTYPES_FIELD_NUMBER: _ClassVar[int]
    NEAREST_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    classification: Classification
    weights: _containers.RepeatedCompositeFieldContainer[WeightedSpan]
    prototypes: _containers.RepeatedCompositeFieldContainer[PrototypeMatch]
    nearest_examples: _containers.RepeatedCompositeFieldContainer[NearestExample]
    evidence: Evidence
    def __init__(self, classification: _Optional[_Union[Classification, _Mapping]] = ..., weights: _Optional[_Iterable[_Union[WeightedSpan, _Mapping]]] = ..., prototypes: _Optional[_Iterable[_Union[PrototypeMatch, _Mapping]]] = ..., nearest_examples: _Optional[_Iterable[_Union[NearestExample, _Mapping]]] = ..., evidence: _Optional[_Union[Evidence, _Mapping]] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("results", "metadata")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[Explanation]
    metadata: ResponseMetadata
    def __init__(self, results: _Optional[_Iterable[_Union[Explanation, _Mapping]]] = ..., metadata: _Optional[_Union[ResponseMetadata, _Mapping]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "labels", "task_type", "max_length", "encoder", "num_prototypes", "metrics", "execution_provider", "variant", "example_index", "bundle_format_version", "max_inputs_per_request", "max_text_chars")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    NUM_PROTOTYPES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    EXAMPLE_INDEX_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_INPUTS_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_TEXT_CHARS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    task_type: TaskType
    max_length: int
    encoder: str
    num_prototypes: int
    metrics: _containers.ScalarMap[str, float]
    execution_provider: str
    variant: str
    example_index: str
    bundle_format_version: int
    max_inputs_per_request: int
    max_text_chars: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., task_type: _Optional[_Union[TaskType, str]] = ..., max_length: _Optional[int] = ..., encoder: _Optional[str] = ..., num_prototypes: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., execution_provider: _Optional[str] = ..., variant: _Optional[str] = ..., example_index: _Optional[str] = ..., bundle_format_version: _Optional[int] = ..., max_inputs_per_request: _Optional[int] = ..., max_text_chars: _Optional[int] = ...) -> None: ...

class GetModelInfoResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfo
    def __init__(self, model: _Optional[_Union[ModelInfo, _Mapping]] = ...) -> None: ...

class ReloadRequest(_message.Message):
    __slots__ = ("bundle_dir",)
    BUNDLE_DIR_FIELD_NUMBER: _ClassVar[int]
    bundle_dir: str
    def __init__(self, bundle_dir: _Optional[str] = ...) -> None: ...

class ReloadResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfo
    def __init__(self, model: _Optional[_Union[ModelInfo, _Mapping]] = ...) -> None: ...
