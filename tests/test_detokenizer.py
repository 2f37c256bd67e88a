"""IncrementalDetokenizer: pieces pushed token by token concatenate to the full decode.

Checked on two tokenizers built here with the ``tokenizers`` library (GPT-2
style byte-level BPE with ``Ġ``; SentencePiece style ``▁`` with byte fallback)
and on the real SmolLM2 tokenizer of the embedded model.
"""

import os

import pytest

from surge.engine.detokenizer import IncrementalDetokenizer

TEXTS = [
    "hello world, the quick brown fox",
    "héllo wörld, café naïve façade",
    "emoji 🤖🎉 and a family 👨‍👩‍👧 done",
    "日本語のテキスト 中文字符 한국어",
    "def f(x):\n    return  x  +  1\n\n\tprint(\"ok\")  # done",
    "  leading and trailing spaces  ",
    "ü",
    "🤖",
]
CORPUS = ["hello world, the quick brown fox jumps", "def f(x):\n    return x + 1\n", "naïve café 日本 🤖 ok"] * 10


def byte_level_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<eos>"])
    tokenizer.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>")


def sentencepiece_style_tokenizer():
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=160, special_tokens=["<s>", "</s>"])
    # An ASCII-only corpus: every other character must go through the byte-fallback pieces.
    tokenizer.train_from_iterator([text for text in CORPUS if text.isascii()], trainer)
    # Byte-fallback pieces <0x00>..<0xFF> are ordinary vocabulary entries (as in Llama's), not special tokens.
    spec = json.loads(tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    spec["model"]["byte_fallback"] = True
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), bos_token="<s>",
                                   eos_token="</s>")


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    try:
        from surge.models.catalogue import resolve_model
    except ImportError:
        pytest.skip("surge.models.catalogue is not available")
    try:
        path = resolve_model("smollm2-135m-instruct")
    except Exception as exc:  # no network and no cached copy
        pytest.skip(f"SmolLM2 GGUF unavailable: {exc}")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))


@pytest.fixture(scope="module", params=["byte_level", "sentencepiece"])
def tiny_tokenizer(request):
    return byte_level_tokenizer() if request.param == "byte_level" else sentencepiece_style_tokenizer()


def stream(tokenizer, prompt_ids, output_ids, chunk=1, skip_special_tokens=True):
    detokenizer = IncrementalDetokenizer(tokenizer, prompt_ids, skip_special_tokens=skip_special_tokens)
    pieces = [detokenizer.push(output_ids[i:i + chunk]) for i in range(0, len(output_ids), chunk)]
    pieces.append(detokenizer.flush())
    return pieces


def expected_continuation(tokenizer, prompt_ids, output_ids, skip_special_tokens=True):
    full = tokenizer.decode(prompt_ids + output_ids, skip_special_tokens=skip_special_tokens)
    prefix = tokenizer.decode(prompt_ids, skip_special_tokens=skip_special_tokens)
    assert full.startswith(prefix)
    return full[len(prefix):]


def encode(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("text", TEXTS)
def test_tiny_tokenizers_token_by_token(tiny_tokenizer, text):
    ids = encode(tiny_tokenizer, text)
    pieces = stream(tiny_tokenizer, [], ids)
    assert "".join(pieces) == tiny_tokenizer.decode(ids)
    assert all("\ufffd" not in piece for piece in pieces)


@pytest.mark.parametrize("text", TEXTS)
def test_tiny_tokenizers_after_a_prompt(tiny_tokenizer, text):
    ids = encode(tiny_tokenizer, "the fox said: " + text)
    for split in range(1, len(ids)):
        prompt, output = ids[:split], ids[split:]
        full = tiny_tokenizer.decode(ids)
        # A prompt cut inside a character: its tokens holding the partial character count as output.
        complete = len(prompt)
        while tiny_tokenizer.decode(prompt[:complete]).endswith("\ufffd"):
            complete -= 1
        shown = tiny_tokenizer.decode(prompt[:complete])
        assert full.startswith(shown)
        for chunk in (1, 3):
            pieces = stream(tiny_tokenizer, prompt, output, chunk=chunk)
            assert "".join(pieces) == full[len(shown):]
            assert all("\ufffd" not in piece for piece in pieces)


def test_sentencepiece_leading_space_comes_from_the_prompt_context():
    tokenizer = sentencepiece_style_tokenizer()
    prompt = encode(tokenizer, "hello")
    output = encode(tokenizer, "hello world")[len(prompt):]
    assert encode(tokenizer, "hello world")[:len(prompt)] == prompt
    assert tokenizer.convert_ids_to_tokens(output)[0].startswith("▁")
    assert "".join(stream(tokenizer, prompt, output)) == " world"
    # Without context the same tokens would lose their space when decoded alone.
    assert tokenizer.decode(output) == "world"


def test_incomplete_character_is_held_until_complete():
    tokenizer = sentencepiece_style_tokenizer()
    ids = encode(tokenizer, "ok🤖")
    assert all(piece.startswith("<0x") for piece in tokenizer.convert_ids_to_tokens(ids[-4:]))
    detokenizer = IncrementalDetokenizer(tokenizer, [])
    pieces = [detokenizer.push([i]) for i in ids]
    assert pieces[-4:] == ["", "", "", "🤖"]
    assert "".join(pieces) == "ok🤖"


def test_flush_releases_an_unfinished_character():
    tokenizer = sentencepiece_style_tokenizer()
    ids = encode(tokenizer, "ok🤖")[:-1]  # the emoji's last byte never arrives
    detokenizer = IncrementalDetokenizer(tokenizer, [])
    text = detokenizer.push(ids)
    assert text == "ok"
    held = detokenizer.flush()
    assert held and set(held) == {"\ufffd"}  # one replacement character per orphan byte
    assert detokenizer.flush() == ""


def test_special_tokens_are_skipped_or_kept():
    tokenizer = byte_level_tokenizer()
    eos = tokenizer.eos_token_id
    ids = encode(tokenizer, "hello world") + [eos]
    assert "".join(stream(tokenizer, [], ids)) == "hello world"
    kept = "".join(stream(tokenizer, [], ids, skip_special_tokens=False))
    assert kept == "hello world<eos>"


def test_window_stays_short_on_a_long_completion():
    tokenizer = byte_level_tokenizer()
    ids = encode(tokenizer, "the quick brown fox jumps " * 40)
    detokenizer = IncrementalDetokenizer(tokenizer, [])
    text = ""
    for token in ids:
        text += detokenizer.push([token])
        assert len(detokenizer._window) <= 8
    assert text + detokenizer.flush() == tokenizer.decode(ids)


@pytest.mark.slow
@pytest.mark.parametrize("text", TEXTS + ["<|im_start|>assistant\nSure! 👍<|im_end|>"])
def test_smollm2_tokenizer_token_by_token(smollm2_tokenizer, text):
    ids = encode(smollm2_tokenizer, text)
    pieces = stream(smollm2_tokenizer, [], ids)
    assert "".join(pieces) == smollm2_tokenizer.decode(ids, skip_special_tokens=True)
    assert all("\ufffd" not in piece for piece in pieces)
    prompt, output = encode(smollm2_tokenizer, "Answer: "), ids
    assert "".join(stream(smollm2_tokenizer, prompt, output)) == expected_continuation(smollm2_tokenizer, prompt,
                                                                                      output)
