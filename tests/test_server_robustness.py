"""surge-serve under abuse: malformed requests, start-up, overload, disconnects, SIGTERM.

Fast unit tests of request-body checks come first; then a real server process (8 slots, server.max_queue=50) for the module. Every bad request must get a 4xx with
an OpenAI error body, never a 5xx, and the server must keep serving. Disconnected clients must have their
requests aborted and their KV pages freed. The last test stops the server with SIGTERM mid-stream.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from surge.server.process import ServerProcess

MODEL = "smollm2-135m-instruct"
SLOTS, MAX_QUEUE = 8, 50
SMALL_ENGINE = [f"engine.max_num_seqs={SLOTS}", "engine.max_model_len=512", "engine.max_num_batched_tokens=128",
                "engine.token_buckets=[8,32,128]", "cache.num_pages=256",
                f"server.max_queue={MAX_QUEUE}"]



@pytest.fixture(scope="module")
def server():
    proc = ServerProcess(SMALL_ENGINE).start()
    try:
        proc.wait_listening(timeout=120)
        # The port answers while the engine is still loading and compiling.
        proc.startup_health = httpx.get(f"{proc.url}/health", timeout=10)
        proc.startup_chat = httpx.post(f"{proc.base_url}/chat/completions", timeout=10,
                                       json={"messages": [{"role": "user", "content": "Hi"}]})
        proc.wait_ready(timeout=420)
        yield proc
    finally:
        proc.stop()


def metric(server, name: str, **labels) -> float:
    labels = {"model_name": MODEL, **labels}
    wanted = name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
    for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(wanted)


def wait_idle(server, timeout: float = 30.0) -> None:
    """Until no sequence runs, waits or holds a KV page."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (metric(server, "surge:num_used_pages") == 0 and metric(server, "surge:num_requests_running") == 0
                and metric(server, "surge:num_requests_waiting") == 0):
            return
        time.sleep(0.2)
    raise AssertionError(f"engine not idle after {timeout} s: used pages {metric(server, 'surge:num_used_pages')}")


def assert_openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def chat(**fields) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, **fields}


def completion(**fields) -> dict:
    return {"model": MODEL, "prompt": "Hello", "max_tokens": 2, **fields}


LONG_TEXT = "word " * 700  # ~700 tokens: more than the 512-token context

