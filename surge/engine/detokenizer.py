"""Incremental detokenization: generated token ids in, newly completed text out.

In: a Hugging Face tokenizer (anything with ``decode(ids, skip_special_tokens=)``),
the prompt's token ids (their tail gives the first output tokens the context
that decides leading spaces), then the generated ids a few at a time. Out: the
text those ids add, such that the pieces concatenate to what decoding the
whole sequence gives.

Decoding a token alone is wrong in two ways: a multi-byte UTF-8 character may
be split over several byte-level tokens (decoding a part gives U+FFFD), and
SentencePiece-style decoders drop the leading space of the first token. So
the detokenizer keeps a short window of tokens: those already shown (whose
text it remembers) followed by those not yet shown. Each new token is decoded
together with the window, and the new text is what goes beyond the shown
text. Text that ends in U+FFFD is an incomplete character and is held back
until a later token completes it (or ``flush``). Once text is emitted the
window slides: the tokens just shown become the new shown prefix, so a push
costs O(window + new tokens) however long the completion is. The window
always starts on a character boundary (byte-fallback decoders turn a whole
run of byte pieces into U+FFFD when the run is cut).
"""

from __future__ import annotations

from typing import Iterable, List, Sequence, Tuple

REPLACEMENT_CHAR = "\ufffd"
# Prompt tokens kept as context: enough for a leading space and a 4-byte character split over bytes.
_PROMPT_CONTEXT_TOKENS = 6
# Tokens one character can span (4 UTF-8 bytes, one byte piece each).
_MAX_CHAR_TOKENS = 4
# Prompt tokens looked at to choose the context (special tokens among them are dropped first).
_PROMPT_TAIL_TOKENS = 64


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_token_ids: Sequence[int] = (), skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._special_ids = frozenset(getattr(tokenizer, "all_special_ids", ()) or ()) if skip_special_tokens \
            else frozenset()
        tail = prompt_token_ids[-_PROMPT_TAIL_TOKENS:] if len(prompt_token_ids) > _PROMPT_TAIL_TOKENS \
            else prompt_token_ids
        prompt = [int(t) for t in tail if t not in self._special_ids]
        start, end = self._prompt_context(prompt)
        # The window: tokens [0, _read) are already shown, [_read, len) are not yet. Prompt tokens
        # after `end` hold a character the prompt leaves unfinished: they count as not yet shown,
        # so the first output token that completes the character emits it.
        self._window: List[int] = prompt[start:]
        self._read = end - start
        self._shown_text = self._decode(self._window[:self._read])

    def _prompt_context(self, prompt: List[int]) -> Tuple[int, int]:
        """A span [start, end) of about _PROMPT_CONTEXT_TOKENS prompt tokens, as late as possible,
        that decodes to whole characters. Byte-fallback decoders turn a whole run of byte pieces into
        U+FFFD when the run is cut at either end, so both ends must sit on character boundaries; one
        is always within _MAX_CHAR_TOKENS tokens (a character has at most 4 bytes)."""
        total = len(prompt)
        for end in range(total, max(total - _MAX_CHAR_TOKENS, 0) - 1, -1):
            latest_start = max(end - _PROMPT_CONTEXT_TOKENS, 0)
            for start in range(latest_start, max(latest_start - _MAX_CHAR_TOKENS, 0) - 1, -1):
                text = self._decode(prompt[start:end])
                if not text.startswith(REPLACEMENT_CHAR) and not text.endswith(REPLACEMENT_CHAR):
                    return start, end
        return total, total  # no clean span (the prompt holds invalid bytes): start without context

    def push(self, new_token_ids: Iterable[int]) -> str:
        """Append generated token ids; return the text they complete (possibly "")."""
        pieces = []
        for token in new_token_ids:
            if token in self._special_ids:
                continue  # skipped tokens decode to nothing; keeping them out keeps the window short
            self._window.append(int(token))
            text = self._decode(self._window)
            if len(text) > len(self._shown_text) and not text.endswith(REPLACEMENT_CHAR):
                pieces.append(text[len(self._shown_text):])
                self._slide()
        return "".join(pieces)

    def flush(self) -> str:
        """Text still held back, at the end of the completion (an incomplete character shows as U+FFFD)."""
        text = self._decode(self._window)
        if len(text) <= len(self._shown_text):
            return ""
        tail = text[len(self._shown_text):]
        self._slide()
        return tail

    def _slide(self) -> None:
        # Everything in the window is now shown; the tokens just shown become the next prefix.
        self._window = self._window[self._read:]
        self._read = len(self._window)
        self._shown_text = self._decode(self._window)

    def _decode(self, ids: List[int]) -> str:
        if not ids:
            return ""
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)


__all__ = ["IncrementalDetokenizer"]
