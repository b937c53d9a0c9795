"""Projection: tie every prototype to its nearest real training example (its exemplar).

The nearest-neighbour search runs in FAISS over the pooled encodings of the training set,
so a million examples cost one exact flat scan per prototype batch. ``push`` (ProtoPNet)
additionally moves each prototype onto its exemplar's encoding and refits the last layer
(and, when asked, retrains it) on the fixed similarities, which needs no further encoder pass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from core.bundle import EXEMPLARS_FILE, Exemplar, read_exemplars, write_exemplars
from core.highlights import Highlight, word_highlights
from core.similarity import metric_for
from protolm.data import TextClassificationData
from protolm.inference import forward_texts
from protolm.model import ProtoLM


def nearest_examples(model: ProtoLM, train_pooled: np.ndarray, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(distances, indices) of the k training encodings nearest each query, in the model's metric."""
    import faiss

    metric = metric_for(model.config.similarity)
    base = metric.prepare(train_pooled)
    index = faiss.IndexFlat(base.shape[1], metric.faiss_metric())
    index.add(base)
    scores, indices = index.search(metric.prepare(queries), k)
    return metric.distances(scores), indices


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


def project_prototypes(model: ProtoLM, train: TextClassificationData, train_pooled: np.ndarray) -> tuple[Exemplar, ...]:
    """The nearest training example of every prototype, with its attention."""
    prototypes = model.prototypes.vectors.detach().float().cpu().numpy()
    distances, indices = nearest_examples(model, train_pooled, prototypes)
    chosen = indices[:, 0].tolist()
    words = exemplar_words(model, train, sorted(set(chosen)))
    classes = model.prototype_class.cpu().tolist()
    return tuple(
        Exemplar(
            prototype=p,
            prototype_class=classes[p],
            example_id=example,
            text=train.texts[example],
            text_pair=train.text_pairs[example] if train.is_pair else None,
            label=int(train.labels[example]),
            distance=float(distances[p, 0]),
            words=tuple(words[example]),
        )
        for p, example in enumerate(chosen)
    )


def save_exemplars(directory: str | Path, exemplars: tuple[Exemplar, ...], source: str) -> Path:
    return write_exemplars(Path(directory) / EXEMPLARS_FILE, exemplars, source)


def load_exemplars(directory: str | Path) -> tuple[Exemplar, ...] | None:
    path = Path(directory) / EXEMPLARS_FILE
    return read_exemplars(path) if path.is_file() else None


def similarities_from_pooled(model: ProtoLM, pooled: np.ndarray) -> torch.Tensor:
    """Prototype similarities for stored encodings: the layers after pooling, without the encoder."""
    device = model.prototypes.vectors.device
    with torch.no_grad():
        return model.prototypes(torch.from_numpy(pooled).to(device))[1]


def logits_from_pooled(model: ProtoLM, pooled: np.ndarray) -> torch.Tensor:
    """Class logits for stored encodings: push changes only the layers after pooling."""
    with torch.no_grad():
        return model.classifier(similarities_from_pooled(model, pooled))


def retraining_rows(num_examples: int, exemplar_ids: list[int]) -> np.ndarray:
    """The training examples the last layer is refitted and retrained on after push: all but the exemplars.

    An exemplar's similarity to its own prototype is exactly 1, which no unseen text has
    (the nearest prototype of an SST-2 sentence sits near 0.56); retrained on exemplars, the
    layer learned to trust exact matches, and push cost up to 1.5 points on SST-2. With no
    other example left (a tiny training set), all of them are used."""
    rows = np.setdiff1d(np.arange(num_examples), exemplar_ids)
    return rows if len(rows) else np.arange(num_examples)


# Ridge weight of the refit toward the trained last layer, relative to the mean squared
# similarity of a prototype over the training set; 0.01 to 1 gave SST-5 accuracies within 0.2 points.
REFIT_STRENGTH = 0.1


def refit_last_layer(model: ProtoLM, similarities: torch.Tensor, target_logits: torch.Tensor, strength: float = REFIT_STRENGTH) -> None:
    """The last layer whose logits on ``similarities`` come closest to ``target_logits``
    (least squares), pulled toward the current weights: one linear solve over N prototypes."""
    x, z = similarities.double(), target_logits.double()
    weight = model.classifier.weight
    ridge = strength * (x * x).sum() / x.shape[1]
    gram = x.T @ x + ridge * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    fitted = torch.linalg.solve(gram, x.T @ z + ridge * weight.detach().double().T)
    with torch.no_grad():
        weight.copy_(fitted.T.to(weight.dtype))


def push(model: ProtoLM, train_pooled: np.ndarray, train_labels: np.ndarray, exemplars: tuple[Exemplar, ...], epochs: int, seed: int,
         *, refit: bool, learning_rate: float = 1e-2) -> None:
    """ProtoPNet's push: prototypes become their exemplars' encodings. With ``refit`` the last
    layer is then refitted so that the pushed model's logits on the other training examples
    match the trained model's (push moved prototypes up to 0.7 in cosine distance on SST-5 at
    4,000 examples, and cost up to 4 points with the trained layer kept); for ``epochs`` > 0 it
    is then retrained on the labels, on the fixed similarities of those examples."""
    torch.manual_seed(seed)
    device = model.prototypes.vectors.device
    positions = [e.example_id for e in exemplars]
    fit = retraining_rows(len(train_labels), positions)
    trained_logits = logits_from_pooled(model, train_pooled[fit]) if refit else None
    with torch.no_grad():
        model.prototypes.vectors.copy_(torch.from_numpy(train_pooled[positions]).to(device))
    if not (refit or epochs):
        return
    similarities = similarities_from_pooled(model, train_pooled[fit])
    if refit:
        refit_last_layer(model, similarities, trained_logits)
    if epochs:
        retrain_last_layer(model, similarities, torch.from_numpy(train_labels[fit]).to(device), epochs, learning_rate)


def retrain_last_layer(model: ProtoLM, similarities: torch.Tensor, labels: torch.Tensor, epochs: int, learning_rate: float) -> None:
    """ProtoPNet's last-layer retraining: cross-entropy on fixed similarities, Adam, batches of 256."""
    optimizer = torch.optim.Adam(model.classifier.parameters(), lr=learning_rate)
    batch = 256
    for _ in range(epochs):
        order = torch.randperm(len(labels), device=labels.device)
        for start in range(0, len(order), batch):
            rows = order[start : start + batch]
            loss = torch.nn.functional.cross_entropy(model.classifier(similarities[rows]), labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
