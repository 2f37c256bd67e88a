"""Bounded work and honest errors: each reproduction of issue 17 gets the right status and message.

One in-process server (a tiny random Llama, 2 slots, 128-token context, server.max_request_bytes=6 MiB,
server.max_prompt_tokens=120, server.default_max_tokens=20) serves the module. Checked here: bodies over the
limit get 413 before they are parsed (sized or chunked); a 4 MiB prompt is tokenized off the event loop, so
another client's stream keeps flowing and /health answers meanwhile; the default max_tokens (16 for
completions, the chat cap); a prompt over server.max_prompt_tokens; requests that can never be served get
400 naming the limit, while 503s carry Retry-After; numbers the float32 sampler cannot hold are 400s
naming the field; a lone-surrogate JSON escape is accepted.
"""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.engine_stats_cases import make_stats
from tests.inprocess_server import serve

MAX_BYTES = 6 * 1024 * 1024


@pytest.fixture(scope="module")
def served(tiny_checkpoint):
    import surge

    engine = surge.Engine.from_pretrained(tiny_checkpoint("llama").path, max_num_seqs=2, max_model_len=128,
                                          max_num_batched_tokens=32, token_buckets=[8, 32], num_pages=64,
                                          progress=False)
    with serve(engine, max_request_bytes=MAX_BYTES, max_prompt_tokens=120, default_max_tokens=20,
               responses_store="memory") as s:
        yield s


def post(served, path: str, body, **kwargs) -> httpx.Response:
    return httpx.post(f"{served.url}{path}", json=body, timeout=120, **kwargs)


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.text[:300])
    return response.json()["error"]


# ---- bounded work -----------------------------------------------------------------------------------

def test_a_body_over_the_limit_is_413_before_it_is_parsed(served):
    oversized = b"{" + b" " * MAX_BYTES + b"broken"  # not even JSON: the size is refused first
    sized = httpx.post(f"{served.url}/v1/completions", content=oversized, timeout=60,
                       headers={"content-type": "application/json"})
    error = error_of(sized, 413)
    assert "server.max_request_bytes" in error["message"] and str(MAX_BYTES) in error["message"]

    def chunks():
        for _ in range(7):
            yield b" " * (1024 * 1024)

    chunked = httpx.post(f"{served.url}/v1/chat/completions", content=chunks(), timeout=60,
                         headers={"content-type": "application/json"})
    assert error_of(chunked, 413)["code"] == "request_too_large"
    anthropic = httpx.post(f"{served.url}/v1/messages", content=oversized, timeout=60)
    assert anthropic.status_code == 413 and anthropic.json()["type"] == "error"
    # A body under the limit sent in chunks is handed on whole.
    small = json.dumps({"prompt": "hi", "max_tokens": 2}).encode()
    ok = httpx.post(f"{served.url}/v1/completions", content=iter([small[:5], small[5:]]), timeout=60,
                    headers={"content-type": "application/json"})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] >= 1


