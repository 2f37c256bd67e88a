"""Stop-string matching over streamed text.

In: the text of a completion, chunk by chunk, as the detokenizer produces it.
Out: the text that is safe to show the caller, and the stop string once one
appears. A stop string is found anywhere in the accumulated text, also across
chunk boundaries; text that could still turn into a stop string (a suffix that
is a prefix of one) is held back, so a partial stop never reaches a stream.

When several stops could match, the one that ends first in the text wins (and
of those, the longest): that is what a token-by-token stream would see, so the
result does not depend on how the text was chunked.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple


class StopStringMatcher:
    def __init__(self, stop: Sequence[str], include_stop_str_in_output: bool = False) -> None:
        for text in stop:
            if not isinstance(text, str) or not text:
                raise ValueError(f"stop={list(stop)!r}: every stop string must be a non-empty str")
        self.stop = list(stop)
        self.include_stop_str_in_output = include_stop_str_in_output
        self._held = ""
        self.matched: Optional[str] = None

    def push(self, new_text: str) -> Tuple[str, Optional[str]]:
        """Add text; return (text to emit now, the stop string if one matched in this push)."""
        if self.matched is not None:
            return "", None
        if not self.stop:
            return new_text, None
        text = self._held + new_text
        match = self._first_match(text)
        if match is not None:
            start, stop = match
            self.matched = stop
            self._held = ""
            end = start + len(stop) if self.include_stop_str_in_output else start
            return text[:end], stop
        keep = self._longest_stop_prefix_suffix(text)
        self._held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep], None

    def flush(self) -> str:
        """Release held-back text (the completion ended for another reason)."""
        held, self._held = self._held, ""
        return held

    @property
    def held_text(self) -> str:
        return self._held

    def _first_match(self, text: str) -> Optional[Tuple[int, str]]:
        best: Optional[Tuple[int, int, str]] = None  # (end, -length, stop)
        for stop in self.stop:
            start = text.find(stop)
            if start < 0:
                continue
            candidate = (start + len(stop), -len(stop), stop)
            if best is None or candidate < best:
                best = candidate
        if best is None:
            return None
        end, _, stop = best
        return end - len(stop), stop

    def _longest_stop_prefix_suffix(self, text: str) -> int:
        longest = 0
        for stop in self.stop:
            for length in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:length]):
                    longest = length
                    break
        return longest


__all__ = ["StopStringMatcher"]
