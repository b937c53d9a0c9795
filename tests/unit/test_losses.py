import pytest
import torch

from protolm.config import ModelOptions
from protolm.losses import LossWeights, cohesion_loss, protolm_loss, separation_loss, top_k_count

CLASSES = torch.tensor([0, 0, 0, 1, 1, 1])


@pytest.mark.parametrize(("top_k", "per_class", "expected"), [(0.5, 100, 50), (0.5, 1, 1), (3, 10, 3), (30, 10, 10), (0.01, 10, 1), (1, 7, 1)])
def test_top_k_count(top_k, per_class, expected):
    assert top_k_count(top_k, per_class) == expected


def test_top_k_rejects_non_positive():
    with pytest.raises(ValueError):
        top_k_count(0, 5)


def test_cohesion_averages_the_k_farthest_own_class_prototypes():
    distances = torch.tensor([[1.0, 5.0, 3.0, 0.5, 9.0, 2.0]])
    labels = torch.tensor([0])
    assert cohesion_loss(distances, labels, CLASSES, k=2).item() == pytest.approx((5 + 3) / 2)
    assert cohesion_loss(distances, torch.tensor([1]), CLASSES, k=1).item() == pytest.approx(9.0)


def test_separation_is_minus_the_mean_of_the_k_nearest_other_class_prototypes():
    distances = torch.tensor([[1.0, 5.0, 3.0, 0.5, 9.0, 2.0]])
    assert separation_loss(distances, torch.tensor([0]), CLASSES, k=2).item() == pytest.approx(-(0.5 + 2) / 2)
    assert separation_loss(distances, torch.tensor([1]), CLASSES, k=1).item() == pytest.approx(-1.0)


def _distances(pooled, prototypes):
    return torch.cdist(pooled, prototypes)


@pytest.mark.parametrize("term", ["cohesion", "separation"])
def test_optimising_each_term_moves_s_the_intended_way(term):
    torch.manual_seed(0)
    prototypes = torch.randn(6, 8)
    labels = torch.tensor([0, 1, 0, 1])
    pooled = torch.randn(4, 8, requires_grad=True)
    own = labels[:, None] == CLASSES[None]
    before = _distances(pooled, prototypes).detach()
    optimiser = torch.optim.SGD([pooled], lr=0.05)
    loss_fn = cohesion_loss if term == "cohesion" else separation_loss
    for _ in range(10):
        loss = loss_fn(_distances(pooled, prototypes), labels, CLASSES, k=2)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = _distances(pooled, prototypes).detach()
    if term == "cohesion":
        assert after[own].mean() < before[own].mean()
    else:
        assert after[~own].mean() > before[~own].mean()


def test_full_objective_pulls_own_and_pushes_other_prototypes():
    torch.manual_seed(1)
    prototypes = torch.randn(6, 8)
    labels = torch.tensor([0, 1, 1, 0])
    pooled = torch.randn(4, 8, requires_grad=True)
    own = labels[:, None] == CLASSES[None]
    before = _distances(pooled, prototypes).detach()
    optimiser = torch.optim.Adam([pooled], lr=0.05)
    for _ in range(20):
        distances = _distances(pooled, prototypes)
        logits = (1 / (distances + 1e-4)) @ torch.tensor([[1.0, -0.5]] * 3 + [[-0.5, 1.0]] * 3)
        loss = protolm_loss(logits, distances, labels, CLASSES, 2, LossWeights.from_options(ModelOptions()))["loss"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = _distances(pooled, prototypes).detach()
    assert after[own].mean() < before[own].mean()
    assert after[~own].mean() > before[~own].mean()


def test_objective_reports_each_term():
    distances = torch.rand(3, 6) + 0.1
    logits = torch.randn(3, 2)
    labels = torch.tensor([0, 1, 0])
    result = protolm_loss(logits, distances, labels, CLASSES, 1, LossWeights(1.0, 0.0, 0.0))
    assert set(result) == {"loss", "ce", "cohesion", "separation"}
    assert result["loss"].item() == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item())
