"""surge-serve end to end: a real server process, the official `openai` client, unchanged.

One server (SmolLM2-135M, greedy, 8 slots, 512-token context, n-gram speculative decoding, which never
changes a greedy answer) is started for the module; requests are sent one at a time, so greedy answers do
not depend on what else is in the batch. The first test serves a
tiny random model in-process through the Python API (`surge.eSurgeApiServer(engine).fire()`).
"""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import openai
import pytest

from surge.server.process import ServerProcess

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
# float32, not the default auto (the GGUF's Q4_1 kept quantized on the cpu backend): the answers asserted
# here (Paris, tool calls) were written against float32 output, and the quantized model's first token on
# the France chat question is a near-tie (logits 25.33 vs 25.24) that its 8-bit activation rounding flips.
SMALL_ENGINE = ["model.dtype=float32", "engine.max_num_seqs=8", "engine.max_model_len=512", "engine.max_num_batched_tokens=128",
                "engine.token_buckets=[8,32,128]", "cache.num_pages=256", "engine.speculative.method=ngram"]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}



def test_python_api_fire_serves_an_in_process_engine(tiny_checkpoint):
    import surge

    engine = surge.Engine.from_pretrained(tiny_checkpoint("llama").path, max_num_seqs=2, max_model_len=128,
                                          max_num_batched_tokens=32, token_buckets=[8, 32], num_pages=32,
                                          progress=False)
    server = surge.eSurgeApiServer(engine, require_api_key=True, api_keys={"demo-key": {"label": "UI"}})
    key = server.generate_api_key(label="notebook")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    thread = threading.Thread(target=server.fire, kwargs={"host": "127.0.0.1", "port": port}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the in-process server did not come up"
            time.sleep(0.1)
        base = f"http://127.0.0.1:{port}/v1"
        reply = openai.OpenAI(base_url=base, api_key=key, max_retries=0).completions.create(
            model="default", prompt="hello", max_tokens=4, temperature=0, extra_body={"ignore_eos": True})
        assert reply.usage.completion_tokens == 4 and reply.choices[0].finish_reason == "length"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base, api_key="demo-kez", max_retries=0).models.list()
        assert openai.OpenAI(base_url=base, api_key="demo-key", max_retries=0).models.list().data[0].id
        assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 401
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {key}"},
                            timeout=5).text
        assert f'surge:api_key_completion_tokens_total{{label="notebook",model_name="{engine.model_name}"}} 4.0' \
            in metrics
    finally:
        server.shutdown()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert not server.host.async_engine.is_running


@pytest.fixture(scope="module")
def server():
    proc = ServerProcess(SMALL_ENGINE).start()
    try:
        proc.wait_ready(timeout=420)
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)


