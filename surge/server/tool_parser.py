"""Tool calls in model output: Hermes `<tool_call>{json}</tool_call>` and bare JSON.

In: the generated text, fed in pieces as it streams (or all at once). Out, per
piece: a `ParserDelta` with the `content` that is safe to show and the
tool-call deltas (`index`, `id`, `name`, an `arguments` fragment); at the end,
the complete `tool_calls` and `content`.

Guarantees, whatever the split of the text into pieces:
- no tag text (`<tool_call>`, a partial `<tool_`, `</tool_call>`) ever reaches
  `content`; text that might become a tag is held back until it cannot;
- the `arguments` fragments of each call concatenate to valid JSON, even when
  the model stops in the middle of them (the open strings and brackets are
  closed, see `partial_json`);
- feeding the text in one piece or character by character gives the same
  tool calls and the same content. `parse_tool_calls` is that one-piece run.

Two paths inside a `<tool_call>` block. When it starts like
`{"name": "f", "arguments": ` the arguments stream as they are generated. Any
other shape (arguments first, a JSON-encoded string, a list of calls) is parsed
once the block closes. A block that is not a tool call becomes content without
its tags. Bare JSON is recognised only at the start of the output (or right
after another bare call): a `{"name": ..., "arguments"|"parameters": ...}`
object or a list of them; any other JSON answer is content, unchanged.
Given the declared tool names, a call naming any other function is not a
tool call: it is content like any other non-call block.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Collection, Optional

from surge.server.partial_json import JsonScanner

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"
_CALL_HEAD = r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*'
# The head of a call whose arguments object has begun: its arguments can stream.
_FAST_PATH = re.compile(_CALL_HEAD + r'(?=\{)')
# The head of a call and nothing after it: what a completion cut off right before its arguments ends with.
_HEAD_ONLY = re.compile(_CALL_HEAD + r'$')
_BARE_SEPARATORS = " \t\r\n;,"

_TEXT, _START, _BLOCK, _BARE = "text", "start", "block", "bare"


def new_tool_call_id() -> str:
    return "call_" + secrets.token_hex(12)


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON text


@dataclass
class ToolCallDelta:
    index: int
    arguments: str = ""
    id: Optional[str] = None  # set on a call's first delta, with its name
    name: Optional[str] = None


@dataclass
class ParserDelta:
    content: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.content or self.tool_calls)

    def extend(self, later: "ParserDelta") -> None:
        """Append a later delta; argument fragments of the same call merge into one entry."""
        self.content += later.content
        for call in later.tool_calls:
            last = self.tool_calls[-1] if self.tool_calls else None
            if last is not None and last.index == call.index and call.id is None:
                last.arguments += call.arguments
            else:
                self.tool_calls.append(ToolCallDelta(call.index, call.arguments, call.id, call.name))


@dataclass
class ParsedOutput:
    content: Optional[str]
    tool_calls: list[ToolCall]


class ToolCallParser:
    """Streaming parser of one completion's text; see the module docstring."""

    def __init__(self, tool_names: Optional[Collection[str]] = None) -> None:
        # The declared functions; None accepts any name.
        self._tool_names = None if tool_names is None else frozenset(tool_names)
        self._buffer = ""
        self._mode = _START
        self._pending_space = ""  # trailing whitespace of content, shown only if more content follows
        self._space_before_block = ""  # restored if the block turns out not to be a tool call
        self._after_block = False
        self._content: list[str] = []
        self._calls: list[ToolCall] = []
        self._delta = ParserDelta()
        self._scanner: Optional[JsonScanner] = None
        self._args_emitted = 0
        self._args_closed = False
        self._finished = False

    @property
    def tool_calls(self) -> list[ToolCall]:
        return list(self._calls)

    @property
    def content(self) -> Optional[str]:
        """All content so far (what the deltas concatenate to); None when tool calls left nothing else."""
        text = "".join(self._content)
        return None if self._calls and not text else text

    def feed(self, text: str) -> ParserDelta:
        if self._finished:
            raise ValueError("ToolCallParser.feed after finish(): the completion already ended")
        self._buffer += text
        self._process(final=False)
        return self._take_delta()

    def finish(self) -> ParserDelta:
        """The completion ended: flush held text, close truncated arguments."""
        if not self._finished:
            self._finished = True
            self._process(final=True)
            space, self._pending_space = self._pending_space, ""
            if not self._calls and space:
                self._emit_content(space, hold_space=False)
        return self._take_delta()

    # ---- the state machine ---------------------------------------------------------------------
    def _process(self, final: bool) -> None:
        while True:
            before = (self._mode, len(self._buffer))
            if self._mode == _START:
                self._start(final)
            elif self._mode == _TEXT:
                self._text(final)
            elif self._mode == _BLOCK:
                self._block(final)
            else:
                self._bare(final)
            if (self._mode, len(self._buffer)) == before:
                return

    def _start(self, final: bool) -> None:
        after_call = bool(self._calls)
        stripped = self._buffer.lstrip(_BARE_SEPARATORS if after_call else " \t\r\n")
        if not stripped:
            if final:
                if not after_call:
                    self._emit_content(self._buffer)
                self._buffer = ""
            return
        if not after_call:
            # Leading whitespace is shown only if content (not a tool call) follows it.
            self._pending_space += self._buffer[:len(self._buffer) - len(stripped)]
        self._buffer = stripped
        if stripped[0] in "{[":
            self._mode = _BARE
            self._scanner = JsonScanner()
        else:
            self._mode = _TEXT

    def _text(self, final: bool) -> None:
        if self._after_block:
            # Whitespace between a tool call and what follows it is not content.
            self._buffer = self._buffer.lstrip()
            if not self._buffer:
                return
            self._after_block = False
        opening, closing = self._buffer.find(OPEN_TAG), self._buffer.find(CLOSE_TAG)
        if closing >= 0 and (opening < 0 or closing < opening):
            # A stray closing tag (e.g. after a bare JSON call): never shown.
            self._emit_content(self._buffer[:closing])
            self._buffer = self._buffer[closing + len(CLOSE_TAG):]
            return
        if opening >= 0:
            self._emit_content(self._buffer[:opening])
            self._space_before_block, self._pending_space = self._pending_space, ""
            self._buffer = self._buffer[opening + len(OPEN_TAG):]
            self._enter_block()
            return
        keep = 0 if final else max(_partial_tag_suffix(self._buffer, OPEN_TAG),
                                   _partial_tag_suffix(self._buffer, CLOSE_TAG))
        shown = self._buffer[:len(self._buffer) - keep]
        if shown:
            self._emit_content(shown)
            self._buffer = self._buffer[len(shown):]

    def _enter_block(self) -> None:
        self._mode = _BLOCK
        self._scanner = None
        self._args_emitted = 0
        self._args_closed = False

    def _block(self, final: bool) -> None:
        if self._scanner is None:
            match = _FAST_PATH.match(self._buffer) or (_HEAD_ONLY.match(self._buffer) if final else None)
            if match is not None and self._declared(_unescape(match.group(1))):
                self._begin_call(_unescape(match.group(1)))
                self._buffer = self._buffer[match.end():]
                self._scanner = JsonScanner()
            else:
                self._block_slow(final)
                return
        if not self._args_closed:
            used = self._scanner.feed(self._buffer)
            self._buffer = self._buffer[used:]
            if self._scanner.done or self._scanner.failed or final:
                self._close_arguments()
            else:
                self._stream_arguments()
                return
        # The arguments are complete: skip the rest of the block up to its closing tag.
        end = self._buffer.find(CLOSE_TAG)
        if end >= 0:
            self._buffer = self._buffer[end + len(CLOSE_TAG):]
            self._mode = _TEXT
            self._after_block = True
        elif final:
            self._buffer = ""
        else:
            keep = _partial_tag_suffix(self._buffer, CLOSE_TAG)
            self._buffer = self._buffer[len(self._buffer) - keep:]

    def _block_slow(self, final: bool) -> None:
        end = self._buffer.find(CLOSE_TAG)
        if end < 0 and not final:
            return
        body = self._buffer if end < 0 else self._buffer[:end]
        self._buffer = "" if end < 0 else self._buffer[end + len(CLOSE_TAG):]
        self._mode = _TEXT
        calls = self._declared_calls(_calls_from_json(body))
        if calls is None:
            self._pending_space = self._space_before_block
            self._emit_content(body.strip())
        else:
            self._after_block = True
            for name, arguments in calls:
                self._add_whole_call(name, arguments)

    def _bare(self, final: bool) -> None:
        assert self._scanner is not None
        self._scanner.feed(self._buffer[self._scanner.consumed:])
        if final:
            self._scanner.finish()
        if not (self._scanner.done or self._scanner.failed or final):
            return
        if self._scanner.failed:
            self._mode = _TEXT
            return
        end = self._scanner.consumed if self._scanner.done else len(self._buffer)
        calls = self._declared_calls(_calls_from_json(self._buffer[:end])) if self._scanner.done else None
        if calls is None:
            self._mode = _TEXT  # not a tool call: the JSON is content, tags in it still count
            return
        self._pending_space = ""
        for name, arguments in calls:
            self._add_whole_call(name, arguments)
        self._buffer = self._buffer[end:]
        self._mode = _START

    def _declared(self, name: Optional[str]) -> bool:
        return name is not None and (self._tool_names is None or name in self._tool_names)

    def _declared_calls(self, calls: Optional[list[tuple[str, str]]]) -> Optional[list[tuple[str, str]]]:
        """The calls when every one names a declared function, else None (they are content)."""
        if calls is None or not all(self._declared(name) for name, _ in calls):
            return None
        return calls

    # ---- emitting ------------------------------------------------------------------------------
    def _emit_content(self, text: str, hold_space: bool = True) -> None:
        text = self._pending_space + text
        self._pending_space = ""
        if hold_space:
            body = text.rstrip()
            self._pending_space = text[len(body):]
            text = body
        if text:
            self._content.append(text)
            self._delta.content += text

    def _begin_call(self, name: str) -> None:
        call = ToolCall(id=new_tool_call_id(), name=name, arguments="")
        self._calls.append(call)
        self._delta.tool_calls.append(ToolCallDelta(index=len(self._calls) - 1, id=call.id, name=name))

    def _add_whole_call(self, name: str, arguments: str) -> None:
        self._begin_call(name)
        self._append_arguments(arguments)

    def _append_arguments(self, fragment: str) -> None:
        if not fragment:
            return
        call = self._calls[-1]
        call.arguments += fragment
        index = len(self._calls) - 1
        last = self._delta.tool_calls[-1] if self._delta.tool_calls else None
        if last is not None and last.index == index:
            last.arguments += fragment
        else:
            self._delta.tool_calls.append(ToolCallDelta(index=index, arguments=fragment))

    def _stream_arguments(self) -> None:
        scanner = self._scanner
        if scanner.safe_length > self._args_emitted:
            self._append_arguments(scanner.text[self._args_emitted:scanner.safe_length])
            self._args_emitted = scanner.safe_length

    def _close_arguments(self) -> None:
        scanner = self._scanner
        self._args_closed = True
        if scanner.done:
            self._stream_arguments()
            return
        self._stream_arguments()
        if self._args_emitted == 0:
            # Nothing valid was generated (e.g. `"arguments": ` then the end): an empty object.
            self._append_arguments("{}")
        else:
            self._append_arguments(scanner.closers)

    def _take_delta(self) -> ParserDelta:
        delta, self._delta = self._delta, ParserDelta()
        return delta


