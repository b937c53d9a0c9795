import numpy as np
import pytest
import torch

from protolm.data import TextClassificationData
from protolm.evaluation import prototype_quality
from protolm.inference import predict
from protolm.projection import load_exemplars, logits_from_pooled, nearest_examples, project_prototypes, push, retraining_rows, save_exemplars

TEXTS = ["good", "great fun", "bad", "awful mess", "fine acting", "boring plot", "lovely", "terrible", "superb work", "weak"]


@pytest.fixture
def train_data():
    return TextClassificationData(TEXTS, None, np.array([1, 1, 0, 0, 1, 0, 1, 0, 1, 0]), ["negative", "positive"], "tiny:train")


@pytest.mark.parametrize("similarity", ["inverse", "cosine"])
def test_projection_picks_the_true_nearest_example(make_model, train_data, similarity):
    model = make_model(per_class=3, similarity=similarity)
    pooled = predict(model, train_data, batch_size=4, progress=False).pooled
    exemplars = project_prototypes(model, train_data, pooled)
    prototypes = model.prototypes.vectors.detach().numpy()
    if similarity == "cosine":
        unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
        brute = 1 - unit(prototypes) @ unit(pooled).T
    else:
        brute = np.linalg.norm(prototypes[:, None] - pooled[None], axis=-1)
    assert [e.example_id for e in exemplars] == brute.argmin(1).tolist()
    assert np.allclose([e.distance for e in exemplars], brute.min(1), atol=1e-3)
    for exemplar in exemplars:
        assert exemplar.text == TEXTS[exemplar.example_id]
        assert exemplar.prototype_class == model.prototype_class[exemplar.prototype].item()
        assert exemplar.words and sum(w.weight for w in exemplar.words) <= 1.0 + 1e-5


def test_nearest_examples_returns_k_sorted(make_model):
    model = make_model()
    base = np.random.default_rng(0).normal(size=(50, 32)).astype(np.float32)
    distances, indices = nearest_examples(model, base, base[:3], k=4)
    assert indices[:, 0].tolist() == [0, 1, 2]
    assert np.all(np.diff(distances, axis=1) >= 0)


def test_exemplars_round_trip(make_model, train_data, tmp_path):
    model = make_model()
    exemplars = project_prototypes(model, train_data, predict(model, train_data, progress=False).pooled)
    save_exemplars(tmp_path, exemplars, source="tiny:train")
    assert load_exemplars(tmp_path) == exemplars
    quality = prototype_quality(exemplars)
    assert quality.prototypes == 6
    assert quality.distinct_exemplars == len({e.example_id for e in exemplars})
    assert quality.purity == pytest.approx(np.mean([e.label == e.prototype_class for e in exemplars]))


def test_push_moves_prototypes_onto_exemplars_and_retrains_last_layer(make_model, train_data):
    model = make_model(per_class=2)
    pooled = predict(model, train_data, progress=False).pooled
    exemplars = project_prototypes(model, train_data, pooled)
    before = model.classifier.weight.detach().clone()
    push(model, pooled, train_data.labels, exemplars, epochs=5, seed=0, refit=False)
    positions = [e.example_id for e in exemplars]
    assert torch.allclose(model.prototypes.vectors, torch.from_numpy(pooled[positions]))
    assert not torch.equal(before, model.classifier.weight)


def test_push_retrains_the_last_layer_without_the_exemplars(make_model, train_data):
    """An exemplar matches its own prototype exactly, as no unseen text does: the labels of the
    exemplar rows must not matter to the retrained layer."""
    import copy

    model = make_model(per_class=2)
    pooled = predict(model, train_data, progress=False).pooled
    exemplars = project_prototypes(model, train_data, pooled)
    positions = sorted({e.example_id for e in exemplars})
    flipped = train_data.labels.copy()
    flipped[positions] = 1 - flipped[positions]
    honest, misled = model, copy.deepcopy(model)
    push(honest, pooled, train_data.labels, exemplars, epochs=5, seed=0, refit=False)
    push(misled, pooled, flipped, exemplars, epochs=5, seed=0, refit=False)
    assert torch.equal(honest.classifier.weight, misled.classifier.weight)
    assert retraining_rows(10, positions).tolist() == [i for i in range(10) if i not in positions]
    assert retraining_rows(3, [0, 1, 2]).tolist() == [0, 1, 2]  # nothing else to learn from: all of them


def test_labels_from_stored_encodings_after_push_are_a_forward_pass(make_model, train_data):
    """The training job evaluates with the test encodings from before push: push must leave
    the encoder and the attention, the layers up to pooling, as they were."""
    from protolm.pipeline import _labels_from_pooled

    model = make_model(per_class=2, similarity="cosine")
    pooled = predict(model, train_data, progress=False).pooled
    before = _labels_from_pooled(model, pooled)
    push(model, pooled, train_data.labels, project_prototypes(model, train_data, pooled), epochs=5, seed=0, refit=False)
    after = _labels_from_pooled(model, pooled)
    assert (after == predict(model, train_data, progress=False).labels).all()
    assert (before != after).any()  # push moved some answers: the check above compares the pushed model


def test_refit_after_push_keeps_the_trained_models_logits(make_model, train_data):
    """Push moves the prototypes; the refitted last layer brings the logits on the training
    examples back toward the trained model's, and changes nothing where push moved nothing."""
    import copy

    refitted = make_model(per_class=2, similarity="cosine")
    with torch.no_grad():
        refitted.classifier.weight.normal_()
    pooled = predict(refitted, train_data, progress=False).pooled
    exemplars = project_prototypes(refitted, train_data, pooled)
    trained = logits_from_pooled(refitted, pooled)
    kept = copy.deepcopy(refitted)
    push(kept, pooled, train_data.labels, exemplars, epochs=0, seed=0, refit=False)
    push(refitted, pooled, train_data.labels, exemplars, epochs=0, seed=0, refit=True)
    rows = retraining_rows(len(train_data), [e.example_id for e in exemplars])
    kept_error = (logits_from_pooled(kept, pooled) - trained).abs()[rows].mean()
    refit_error = (logits_from_pooled(refitted, pooled) - trained).abs()[rows].mean()
    assert refit_error < 0.5 * kept_error
    assert torch.equal(kept.prototypes.vectors, refitted.prototypes.vectors)

    settled = refitted.classifier.weight.detach().clone()
    push(refitted, pooled, train_data.labels, project_prototypes(refitted, train_data, pooled), epochs=0, seed=0, refit=True)
    assert torch.allclose(refitted.classifier.weight, settled, atol=1e-5)  # prototypes already are their exemplars