def test_health_and_models(server, client):
    health = httpx.get(f"{server.url}/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].model_extra["max_model_len"] == 512


def test_chat_completion(client):
    reply = client.chat.completions.create(model=MODEL, temperature=0, max_tokens=16,
                                           messages=[{"role": "user", "content": "What is the capital of France?"}])
    choice = reply.choices[0]
    assert "Paris" in choice.message.content
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert reply.object == "chat.completion" and reply.model == MODEL and reply.id.startswith("chatcmpl-")
    usage = reply.usage
    assert usage.prompt_tokens > 10 and 1 <= usage.completion_tokens <= 16
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_chat_stream_matches_plain_answer_and_has_no_usage_unless_asked(client):
    messages = [{"role": "system", "content": "You answer briefly."},
                {"role": "user", "content": "Name a color of the sky."}]
    plain = client.chat.completions.create(model=MODEL, temperature=0, max_tokens=12, messages=messages)
    chunks = list(client.chat.completions.create(model=MODEL, temperature=0, max_tokens=12, messages=messages,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content and text
    assert [c.choices[0].finish_reason for c in chunks][-1] == plain.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert all(c.usage is None for c in chunks)
    assert len({c.id for c in chunks}) == 1


def test_completion_and_stream_with_usage(client):
    plain = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert "Paris" in plain.choices[0].text
    assert plain.usage.completion_tokens == 8 and plain.choices[0].finish_reason == "length"
    chunks = list(client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8,
                                            temperature=0, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == plain.choices[0].text
    # Usage comes once, in a final chunk of its own with no choices.
    assert [c.usage is not None for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 8 and chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens


def test_completion_batch_of_prompts_and_token_ids(client, server):
    reply = client.completions.create(model=MODEL, prompt=["One, two, three,", "A, B, C,"], max_tokens=4,
                                      temperature=0)
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.usage.completion_tokens == 8
    first = client.completions.create(model=MODEL, prompt="One, two, three,", max_tokens=4, temperature=0)
    assert reply.choices[0].text == first.choices[0].text
    ids = httpx.post(f"{server.base_url}/completions", timeout=60,
                     json={"prompt": [504, 28, 827, 28], "max_tokens": 3, "temperature": 0}).json()
    assert ids["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}


def test_n_choices_and_seed_reproduce(client):
    kwargs = dict(model=MODEL, prompt="My favourite animal is", max_tokens=6, temperature=1.0, n=3, seed=1234)
    first = client.completions.create(**kwargs)
    again = client.completions.create(**kwargs)
    assert sorted(c.index for c in first.choices) == [0, 1, 2]
    assert [c.text for c in first.choices] == [c.text for c in again.choices]
    assert first.usage.completion_tokens == 18


def test_stop_string_is_honoured_and_not_returned(client):
    reply = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=20, temperature=0, stop=[" 7"])
    assert " 7" not in reply.choices[0].text and reply.choices[0].text.startswith(" 5, 6,")
    assert reply.choices[0].finish_reason == "stop"


def test_logprobs_in_chat_and_completions(client):
    chat = client.chat.completions.create(model=MODEL, temperature=0, max_tokens=5, logprobs=True, top_logprobs=2,
                                          messages=[{"role": "user", "content": "Say hello."}])
    entries = chat.choices[0].logprobs.content
    assert len(entries) == chat.usage.completion_tokens
    for entry in entries:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 2
        # Greedy: the chosen token is the most likely one.
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-4)
    done = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=3, temperature=0,
                                     logprobs=1)
    lp = done.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 3
    assert "".join(lp.tokens) == done.choices[0].text
    assert lp.text_offset == [0, len(lp.tokens[0]), len(lp.tokens[0]) + len(lp.tokens[1])]


def test_named_tool_choice_returns_a_tool_call(client):
    reply = client.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=24, tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        messages=[{"role": "user", "content": "What is the weather in Paris?"}])
    choice = reply.choices[0]
    assert len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    assert isinstance(json.loads(call.function.arguments), dict)
    assert choice.finish_reason in ("tool_calls", "length")
    assert "<tool_call>" not in (choice.message.content or "")


def test_streamed_tool_call_deltas_concatenate_to_valid_json(client):
    chunks = list(client.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=24, tools=[WEATHER_TOOL], stream=True,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        messages=[{"role": "user", "content": "What is the weather in Paris?"}]))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "<tool_call>" not in content and "</tool_call>" not in content
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas and deltas[0].function.name == "get_weather" and deltas[0].id.startswith("call_")
    arguments = "".join(d.function.arguments or "" for d in deltas)
    assert isinstance(json.loads(arguments), dict)
    assert chunks[-1].choices[0].finish_reason in ("tool_calls", "length")


def test_auto_tool_choice_and_tool_messages_render(client):
    # A full tool round trip: the assistant's earlier call and the tool's answer go back through the template.
    reply = client.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=24, tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "What is the weather in Paris?"},
                  {"role": "assistant", "content": None, "tool_calls": [
                      {"id": "call_1", "type": "function",
                       "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                  {"role": "tool", "tool_call_id": "call_1", "content": "{\"temperature_c\": 21, \"sky\": \"sunny\"}"}])
    choice = reply.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    assert "<tool_call>" not in (choice.message.content or "")
    for call in choice.message.tool_calls or []:
        json.loads(call.function.arguments)


def test_unknown_fields_are_ignored(client):
    reply = client.chat.completions.create(model=MODEL, temperature=0, max_tokens=4, messages=[
        {"role": "user", "content": "Hi"}], extra_body={"some_future_field": {"x": 1}, "top_k": 1})
    assert reply.usage.completion_tokens >= 1


def test_spec_decode_metrics_have_vllm_names(server, client):
    passage = "the quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat"
    # The prompt stops inside a fourth copy; the answer goes on repeating it (32 of 32 drafts accepted when
    # this was written), so prompt lookup's drafts are accepted from the first token on.
    client.completions.create(model=MODEL, prompt=f"Repeat this text exactly.\n{passage}\n{passage}\n{passage}\n"
                              "the quick brown", max_tokens=60, temperature=0, extra_body={"ignore_eos": True})
    values = {}
    for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if line.startswith("surge:spec_decode"):
            name, _, number = line.rpartition(" ")
            values[name] = float(number)
    label = f'{{method="ngram",model_name="{MODEL}"}}'
    drafts = values[f"surge:spec_decode_num_drafts_total{label}"]
    draft_tokens = values[f"surge:spec_decode_num_draft_tokens_total{label}"]
    accepted = values[f"surge:spec_decode_num_accepted_tokens_total{label}"]
    assert accepted >= 10 and draft_tokens >= accepted and drafts >= 1, values
    per_pos = [values[f'surge:spec_decode_num_accepted_tokens_per_pos_total{{method="ngram",model_name="{MODEL}",'
                      f'position="{p}"}}'] for p in range(4)]
    assert sum(per_pos) == accepted and per_pos == sorted(per_pos, reverse=True) and per_pos[0] <= drafts
    assert values[f"surge:spec_decode_acceptance_length_count{label}"] == drafts
    assert values[f"surge:spec_decode_acceptance_length_sum{label}"] == drafts + accepted


def test_metrics_after_requests_and_pages_all_free(server):
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, number = line.rpartition(" ")
            values[name] = float(number)
    label = f'{{model_name="{MODEL}"}}'
    assert values[f"surge:prompt_tokens_total{label}"] > 100
    assert values[f"surge:generation_tokens_total{label}"] > 50
    assert values[f'surge:request_success_total{{finished_reason="length",model_name="{MODEL}"}}'] >= 3
    assert values[f"surge:time_to_first_token_seconds_count{label}"] >= 10
    assert values[f"surge:e2e_request_latency_seconds_count{label}"] >= 10
    assert values[f"surge:num_used_pages{label}"] == 0
    assert values[f"surge:kv_cache_usage_perc{label}"] == 0
    assert values[f"surge:num_requests_running{label}"] == 0
    assert values[f"surge:engine_ready{label}"] == 1
