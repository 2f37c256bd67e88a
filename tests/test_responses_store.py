"""The Responses store: per-owner records, oldest-first eviction, SQLite that outlives its process."""

from __future__ import annotations

import pytest

from surge.server.responses.store import (MemoryResponseStore, SQLiteResponseStore, StoredResponse,
                                          open_store)


def _record(i: int, owner: str = "a") -> StoredResponse:
    return StoredResponse(id=f"resp_{i}", owner=owner, response={"id": f"resp_{i}", "status": "completed"},
                          messages=[{"role": "user", "content": f"turn {i} é 世界"}])


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request, tmp_path):
    def make(max_entries: int):
        if request.param == "memory":
            return MemoryResponseStore(max_entries)
        return SQLiteResponseStore(str(tmp_path / "r.sqlite"), max_entries)
    return make


def test_owner_isolation_and_delete(make_store):
    store = make_store(10)
    store.put(_record(1, "a"))
    assert store.get("a", "resp_1").messages == [{"role": "user", "content": "turn 1 é 世界"}]
    assert store.get("b", "resp_1") is None
    assert not store.delete("b", "resp_1") and store.get("a", "resp_1") is not None
    assert store.delete("a", "resp_1") and store.get("a", "resp_1") is None and len(store) == 0


def test_oldest_first_eviction_and_update_in_place(make_store):
    store = make_store(3)
    for i in range(3):
        store.put(_record(i))
    store.put(StoredResponse(id="resp_0", owner="a", response={"id": "resp_0", "status": "cancelled"}))
    store.put(_record(3))
    assert store.get("a", "resp_0") is None  # updated in place, it kept its age
    assert len(store) == 3 and store.get("a", "resp_3") is not None
    store.delete("a", "resp_2")
    store.put(_record(4))
    store.put(_record(5))
    assert len(store) == 3 and store.get("a", "resp_5") is not None and store.get("a", "resp_4") is not None


def test_sqlite_survives_reopening(tmp_path):
    path = str(tmp_path / "nested" / "r.sqlite")
    first = SQLiteResponseStore(path, 5)
    first.put(_record(1, "owner"))
    first.close()
    again = open_store("sqlite", 5, path)
    assert again.get("owner", "resp_1").response == {"id": "resp_1", "status": "completed"}
    assert open_store("none", 5) is None
    with pytest.raises(ValueError, match="responses_store"):
        open_store("redis", 5)
