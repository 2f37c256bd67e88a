"""Incremental detokenization: generated token ids in, newly completed text out.

In: a Hugging Face tokenizer (anything with ``decode(ids, skip_special_tokens=)``),
the prompt's token ids (their tail gives the first output tokens the context
that decides leading spaces), then the generated ids a few at a time. Out: the
text those ids add, such that the pieces concatenate to what decoding the
whole sequence gives.

Decoding a token alone is wrong in two ways: a multi-byte UTF-8 character may
be split over several byte-level tokens (decoding a part gives U+FFFD), and
SentencePiece-style decoders drop the leading space of the first token. So
each push decodes a short window twice: the tokens already shown (from
``prefix_offset`` to ``read_offset``) and the same tokens plus the new ones;
the new text is the difference. Text that ends in U+FFFD is an incomplete
character and is held back until the next token completes it (or ``flush``).
Once text is emitted the window slides forward, so a push costs O(window +
new tokens) however long the completion is.
"""

from __future__ import annotations

from typing import Iterable, List, Sequence, Tuple

REPLACEMENT_CHAR = "\ufffd"
# Prompt tokens kept as context: enough for a leading space and a 4-byte character split over bytes.
_PROMPT_CONTEXT_TOKENS = 6


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_token_ids: Sequence[int] = (), skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._special_ids = frozenset(getattr(tokenizer, "all_special_ids", ()) or ()) if skip_special_tokens \
            else frozenset()
        context = [t for t in prompt_token_ids if t not in self._special_ids][-_PROMPT_CONTEXT_TOKENS:]
        start, end = self._complete_span(context)
        # The window: tokens [0, _read) are already shown, [_read, len) are not yet. Prompt tokens
        # after `end` hold a character the prompt leaves unfinished: they count as not yet shown,
        # so the first output token that completes the character emits it.
        self._window: List[int] = context[start:]
        self._read = end - start
        self._shown_text = self._decode(self._window[:self._read])

    def _complete_span(self, context: List[int]) -> Tuple[int, int]:
        """The longest span [start, end) of the context, ending as late as possible, that decodes to
        whole characters. Byte-fallback decoders turn a whole run of byte pieces into U+FFFD when the
        run is cut at either end, so both ends have to be on character boundaries."""
        for end in range(len(context), 0, -1):
            for start in range(end):
                text = self._decode(context[start:end])
                if not text.startswith(REPLACEMENT_CHAR) and not text.endswith(REPLACEMENT_CHAR):
                    return start, end
        return len(context), len(context)

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
