"""A fast tokenizer built straight from a GGUF's embedded vocabulary.

In: the `tokenizer.*` metadata of a GGUF file (read with the `gguf` package).
Out: a transformers PreTrainedTokenizerFast — byte-level BPE with the file's
vocabulary, merges, control/user-defined tokens, special tokens and chat
template — built with the `tokenizers` library alone, so serving a GGUF needs
neither PyTorch nor transformers' GGUF integration.

Byte-level BPE (`tokenizer.ggml.model == "gpt2"`, the family of SmolLM, Llama 3,
Qwen 2 and GPT-2 vocabularies) is supported; other vocabulary kinds raise
UnsupportedGGUFTokenizer so the caller can fall back to transformers.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Mapping

CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types

# Pre-tokenizer splits named by `tokenizer.ggml.pre`; others use GPT-2's byte-level split.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLITS = {"llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT,
           "smaug-bpe": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT}


class UnsupportedGGUFTokenizer(ValueError):
    """The GGUF's vocabulary is not byte-level BPE."""


@lru_cache(maxsize=1)
def byte_alphabet() -> dict[int, str]:
    """The printable stand-in character of each byte, as byte-level BPE vocabularies spell them."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    mapping, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping


def read_tokenizer_metadata(path: str) -> dict[str, Any]:
    """The `tokenizer.*` and `general.architecture` fields of a GGUF file, as Python values."""
    import gguf

    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items()
            if name.startswith("tokenizer.") or name == "general.architecture"}


def build_tokenizer(metadata: Mapping[str, Any]):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    kind = metadata.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise UnsupportedGGUFTokenizer(f"tokenizer.ggml.model is {kind!r}; only byte-level BPE ('gpt2') is built "
                                       "without transformers")
    tokens: list[str] = list(metadata["tokenizer.ggml.tokens"])
    token_types = list(metadata.get("tokenizer.ggml.token_type") or [])
    alphabet = byte_alphabet()
    allowed = set(alphabet.values())
    vocab = {}
    for index, token in enumerate(tokens):
        spelled = token if set(token) <= allowed else "".join(alphabet[b] for b in token.encode("utf-8"))
        vocab.setdefault(spelled, index)
    merges = [tuple(m.split(" ", 1)) for m in metadata.get("tokenizer.ggml.merges") or []]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                                   end_of_word_suffix="", fuse_unk=False))
    split = _SPLITS.get(metadata.get("tokenizer.ggml.pre", ""))
    if split is None:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()

    def token_of(key: str):
        index = metadata.get(f"tokenizer.ggml.{key}")
        return tokens[int(index)] if index is not None and 0 <= int(index) < len(tokens) else None

    bos = token_of("bos_token_id")
    if metadata.get("tokenizer.ggml.add_bos_token") and bos is not None:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokens.index(bos))])
    # Control tokens stay whole and are special; user-defined ones stay whole as plain text. A "control"
    # token outside the byte alphabet is a mislabel in some files and would grow the vocabulary: skip it.
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                for t, kind_ in zip(tokens, token_types) if kind_ == CONTROL and set(t) <= allowed])
    backend.add_tokens([AddedToken(t, normalized=False, special=False)
                        for t, kind_ in zip(tokens, token_types) if kind_ == USER_DEFINED])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=token_of("eos_token_id"),
        unk_token=token_of("unknown_token_id"), pad_token=token_of("padding_token_id") or token_of("eos_token_id"))
    template = metadata.get("tokenizer.chat_template")
    if template:
        tokenizer.chat_template = template
    return tokenizer


def load_gguf_tokenizer(path: str):
    return build_tokenizer(read_tokenizer_metadata(path))
