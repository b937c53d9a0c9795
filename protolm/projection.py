"""Projection: tie every prototype to its nearest real training example (its exemplar).

The nearest-neighbour search runs in FAISS over the pooled encodings of the training set,
so a million examples cost one exact flat scan per prototype batch. ``push`` (ProtoPNet)
additionally moves each prototype onto its exemplar's encoding and retrains the last layer
on the fixed similarities, which needs no further encoder pass.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from protolm.data import TextClassificationData
from protolm.highlights import Highlight, word_highlights
from protolm.inference import forward_texts
from protolm.model import ProtoLM

EXEMPLARS_FILE = "exemplars.json"


@dataclass
class Exemplar:
    prototype: int
    prototype_class: int
    example_index: int  # row in the training split the model was trained on
    text: str
    text_pair: str | None
    label: int
    distance: float
    words: list[Highlight]  # the exemplar's own attention, merged to words


def nearest_examples(model: ProtoLM, train_pooled: np.ndarray, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(distances, indices) of the k training encodings nearest each query, in the model's metric."""
    import faiss

    base = np.ascontiguousarray(train_pooled, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if model.config.similarity == "cosine":
        base, queries = base.copy(), queries.copy()
        faiss.normalize_L2(base)
        faiss.normalize_L2(queries)
        index = faiss.IndexFlatIP(base.shape[1])
        index.add(base)
        similarities, indices = index.search(queries, k)
        return 1.0 - similarities, indices
    index = faiss.IndexFlatL2(base.shape[1])
    index.add(base)
    squared, indices = index.search(queries, k)
    return np.sqrt(np.maximum(squared, 0.0)), indices


def exemplar_words(model: ProtoLM, data: TextClassificationData, indices: list[int], batch_size: int = 64) -> dict[int, list[Highlight]]:
    """Each example's own token attention, merged to words."""
    words: dict[int, list[Highlight]] = {}
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        texts = [data.texts[i] for i in chunk]
        pairs = [data.text_pairs[i] for i in chunk] if data.is_pair else None
        encoded, output = forward_texts(model, texts, pairs)
        attention = output.token_attention.float().cpu().numpy()
        for row, example in enumerate(chunk):
            segments = (texts[row], pairs[row]) if pairs else (texts[row],)
            words[example] = word_highlights(
                segments,
                encoded.encodings[row].offsets,
                encoded.encodings[row].sequence_ids,
                encoded.encodings[row].word_ids,
                attention[row],
            )
    return words


def project_prototypes(model: ProtoLM, train: TextClassificationData, train_pooled: np.ndarray) -> list[Exemplar]:
    """The nearest training example of every prototype, with its attention."""
    prototypes = model.prototypes.vectors.detach().float().cpu().numpy()
    distances, indices = nearest_examples(model, train_pooled, prototypes)
    chosen = indices[:, 0].tolist()
    words = exemplar_words(model, train, sorted(set(chosen)))
    classes = model.prototype_class.cpu().tolist()
    return [
        Exemplar(
            prototype=p,
            prototype_class=classes[p],
            example_index=example,
            text=train.texts[example],
            text_pair=train.text_pairs[example] if train.is_pair else None,
            label=int(train.labels[example]),
            distance=float(distances[p, 0]),
            words=words[example],
        )
        for p, example in enumerate(chosen)
    ]


def save_exemplars(directory: str | Path, exemplars: list[Exemplar], source: str) -> Path:
    path = Path(directory) / EXEMPLARS_FILE
    payload = {"source": source, "exemplars": [asdict(e) for e in exemplars]}
    path.write_text(json.dumps(payload, ensure_ascii=False, indent=1) + "\n")
    return path


def load_exemplars(directory: str | Path) -> list[Exemplar] | None:
    path = Path(directory) / EXEMPLARS_FILE
    if not path.is_file():
        return None
    payload = json.loads(path.read_text())
    return [
        Exemplar(**{**item, "words": [Highlight(**w) for w in item["words"]]}) for item in payload["exemplars"]
    ]


def similarities_from_pooled(model: ProtoLM, pooled: np.ndarray) -> torch.Tensor:
    """Prototype similarities for stored encodings: the layers after pooling, without the encoder."""
    device = model.prototypes.vectors.device
    with torch.no_grad():
        return model.prototypes(torch.from_numpy(pooled).to(device))[1]


def push(model: ProtoLM, train_pooled: np.ndarray, train_labels: np.ndarray, exemplars: list[Exemplar], epochs: int, seed: int, learning_rate: float = 1e-2) -> None:
    """ProtoPNet's push: prototypes become their exemplars' encodings; the last layer is retrained."""
    torch.manual_seed(seed)
    device = model.prototypes.vectors.device
    with torch.no_grad():
        positions = [e.example_index for e in exemplars]
        model.prototypes.vectors.copy_(torch.from_numpy(train_pooled[positions]).to(device))
    similarities = similarities_from_pooled(model, train_pooled)
    labels = torch.from_numpy(train_labels).to(device)
    optimizer = torch.optim.Adam(model.classifier.parameters(), lr=learning_rate)
    batch = 256
    for _ in range(epochs):
        order = torch.randperm(len(labels), device=device)
        for start in range(0, len(order), batch):
            rows = order[start : start + batch]
            loss = torch.nn.functional.cross_entropy(model.classifier(similarities[rows]), labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
