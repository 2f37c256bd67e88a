"""llguidance's view of the engine's tokenizer.

In: the engine's fast tokenizer (for GGUF models the one
``surge.models.gguf_tokenizer`` builds with ``tokenizers``), the model's
vocabulary size (the logits' width, which may exceed the tokenizer's) and its
EOS ids. Out: an ``llguidance.LLTokenizer`` over the same vocabulary and a
fingerprint of it, half of the compile cache's key. Building one costs about
half a second (llguidance indexes every token), so the compile worker builds
it once, on first use.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Sequence, Tuple


def grammar_tokenizer(tokenizer, vocab_size: int, eos_token_ids: Sequence[int]) -> Tuple[object, str]:
    """(LLTokenizer, fingerprint) for a transformers fast tokenizer."""
    import llguidance

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TypeError(f"structured output needs a fast (tokenizers-backed) tokenizer, got {type(tokenizer).__name__}")
    backend = copy.copy(backend)
    backend.no_padding()
    backend.no_truncation()
    text = backend.to_str()
    eos = [int(t) for t in eos_token_ids] or None
    ll_tokenizer = llguidance.LLTokenizer(text, n_vocab=vocab_size, eos_token=eos)
    digest = hashlib.sha256(f"{vocab_size}|{eos}|".encode() + text.encode()).hexdigest()[:16]
    return ll_tokenizer, digest


__all__ = ["grammar_tokenizer"]
