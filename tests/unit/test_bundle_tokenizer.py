"""The service tokenises with `tokenizers` from tokenizer.json; it must give the trainer's inputs."""

import numpy as np
import pytest
from tokenizers import Tokenizer

from export.bundle_writer import write_tokenizer
from export.onnx_graph import graph_inputs
from core.bundle import TOKENIZER_FILE
from core.graph_inputs import configure_tokenizer, encode_batch

LONG = " ".join(f"word{i} unbelievably" for i in range(60))
TEXTS = ["a gripping, beautifully acted film", "Short.", LONG, "naïve café — ünïcode ok?", "x"]
PAIRS = [LONG, "the second text", LONG + " tail", "", "y " * 5]


def served_inputs(model, directory, texts, pairs):
    write_tokenizer(model, directory)
    tokenizer = configure_tokenizer(Tokenizer.from_file(str(directory / TOKENIZER_FILE)), model.config.max_length)
    return encode_batch(tokenizer, texts, pairs, graph_inputs(model))


@pytest.mark.parametrize("is_pair", [False, True], ids=["single", "pair"])
def test_tokenizer_json_gives_the_training_inputs(make_model, tmp_path, is_pair):
    model = make_model(is_pair=is_pair)
    pairs = PAIRS if is_pair else None
    served = served_inputs(model, tmp_path, TEXTS, pairs)
    trained = {name: tensor.numpy() for name, tensor in model.tokenize(TEXTS, pairs).items()}
    assert sorted(served) == sorted(trained) == sorted(graph_inputs(model))
    mask = trained["attention_mask"]
    np.testing.assert_array_equal(served["attention_mask"], mask)
    for name in served:  # padding ids may differ; the mask hides them from every output
        np.testing.assert_array_equal(served[name] * mask, trained[name] * mask, err_msg=name)
    assert mask.sum(1).max() == model.config.max_length  # the long inputs were truncated


def test_pairs_truncate_longest_first(make_model, tmp_path):
    model = make_model(is_pair=True)
    served = served_inputs(model, tmp_path, ["short text", LONG], [LONG, LONG])
    lengths = served["attention_mask"].sum(1)
    assert lengths.tolist() == [model.config.max_length] * 2
    first_segment = (served["token_type_ids"] == 0) & (served["attention_mask"] == 1)
    assert first_segment[0].sum() == 4  # [CLS] short text [SEP]: the long second text lost the tokens
    assert abs(first_segment[1].sum() - (lengths[1] - first_segment[1].sum())) <= 1
