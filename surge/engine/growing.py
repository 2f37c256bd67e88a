"""Append-only records of one completion and O(1) snapshots of their prefixes.

In: the output side appends each step's token ids, log-prob entries and text
pieces. Out: ``ListPrefix`` and ``TextPrefix`` snapshots that a cumulative
``CompletionOutput`` hands to its caller: taking one costs O(1) on the engine
thread however long the completion is, and it keeps showing exactly the first
``n`` items even after the record grows. Joining the text is done when (and
only if) a caller reads it, on the caller's thread.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, List


class ListPrefix(Sequence):
    """The first ``length`` items of an append-only list, read-only; compares equal to a list of them."""

    __slots__ = ("_items", "_length")

    def __init__(self, items: List[Any], length: int) -> None:
        self._items = items
        self._length = length

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self._items[:self._length][index]
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError("ListPrefix index out of range")
        return self._items[index]

    def __iter__(self):
        items = self._items
        for i in range(self._length):
            yield items[i]

    def __eq__(self, other) -> bool:
        if isinstance(other, (ListPrefix, list, tuple)):
            return len(other) == self._length and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # mutable-looking, like a list

    def __repr__(self) -> str:
        return repr(list(self))


class TextLog:
    """The text of one completion as the pieces it was emitted in; ``prefix(k)`` is the first k pieces."""

    def __init__(self) -> None:
        self._pieces: List[str] = []
        self._num_joined = 0
        self._joined = ""
        self._lock = threading.Lock()  # readers on caller threads share the join cache

    @property
    def num_pieces(self) -> int:
        return len(self._pieces)

    def append(self, piece: str) -> None:
        if piece:
            self._pieces.append(piece)

    def slice(self, start: int, end: int) -> str:
        """Pieces [start, end) joined."""
        return "".join(self._pieces[start:end])

    def prefix(self) -> "TextPrefix":
        return TextPrefix(self, len(self._pieces))

    def text(self, num_pieces: int) -> str:
        with self._lock:
            if num_pieces >= self._num_joined:
                self._joined += "".join(self._pieces[self._num_joined:num_pieces])
                self._num_joined = num_pieces
                return self._joined
            return "".join(self._pieces[:num_pieces])


class TextPrefix:
    """The text a ``TextLog`` had when the snapshot was taken, joined on first read."""

    __slots__ = ("_log", "_num_pieces")

    def __init__(self, log: TextLog, num_pieces: int) -> None:
        self._log = log
        self._num_pieces = num_pieces

    def __str__(self) -> str:
        return self._log.text(self._num_pieces)


__all__ = ["ListPrefix", "TextLog", "TextPrefix"]
