"""The servicer's reply building: exemplar messages are built once per served model."""

from types import SimpleNamespace

from core.bundle import Exemplar
from core.highlights import Highlight
from service.servicer import ExemplarMessages


def model_with(*texts):
    exemplars = tuple(
        Exemplar(prototype=i, prototype_class=i % 2, example_id=10 + i, text=t, text_pair=None, label=i % 2, distance=0.0,
                 words=(Highlight(t.split()[0], 0, len(t.split()[0]), 0.5, 0),))
        for i, t in enumerate(texts)
    )
    return SimpleNamespace(exemplars=exemplars, labels=["negative", "positive"])


def test_each_prototypes_message_is_its_exemplar_built_once_per_model():
    cache = ExemplarMessages()
    first = model_with("dull and slow", "a gem of a film")
    messages = cache.of(first)
    assert [(m.example_id, m.text, m.label, m.words[0].text) for m in messages] == [
        (10, "dull and slow", "negative", "dull"), (11, "a gem of a film", "positive", "a")]
    assert all(again is built for again, built in zip(cache.of(first), messages))  # not rebuilt

    second = model_with("utterly tedious", "warm and funny")
    assert [m.text for m in cache.of(second)] == ["utterly tedious", "warm and funny"]
    assert cache.of(first)[0] is messages[0]  # the model draining during a reload keeps its own


def test_only_the_last_two_models_are_kept():
    cache = ExemplarMessages()
    models = [model_with(f"text {n}") for n in range(3)]
    built = [cache.of(m)[0] for m in models]
    assert cache.of(models[2])[0] is built[2] and cache.of(models[1])[0] is built[1]
    assert cache.of(models[0])[0] is not built[0]  # evicted, built again
    assert cache.of(models[0])[0].text == "text 0"
