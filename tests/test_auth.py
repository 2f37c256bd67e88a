"""API keys: the key store, where keys may be presented, 401s, and per-key usage in /metrics.

Unit tests run in-process against the FastAPI app (no engine is needed to check keys on /v1/models);
the end-to-end tests start a real `surge-serve` with `server.require_api_key=true` and three keys (two
from `server.api_keys`, one with a label from `server.api_keys_file`).
"""

from __future__ import annotations

import hashlib

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from surge.server import auth
from surge.server.app import eSurgeApiServer
from surge.server.auth import ApiKeyStore, parse_keys_file, presented_key
from surge.server.process import ServerProcess

MODEL = "smollm2-135m-instruct"


# ---- the key store -----------------------------------------------------------------------------

def test_keys_file_lines_labels_and_comments():
    keys = parse_keys_file("# team keys\nk-alpha notebook\n\n  k-beta  CI runner  \nk-gamma\n")
    assert keys == {"k-alpha": "notebook", "k-beta": "CI runner", "k-gamma": None}
    with pytest.raises(ValueError, match="keys.txt:2: key is listed twice"):
        parse_keys_file("a x\na y\n", "keys.txt")


def test_store_from_list_dict_and_file(tmp_path):
    path = tmp_path / "keys.txt"
    path.write_text("k3 notebook\n")
    path.write_text("k3 notebook\nk4\n")
    store = ApiKeyStore(["k1"], keys_file=str(path))
    store.add("k2", "ui")
    # Unlabelled keys are named by their place (k1 first, k4 third), never by anything computed from them.
    assert store.lookup("k1") == "key-1" and store.lookup("k4") == "key-3"
    assert store.lookup("k2") == "ui" and store.lookup("k3") == "notebook"
    store.revoke("k4")
    assert store.lookup("k4") is None and store.lookup("") is None and store.lookup(None) is None
    assert ApiKeyStore({"demo-key": {"label": "UI"}}).lookup("demo-key") == "UI"
    with pytest.raises(ValueError, match="without spaces"):
        store.add("has space")
    with pytest.raises(ValueError, match="does not contain the key"):
        store.add("sk-secret-1", "team sk-secret-1")
    assert store.revoke("k2") and store.lookup("k2") is None


def test_generated_keys_are_long_random_and_registered():
    store = ApiKeyStore()
    first, second = store.generate("a"), store.generate("b")
    assert first != second and first.startswith("sk-surge-") and len(first) >= 40
    assert store.lookup(first) == "a" and store.lookup(second) == "b"


def test_lookup_compares_every_key_in_constant_time(monkeypatch):
    calls = []
    real = auth.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    store = ApiKeyStore(["k1", "k2", "k3"])
    assert store.lookup("k1") == "key-1"
    assert len(calls) == 3  # no early exit on the first match
    calls.clear()
    assert store.lookup("nope") is None and len(calls) == 3


def test_presented_key_precedence():
    assert presented_key({"authorization": "Bearer b1", "x-api-key": "x1"}, {"api_key": "q1"}) == "b1"
    assert presented_key({"authorization": "Basic zzz", "x-api-key": "x1"}, {"api_key": "q1"}) == "x1"
    assert presented_key({}, {"api_key": "q1"}) == "q1"
    assert presented_key({"authorization": "Bearer "}, {}) is None


# ---- the app, in-process -----------------------------------------------------------------------

class _NeverBuilt:
    """An engine factory for app tests that never need the engine."""

    def __call__(self):
        raise AssertionError("the engine is not built in these tests")


@pytest.fixture
def keyed_app():
    server = eSurgeApiServer(engine_factory=_NeverBuilt(), require_api_key=True,
                             api_keys={"demo-key": {"label": "UI"}}, served_model_name=MODEL)
    return server, TestClient(server.app)


