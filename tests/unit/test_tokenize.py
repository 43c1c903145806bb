"""The gateway's tokeniser: the model's tokenizer.json with the job's truncation, each batch
padded to its own longest text (not the file's fixed padding), int64, pad id from the file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from parkfleet.nodeagent.tokenize import TextTokenizer

# A word-level tokenizer.json with BERT's special tokens and a fixed padding of 16, as
# all-MiniLM-L6-v2's file has (its padding is replaced by padding per batch).
VOCAB = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "a": 4, "car": 5, "is": 6, "parked": 7}
TOKENIZER = json.dumps(
    {
        "version": "1.0",
        "truncation": {
            "direction": "Right",
            "max_length": 16,
            "strategy": "LongestFirst",
            "stride": 0,
        },
        "padding": {
            "strategy": {"Fixed": 16},
            "direction": "Right",
            "pad_to_multiple_of": None,
            "pad_id": 0,
            "pad_type_id": 0,
            "pad_token": "[PAD]",
        },
        "added_tokens": [],
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 1}},
            ],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]},
            },
        },
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": VOCAB, "unk_token": "[UNK]"},
    }
)


def test_each_batch_is_padded_to_its_longest_text() -> None:
    tok = TextTokenizer(TOKENIZER, max_tokens=64)
    got = tok.encode(["A car", "a car is parked", "boat"])
    assert set(got) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(v.dtype == np.int64 for v in got.values())
    assert got["input_ids"].tolist() == [
        [2, 4, 5, 3, 0, 0],
        [2, 4, 5, 6, 7, 3],
        [2, 1, 3, 0, 0, 0],
    ]
    assert got["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1] * 6, [1, 1, 1, 0, 0, 0]]
    assert not got["token_type_ids"].any()
    assert tok.encode(["car"])["input_ids"].shape == (1, 3)  # not the file's fixed 16


def test_texts_are_truncated_at_max_tokens() -> None:
    tok = TextTokenizer(TOKENIZER, max_tokens=4)
    ids = tok.encode(["a car is parked a car is parked"])["input_ids"]
    assert ids.tolist() == [[2, 4, 5, 3]]  # special tokens count


def test_a_file_that_is_no_tokenizer_is_refused() -> None:
    with pytest.raises(ValueError, match=r"not a tokenizer\.json"):
        TextTokenizer('{"not": "a tokenizer"}', 16)
