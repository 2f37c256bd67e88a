"""An incremental JSON scanner that knows which prefixes can still be closed.

In: the characters of one JSON value, fed in pieces of any size (a token's
worth, one character, everything at once). Out: `text` (the value as fed, with
raw control characters inside strings escaped so strict parsers accept it),
`safe_length` (how much of `text` forms a prefix that becomes valid JSON by
appending `closers`), and `done` / `failed` / `consumed` (where the value
ended in the input).

Streaming tool-call arguments need exactly this: emit `text` up to
`safe_length` as it grows, and if the model stops early (max_tokens) or writes
something that is not JSON, append `closers` — the emitted fragments then
always concatenate to valid JSON. A prefix is safe right after `{` or `[`,
after a complete value, and inside a string value (not inside an escape, not
inside an object key). After a comma, a key or a colon it is not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

_SCALAR_START = set("-0123456789tfn")
_SCALAR_CHARS = set("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.+-")
_ESCAPABLE = set('"\\/bfnrtu')
_HEX = set("0123456789abcdefABCDEF")
_CLOSE = {"{": "}", "[": "]"}
_CONTROL_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}

# What a container frame expects next.
_KEY_OR_END, _KEY, _COLON, _VALUE, _VALUE_OR_END, _COMMA_OR_END = range(6)


@dataclass
class _Frame:
    bracket: str  # "{" or "["
    expect: int


class JsonScanner:
    """Scans one JSON value incrementally; see the module docstring."""

    def __init__(self) -> None:
        self._out: list[str] = []
        self._stack: list[_Frame] = []
        self._top_expect = _VALUE  # before the top-level value starts
        self._in_string = False
        self._string_is_key = False
        self._after_backslash = False
        self._hex_left = 0  # hex digits still expected after \u
        self._scalar = ""
        self.done = False
        self.failed = False
        self.error = ""
        self.consumed = 0  # input characters that belong to the value (and whitespace before it)
        self.safe_length = 0
        self.closers = ""

    @property
    def text(self) -> str:
        return "".join(self._out)

    @property
    def safe_text(self) -> str:
        return "".join(self._out[:self.safe_length]) if self.safe_length < len(self._out) else self.text

    def closed_text(self) -> str:
        """The longest safe prefix with its closers: always valid JSON (or '' if nothing was safe)."""
        if self.done:
            return self.text
        return self.safe_text + self.closers if self.safe_length else ""

    def feed(self, chunk: str) -> int:
        """Consume characters until the value ends; returns how many of `chunk` were consumed."""
        used = 0
        for char in chunk:
            if self.done or self.failed:
                break
            if not self._step(char):
                # A scalar ended at `char`, which belongs to whatever follows; reprocess it structurally.
                if self.done:
                    break
                if not self._structural(char):
                    break
            used += 1
        self.consumed += used
        return used

    def finish(self) -> None:
        """The input ended: a top-level scalar still being read is complete if it parses."""
        if self._scalar and not self._stack and not self.done and not self.failed:
            self._end_scalar()

    # ---- internals -----------------------------------------------------------------------------
    def _fail(self, message: str) -> bool:
        self.failed = True
        self.error = message
        return True

    def _mark_safe(self) -> None:
        self.safe_length = len(self._out)
        closers = "".join(_CLOSE[frame.bracket] for frame in reversed(self._stack))
        self.closers = ('"' if self._in_string else "") + closers

    def _step(self, char: str) -> bool:
        """Handle `char` inside a string or scalar; False when it must be handled structurally."""
        if self._in_string:
            self._string_char(char)
            return True
        if self._scalar:
            if char in _SCALAR_CHARS:
                self._scalar += char
                self._out.append(char)
                return True
            self._end_scalar()
            return False
        return self._structural(char)

    def _string_char(self, char: str) -> None:
        value_string = not self._string_is_key
        if self._after_backslash:
            if char not in _ESCAPABLE:
                self._fail(f"invalid escape \\{char}")
                return
            self._out.append(char)
            self._after_backslash = False
            self._hex_left = 4 if char == "u" else 0
        elif self._hex_left:
            if char not in _HEX:
                self._fail(f"invalid \\u escape digit {char!r}")
                return
            self._out.append(char)
            self._hex_left -= 1
        elif char == "\\":
            self._out.append(char)
            self._after_backslash = True
            return
        elif char == '"':
            self._out.append(char)
            self._in_string = False
            if self._string_is_key:
                self._stack[-1].expect = _COLON
            else:
                self._value_complete()
            return
        elif ord(char) < 0x20:
            self._out.extend(_CONTROL_ESCAPES.get(char, f"\\u{ord(char):04x}"))  # one list item per character
        else:
            self._out.append(char)
        if value_string and not self._hex_left and not self.failed:
            self._mark_safe()

    def _end_scalar(self) -> None:
        try:
            json.loads(self._scalar)
        except ValueError:
            self._fail(f"{self._scalar!r} is not a JSON number, true, false or null")
            return
        self._scalar = ""
        self._value_complete()

    def _value_complete(self) -> None:
        if not self._stack:
            self.done = True
        else:
            self._stack[-1].expect = _COMMA_OR_END
        self._mark_safe()

    def _expecting(self) -> int:
        return self._stack[-1].expect if self._stack else self._top_expect

    def _structural(self, char: str) -> bool:
        if self.done:
            return False
        if char in " \t\r\n":
            if self._stack or self._top_expect != _VALUE:  # whitespace before the value is not part of it
                self._out.append(char)
            return True
        expect = self._expecting()
        if expect in (_VALUE, _VALUE_OR_END):
            if expect == _VALUE_OR_END and char == "]":
                return self._close(char)
            if char in "{[":
                if not self._stack:
                    self._top_expect = -1
                self._stack.append(_Frame(char, _KEY_OR_END if char == "{" else _VALUE_OR_END))
                self._out.append(char)
                self._mark_safe()
                return True
            if char == '"':
                self._begin_string(is_key=False)
                return True
            if char in _SCALAR_START:
                if not self._stack:
                    self._top_expect = -1
                self._scalar = char
                self._out.append(char)
                return True
            return self._fail(f"unexpected {char!r} where a value should start")
        if expect in (_KEY_OR_END, _KEY):
            if char == '"':
                self._begin_string(is_key=True)
                return True
            if expect == _KEY_OR_END and char == "}":
                return self._close(char)
            return self._fail(f"unexpected {char!r} where an object key should start")
        if expect == _COLON:
            if char != ":":
                return self._fail(f"expected ':' after an object key, got {char!r}")
            self._stack[-1].expect = _VALUE
            self._out.append(char)
            return True
        if expect == _COMMA_OR_END:
            frame = self._stack[-1]
            if char == ",":
                frame.expect = _KEY if frame.bracket == "{" else _VALUE
                self._out.append(char)
                return True
            if char == _CLOSE[frame.bracket]:
                return self._close(char)
            return self._fail(f"expected ',' or {_CLOSE[frame.bracket]!r}, got {char!r}")
        return self._fail(f"unexpected {char!r} after the value")

    def _begin_string(self, is_key: bool) -> None:
        if not self._stack:
            self._top_expect = -1
        self._in_string = True
        self._string_is_key = is_key
        self._out.append('"')
        if not is_key:
            self._mark_safe()

    def _close(self, char: str) -> bool:
        frame = self._stack.pop()
        if _CLOSE[frame.bracket] != char:
            return self._fail(f"{char!r} does not close {frame.bracket!r}")
        self._out.append(char)
        self._value_complete()
        return True