def parse_tool_calls(text: str, tool_names: Optional[Collection[str]] = None) -> ParsedOutput:
    """Tool calls and content of a complete output (the same result as streaming it)."""
    parser = ToolCallParser(tool_names)
    parser.feed(text)
    parser.finish()
    return ParsedOutput(content=parser.content, tool_calls=parser.tool_calls)


def _partial_tag_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `tag`."""
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0


def _unescape(json_string_body: str) -> Optional[str]:
    try:
        value = json.loads(f'"{json_string_body}"')
    except ValueError:
        return None
    return value if value else None


def _calls_from_json(text: str) -> Optional[list[tuple[str, str]]]:
    """(name, arguments JSON) for a JSON object or list of objects that are tool calls, else None."""
    try:
        value = json.loads(text.strip(), strict=False)
    except ValueError:
        return None
    items = value if isinstance(value, list) else [value]
    if not items:
        return None
    calls = []
    for item in items:
        call = _call_from_object(item)
        if call is None:
            return None
        calls.append(call)
    return calls


def _call_from_object(item: Any) -> Optional[tuple[str, str]]:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
        return None
    if "arguments" in item:
        arguments = item["arguments"]
    elif "parameters" in item:
        arguments = item["parameters"]
    else:
        return None if len(item) > 1 else (item["name"], "{}")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments, strict=False)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return item["name"], json.dumps(arguments, ensure_ascii=False)
