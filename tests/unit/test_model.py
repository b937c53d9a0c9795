import json

import pytest
import torch

from core.errors import ConfigError
from protolm.model import BaselineClassifier, ProtoLM, load_model, prototypes_per_class

TEXTS = ["a fine film", "dull, dull and long; i left early", "ok"]


def test_forward_returns_everything_in_one_pass(make_model):
    model = make_model(per_class=4)
    encoded = model.tokenize(TEXTS)
    output = model(**encoded)
    batch, length = encoded["input_ids"].shape
    assert output.logits.shape == (3, 2)
    assert output.similarities.shape == output.distances.shape == (3, 8)
    assert output.token_attention.shape == (batch, length)
    assert output.pooled.shape == (3, 32)
    assert torch.all(output.token_attention[encoded["attention_mask"] == 0] == 0)


def test_classifier_starts_at_plus_one_own_minus_half_other(make_model):
    model = make_model(label_names=("a", "b", "c"), per_class=2)
    expected = torch.tensor([[1, 1, -0.5, -0.5, -0.5, -0.5], [-0.5, -0.5, 1, 1, -0.5, -0.5], [-0.5, -0.5, -0.5, -0.5, 1, 1]])
    assert torch.equal(model.classifier.weight, expected)
    assert model.prototype_class.tolist() == [0, 0, 1, 1, 2, 2]
    model.reset_classifier(0.1)  # training's default scale
    assert torch.allclose(model.classifier.weight, expected * 0.1)


@pytest.mark.parametrize(("total", "classes", "per_class"), [(200, 2, 100), (200, 5, 40), (3, 5, 1), (7, 2, 3)])
def test_prototypes_per_class_clamps(total, classes, per_class):
    assert prototypes_per_class(total, classes) == per_class


@pytest.mark.parametrize("architecture", ["protolm", "baseline"])
def test_save_and_load_round_trip_is_exact(make_model, tmp_path, architecture):
    model = make_model(architecture=architecture)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.01)  # not just the initial values
    model.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    assert type(loaded) is type(model)
    assert loaded.config == model.config
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    encoded = model.tokenize(TEXTS)
    with torch.no_grad():
        assert torch.equal(model(**encoded).logits, loaded(**encoded).logits)
    assert loaded.tokenizer("a fine film")["input_ids"] == model.tokenizer("a fine film")["input_ids"]


def test_from_pretrained_checks_the_architecture(make_model, tmp_path):
    make_model(architecture="baseline").save_pretrained(tmp_path)
    assert isinstance(BaselineClassifier.from_pretrained(tmp_path), BaselineClassifier)
    with pytest.raises(ConfigError, match="baseline"):
        ProtoLM.from_pretrained(tmp_path)


def test_unknown_format_version_is_rejected(make_model, tmp_path):
    make_model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["format_version"] = 99
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="format version 99"):
        load_model(tmp_path)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(ConfigError, match="not a protolm model directory"):
        load_model(tmp_path)


def test_pair_models_take_pairs_and_only_pairs(make_model):
    pair_model = make_model(is_pair=True)
    encoded = pair_model.tokenize(["a man sleeps"], ["a person rests"])
    assert pair_model(**encoded).logits.shape == (1, 2)
    assert encoded["token_type_ids"].max() == 1
    with pytest.raises(ConfigError, match="pairs"):
        pair_model.tokenize(["only one"])
    with pytest.raises(ConfigError, match="single texts"):
        make_model().tokenize(["a"], ["b"])


def test_many_classes(make_model):
    model = make_model(label_names=[f"c{i}" for i in range(5)], per_class=2)
    assert model(**model.tokenize(TEXTS)).logits.shape == (3, 5)


def test_truncates_to_max_length(make_model):
    model = make_model()
    encoded = model.tokenize(["word " * 500])
    assert encoded["input_ids"].shape[1] == model.config.max_length
