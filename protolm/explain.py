"""Explanations of a PyTorch model's predictions, from one forward pass."""

from __future__ import annotations

import numpy as np

from core.bundle import Exemplar
from core.explanation import DEFAULT_TOP_PROTOTYPES, Classification, Explanation, PrototypeMatch, evidence, render
from core.highlights import word_highlights
from protolm.inference import forward_texts
from protolm.model import ProtoLM


def explain_texts(
    model: ProtoLM,
    texts: list[str],
    text_pairs: list[str] | None = None,
    exemplars: tuple[Exemplar, ...] | None = None,
    top_prototypes: int = DEFAULT_TOP_PROTOTYPES,
) -> list[Explanation]:
    encoded, output = forward_texts(model, texts, text_pairs)
    logits = output.logits.float().cpu().numpy()
    probabilities = output.logits.float().softmax(-1).cpu().numpy()
    last_layer = model.classifier.weight.detach().float().cpu().numpy()
    attention = output.token_attention.float().cpu().numpy()
    similarities = output.similarities.float().cpu().numpy()
    names = model.config.label_names
    classes = model.prototype_class.cpu().numpy()
    explanations = []
    for row, text in enumerate(texts):
        pair = text_pairs[row] if text_pairs else None
        encoding = encoded.encodings[row]
        label_id = int(probabilities[row].argmax())
        top = np.argsort(-similarities[row], kind="stable")[:top_prototypes]
        explanations.append(
            Explanation(
                classification=Classification(
                    label=names[label_id],
                    label_id=label_id,
                    probabilities={n: float(p) for n, p in zip(names, probabilities[row])},
                    truncated=bool(encoding.overflowing),
                    num_tokens=int(sum(encoding.attention_mask)),
                ),
                weights=word_highlights(
                    (text, pair) if pair is not None else (text,),
                    encoding.offsets,
                    encoding.sequence_ids,
                    encoding.word_ids,
                    attention[row],
                ),
                prototypes=[
                    PrototypeMatch(
                        prototype_id=int(p),
                        label=names[int(classes[p])],
                        label_id=int(classes[p]),
                        similarity=float(similarities[row, p]),
                        exemplar=exemplars[p] if exemplars else None,
                    )
                    for p in top
                ],
                nearest_examples=[],
                evidence=evidence(last_layer, similarities[row], logits[row], names, classes, exemplars, top_prototypes),
            )
        )
    return explanations


def render_explanations(model: ProtoLM, texts: list[str], text_pairs: list[str] | None, exemplars: tuple[Exemplar, ...] | None,
                        top_prototypes: int, colour: bool) -> str:
    explanations = explain_texts(model, texts, text_pairs, exemplars, top_prototypes)
    pairs = text_pairs or [None] * len(texts)
    return "\n\n".join(render(t, p, e, colour) for t, p, e in zip(texts, pairs, explanations))


def explain_directory(model_dir: str, text: str, text_pair: str | None, top_prototypes: int, colour: bool) -> str:
    """`protolm explain MODEL_DIR TEXT`: the saved model's explanation, rendered."""
    from protolm.projection import load_exemplars

    model = ProtoLM.from_pretrained(model_dir)
    return render_explanations(model, [text], [text_pair] if text_pair is not None else None, load_exemplars(model_dir), top_prototypes, colour)