@pytest.mark.slow
def test_a_4_mib_prompt_never_stalls_another_stream(served):
    """While a 4 MiB prompt is tokenized (~3 M tokens, seconds), another client's stream keeps flowing."""
    prompt = ("The quick brown fox jumps over the lazy dog. " * 100_000)[: 4 * 1024 * 1024]
    body = json.dumps({"prompt": prompt, "max_tokens": 1}).encode()  # serialized before the clock starts
    window: dict = {}

    def big() -> None:
        window["start"] = time.monotonic()
        window["response"] = httpx.post(f"{served.url}/v1/completions", content=body, timeout=300,
                                        headers={"content-type": "application/json"})
        window["end"] = time.monotonic()

    arrivals: list[list[float]] = []
    health: list[float] = []
    thread = threading.Thread(target=big)
    thread.start()
    with httpx.Client(timeout=60) as client:
        while thread.is_alive():
            times: list[float] = []
            with client.stream("POST", f"{served.url}/v1/completions",
                               json={"prompt": "hello", "max_tokens": 100, "ignore_eos": True, "stream": True,
                                     "temperature": 0}) as stream:
                for line in stream.iter_lines():
                    if line.startswith("data: {"):
                        times.append(time.monotonic())
            arrivals.append(times)
            started = time.monotonic()
            assert client.get(f"{served.url}/health").status_code == 200
            health.append((started, time.monotonic() - started))
    thread.join()
    error = error_of(window["response"], 400)  # ~1 M tokens: far over the 128-token context
    assert error["code"] == "context_length_exceeded"
    # The gaps inside the tokenizing window (between its start and the 400), across every stream sent then.
    gaps = [b - a for times in arrivals for a, b in zip(times, times[1:])
            if window["start"] + 0.05 < a and b < window["end"] - 0.05]
    span = window["end"] - window["start"]
    assert len(gaps) >= 50, f"only {len(gaps)} gaps inside a {span:.1f} s window"
    gaps.sort()
    print(f"\n{len(gaps)} gaps in a {span:.1f} s window: p99 {gaps[int(len(gaps) * 0.99)] * 1000:.0f} ms, "
          f"max {gaps[-1] * 1000:.0f} ms")
    # Tokenized on the event loop, the stream froze for the whole window (one gap ~ the window). Off it, the
    # gaps stay those of the machine: under 200 ms for 99 % of tokens, and no freeze, even on a 2-core box
    # that other jobs load (there the OS alone makes a rare gap of a few hundred ms; see the closing note).
    assert gaps[int(len(gaps) * 0.99)] < 0.2, gaps[-5:]
    assert gaps[-1] < min(1.0, span / 4), (gaps[-5:], span)
    assert max(latency for started, latency in health if started < window["end"]) < 1.0


def test_default_max_tokens(served):
    plain = post(served, "/v1/completions", {"prompt": "Hi", "ignore_eos": True}).json()
    assert plain["usage"]["completion_tokens"] == 16 and plain["choices"][0]["finish_reason"] == "length"
    chat = post(served, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                                                 "ignore_eos": True}).json()
    assert chat["usage"]["completion_tokens"] == 20  # server.default_max_tokens, under the context left
    # Near the end of the context, the room left wins over the default.
    for words in range(20, 120):
        messages = [{"role": "user", "content": "x " * words}]
        count = post(served, "/tokenize", {"messages": messages}).json()["count"]
        if count >= 112:
            break
    assert count <= 120
    near = post(served, "/v1/chat/completions", {"messages": messages, "ignore_eos": True}).json()
    assert near["usage"]["completion_tokens"] == 128 - count and near["choices"][0]["finish_reason"] == "length"
    assert post(served, "/v1/completions", {"prompt": [5] * 120, "ignore_eos": True}).json()["usage"][
        "completion_tokens"] == 8


