import numpy as np
import pytest
import torch

from protolm.data import TextClassificationData
from protolm.evaluation import classification_metrics, evaluate
from protolm.faithfulness import evaluate_faithfulness, gradient_x_input_scores


def test_classification_metrics_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 2, 2])
    metrics = classification_metrics(labels, predicted, 3)
    assert metrics.accuracy == pytest.approx(4 / 6)
    assert metrics.confusion == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    f1 = [2 * 1 * (2 / 3) / (1 + 2 / 3), 0.5, 2 * 0.5 * 1 / 1.5]
    assert metrics.macro_f1 == pytest.approx(np.mean(f1))


def test_metrics_with_an_absent_class_do_not_divide_by_zero():
    metrics = classification_metrics(np.array([0, 0]), np.array([0, 0]), 2)
    assert metrics.accuracy == 1.0 and metrics.macro_f1 == 0.5


@pytest.fixture
def data():
    texts = ["a very good and lovely film", "bad", "the plot was thin but the acting was fine", "awful, awful"]
    return TextClassificationData(texts, None, np.array([1, 0, 1, 0]), ["negative", "positive"], "tiny:validation")


def test_faithfulness_shapes_and_bounds(make_model, data):
    result = evaluate_faithfulness(make_model(), data, batch_size=3, fractions=(0.1, 0.5), progress=False)
    for metric in ("comprehensiveness", "sufficiency"):
        for ranking in ("attention", "random"):
            values = getattr(result, metric)[ranking]
            assert len(values) == 2
            assert all(-1.0 <= v <= 1.0 for v in values)
    assert result.at("comprehensiveness", "attention", 0.5) == result.comprehensiveness["attention"][1]


def test_faithfulness_is_exact_when_the_model_ignores_input(make_model, data):
    model = make_model()
    model.classifier.weight.data.zero_()  # constant prediction: removing tokens changes nothing
    result = evaluate_faithfulness(model, data, fractions=(0.2,), progress=False)
    assert result.comprehensiveness["attention"][0] == pytest.approx(0.0, abs=1e-6)
    assert result.sufficiency["random"][0] == pytest.approx(0.0, abs=1e-6)


def test_faithfulness_on_pairs(make_model):
    pairs = TextClassificationData(["a man sleeps", "kids play"], ["a person rests", "nobody plays"], np.array([0, 1]), ["e", "n"], "p")
    result = evaluate_faithfulness(make_model(is_pair=True), pairs, fractions=(0.2,), progress=False)
    assert len(result.comprehensiveness["attention"]) == 1


def test_evaluate_report_renders(make_model, data):
    report = evaluate(make_model(), data, progress=False)
    text = report.render()
    assert "accuracy" in text and "comprehensive" in text
    assert report.as_dict()["examples"] == 4
    baseline = evaluate(make_model(architecture="baseline"), data, progress=False, faithfulness_samples=2)
    assert set(baseline.faithfulness.comprehensiveness) == {"gradient_x_input", "random"}
    assert "gradient_x_input" in baseline.render()


def test_gradient_x_input_matches_autograd_through_input_embeddings(make_model, data):
    model = make_model(architecture="baseline").eval()
    batch = dict(model.tokenize(data.texts))
    scores = gradient_x_input_scores(model, batch)
    assert all(p.grad is None for p in model.parameters())  # nothing left on the weights

    embeddings = model.encoder.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
    hidden = model.encoder(inputs_embeds=embeddings, attention_mask=batch["attention_mask"]).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    logits = model.classifier((hidden * mask).sum(1) / mask.sum(1))
    torch.log_softmax(logits, -1).gather(1, logits.argmax(-1, keepdim=True)).sum().backward()
    expected = (embeddings.grad * embeddings).norm(dim=-1).detach().numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-6)


def test_unknown_ranking_is_refused(make_model, data):
    with pytest.raises(ValueError, match="unknown ranking"):
        evaluate_faithfulness(make_model(), data, rankings=("saliency",), progress=False)


def test_attention_ranking_needs_attention(make_model, data):
    with pytest.raises(ValueError, match="token attention"):
        evaluate_faithfulness(make_model(architecture="baseline"), data, rankings=("attention",), progress=False)
