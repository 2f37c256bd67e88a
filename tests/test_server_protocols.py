"""The protocols beside chat completions, end to end with the unchanged `openai` and `anthropic` clients.

One surge-serve process (SmolLM2-135M, keys required, Responses stored in a SQLite file of this module's temp
directory) serves the module; the last test restarts it on the same file. Answers are greedy, so a streamed
answer equals the plain one.
"""

from __future__ import annotations

import json
import random
import time

import anthropic
import httpx
import jsonschema
import openai
import pytest

from surge.server.process import ServerProcess

pytestmark = pytest.mark.slow

KEY_A, KEY_B = "key-a-for-tests", "key-b-for-tests"
WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
ANTHROPIC_WEATHER = {"name": "get_weather", "description": "Current weather in a city",
                     "input_schema": WEATHER["parameters"]}
GREEDY = {"temperature": 0}


def _overrides(store_path: str) -> list[str]:
    # float32 (not the quantized default): the answers asserted here were written against float32 output
    # (see test_server.py's SMALL_ENGINE).
    return ["model.dtype=float32", "engine.max_num_seqs=4", "engine.max_model_len=1024", "engine.max_num_batched_tokens=128",
            "engine.token_buckets=[8,32,128]", "cache.num_pages=256", "server.require_api_key=true",
            f"server.api_keys=[{KEY_A},{KEY_B}]", "server.responses_store=sqlite",
            f"server.responses_store_path={store_path}"]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    return str(tmp_path_factory.mktemp("responses") / "responses.sqlite")


