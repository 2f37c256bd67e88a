"""Where `/v1/responses` keeps what `store`, `previous_response_id` and `background` need.

In: a `StoredResponse` per response — its id, the owner (a hash of the API
key that created it), the Response object as the client sees it, and the
conversation so far as chat messages (every earlier turn's input and output,
without `instructions`, which OpenAI does not carry over). Out: the same
record for the same owner only: another key's `get` / `delete` sees nothing,
so it answers 404 exactly as for an id that never existed.

Three kinds, chosen by `server.responses_store`: `SQLiteResponseStore` (one
table in a file, `$SURGE_CACHE/responses.sqlite` by default, kept across
restarts), `MemoryResponseStore` (lost on exit) and none (`open_store`
returns None and the handlers refuse `store=true`). Both stores hold at most
`max_entries` responses over all owners and evict the oldest first.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class StoredResponse:
    id: str
    owner: str
    # The Response object (a dict, as returned to the client; its "status" says whether it is done).
    response: dict
    # The conversation up to and including this response's output, as chat messages.
    messages: list = field(default_factory=list)
    created_at: float = field(default_factory=time.time)


class ResponseStore(ABC):
    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries={max_entries}: must be >= 1")
        self.max_entries = max_entries

    @abstractmethod
    def put(self, record: StoredResponse) -> None:
        """Insert or replace `record` (keeping its first insertion's age); evicts the oldest beyond max_entries."""

    @abstractmethod
    def get(self, owner: str, response_id: str) -> Optional[StoredResponse]:
        """The record if it exists and belongs to `owner`, else None."""

    @abstractmethod
    def delete(self, owner: str, response_id: str) -> bool:
        """Remove the record if it belongs to `owner`; whether something was removed."""

    @abstractmethod
    def __len__(self) -> int:
        ...


class MemoryResponseStore(ResponseStore):
    def __init__(self, max_entries: int) -> None:
        super().__init__(max_entries)
        self._lock = threading.Lock()
        self._records: "OrderedDict[str, StoredResponse]" = OrderedDict()

    def put(self, record: StoredResponse) -> None:
        with self._lock:
            self._records[record.id] = record
            while len(self._records) > self.max_entries:
                self._records.popitem(last=False)

    def get(self, owner: str, response_id: str) -> Optional[StoredResponse]:
        with self._lock:
            record = self._records.get(response_id)
        return record if record is not None and record.owner == owner else None

    def delete(self, owner: str, response_id: str) -> bool:
        with self._lock:
            record = self._records.get(response_id)
            if record is None or record.owner != owner:
                return False
            del self._records[response_id]
            return True

    def __len__(self) -> int:
        return len(self._records)


class SQLiteResponseStore(ResponseStore):
    """One table; `seq` orders insertions, so eviction drops the smallest."""

    def __init__(self, path: str, max_entries: int) -> None:
        super().__init__(max_entries)
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS responses (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                         "id TEXT UNIQUE NOT NULL, owner TEXT NOT NULL, created_at REAL NOT NULL, "
                         "response TEXT NOT NULL, messages TEXT NOT NULL)")

    def put(self, record: StoredResponse) -> None:
        response, messages = json.dumps(record.response), json.dumps(record.messages)
        with self._lock:
            self._db.execute("BEGIN")
            try:
                updated = self._db.execute("UPDATE responses SET response = ?, messages = ? WHERE id = ? AND "
                                           "owner = ?", (response, messages, record.id, record.owner)).rowcount
                if not updated:
                    self._db.execute("INSERT INTO responses (id, owner, created_at, response, messages) "
                                     "VALUES (?, ?, ?, ?, ?)",
                                     (record.id, record.owner, record.created_at, response, messages))
                    self._db.execute("DELETE FROM responses WHERE seq NOT IN (SELECT seq FROM responses ORDER BY seq DESC "
                                     "LIMIT ?)",
                                     (self.max_entries,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def get(self, owner: str, response_id: str) -> Optional[StoredResponse]:
        with self._lock:
            row = self._db.execute("SELECT created_at, response, messages FROM responses WHERE id = ? AND owner = ?",
                                   (response_id, owner)).fetchone()
        if row is None:
            return None
        return StoredResponse(id=response_id, owner=owner, response=json.loads(row[1]), messages=json.loads(row[2]),
                              created_at=row[0])

    def delete(self, owner: str, response_id: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM responses WHERE id = ? AND owner = ?",
                                    (response_id, owner)).rowcount > 0

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def default_store_path() -> str:
    from surge.paths import cache_dir

    return os.path.join(cache_dir(), "responses.sqlite")


def open_store(kind: str, max_entries: int, path: str = "") -> Optional[ResponseStore]:
    """The store `server.responses_store` names (None for "none")."""
    if kind == "none":
        return None
    if kind == "memory":
        return MemoryResponseStore(max_entries)
    if kind == "sqlite":
        return SQLiteResponseStore(path or default_store_path(), max_entries)
    raise ValueError(f"responses_store={kind!r}: must be sqlite, memory or none")
