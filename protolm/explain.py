"""Explanations of a PyTorch model's predictions, from one forward pass."""

from __future__ import annotations

import numpy as np

from protolm.highlights import word_highlights
from protolm.inference import forward_texts
from protolm.model import ProtoLM
from protolm.projection import Exemplar
from protolm.rendering import Explanation, PrototypeMatch


def explain_texts(
    model: ProtoLM,
    texts: list[str],
    text_pairs: list[str] | None = None,
    exemplars: list[Exemplar] | None = None,
    top_prototypes: int = 3,
) -> list[Explanation]:
    encoded, output = forward_texts(model, texts, text_pairs)
    probabilities = output.logits.float().softmax(-1).cpu().numpy()
    attention = output.token_attention.float().cpu().numpy()
    similarities = output.similarities.float().cpu().numpy()
    names = model.config.label_names
    classes = model.prototype_class.cpu().numpy()
    explanations = []
    for row, text in enumerate(texts):
        pair = text_pairs[row] if text_pairs else None
        encoding = encoded.encodings[row]
        top = np.argsort(-similarities[row], kind="stable")[:top_prototypes]
        explanations.append(
            Explanation(
                text=text,
                text_pair=pair,
                label=names[int(probabilities[row].argmax())],
                probabilities={n: float(p) for n, p in zip(names, probabilities[row])},
                words=word_highlights(
                    (text, pair) if pair is not None else (text,),
                    encoding.offsets,
                    encoding.sequence_ids,
                    encoding.word_ids,
                    attention[row],
                ),
                prototypes=[
                    PrototypeMatch(
                        prototype=int(p),
                        class_name=names[int(classes[p])],
                        similarity=float(similarities[row, p]),
                        exemplar=exemplars[p] if exemplars else None,
                    )
                    for p in top
                ],
            )
        )
    return explanations