def test_a_prompt_over_max_prompt_tokens_is_400_naming_the_key(served):
    error = error_of(post(served, "/v1/completions", {"prompt": [7] * 121, "max_tokens": 1}), 400)
    assert "121 tokens" in error["message"] and "at most 120 (server.max_prompt_tokens)" in error["message"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "prompt"


# ---- honest errors -----------------------------------------------------------------------------------

def test_requests_that_can_never_be_served_are_400_naming_the_limit(served):
    error = error_of(post(served, "/v1/completions", {"prompt": ["a"] * 9, "n": 128, "max_tokens": 1}), 400)
    assert "1152 sequences (9 prompts x n=128)" in error["message"], error
    assert "at most 1026 at once (engine.max_num_seqs=2 running + server.max_queue=1024" in error["message"]
    assert error["param"] == "n" and error["code"] == "too_many_sequences"
    # The server is idle and still serves what fits: more prompts than slots wait their turn.
    reply = post(served, "/v1/completions", {"prompt": ["a"] * 5, "max_tokens": 1})
    assert reply.status_code == 200 and len(reply.json()["choices"]) == 5


def _host(max_num_seqs: int = 4, num_pages: int = 8, page_size: int = 16, max_queue: int = 2):
    from surge.server.engine_host import EngineHost

    host = EngineHost(max_queue=max_queue)
    config = SimpleNamespace(engine=SimpleNamespace(max_num_seqs=max_num_seqs, data_parallel_size=1),
                             cache=SimpleNamespace(page_size=page_size))
    host.async_engine = SimpleNamespace(engine=SimpleNamespace(config=config,
                                                               stats=lambda: make_stats(num_total_pages=num_pages),
                                                               replica_stats=lambda: (
                                                                   make_stats(num_total_pages=num_pages),)))
    return host


def test_more_tokens_than_the_pool_is_400_and_a_full_queue_is_503_with_retry_after():
    from surge.server.errors import OpenAIError

    host = _host()
    with pytest.raises(OpenAIError) as pool:
        host.check_servable(1, 1, longest_prompt=100, max_tokens=29)  # 129 tokens > 8 pages x 16
    assert pool.value.status == 400 and pool.value.param == "max_tokens"
    assert "needs 129 tokens of KV cache" in pool.value.message and "holds 128" in pool.value.message
    host.check_servable(1, 1, longest_prompt=100, max_tokens=28)
    host.admit("a", 4)
    host.admit("b", 2)  # 4 slots + 2 waiting
    with pytest.raises(OpenAIError) as full:
        host.admit("c", 1)
    assert full.value.status == 503 and full.value.code == "overloaded"
    assert "6 sequences are in flight or waiting" in full.value.message
    assert full.value.response().headers["retry-after"] == "1"
    host.release("b")
    host.admit("c", 1)  # transient: once others finish it gets in


def test_503_while_starting_says_when_to_retry():
    from surge.server.app import eSurgeApiServer

    server = eSurgeApiServer(engine_factory=lambda: None)  # never started: the engine is not ready
    http = TestClient(server.app)
    for reply in (http.get("/health"), http.post("/v1/completions", json={"prompt": "hi"})):
        assert reply.status_code == 503 and reply.headers["retry-after"] == "1", reply.text


@pytest.mark.parametrize("field, value", [("temperature", 1e308), ("top_p", float("inf")),
                                          ("frequency_penalty", float("nan")), ("repetition_penalty", 1e39)])
def test_numbers_the_sampler_cannot_hold_are_400_naming_the_field(served, field, value):
    body = json.dumps({"prompt": "hi", "max_tokens": 1, field: value})  # Infinity / NaN as Python writes them
    reply = httpx.post(f"{served.url}/v1/completions", content=body, timeout=60,
                       headers={"content-type": "application/json"})
    error = error_of(reply, 400)
    assert error["param"] == field and f"{field}=" in error["message"], error


def test_a_lone_surrogate_escape_is_accepted(served):
    body = b'{"prompt": "caf\\ud800e", "max_tokens": 1, "echo": true}'
    reply = httpx.post(f"{served.url}/v1/completions", content=body, timeout=60,
                       headers={"content-type": "application/json"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["text"].startswith("caf\ufffde")
    chat = b'{"messages": [{"role": "user", "content": "\\udc00 hi \\ud83d\\ude00"}], "max_tokens": 1}'
    assert httpx.post(f"{served.url}/v1/chat/completions", content=chat, timeout=60,
                      headers={"content-type": "application/json"}).status_code == 200
    count = httpx.post(f"{served.url}/tokenize", content=b'{"prompt": "\\ud800"}', timeout=60,
                       headers={"content-type": "application/json"}).json()["count"]
    assert count == len(post(served, "/tokenize", {"prompt": "\ufffd"}).json()["tokens"])


# ---- the schema ----------------------------------------------------------------------------------------

def test_openapi_describes_request_and_response_bodies_and_docs_serve(served):
    schema = httpx.get(f"{served.url}/openapi.json", timeout=10).json()
    chat = schema["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("ChatCompletionRequest")
    assert chat["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("ChatCompletion")
    assert "text/event-stream" in chat["responses"]["200"]["content"]
    assert chat["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("ErrorResponse")
    assert "422" not in chat["responses"]  # a body that does not validate is a 400 here
    messages = schema["paths"]["/v1/messages"]["post"]["responses"]["400"]
    assert messages["content"]["application/json"]["schema"]["$ref"].endswith("AnthropicErrorResponse")
    docs = httpx.get(f"{served.url}/docs", timeout=10)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_encode_gives_the_tokenizers_ids():
    from surge.server.workers import encode
    from tests.conftest import make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer()
    for text in ("hello world", "caf\u00e9\n\n  x<s>y", " leading", ""):
        for special in (True, False):
            assert encode(tokenizer, text, special) == tokenizer.encode(text, add_special_tokens=special)