# (name, path, body: dict | bytes, expected status)
MALFORMED = [
    ("json_truncated", "chat/completions", b'{"model": "x", "messages": [', 400),
    ("json_garbage", "chat/completions", b"not json at all", 400),
    ("empty_body", "chat/completions", b"", 400),
    ("body_is_array", "chat/completions", b"[1, 2]", 400),
    ("body_is_string", "completions", b'"prompt"', 400),
    ("messages_missing", "chat/completions", {"model": MODEL}, 400),
    ("messages_empty", "chat/completions", chat(messages=[]), 400),
    ("messages_not_list", "chat/completions", chat(messages="Hi"), 400),
    ("role_unknown", "chat/completions", chat(messages=[{"role": "wizard", "content": "Hi"}]), 400),
    ("content_wrong_type", "chat/completions", chat(messages=[{"role": "user", "content": 42}]), 400),
    ("content_image_part", "chat/completions", chat(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]), 400),
    ("max_tokens_string", "chat/completions", chat(max_tokens="ten"), 400),
    ("max_tokens_zero", "chat/completions", chat(max_tokens=0), 400),
    ("max_tokens_negative", "completions", completion(max_tokens=-5), 400),
    ("max_tokens_over_context", "chat/completions", chat(max_tokens=100000), 400),
    ("max_tokens_huge_int", "completions", completion(max_tokens=10**30), 400),
    ("max_tokens_disagree", "chat/completions", chat(max_tokens=3, max_completion_tokens=4), 400),
    ("prompt_over_context", "completions", completion(prompt=LONG_TEXT), 400),
    ("messages_over_context", "chat/completions", chat(messages=[{"role": "user", "content": LONG_TEXT}]), 400),
    ("token_prompt_over_context", "completions", completion(prompt=[100] * 600), 400),
    ("temperature_negative", "chat/completions", chat(temperature=-1), 400),
    ("temperature_string", "chat/completions", chat(temperature="hot"), 400),
    ("temperature_nan", "completions", b'{"prompt": "Hi", "max_tokens": 2, "temperature": NaN}', 400),
    ("top_p_zero", "chat/completions", chat(top_p=0), 400),
    ("top_p_above_one", "completions", completion(top_p=1.5), 400),
    ("top_k_below_minus_one", "completions", completion(top_k=-2), 400),
    ("min_p_above_one", "completions", completion(min_p=2), 400),
    ("n_zero", "chat/completions", chat(n=0), 400),
    ("n_too_large", "completions", completion(n=1000), 400),
    ("n_float", "completions", completion(n=2.5), 400),
    ("presence_penalty_range", "chat/completions", chat(presence_penalty=5), 400),
    ("frequency_penalty_range", "completions", completion(frequency_penalty=-3), 400),
    ("repetition_penalty_zero", "completions", completion(repetition_penalty=0), 400),
    ("logit_bias_bad_key", "chat/completions", chat(logit_bias={"abc": 1}), 400),
    ("logit_bias_out_of_range", "chat/completions", chat(logit_bias={"5": 500}), 400),
    ("logit_bias_token_outside_vocab", "completions", completion(logit_bias={"99999999": 1}), 400),
    ("top_logprobs_too_many", "chat/completions", chat(logprobs=True, top_logprobs=50), 400),
    ("top_logprobs_without_logprobs", "chat/completions", chat(top_logprobs=2), 400),
    ("completion_logprobs_too_many", "completions", completion(logprobs=50), 400),
    ("stop_empty_string", "completions", completion(stop=[""]), 400),
    ("stop_wrong_type", "completions", completion(stop=5), 400),
    ("stop_token_ids_outside_vocab", "completions", completion(stop_token_ids=[10**9]), 400),
    ("min_tokens_over_max_tokens", "completions", completion(min_tokens=5, max_tokens=2), 400),
    ("seed_string", "completions", completion(seed="abc"), 400),
    ("stream_not_bool", "completions", completion(stream="yes"), 400),
    ("stream_options_wrong_type", "chat/completions", chat(stream=True, stream_options="usage"), 400),
    ("unknown_model", "chat/completions", chat(model="gpt-17"), 404),
    ("unknown_model_completions", "completions", completion(model="gpt-17"), 404),
    ("tool_choice_without_tools", "chat/completions", chat(tool_choice="auto"), 400),
    ("tool_choice_unknown_function", "chat/completions", chat(
        tools=[{"type": "function", "function": {"name": "f"}}],
        tool_choice={"type": "function", "function": {"name": "g"}}), 400),
    ("tools_malformed", "chat/completions", chat(tools=[{"type": "function"}]), 400),
    ("tool_calls_on_user_message", "chat/completions", chat(messages=[{"role": "user", "content": "x", "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]), 400),
    ("prompt_missing", "completions", {"model": MODEL, "max_tokens": 2}, 400),
    ("prompt_empty_list", "completions", completion(prompt=[]), 400),
    ("prompt_empty_string", "completions", completion(prompt=""), 400),
    ("prompt_nested_empty", "completions", completion(prompt=[[]]), 400),
    ("prompt_token_outside_vocab", "completions", completion(prompt=[99999999]), 400),
    ("prompt_token_negative", "completions", completion(prompt=[-1, 5]), 400),
    ("prompt_mixed_types", "completions", completion(prompt=["a", 5]), 400),
    ("best_of_unsupported", "completions", completion(best_of=3), 400),
    ("suffix_unsupported", "completions", completion(suffix="end"), 400),
]


# ---- request bodies to SamplingParams, without a server -----------------------------------------

LIMITS_512 = dict(max_model_len=512, vocab_size=49152, max_logprobs=20)


def _params(kind: str, prompt_len: int = 10, **fields):
    from surge.server.protocol import ChatCompletionRequest, CompletionRequest
    from surge.server.request_params import EngineLimits, chat_sampling_params, completion_sampling_params

    limits = EngineLimits(**LIMITS_512)
    if kind == "chat":
        return chat_sampling_params(ChatCompletionRequest.model_validate(chat(**fields)), prompt_len, limits)
    return completion_sampling_params(CompletionRequest.model_validate(completion(**fields)), prompt_len, limits)


def test_openai_defaults_and_max_tokens_filling_the_context():
    params = _params("chat", prompt_len=100, max_tokens=None)
    assert (params.temperature, params.top_p, params.top_k, params.n) == (1.0, 1.0, 0, 1)
    assert params.max_tokens == 412 and params.logprobs is None
    assert _params("chat", max_tokens=None, max_completion_tokens=7).max_tokens == 7
    assert _params("completions", prompt_len=511, max_tokens=None).max_tokens == 1


def test_fields_map_to_sampling_params():
    params = _params("chat", max_tokens=5, temperature=0.5, top_p=0.9, top_k=40, min_p=0.1, seed=2**40 + 7,
                     stop="END", presence_penalty=0.5, frequency_penalty=-0.5, repetition_penalty=1.1,
                     logit_bias={"42": -100}, logprobs=True, top_logprobs=3, ignore_eos=True, min_tokens=2,
                     stop_token_ids=[7])
    assert (params.max_tokens, params.temperature, params.top_p, params.top_k, params.min_p) == (5, 0.5, 0.9, 40, 0.1)
    assert params.seed == (2**40 + 7) % 2**31 and params.stop == ["END"] and params.stop_token_ids == [7]
    assert params.logit_bias == {42: -100.0} and params.logprobs == 3 and params.ignore_eos
    assert (params.presence_penalty, params.frequency_penalty, params.repetition_penalty) == (0.5, -0.5, 1.1)
    assert _params("chat", logprobs=True).logprobs == 0
    assert _params("completions", logprobs=2).logprobs == 2


@pytest.mark.parametrize("kind, fields, param", [
    ("chat", {"max_tokens": 600}, "max_tokens"),
    ("completions", {"n": 129}, "n"),
    ("completions", {"temperature": float("inf")}, "temperature"),
    ("chat", {"top_p": 0.0}, "top_p"),
    ("chat", {"logit_bias": {"49152": 1}}, "logit_bias"),
    ("completions", {"stop_token_ids": [49152]}, "stop_token_ids"),
    ("chat", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
])
def test_out_of_range_fields_name_the_parameter(kind, fields, param):
    from surge.server.errors import OpenAIError

    with pytest.raises(OpenAIError) as info:
        _params(kind, **fields)
    assert info.value.status == 400 and info.value.param == param


def test_prompt_that_fills_the_context_is_refused_with_the_limit():
    from surge.server.errors import OpenAIError

    with pytest.raises(OpenAIError, match="maximum context length is 512") as info:
        _params("completions", prompt_len=512, max_tokens=None)
    assert info.value.code == "context_length_exceeded"


# ---- a real server -------------------------------------------------------------------------------

@pytest.mark.slow
def test_port_answers_503_while_the_engine_starts(server):
    assert assert_openai_error(server.startup_health, 503)["code"] == "not_ready"
    assert "starting" in server.startup_health.json()["error"]["message"]
    assert_openai_error(server.startup_chat, 503)
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200


@pytest.mark.slow
def test_malformed_requests_get_openai_errors_and_the_server_keeps_serving(server):
    assert len(MALFORMED) >= 30
    failures = []
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        for name, path, body, expected in MALFORMED:
            if isinstance(body, bytes):
                response = http.post(path, content=body, headers={"content-type": "application/json"})
            else:
                response = http.post(path, json=body)
            if response.status_code != expected:
                failures.append((name, response.status_code, response.text[:200]))
                continue
            assert_openai_error(response, expected)
        assert not failures, failures
        ok = http.post("chat/completions", json=chat(max_tokens=3, temperature=0))
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] >= 1


@pytest.mark.slow
def test_context_errors_name_the_limit(server):
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        over = assert_openai_error(http.post("completions", json=completion(prompt=LONG_TEXT)), 400)
        assert "512" in over["message"] and over["code"] == "context_length_exceeded"
        too_many = assert_openai_error(http.post("completions", json=completion(max_tokens=600)), 400)
        assert too_many["param"] == "max_tokens" and "512" in too_many["message"]
        # Exactly what fits is fine.
        prompt_tokens = http.post("completions", json=completion(max_tokens=1)).json()["usage"]["prompt_tokens"]
        fits = http.post("completions", json=completion(max_tokens=512 - prompt_tokens, stop=["\n", "."]))
        assert fits.status_code == 200


@pytest.mark.slow
def test_wrong_routes_and_methods_answer_in_openai_shape(server):
    assert_openai_error(httpx.get(f"{server.base_url}/chat/completions", timeout=10), 405)
    assert_openai_error(httpx.post(f"{server.base_url}/nonexistent", json={}, timeout=10), 404)
    assert_openai_error(httpx.get(f"{server.base_url}/models/gpt-17", timeout=10), 404)


async def _stream(http: httpx.AsyncClient, body: dict, disconnect_after: int | None) -> dict:
    """Read one streamed completion; with `disconnect_after`, hang up after that many chunks."""
    chunks, finish, done = 0, None, False
    async with http.stream("POST", "completions", json={**body, "stream": True}) as response:
        if response.status_code != 200:
            await response.aread()
            return {"status": response.status_code, "body": response.json()}
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            payload = json.loads(line[6:])
            chunks += 1
            finish = payload["choices"][0]["finish_reason"] or finish
            if disconnect_after is not None and chunks >= disconnect_after:
                break
    return {"status": 200, "chunks": chunks, "finish": finish, "done": done}


@pytest.mark.slow
def test_fifty_streaming_clients_a_third_disconnect_and_every_page_comes_back(server):
    wait_idle(server)
    aborted_before = metric(server, "surge:request_success_total", finished_reason="abort")

    async def run():
        async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as http:
            jobs = []
            for i in range(50):
                quitter = i % 3 == 0
                # A quitter asks for far more tokens than it reads: with only 8 it could finish (and count as
                # "length") before the server sees the hang-up, its last chunks already in the socket buffer.
                body = {"prompt": f"Request {i}: count from one to twenty.", "max_tokens": 400 if quitter else 8,
                        "temperature": 0, "ignore_eos": True}
                jobs.append(_stream(http, body, disconnect_after=2 if quitter else None))
            return await asyncio.gather(*jobs)

    results = asyncio.run(run())
    quitters = [r for i, r in enumerate(results) if i % 3 == 0]
    finishers = [r for i, r in enumerate(results) if i % 3 != 0]
    assert len(quitters) == 17 and all(r["status"] == 200 and r["chunks"] == 2 for r in quitters)
    # One chunk per token, except where the detokenizer holds text back until the next token.
    assert all(r["status"] == 200 and r["done"] and r["finish"] == "length" and 4 <= r["chunks"] <= 8
               for r in finishers), finishers
    wait_idle(server)
    deadline = time.monotonic() + 10
    while metric(server, "surge:request_success_total", finished_reason="abort") < aborted_before + 17:
        assert time.monotonic() < deadline, "the disconnected streams were not aborted"
        time.sleep(0.2)
    assert metric(server, "surge:request_success_total", finished_reason="abort") == aborted_before + 17


@pytest.mark.slow
def test_non_streamed_request_is_aborted_when_its_client_gives_up(server):
    wait_idle(server)
    aborted_before = metric(server, "surge:request_success_total", finished_reason="abort")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/completions", timeout=1.5,
                   json={"prompt": "Tell me a long story.", "max_tokens": 400, "ignore_eos": True})
    deadline = time.monotonic() + 10
    while metric(server, "surge:request_success_total", finished_reason="abort") < aborted_before + 1:
        assert time.monotonic() < deadline, "the abandoned request kept running"
        time.sleep(0.2)
    wait_idle(server, timeout=10)


@pytest.mark.slow
def test_overload_answers_503_beyond_max_queue_then_recovers(server):
    wait_idle(server)
    total = SLOTS + MAX_QUEUE + 12
    statuses: list[int] = []

    async def hold(http: httpx.AsyncClient, everyone_answered: asyncio.Event):
        # Keep each admitted request open until every request has its status, so none finishes early.
        body = {"prompt": "Overload me.", "max_tokens": 300, "ignore_eos": True, "stream": True}
        async with http.stream("POST", "completions", json=body) as response:
            statuses.append(response.status_code)
            if len(statuses) == total:
                everyone_answered.set()
            if response.status_code != 200:
                await response.aread()
                return response.status_code, response.json()
            await asyncio.wait_for(everyone_answered.wait(), timeout=120)
            return response.status_code, None  # leaving the block hangs up: the request is aborted

    async def run():
        everyone_answered = asyncio.Event()
        async with httpx.AsyncClient(base_url=server.base_url, timeout=120,
                                     limits=httpx.Limits(max_connections=total)) as http:
            return await asyncio.gather(*(hold(http, everyone_answered) for _ in range(total)))

    results = asyncio.run(run())
    rejected = [body for status, body in results if status == 503]
    admitted = [status for status, _ in results if status == 200]
    assert len(admitted) == SLOTS + MAX_QUEUE and len(rejected) == total - SLOTS - MAX_QUEUE
    assert all(body["error"]["code"] == "overloaded" for body in rejected)
    assert metric(server, "surge:request_rejected_total", reason="overloaded") >= len(rejected)
    wait_idle(server)
    ok = httpx.post(f"{server.base_url}/completions", json=completion(max_tokens=2), timeout=60)
    assert ok.status_code == 200


@pytest.mark.slow
def test_sigterm_aborts_in_flight_streams_and_exits_cleanly(server):
    wait_idle(server)
    lines = []
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        with http.stream("POST", "completions", json={"prompt": "Once upon a time", "max_tokens": 400,
                                                      "ignore_eos": True, "stream": True}) as response:
            assert response.status_code == 200
            stopped_at = None
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                lines.append(line)
                if stopped_at is None:
                    stopped_at = time.monotonic()
                    server.process.terminate()  # SIGTERM
    assert time.monotonic() - stopped_at < 15
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] == "abort"
    assert len(lines) < 100  # it did not run on to max_tokens
    assert server.process.wait(timeout=30) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health", timeout=5)


@pytest.mark.slow
def test_start_up_failure_exits_1_and_sigterm_during_start_up_exits_0():
    broken = ServerProcess(["model.path=/nonexistent/model.gguf"]).start()
    try:
        broken.wait_listening(timeout=120)
        assert broken.process.wait(timeout=120) == 1
        assert "the engine failed to start" in broken.log() and "/nonexistent/model.gguf" in broken.log()
    finally:
        broken.stop()
    early = ServerProcess(SMALL_ENGINE).start()
    try:
        early.wait_listening(timeout=120)
        assert httpx.get(f"{early.url}/health", timeout=10).status_code == 503
        started = time.monotonic()
        assert early.stop(timeout=30) == 0
        assert time.monotonic() - started < 15
    finally:
        early.stop()
