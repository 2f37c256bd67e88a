"""Reasoning output: the `<think>...</think>` part of a completion apart from the answer.

In: the prompt text (its end says whether the chat template already opened a
think block, as DeepSeek-R1's does, or closed an empty one, as Qwen3's does
with `enable_thinking: false`) and the generated text, fed in pieces as it
streams or all at once. Out, per piece: `(reasoning, content)` — the new text
of each side. Tags never reach either side; a piece that might be the start of
a tag is held back until it cannot be, so feeding the text in one piece or
character by character gives the same split. Whitespace between `</think>`
(generated, or closing the prompt) and the answer is dropped.

`server.reasoning_parser`: `deepseek_r1` reads the output as reasoning until
`</think>` unless the prompt closed the block; `qwen3` reads reasoning only
inside `<think>...</think>` (an answer without tags is all content).
"""

from __future__ import annotations

from typing import Optional

OPEN, CLOSE = "<think>", "</think>"
PARSERS = ("deepseek_r1", "qwen3")

_START, _REASONING, _CONTENT_START, _CONTENT = "start", "reasoning", "content_start", "content"


class ReasoningParser:
    def __init__(self, kind: str, prompt: str = "") -> None:
        if kind not in PARSERS:
            raise ValueError(f"reasoning parser {kind!r}: must be one of {PARSERS}")
        opened = prompt.rfind(OPEN) > prompt.rfind(CLOSE)
        closed = prompt.rstrip().endswith(CLOSE)
        # In reasoning from the start, a leading <think> (the model opening it anyway) is still dropped.
        self._in_reasoning = opened or (kind == "deepseek_r1" and not closed)
        # A block the prompt closed is followed by the answer (its leading whitespace dropped, as after a tag).
        self._state = _CONTENT_START if closed and not opened else _START
        self._buffer = ""

    def feed(self, text: str) -> tuple[str, str]:
        self._buffer += text
        return self._process(final=False)

    def finish(self) -> tuple[str, str]:
        return self._process(final=True)

    def _process(self, final: bool) -> tuple[str, str]:
        reasoning = content = ""
        while True:
            if self._state == _START:
                stripped = self._buffer.lstrip()
                if stripped.startswith(OPEN):
                    self._buffer, self._state = stripped[len(OPEN):], _REASONING
                elif not final and OPEN.startswith(stripped):
                    break  # still could be the opening tag
                else:
                    self._state = _REASONING if self._in_reasoning else _CONTENT
            elif self._state == _REASONING:
                end = self._buffer.find(CLOSE)
                if end >= 0:
                    reasoning += self._buffer[:end]
                    self._buffer, self._state = self._buffer[end + len(CLOSE):], _CONTENT_START
                    continue
                keep = 0 if final else _partial_suffix(self._buffer, CLOSE)
                reasoning += self._buffer[:len(self._buffer) - keep]
                self._buffer = self._buffer[len(self._buffer) - keep:]
                break
            elif self._state == _CONTENT_START:
                self._buffer = self._buffer.lstrip()
                if not self._buffer:
                    break
                self._state = _CONTENT
            else:
                content += self._buffer
                self._buffer = ""
                break
        return reasoning, content


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


def make_parser(kind: str, prompt: str) -> Optional[ReasoningParser]:
    """The parser `server.reasoning_parser` names for this prompt; None for "none"."""
    return None if kind == "none" else ReasoningParser(kind, prompt)


def split_reasoning(kind: str, prompt: str, text: str) -> tuple[Optional[str], str]:
    """(reasoning or None, content) of a whole completion."""
    parser = make_parser(kind, prompt)
    if parser is None:
        return None, text
    reasoning, content = parser.feed(text)
    more_reasoning, more_content = parser.finish()
    reasoning += more_reasoning
    return (reasoning or None), content + more_content
