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

Stop strings apply to the answer only: with a parser, `take_answer_stops`
moves a request's `stop` out of the engine's `SamplingParams` into an
`AnswerStops`, whose matcher each parser runs over its content side; once it
matched, `stopped` holds the stop string, later text is dropped, and the
handler ends the engine request early.

Structured output applies to the answer too: `answer_grammar` wraps a
request's grammar so that the reasoning block the parser would read
(`<think>` optional for `deepseek_r1`, the whole block optional for `qwen3`,
none when the prompt closed it) comes first, unconstrained except that it
cannot contain `</think>`, and the request's own grammar (embedded as a
nested llguidance grammar) constrains only what follows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import json

from surge.engine.stop_strings import StopStringMatcher
from surge.structured import StructuredOutputsParams

OPEN, CLOSE = "<think>", "</think>"
PARSERS = ("deepseek_r1", "qwen3")

_START, _REASONING, _CONTENT_START, _CONTENT = "start", "reasoning", "content_start", "content"


@dataclass(frozen=True)
class AnswerStops:
    stop: Sequence[str]
    include_stop_str_in_output: bool = False

    def matcher(self) -> StopStringMatcher:
        return StopStringMatcher(self.stop, self.include_stop_str_in_output)


def take_answer_stops(kind: str, params, prompt: str) -> Optional[AnswerStops]:
    """With a reasoning parser, the request's stop strings leave the engine (which would match them in the
    reasoning too) for the answer side of the parser; None when nothing moves. The request's grammar, if
    any, is moved after the reasoning block (`answer_grammar`)."""
    params.structured_outputs = answer_grammar(kind, prompt, params.structured_outputs)
    if kind == "none" or not params.stop:
        return None
    stops = AnswerStops(tuple(params.stop), params.include_stop_str_in_output)
    params.stop = []
    return stops


def _prompt_state(kind: str, prompt: str) -> tuple[bool, bool]:
    """(the output starts inside reasoning, the prompt closed the think block)."""
    opened = prompt.rfind(OPEN) > prompt.rfind(CLOSE)
    closed = prompt.rstrip().endswith(CLOSE) and not opened
    return opened or (kind == "deepseek_r1" and not closed), closed


# Reasoning text and the closing tag as one lexeme: anything ending with the first `</think>` (llguidance
# regex: `&` intersects, `~` negates), so the lexer knows where it ends without looking back.
_THINK_RULES = r"""THINK: /(?s:.*)<\/think>/ & ~/(?s:.*<\/think>.+)/
WS: /[ \t\r\n]+/
"""


def answer_grammar(kind: str, prompt: str, spec: Optional[StructuredOutputsParams]
                   ) -> Optional[StructuredOutputsParams]:
    """`spec` moved after the reasoning block the output may open; unchanged without a parser, without a
    grammar, or when the prompt already closed the block (the answer comes first)."""
    if kind == "none" or spec is None:
        return spec
    in_reasoning, closed = _prompt_state(kind, prompt)
    if closed:
        return spec
    # deepseek_r1: reasoning first (a leading `<think>` is reasoning text the parser drops); qwen3: optional.
    start = 'start: THINK WS? answer' if in_reasoning else 'start: ("<think>" THINK WS?)? answer'
    lark = "\n".join([start, _embedded(spec), _THINK_RULES])
    return StructuredOutputsParams(grammar=lark, strict=spec.strict)


def _embedded(spec: StructuredOutputsParams) -> str:
    """The rule `answer:` as the request's grammar, nested (`%json {...}` or `%lark {...}`)."""
    text = spec.to_grammar()
    if not text.lstrip().startswith("{"):
        return f"answer: %lark {{\n{text}\n}}"  # a Lark grammar of the request's own
    (grammar,) = json.loads(text)["grammars"]
    if grammar.get("json_schema") is not None:
        return f"answer: %json {json.dumps(grammar['json_schema'])}"
    return f"answer: %lark {{\n{grammar['lark_grammar']}\n}}"


class ReasoningParser:
    def __init__(self, kind: str, prompt: str = "", stops: Optional[AnswerStops] = None) -> None:
        if kind not in PARSERS:
            raise ValueError(f"reasoning parser {kind!r}: must be one of {PARSERS}")
        # In reasoning from the start, a leading <think> (the model opening it anyway) is still dropped.
        self._in_reasoning, closed = _prompt_state(kind, prompt)
        # A block the prompt closed is followed by the answer (its leading whitespace dropped, as after a tag).
        self._state = _CONTENT_START if closed else _START
        self._buffer = ""
        self._stops = stops.matcher() if stops is not None else None

    @property
    def stopped(self) -> Optional[str]:
        """The stop string that ended the answer, if one did."""
        return self._stops.matched if self._stops is not None else None

    def feed(self, text: str) -> tuple[str, str]:
        self._buffer += text
        return self._answer(*self._process(final=False))

    def finish(self) -> tuple[str, str]:
        reasoning, content = self._answer(*self._process(final=True))
        if self._stops is not None and self._stops.matched is None:
            content += self._stops.flush()
        return reasoning, content

    def _answer(self, reasoning: str, content: str) -> tuple[str, str]:
        if self._stops is None:
            return reasoning, content
        if self._stops.matched is not None:
            return "", ""
        return reasoning, self._stops.push(content)[0]

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


def make_parser(kind: str, prompt: str, stops: Optional[AnswerStops] = None) -> Optional[ReasoningParser]:
    """The parser `server.reasoning_parser` names for this prompt; None for "none"."""
    return None if kind == "none" else ReasoningParser(kind, prompt, stops)


def split_reasoning(kind: str, prompt: str, text: str,
                    stops: Optional[AnswerStops] = None) -> tuple[Optional[str], str, Optional[str]]:
    """(reasoning or None, content, the stop string that cut the answer or None) of a whole completion."""
    parser = make_parser(kind, prompt, stops)
    if parser is None:
        return None, text, None
    reasoning, content = parser.feed(text)
    more_reasoning, more_content = parser.finish()
    reasoning += more_reasoning
    return (reasoning or None), content + more_content, parser.stopped
