import pytest
import torch

from core.errors import ConfigError
from core.similarity import METRICS
from protolm.layers import SIMILARITY_FUNCTIONS, PrototypeLayer, TokenAttention


def test_padding_gets_exactly_zero_attention():
    torch.manual_seed(0)
    attention = TokenAttention(16)
    hidden = torch.randn(3, 9, 16) * 50  # large activations must not leak mass into pads
    mask = torch.tensor([[1] * 9, [1] * 4 + [0] * 5, [1] + [0] * 8])
    weights = attention(hidden, mask)
    assert torch.all(weights[mask == 0] == 0.0)
    assert torch.allclose(weights.sum(-1), torch.ones(3))
    assert weights[2, 0] == 1.0


def test_pads_do_not_change_real_token_weights():
    torch.manual_seed(0)
    attention = TokenAttention(8)
    hidden = torch.randn(1, 5, 8)
    padded = torch.cat([hidden, torch.randn(1, 3, 8)], dim=1)
    short = attention(hidden, torch.ones(1, 5, dtype=torch.long))
    long = attention(padded, torch.tensor([[1] * 5 + [0] * 3]))
    assert torch.allclose(short, long[:, :5], atol=1e-7)


def _cosine(pooled, vectors):
    return torch.nn.functional.cosine_similarity(pooled[:, None], vectors[None], dim=-1)


# (distance, similarity) of every similarity, written from its definition; a new similarity
# needs its line here too.
DEFINITIONS = {
    "cosine": lambda pooled, vectors: (1 - _cosine(pooled, vectors), _cosine(pooled, vectors)),
    "inverse": lambda pooled, vectors: (torch.cdist(pooled, vectors), 1 / (torch.cdist(pooled, vectors) + 1e-4)),
    "log": lambda pooled, vectors: (torch.cdist(pooled, vectors), torch.log((torch.cdist(pooled, vectors) ** 2 + 1) / (torch.cdist(pooled, vectors) ** 2 + 1e-4))),
}


@pytest.mark.parametrize("similarity", sorted(METRICS))
def test_similarities_match_their_definitions(similarity):
    torch.manual_seed(0)
    layer = PrototypeLayer(num_classes=3, per_class=2, hidden_size=8, similarity=similarity, epsilon=1e-4)
    pooled = torch.randn(5, 8)
    distances, similarities = layer(pooled)
    expected_distances, expected_similarities = DEFINITIONS[similarity](pooled, layer.vectors)
    assert torch.allclose(distances, expected_distances, atol=1e-5)
    assert torch.allclose(similarities, expected_similarities, atol=1e-4)


def test_similarity_is_finite_with_finite_gradient_on_a_prototype():
    layer = PrototypeLayer(2, 1, 4, "inverse", 1e-4)
    pooled = layer.vectors[:1].detach().clone().requires_grad_(True)
    _, similarities = layer(pooled)
    similarities.sum().backward()
    assert torch.isfinite(similarities).all()
    assert torch.isfinite(pooled.grad).all()


def test_class_identity_is_a_persistent_buffer():
    layer = PrototypeLayer(num_classes=3, per_class=4, hidden_size=8, similarity="inverse", epsilon=1e-4)
    assert layer.prototype_class.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert "prototype_class" in dict(layer.named_buffers())
    assert "prototype_class" in layer.state_dict()
    assert not any(name == "prototype_class" for name, _ in layer.named_parameters())


def test_every_similarity_has_a_metric_and_a_formula():
    assert set(SIMILARITY_FUNCTIONS) == set(METRICS)


def test_unknown_similarity_is_rejected():
    with pytest.raises(ConfigError, match="similarity"):
        PrototypeLayer(2, 1, 4, "dot", 1e-4)
