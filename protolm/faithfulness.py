"""Faithfulness of token rankings: comprehensiveness and sufficiency (ERASER).

For each example, its real tokens (never the special ones) are ranked by an explanation;
the top q% are then removed (comprehensiveness) or kept alone (sufficiency), and the drop in
the probability of the originally predicted class is averaged. A faithful ranking has high
comprehensiveness and low sufficiency. The rankings:

* ``attention``: proto-lm's own token attention, the explanation it is built to give;
* ``gradient_x_input``: gradient of the predicted class's log-probability times the word
  embedding, L2-normed over the hidden dimensions (InputXGradient with L2 aggregation, as in
  Atanasova et al., 2020); it needs no attention layer, so it is what a plainly fine-tuned
  model (the baseline head) can offer instead;
* ``integrated_gradients``: Integrated Gradients (Sundararajan et al., 2017; Captum's
  ``LayerIntegratedGradients`` on the word-embedding layer) of the predicted class's
  log-probability, from a baseline where every real token is ``[PAD]`` and the special
  tokens stay as they are, summed (signed) over the hidden dimensions. Unlike
  gradient×input, the signed sum is meaningful here: by completeness the scores of one
  input add up to log p(x) - log p(baseline), so each is the token's share of that
  difference. Slow (``IG_STEPS`` forward and backward passes per input), so never a default;
  ``integrated_gradients_l2`` is the L2 norm over hidden dimensions instead, for comparison;
* ``random``: a seeded random order, the floor every figure is read against.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from tqdm.auto import tqdm

from protolm.data import TextClassificationData
from protolm.model import ClassifierOutput, EncoderClassifier

FRACTIONS = (0.01, 0.05, 0.10, 0.20, 0.50)
RANDOM = "random"
IG_STEPS = 50
# Captum runs the steps of several inputs in one pass; this many tokens per pass bounds memory.
IG_TOKENS_PER_PASS = 8192


@dataclass
class Faithfulness:
    fractions: tuple[float, ...]
    comprehensiveness: dict[str, list[float]]  # ranking -> one mean drop per fraction
    sufficiency: dict[str, list[float]]

    def as_dict(self) -> dict:
        return {"fractions": list(self.fractions), "comprehensiveness": self.comprehensiveness, "sufficiency": self.sufficiency}

    def at(self, metric: str, ranking: str, fraction: float) -> float:
        return getattr(self, metric)[ranking][self.fractions.index(fraction)]


def attention_scores(model: EncoderClassifier, batch: dict, output: ClassifierOutput) -> np.ndarray:
    """The token attention of the forward pass already made on ``batch``."""
    if output.token_attention is None:
        raise ValueError("the attention ranking needs a model with token attention (proto-lm)")
    return output.token_attention.float().cpu().numpy()


def gradient_x_input_scores(model: EncoderClassifier, batch: dict, output: ClassifierOutput | None = None) -> np.ndarray:
    """L2 norm over the hidden dimensions of (d log p(predicted) / d e_t) * e_t, e_t the token's
    word embedding. The norm, not the signed sum: the embeddings pass a LayerNorm, which is
    blind to their scale, so the signed sum measures position and type embeddings rather than
    the word (on SST-2 it ranked below random). ``output`` is unused: this needs its own pass
    with gradients."""
    captured: list[torch.Tensor] = []
    hook = model.encoder.get_input_embeddings().register_forward_hook(lambda _m, _i, output: captured.append(output))
    try:
        with torch.enable_grad():
            log_probabilities = torch.log_softmax(model(**batch).logits.float(), dim=-1)
            predicted = log_probabilities.argmax(-1, keepdim=True)
            (gradient,) = torch.autograd.grad(log_probabilities.gather(1, predicted).sum(), captured[0])
    finally:
        hook.remove()
    return (gradient * captured[0]).norm(dim=-1).detach().float().cpu().numpy()


def integrated_gradients_baseline(model: EncoderClassifier, input_ids: torch.Tensor) -> torch.Tensor:
    """The IG baseline: every token replaced by ``[PAD]`` except the special ones ([CLS], [SEP],
    padding), which the baseline shares with the input, so their attributions are exactly 0.
    ``[UNK]`` stands for a word and is replaced too."""
    tokenizer = model.tokenizer
    specials = torch.tensor(sorted(set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}), device=input_ids.device)
    return torch.where(torch.isin(input_ids, specials), input_ids, torch.full_like(input_ids, tokenizer.pad_token_id or 0))


def integrated_gradients_attributions(
    model: EncoderClassifier, batch: dict, target: torch.Tensor, steps: int = IG_STEPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token and hidden dimension, IG of log p(``target``) on the word embeddings, and
    Captum's convergence delta per input (sum of attributions minus the log-probability
    difference between input and baseline)."""
    from captum.attr import LayerIntegratedGradients

    def log_probabilities(input_ids, attention_mask, token_type_ids=None):
        return torch.log_softmax(model(input_ids, attention_mask, token_type_ids).logits.float(), dim=-1)

    input_ids = batch["input_ids"]
    rows = max(1, IG_TOKENS_PER_PASS // input_ids.shape[1])
    ig = LayerIntegratedGradients(log_probabilities, model.encoder.get_input_embeddings())
    with torch.enable_grad():
        attributions, delta = ig.attribute(
            input_ids,
            baselines=integrated_gradients_baseline(model, input_ids),
            target=target,
            additional_forward_args=(batch["attention_mask"], batch.get("token_type_ids")),
            n_steps=steps,
            internal_batch_size=rows,
            return_convergence_delta=True,
        )
    return attributions.detach(), delta.detach()


def _predicted(model: EncoderClassifier, batch: dict, output: ClassifierOutput | None) -> torch.Tensor:
    if output is None:
        with torch.inference_mode():
            output = model(**batch)
    return output.logits.argmax(-1).clone()  # out of inference mode: Captum needs a plain tensor


def integrated_gradients_scores(
    model: EncoderClassifier, batch: dict, output: ClassifierOutput | None = None, steps: int = IG_STEPS, norm: bool = False
) -> np.ndarray:
    """IG of the predicted class's log-probability per token: summed over the hidden
    dimensions (signed; completeness makes the row sum log p(x) - log p(baseline)), or their L2
    norm with ``norm``. Special and padding tokens score exactly 0."""
    attributions, _ = integrated_gradients_attributions(model, batch, _predicted(model, batch, output), steps)
    scores = attributions.norm(dim=-1) if norm else attributions.sum(dim=-1)
    return scores.float().cpu().numpy()


# name -> scores per token, from the model, the batch and the batch's (gradient-free) output
RANKERS: dict[str, Callable[[EncoderClassifier, dict, ClassifierOutput], np.ndarray]] = {
    "attention": attention_scores,
    "gradient_x_input": gradient_x_input_scores,
    "integrated_gradients": integrated_gradients_scores,
    "integrated_gradients_l2": partial(integrated_gradients_scores, norm=True),
}


def default_rankings(model: EncoderClassifier) -> tuple[str, ...]:
    """A model's own explanation and the random floor."""
    return ("attention", RANDOM) if model.config.architecture == "protolm" else ("gradient_x_input", RANDOM)


def _forward_probabilities(model: EncoderClassifier, sequences: list[dict], pad_id: int, device) -> torch.Tensor:
    length = max(len(s["input_ids"]) for s in sequences)
    batch = {}
    for key in sequences[0]:
        padded = torch.full((len(sequences), length), pad_id if key == "input_ids" else 0, dtype=torch.long)
        for row, sequence in enumerate(sequences):
            padded[row, : len(sequence[key])] = torch.tensor(sequence[key])
        batch[key] = padded.to(device)
    with torch.inference_mode():
        return torch.softmax(model(**batch).logits.float(), dim=-1)


def _class_probabilities(model: EncoderClassifier, sequences: list[dict], classes: list[int], pad_id: int, device, chunk: int) -> np.ndarray:
    """p(classes[i] | sequences[i]). Each distinct sequence is forwarded once (on short inputs
    several fractions remove the same tokens), in length-sorted chunks: perturbed copies
    range from a few tokens to the whole input, and sorted they are hardly padded."""
    keys = [tuple(tuple(values) for values in sequence.values()) for sequence in sequences]
    distinct = {key: position for position, key in reversed(list(enumerate(keys)))}  # first copy of each
    order = sorted(distinct.values(), key=lambda i: len(sequences[i]["input_ids"]))
    probabilities: dict[tuple, np.ndarray] = {}
    for start in range(0, len(order), chunk):
        rows = order[start : start + chunk]
        forwarded = _forward_probabilities(model, [sequences[i] for i in rows], pad_id, device).cpu().numpy()
        probabilities.update({keys[i]: p for i, p in zip(rows, forwarded)})
    return np.array([probabilities[key][c] for key, c in zip(keys, classes)])


def _perturbed(sequence: dict, drop: set[int]) -> dict:
    return {key: [v for position, v in enumerate(values) if position not in drop] for key, values in sequence.items()}


def evaluate_faithfulness(
    model: EncoderClassifier,
    data: TextClassificationData,
    batch_size: int = 64,
    fractions: tuple[float, ...] = FRACTIONS,
    seed: int = 0,
    progress: bool = True,
    rankings: tuple[str, ...] | None = None,
    rankers: Mapping[str, Callable[[EncoderClassifier, dict, ClassifierOutput], np.ndarray]] | None = None,
) -> Faithfulness:
    """``rankers`` adds to or replaces entries of :data:`RANKERS` (e.g. IG with other steps)."""
    rankings = rankings or default_rankings(model)
    rankers = {**RANKERS, **(rankers or {})}
    unknown = [r for r in rankings if r != RANDOM and r not in rankers]
    if unknown:
        raise ValueError(f"unknown ranking(s) {unknown}; known: {sorted(rankers)} and {RANDOM}")
    rng = np.random.default_rng(seed)
    device = next(model.parameters()).device
    pad_id = model.tokenizer.pad_token_id or 0
    comprehensiveness = {r: np.zeros(len(fractions)) for r in rankings}
    sufficiency = {r: np.zeros(len(fractions)) for r in rankings}
    model.eval()
    for start in tqdm(range(0, len(data), batch_size), desc="faithfulness", disable=not progress, unit="batch"):
        indices = range(start, min(start + batch_size, len(data)))
        texts = [data.texts[i] for i in indices]
        pairs = [data.text_pairs[i] for i in indices] if data.is_pair else None
        encoded = model.tokenize(texts, pairs)
        batch = {k: v.to(device) for k, v in encoded.items()}
        with torch.inference_mode():
            output = model(**batch)
        probabilities = torch.softmax(output.logits.float(), dim=-1)
        predicted = probabilities.argmax(-1)
        original = probabilities.gather(1, predicted[:, None]).squeeze(1)

        sequences, content = [], []
        for row, encoding in enumerate(encoded.encodings):
            length = int(encoded["attention_mask"][row].sum())
            sequences.append({k: v[row, :length].tolist() for k, v in encoded.items()})
            content.append(np.array([p for p in range(length) if encoding.sequence_ids[p] is not None]))
        # every perturbed copy of the batch, for every ranking and fraction, forwarded together
        copies: list[tuple[dict, str, int, dict, int]] = []  # (target, ranking, fraction, sequence, row)
        for ranking in rankings:
            if ranking == RANDOM:
                ranked = [rng.permutation(c) for c in content]
            else:
                scores = rankers[ranking](model, batch, output)
                ranked = [c[np.argsort(-scores[row][c], kind="stable")] for row, c in enumerate(content)]
            for f, fraction in enumerate(fractions):
                for row, (sequence, c, r) in enumerate(zip(sequences, content, ranked)):
                    top = set(r[: max(1, math.ceil(fraction * len(r)))].tolist())
                    copies.append((comprehensiveness, ranking, f, _perturbed(sequence, top), row))
                    copies.append((sufficiency, ranking, f, _perturbed(sequence, set(c.tolist()) - top), row))
        classes = predicted.cpu().numpy()
        new = _class_probabilities(model, [c[3] for c in copies], [classes[c[4]] for c in copies], pad_id, device, batch_size)
        before = original.cpu().numpy()
        for (target, ranking, f, _, row), probability in zip(copies, new):
            target[ranking][f] += before[row] - probability
    return Faithfulness(
        fractions=tuple(fractions),
        comprehensiveness={r: (v / len(data)).tolist() for r, v in comprehensiveness.items()},
        sufficiency={r: (v / len(data)).tolist() for r, v in sufficiency.items()},
    )
