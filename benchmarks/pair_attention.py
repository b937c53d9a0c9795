"""Why a pair model's token attention ranks below random (MRPC): the measurements, in one run.

For a trained proto-lm on a pair task, on a seeded sample of its test data:

1. where the attention mass goes: [CLS], the [SEP]s, the first and the second sentence;
2. how much of the top 20% of real tokens by attention is *shared* (the same word piece
   occurs in the other sentence), against the share of shared tokens among all real tokens
   (what a random ranking picks); and how many of the top 20% have their *twin* (the same
   word piece in the other sentence) in the top 20% too, by attention and by a random ranking;
3. comprehensiveness and sufficiency (``protolm.faithfulness``) of control rankings:
   ``attention``; ``attention_per_segment`` (each sentence's attention normalised to sum 1,
   so both sentences give up tokens alike); ``inverse_attention`` (lowest first);
   ``shared_first`` and ``unshared_first`` (random order within shared / unshared tokens,
   one group first); ``gradient_x_input``; ``random``;
4. the same, split by the predicted class.

    python benchmarks/pair_attention.py runs/models/mrpc/model --samples 100
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONTROLS = ("attention", "attention_per_segment", "inverse_attention", "shared_first", "unshared_first", "gradient_x_input", "random")


def segments(model, input_ids, token_type_ids):
    """Per position: 0 first sentence, 1 second, -1 special or padding."""
    import torch

    tokenizer = model.tokenizer
    special = torch.isin(input_ids, torch.tensor([tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id]))
    return torch.where(special, torch.full_like(input_ids, -1), token_type_ids).cpu().numpy()


def shared_mask(input_ids: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """Real tokens whose id also occurs in the other sentence of the pair."""
    shared = np.zeros(input_ids.shape, dtype=bool)
    for row in range(input_ids.shape[0]):
        ids = [set(input_ids[row][segment[row] == s].tolist()) for s in (0, 1)]
        for s in (0, 1):
            where = segment[row] == s
            shared[row, where] = np.isin(input_ids[row, where], list(ids[1 - s]))
    return shared


def twin_share(input_ids: np.ndarray, segment: np.ndarray, chosen: np.ndarray) -> float:
    """Of the ``chosen`` positions, the share whose word piece is also chosen in the other sentence."""
    chosen_ids = {s: set(input_ids[chosen[segment[chosen] == s]].tolist()) for s in (0, 1)}
    return float(np.mean([input_ids[p] in chosen_ids[1 - segment[p]] for p in chosen]))


def _attention(model, batch, output):
    return output.token_attention.float().cpu().numpy()


def attention_per_segment(model, batch, output):
    attention = _attention(model, batch, output)
    segment = segments(model, batch["input_ids"], batch["token_type_ids"])
    scores = attention.copy()
    for s in (0, 1):
        total = np.where(segment == s, attention, 0).sum(1, keepdims=True)
        scores = np.where(segment == s, attention / np.maximum(total, 1e-12), scores)
    return scores


def inverse_attention(model, batch, output):
    return -_attention(model, batch, output)


def group_first(model, batch, output, shared: bool, rng: np.random.Generator):
    input_ids = batch["input_ids"].cpu().numpy()
    segment = segments(model, batch["input_ids"], batch["token_type_ids"])
    in_group = shared_mask(input_ids, segment) == shared
    return in_group + rng.random(input_ids.shape)  # the group first, in random order within


def where_attention_goes(model, data, batch_size: int = 32) -> dict:
    import torch

    totals = {"cls": [], "sep": [], "first": [], "second": []}
    top_shared, all_shared, top_second = [], [], []
    twins = {"attention": [], "random": []}
    rng = np.random.default_rng(0)
    predicted = []
    for start in range(0, len(data), batch_size):
        rows = range(start, min(start + batch_size, len(data)))
        batch = dict(model.tokenize([data.texts[i] for i in rows], [data.text_pairs[i] for i in rows]))
        with torch.inference_mode():
            output = model(**batch)
        predicted.extend(output.logits.argmax(-1).tolist())
        attention = output.token_attention.float().numpy()
        input_ids = batch["input_ids"].numpy()
        segment = segments(model, batch["input_ids"], batch["token_type_ids"])
        shared = shared_mask(input_ids, segment)
        totals["cls"].extend(np.where(input_ids == model.tokenizer.cls_token_id, attention, 0).sum(1))
        totals["sep"].extend(np.where(input_ids == model.tokenizer.sep_token_id, attention, 0).sum(1))
        totals["first"].extend(np.where(segment == 0, attention, 0).sum(1))
        totals["second"].extend(np.where(segment == 1, attention, 0).sum(1))
        for row in range(len(rows)):
            content = np.flatnonzero(segment[row] >= 0)
            top = content[np.argsort(-attention[row][content], kind="stable")][: max(1, int(np.ceil(0.2 * len(content))))]
            top_shared.append(shared[row][top].mean())
            top_second.append((segment[row][top] == 1).mean())
            twins["attention"].append(twin_share(input_ids[row], segment[row], top))
            twins["random"].append(twin_share(input_ids[row], segment[row], rng.permutation(content)[: len(top)]))
            all_shared.append(shared[row][content].mean())
    return {
        "attention_mass": {k: float(np.mean(v)) for k, v in totals.items()},
        "top20_shared_share": float(np.mean(top_shared)),
        "all_tokens_shared_share": float(np.mean(all_shared)),
        "top20_second_sentence_share": float(np.mean(top_second)),
        "top20_twin_also_in_top20": {k: float(np.mean(v)) for k, v in twins.items()},
        "predicted": predicted,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=Path("docs/results/pair_attention.json"))
    args = parser.parse_args(argv)

    import torch

    from benchmarks.attribution import load_test_data
    from protolm.faithfulness import evaluate_faithfulness
    from protolm.model import load_model

    torch.set_num_threads(args.threads)
    model = load_model(args.model_dir)
    task, data = load_test_data(args.model_dir, model.config.label_names, args.samples, args.seed)
    where = where_attention_goes(model, data)
    predicted = np.array(where.pop("predicted"))
    rng = np.random.default_rng(args.seed)
    rankers = {
        "attention_per_segment": attention_per_segment,
        "inverse_attention": inverse_attention,
        "shared_first": partial(group_first, shared=True, rng=rng),
        "unshared_first": partial(group_first, shared=False, rng=rng),
    }

    def faithfulness(subset):
        result = evaluate_faithfulness(model, subset, batch_size=16, seed=args.seed, progress=False, rankings=CONTROLS, rankers=rankers)
        return {m: {r: float(np.mean(v)) for r, v in getattr(result, m).items()} for m in ("comprehensiveness", "sufficiency")}

    record = {"task": task, "model": str(args.model_dir), "samples": len(data), **where, "aopc": {"all": faithfulness(data)}}
    for label_id, label in enumerate(model.config.label_names):
        chosen = np.flatnonzero(predicted == label_id)
        record.setdefault("predicted_counts", {})[label] = len(chosen)
        if len(chosen):
            record["aopc"][f"predicted {label}"] = faithfulness(data.subset(chosen))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