@pytest.fixture(scope="module")
def server(store_path):
    proc = ServerProcess(_overrides(store_path)).start()
    try:
        proc.wait_ready(timeout=420)
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key=KEY_A, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def other(server):
    return openai.OpenAI(base_url=server.base_url, api_key=KEY_B, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def claude(server):
    return anthropic.Anthropic(base_url=server.url, api_key=KEY_A, max_retries=0, timeout=120)


def _metric(server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {KEY_A}"}, timeout=10).text
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rpartition(" ")[2])
    raise AssertionError(f"{name} is not in /metrics")


def _prefix_cache_hits(server) -> float:
    return _metric(server, "surge:prefix_cache_hits_total")


# ---- /v1/responses -------------------------------------------------------------------------------

def test_responses_plain_and_streamed_agree(client):
    plain = client.responses.create(model="default", input="What is the capital of France?",
                                    max_output_tokens=16, **GREEDY)
    assert plain.status == "completed" and plain.object == "response" and "Paris" in plain.output_text
    assert plain.usage.input_tokens > 10 and 1 <= plain.usage.output_tokens <= 16
    events = list(client.responses.create(model="default", input="What is the capital of France?",
                                          max_output_tokens=16, stream=True, **GREEDY))
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == plain.output_text
    assert events[-1].response.output_text == plain.output_text


def test_responses_function_tool_round_trip(client):
    first = client.responses.create(model="default", input="What is the weather in Paris?", tools=[WEATHER],
                                    tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=32,
                                    **GREEDY)
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].call_id.startswith("call_")
    assert isinstance(json.loads(calls[0].arguments), dict)
    second = client.responses.create(
        model="default", previous_response_id=first.id, tools=[WEATHER], max_output_tokens=24, **GREEDY,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": '{"sky": "sunny"}'}])
    assert second.status in ("completed", "incomplete") and second.output
    assert "<tool_call>" not in second.output_text
    # Streamed, the arguments arrive as deltas that concatenate to the item's arguments.
    events = list(client.responses.create(model="default", input="What is the weather in Paris?", tools=[WEATHER],
                                          tool_choice={"type": "function", "name": "get_weather"},
                                          max_output_tokens=32, stream=True, **GREEDY))
    arguments = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert done and done[0].arguments == arguments == calls[0].arguments


def test_previous_response_id_replays_three_turns_from_the_prefix_cache(server, client):
    hits_before = _prefix_cache_hits(server)
    turns = ["My name is Ada and I live in Rome.", "What is my name?", "And where do I live?"]
    previous, cached = None, []
    for text in turns:
        reply = client.responses.create(model="default", input=text, previous_response_id=previous,
                                        instructions="You are a helpful assistant.", max_output_tokens=16,
                                        **GREEDY)
        previous = reply.id
        cached.append(reply.usage.input_tokens_details.cached_tokens)
        assert reply.previous_response_id == (None if text == turns[0] else reply.previous_response_id)
    hits = _prefix_cache_hits(server) - hits_before
    print(f"cached tokens per turn {cached}; surge:prefix_cache_hits_total grew by {hits}")
    assert cached[1] > 0 and cached[2] > cached[1]
    assert hits >= cached[1] + cached[2]


def test_background_then_retrieve_and_cancel(server, client):
    started = client.responses.create(model="default", input="Write a very long story about a dragon.",
                                      max_output_tokens=900, background=True, **GREEDY)
    assert started.status == "queued" and started.background
    assert client.responses.retrieve(started.id).status in ("queued", "in_progress")
    cancelled = client.responses.cancel(started.id)
    assert cancelled.status == "cancelled"
    assert client.responses.retrieve(started.id).status == "cancelled"
    # The cancelled request was aborted: its sequence leaves the batch and its pages are freed.
    deadline = time.monotonic() + 10
    while _metric(server, "surge:num_requests_running") or _metric(server, "surge:num_used_pages"):
        assert time.monotonic() < deadline, "the cancelled response still runs"
        time.sleep(0.1)


def test_a_second_key_cannot_see_the_first_keys_responses(client, other):
    mine = client.responses.create(model="default", input="Say hi.", max_output_tokens=4, **GREEDY)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(mine.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.create(model="default", input="Again.", previous_response_id=mine.id, max_output_tokens=4)
    assert client.responses.retrieve(mine.id).id == mine.id
    client.responses.delete(mine.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(mine.id)


def test_text_format_json_schema_and_json_object_constrain_the_output(client):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                               "population": {"type": "integer", "minimum": 0,
                                                              "maximum": 10**9}},
              "required": ["city", "population"], "additionalProperties": False}
    fmt = {"type": "json_schema", "name": "city", "schema": schema, "strict": True}
    plain = client.responses.create(model="default", input="Describe Paris as JSON.", max_output_tokens=64,
                                    text={"format": fmt}, **GREEDY)
    print(f"json_schema answer: {plain.output_text!r}")
    assert plain.status == "completed" and plain.text.format.type == "json_schema"
    jsonschema.validate(json.loads(plain.output_text), schema)
    events = list(client.responses.create(model="default", input="Describe Paris as JSON.", max_output_tokens=64,
                                          text={"format": fmt}, stream=True, **GREEDY))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == plain.output_text
    anything = client.responses.create(model="default", input="Describe Paris as JSON.", max_output_tokens=64,
                                       text={"format": {"type": "json_object"}}, **GREEDY)
    assert anything.status == "completed" and isinstance(json.loads(anything.output_text), dict)
    with pytest.raises(openai.BadRequestError, match="text.format.schema"):
        client.responses.create(model="default", input="x", max_output_tokens=4,
                                text={"format": {"type": "json_schema", "name": "x"}})
    with pytest.raises(openai.BadRequestError, match="text.format"):
        client.responses.create(model="default", input="x", max_output_tokens=4, tools=[WEATHER],
                                tool_choice="required", text={"format": {"type": "json_object"}})


def test_every_new_route_needs_a_key(server):
    routes = [("POST", "/v1/responses", {"input": "x"}), ("GET", "/v1/responses/resp_x", None),
              ("DELETE", "/v1/responses/resp_x", None), ("POST", "/v1/responses/resp_x/cancel", None),
              ("POST", "/v1/messages", {"max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}),
              ("POST", "/v1/messages/count_tokens", {"messages": [{"role": "user", "content": "x"}]}),
              ("POST", "/tokenize", {"prompt": "x"}), ("POST", "/detokenize", {"tokens": [1]}),
              ("GET", "/version", None), ("GET", "/v1/models/default", None)]
    for method, path, body in routes:
        reply = httpx.request(method, f"{server.url}{path}", json=body, timeout=10)
        assert reply.status_code == 401, (path, reply.text)
        if path.startswith("/v1/messages"):
            assert reply.json()["error"]["type"] == "authentication_error" and reply.json()["type"] == "error"
        ok = httpx.request(method, f"{server.url}{path}", json=body, headers={"x-api-key": KEY_A}, timeout=60)
        assert ok.status_code in (200, 404), (path, ok.text)
    # Each body is declared in the OpenAPI schema, so the server's fuzz test generates bodies for it.
    assert httpx.get(f"{server.url}/openapi.json", timeout=10).status_code == 401  # closed, like /metrics
    paths = httpx.get(f"{server.url}/openapi.json", headers={"x-api-key": KEY_A}, timeout=10).json()["paths"]
    for path in ("/v1/responses", "/v1/messages", "/v1/messages/count_tokens", "/tokenize", "/detokenize"):
        body_schema = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body_schema["$ref"].startswith("#/components/schemas/"), path
    assert {"/v1/responses/{response_id}", "/v1/responses/{response_id}/cancel", "/version"} <= set(paths)


# ---- /v1/messages --------------------------------------------------------------------------------

def test_messages_plain_streamed_and_count_tokens(claude):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    plain = claude.messages.create(model="default", max_tokens=16, messages=messages, system="You are a helpful assistant.",
                                   extra_body=GREEDY)
    assert plain.type == "message" and plain.role == "assistant" and plain.stop_reason in ("end_turn", "max_tokens")
    assert "Paris" in plain.content[0].text
    with claude.messages.stream(model="default", max_tokens=16, messages=messages, system="You are a helpful assistant.",
                                extra_body=GREEDY) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "content_block_delta" in kinds
    assert final.content[0].text == plain.content[0].text and final.stop_reason == plain.stop_reason
    count = claude.messages.count_tokens(model="default", messages=messages, system="You are a helpful assistant.")
    assert count.input_tokens == plain.usage.input_tokens + plain.usage.cache_read_input_tokens


def test_messages_tool_use_round_trip(claude):
    question = {"role": "user", "content": "What is the weather in Paris?"}
    first = claude.messages.create(model="default", max_tokens=40, tools=[ANTHROPIC_WEATHER], messages=[question],
                                   tool_choice={"type": "tool", "name": "get_weather"}, extra_body=GREEDY)
    uses = [block for block in first.content if block.type == "tool_use"]
    assert len(uses) == 1 and uses[0].name == "get_weather" and isinstance(uses[0].input, dict)
    assert first.stop_reason in ("tool_use", "max_tokens")
    second = claude.messages.create(model="default", max_tokens=24, tools=[ANTHROPIC_WEATHER], extra_body=GREEDY,
                                    messages=[question, {"role": "assistant", "content": first.content},
                                              {"role": "user", "content": [{"type": "tool_result",
                                                                            "tool_use_id": uses[0].id,
                                                                            "content": "21 C and sunny"}]}])
    assert second.content and second.usage.output_tokens >= 1
    with claude.messages.stream(model="default", max_tokens=40, tools=[ANTHROPIC_WEATHER], messages=[question],
                                tool_choice={"type": "tool", "name": "get_weather"}, extra_body=GREEDY) as stream:
        list(stream)
        streamed = stream.get_final_message()
    assert [b.input for b in streamed.content if b.type == "tool_use"] == [uses[0].input]


def test_messages_stop_sequences_and_errors(server, claude):
    reply = claude.messages.create(model="default", max_tokens=30, stop_sequences=["Paris"], extra_body=GREEDY,
                                   messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert reply.stop_reason == "stop_sequence" and reply.stop_sequence == "Paris"
    assert "Paris" not in reply.content[0].text
    missing = httpx.post(f"{server.url}/v1/messages", headers={"x-api-key": KEY_A}, timeout=10,
                         json={"model": "default", "messages": [{"role": "user", "content": "x"}]})
    assert missing.status_code == 400 and missing.json()["type"] == "error"
    assert missing.json()["error"] == {"type": "invalid_request_error", "message": "max_tokens: Field required"}
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=server.url, api_key="not-a-key", max_retries=0).messages.create(
            model="default", max_tokens=4, messages=[{"role": "user", "content": "x"}])


# ---- small endpoints -----------------------------------------------------------------------------

def test_tokenize_detokenize_round_trip_100_strings(server):
    rng = random.Random(21)
    alphabet = "abc XYZ 019 .,!? é ü ß 世界 日本語 Привет 😀 🚀 \n\t"
    strings = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(100)]
    headers = {"Authorization": f"Bearer {KEY_A}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as http:
        for text in strings:
            tokens = http.post("/tokenize", json={"prompt": text, "add_special_tokens": False}).json()
            assert tokens["count"] == len(tokens["tokens"]) and tokens["max_model_len"] == 1024
            assert http.post("/detokenize", json={"tokens": tokens["tokens"]}).json()["prompt"] == text
        chat = http.post("/tokenize", json={"messages": [{"role": "user", "content": "hi"}],
                                            "return_token_strs": True}).json()
        assert chat["count"] > 3 and len(chat["token_strs"]) == chat["count"]
        assert http.post("/detokenize", json={"tokens": [10**9]}).status_code == 400
        assert http.get("/version").json()["version"]
        assert http.get("/v1/models/smollm2-135m-instruct").json()["id"] == "smollm2-135m-instruct"
        assert http.get("/v1/models/nope").status_code == 404


# ---- last: a restart keeps stored responses ------------------------------------------------------

def test_a_restart_keeps_stored_responses(server, client, store_path):
    kept = client.responses.create(model="default", input="Remember the number 7.", max_output_tokens=8, **GREEDY)
    server.stop()
    restarted = ServerProcess(_overrides(store_path)).start()
    try:
        restarted.wait_ready(timeout=420)
        again = openai.OpenAI(base_url=restarted.base_url, api_key=KEY_A, max_retries=0, timeout=120)
        assert again.responses.retrieve(kept.id).output_text == kept.output_text
        follow = again.responses.create(model="default", input="Which number?", previous_response_id=kept.id,
                                        max_output_tokens=8, **GREEDY)
        assert follow.usage.input_tokens > kept.usage.input_tokens + kept.usage.output_tokens
        with pytest.raises(openai.NotFoundError):
            openai.OpenAI(base_url=restarted.base_url, api_key=KEY_B, max_retries=0).responses.retrieve(kept.id)
    finally:
        restarted.stop()
