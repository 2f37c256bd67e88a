"""The tokenizer surge builds from a GGUF's vocabulary equals the one transformers converts."""

from __future__ import annotations

import os

import pytest

from surge.models.gguf_tokenizer import UnsupportedGGUFTokenizer, build_tokenizer, byte_alphabet, load_gguf_tokenizer

TEXTS = [
    "The capital of France is", "  leading spaces and\ttabs\n\nnewlines", "héllo wörld — ünïcödé ✓ 🙂 日本語のテキスト",
    "def f(x):\n    return x ** 2  # square\n", "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
    "1234567890 3.14159 1e-9", "don't won't I'll we've", "",
]


def test_byte_alphabet_is_a_bijection_onto_printable_characters():
    alphabet = byte_alphabet()
    assert len(set(alphabet.values())) == 256
    assert alphabet[ord("A")] == "A" and alphabet[ord(" ")] == "\u0120"


@pytest.mark.slow
def test_matches_transformers_conversion(smollm2_gguf):
    from transformers import AutoTokenizer

    ours = load_gguf_tokenizer(smollm2_gguf)
    theirs = AutoTokenizer.from_pretrained(os.path.dirname(smollm2_gguf), gguf_file=os.path.basename(smollm2_gguf))
    assert len(ours) == len(theirs)
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == theirs.encode(text), text
        assert ours.decode(ids) == theirs.decode(ids)
    assert (ours.eos_token, ours.pad_token, ours.bos_token) == (theirs.eos_token, theirs.pad_token, theirs.bos_token)
    messages = [{"role": "user", "content": "Hello"}]
    assert ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_other_vocabulary_kinds_are_refused():
    with pytest.raises(UnsupportedGGUFTokenizer, match="llama"):
        build_tokenizer({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["a"]})