def test_every_way_of_presenting_a_key(keyed_app):
    server, http = keyed_app
    notebook = server.generate_api_key(label="notebook")
    assert http.get("/v1/models", headers={"Authorization": "Bearer demo-key"}).status_code == 200
    assert http.get("/v1/models", headers={"X-API-Key": notebook}).status_code == 200
    assert http.get(f"/v1/models?api_key={notebook}").status_code == 200
    assert http.get("/v1/models").json()["error"]["type"] == "authentication_error"
    wrong = http.get("/v1/models", headers={"Authorization": "Bearer demo-kez"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert "not valid" in wrong.json()["error"]["message"]
    # Health stays open for probes; metrics, the schema and the docs need a key (Prometheus sends a bearer).
    assert http.get("/health").status_code == 503  # the engine was never built
    for path in ("/metrics", "/openapi.json", "/docs"):
        denied = http.get(path)
        assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key", path
    metrics = http.get("/metrics", headers={"Authorization": "Bearer demo-key"}).text
    assert f'surge:api_key_prompt_tokens_total{{label="notebook",model_name="{MODEL}"}} 0.0' in metrics
    assert f'surge:api_key_prompt_tokens_total{{label="UI",model_name="{MODEL}"}} 0.0' in metrics
    assert notebook not in metrics and "demo-key" not in metrics
    assert "/v1/chat/completions" in http.get("/openapi.json", headers={"X-API-Key": notebook}).json()["paths"]
    docs = http.get(f"/docs?api_key={notebook}")
    assert docs.status_code == 200 and f"/openapi.json?api_key={notebook}" in docs.text


def test_metrics_can_stay_open_for_a_scraper_without_a_token():
    server = eSurgeApiServer(engine_factory=_NeverBuilt(), require_api_key=True, api_keys=["k1"],
                             served_model_name=MODEL, metrics_require_api_key=False)
    http = TestClient(server.app)
    assert http.get("/metrics").status_code == 200
    assert http.get("/v1/models").status_code == 401 and http.get("/openapi.json").status_code == 401


def test_no_metric_label_is_a_function_of_a_secret():
    import re

    def label_values(secrets: list[str]) -> tuple[set, str]:
        server = eSurgeApiServer(engine_factory=_NeverBuilt(), require_api_key=True, api_keys=secrets[:2],
                                 served_model_name=MODEL)
        server.generate_api_key()  # issued at run time, without a label
        text = TestClient(server.app).get("/metrics", headers={"Authorization": f"Bearer {secrets[0]}"}).text
        return set(re.findall(r'="([^"]*)"', text)), text

    first, text_first = label_values(["k1-secret", "k2-secret"])
    second, text_second = label_values(["another-1", "weak"])
    # Whatever the secrets are, every label value in /metrics is the same: none is computed from a key.
    assert first == second and {"key-1", "key-2", "key-3"} <= first
    assert "k1-secret" not in text_first and "weak" not in text_second


def test_keys_checked_before_the_body(keyed_app):
    _, http = keyed_app
    response = http.post("/v1/chat/completions", content=b"{broken")
    assert response.status_code == 401


def test_open_server_accepts_any_key_but_bills_only_registered_ones():
    server = eSurgeApiServer(engine_factory=_NeverBuilt(), api_keys=["k1"], served_model_name=MODEL)
    http = TestClient(server.app)
    assert http.get("/v1/models").status_code == 200
    assert http.get("/v1/models", headers={"Authorization": "Bearer whatever"}).status_code == 200
    assert server.context.authorize(_request({"authorization": "Bearer k1"})).label == "key-1"
    assert server.context.authorize(_request({"authorization": "Bearer other"})).label is None


def _request(headers: dict):
    from starlette.requests import Request

    raw = [(k.encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": raw, "query_string": b""})


def test_cache_salt_per_key_only_when_isolated():
    isolated = eSurgeApiServer(engine_factory=_NeverBuilt(), api_keys=["k1", "k2"],
                               isolate_prefix_cache_per_key=True)
    salt1 = isolated.context.authorize(_request({"authorization": "Bearer k1"})).cache_salt
    salt2 = isolated.context.authorize(_request({"authorization": "Bearer k2"})).cache_salt
    assert salt1 and salt2 and salt1 != salt2
    assert salt1 != hashlib.sha256(b"k1").hexdigest()[:32]  # derived, not the bare hash of the key
    shared = eSurgeApiServer(engine_factory=_NeverBuilt(), api_keys=["k1"])
    assert shared.context.authorize(_request({"authorization": "Bearer k1"})).cache_salt is None


# ---- a real server with keys -------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    keys_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys_file.write_text("k3-file-key notebook\n")
    proc = ServerProcess([
        "engine.max_num_seqs=4", "engine.max_model_len=512", "engine.max_num_batched_tokens=128",
        "engine.token_buckets=[8,32,128]", "cache.num_pages=128", "server.require_api_key=true",
        "server.api_keys=[k1-secret,k2-secret]", f"server.api_keys_file={keys_file}",
        "server.isolate_prefix_cache_per_key=true"]).start()
    try:
        proc.wait_ready(timeout=420)
        yield proc
    finally:
        proc.stop()


def _metric(server, name: str, label: str) -> float:
    wanted = f'{name}{{label="{label}",model_name="{MODEL}"}} '
    text = httpx.get(f"{server.url}/metrics", headers={"Authorization": "Bearer k1-secret"}, timeout=10).text
    for line in text.splitlines():
        if line.startswith(wanted):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(wanted)


@pytest.mark.slow
def test_each_key_path_on_a_real_server(keyed_server):
    base = keyed_server.base_url
    body = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 3, "temperature": 0}
    bearer = openai.OpenAI(base_url=base, api_key="k1-secret", max_retries=0)
    assert bearer.completions.create(**body).usage.completion_tokens == 3
    header = httpx.post(f"{base}/completions", json=body, headers={"X-API-Key": "k2-secret"}, timeout=60)
    assert header.status_code == 200
    query = httpx.post(f"{base}/completions?api_key=k3-file-key", json=body, timeout=60)
    assert query.status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base, api_key="k1-secreT", max_retries=0).completions.create(**body)
    missing = httpx.post(f"{base}/completions", json=body, timeout=60)
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{keyed_server.url}/health", timeout=10).status_code == 200

    prompt_tokens = query.json()["usage"]["prompt_tokens"]
    assert _metric(keyed_server, "surge:api_key_prompt_tokens_total", "notebook") == prompt_tokens
    assert _metric(keyed_server, "surge:api_key_completion_tokens_total", "notebook") == 3
    assert _metric(keyed_server, "surge:api_key_requests_total", "notebook") == 1
    assert _metric(keyed_server, "surge:api_key_completion_tokens_total", "key-1") == 3
    assert _metric(keyed_server, "surge:api_key_completion_tokens_total", "key-2") == 3
    # Without a key, /metrics answers 401 like any other route of a server with keys required.
    denied = httpx.get(f"{keyed_server.url}/metrics", timeout=10)
    assert denied.status_code == 401 and denied.json()["error"]["type"] == "authentication_error"


@pytest.mark.slow
def test_prefix_cache_is_not_shared_between_keys(keyed_server):
    base = keyed_server.base_url
    prompt = "Shared system preamble. " * 12 + "Question?"  # several full 16-token pages

    def hits() -> float:
        text = httpx.get(f"{keyed_server.url}/metrics", headers={"Authorization": "Bearer k1-secret"},
                         timeout=10).text
        for line in text.splitlines():
            if line.startswith("surge:prefix_cache_hits_total{"):
                return float(line.rsplit(" ", 1)[1])
        raise KeyError("surge:prefix_cache_hits_total")

    def send(key: str) -> None:
        response = httpx.post(f"{base}/completions", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                              json={"prompt": prompt, "max_tokens": 1, "temperature": 0})
        assert response.status_code == 200

    send("k1-secret")
    before = hits()
    send("k1-secret")  # same key: the prompt's full pages come from the cache
    same_key = hits() - before
    send("k2-secret")  # another key: nothing shared
    other_key = hits() - before - same_key
    assert same_key >= 16 and other_key == 0
