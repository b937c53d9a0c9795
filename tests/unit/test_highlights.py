import pytest

from core.highlights import token_highlights, word_highlights


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from protolm.encoders import resolve_encoder_path

    return AutoTokenizer.from_pretrained(resolve_encoder_path("minilm"))


def test_word_pieces_merge_into_words_with_summed_weight(tokenizer):
    text = "unbelievably charming"
    encoding = tokenizer(text).encodings[0]
    weights = [0.1 * (i + 1) for i in range(len(encoding.ids))]
    words = word_highlights((text,), encoding.offsets, encoding.sequence_ids, encoding.word_ids, weights)
    assert [w.text for w in words] == ["unbelievably", "charming"]
    pieces = [i for i, w in enumerate(encoding.word_ids) if w == 0]
    assert len(pieces) > 1  # the test is only meaningful if the word really is split
    assert words[0].weight == pytest.approx(sum(weights[i] for i in pieces))
    assert text[words[1].start : words[1].end] == "charming"


def test_special_tokens_are_skipped_and_pairs_keep_their_segment(tokenizer):
    premise, hypothesis = "A dog runs.", "An animal moves"
    encoding = tokenizer(premise, hypothesis).encodings[0]
    weights = [1.0] * len(encoding.ids)
    tokens = token_highlights((premise, hypothesis), encoding.offsets, encoding.sequence_ids, weights)
    assert len(tokens) == len(encoding.ids) - 3  # [CLS] and two [SEP]
    for token in tokens:
        source = premise if token.segment == 0 else hypothesis
        assert source[token.start : token.end] == token.text
    words = word_highlights((premise, hypothesis), encoding.offsets, encoding.sequence_ids, encoding.word_ids, weights)
    assert [w.text for w in words if w.segment == 1] == ["An", "animal", "moves"]
