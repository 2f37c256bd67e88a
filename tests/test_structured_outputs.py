"""Structured output through surge-serve and the unchanged `openai` client: schemas, regex, choice, tools, errors.

One SmolLM2 server for the module (8 slots); requests go 8 at a time, sampled at temperature 0.8 with
seeds, and every answer is checked with `jsonschema` / `re` / `json`. Strings and arrays in the schemas
are bounded so that `max_tokens` always leaves room for the closing brackets (finish_reason must be "stop").
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import openai
import pytest

from surge.server.process import ServerProcess

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
ENGINE = ["engine.max_num_seqs=8", "engine.max_model_len=1024", "engine.max_num_batched_tokens=256",
          "engine.token_buckets=[8,64,256]", "cache.num_pages=512"]
NAME = {"type": "string", "minLength": 1, "maxLength": 12}

SCHEMAS = [
    {"type": "object", "properties": {"name": NAME, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "object", "properties": {"city": NAME, "address": {
        "type": "object", "properties": {"street": NAME, "number": {"type": "integer", "minimum": 1, "maximum": 999}},
        "required": ["street", "number"], "additionalProperties": False}},
     "required": ["city", "address"], "additionalProperties": False},
    {"type": "object", "properties": {"fruits": {"type": "array", "items": NAME, "minItems": 2, "maxItems": 3}},
     "required": ["fruits"], "additionalProperties": False},
    {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}}, "required": ["color"],
     "additionalProperties": False},
    {"type": "object", "properties": {"year": {"type": "integer", "minimum": 1900, "maximum": 2100},
                                      "month": {"type": "integer", "minimum": 1, "maximum": 12}},
     "required": ["year", "month"], "additionalProperties": False},
    {"type": "object", "properties": {"title": NAME, "subtitle": NAME}, "required": ["title"],
     "additionalProperties": False},
    {"type": "object", "properties": {"ok": {"type": "boolean"}, "code": {"type": "integer", "minimum": 100,
                                                                          "maximum": 599}},
     "required": ["ok", "code"], "additionalProperties": False},
    {"type": "object", "properties": {"id": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9999},
                                                        {"type": "string", "pattern": "^[a-f0-9]{4}$"}]}},
     "required": ["id"], "additionalProperties": False},
    {"type": "object", "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}},
     "required": ["sku"], "additionalProperties": False},
    {"type": "object", "properties": {"price": {"type": "number", "minimum": 0, "maximum": 1000}},
     "required": ["price"], "additionalProperties": False},
    {"type": "object", "properties": {"people": {"type": "array", "minItems": 1, "maxItems": 2, "items": {
        "type": "object", "properties": {"name": NAME, "admin": {"type": "boolean"}}, "required": ["name", "admin"],
        "additionalProperties": False}}}, "required": ["people"], "additionalProperties": False},
    {"type": "object", "properties": {"grid": {"type": "array", "minItems": 2, "maxItems": 2, "items": {
        "type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "integer", "minimum": 0, "maximum": 9}}}},
     "required": ["grid"], "additionalProperties": False},
    {"type": "object", "properties": {"version": {"const": "v1"}, "name": NAME}, "required": ["version", "name"],
     "additionalProperties": False},
    {"type": "object", "properties": {"nickname": {"anyOf": [NAME, {"type": "null"}]}}, "required": ["nickname"],
     "additionalProperties": False},
    {"type": "object", "$defs": {"point": {"type": "object", "properties": {
        "x": {"type": "integer", "minimum": -9, "maximum": 9}, "y": {"type": "integer", "minimum": -9, "maximum": 9}},
        "required": ["x", "y"], "additionalProperties": False}},
     "properties": {"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}},
     "required": ["start", "end"], "additionalProperties": False},
    {"type": "object", "properties": {"rating": {"enum": [1, 2, 3, 4, 5]}, "comment": NAME},
     "required": ["rating", "comment"], "additionalProperties": False},
    {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99}, "minItems": 1, "maxItems": 4},
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
                                      "count": {"type": "integer", "minimum": 0, "maximum": 3}},
     "required": ["tags", "count"], "additionalProperties": False},
    {"type": "object", "properties": {"shape": {"anyOf": [
        {"type": "object", "properties": {"kind": {"const": "circle"}, "radius": {"type": "integer", "minimum": 1,
                                                                                  "maximum": 50}},
         "required": ["kind", "radius"], "additionalProperties": False},
        {"type": "object", "properties": {"kind": {"const": "square"}, "side": {"type": "integer", "minimum": 1,
                                                                                "maximum": 50}},
         "required": ["kind", "side"], "additionalProperties": False}]}},
     "required": ["shape"], "additionalProperties": False},
    {"type": "object", "properties": {"email": {"type": "string", "pattern": "^[a-z]{1,8}@[a-z]{1,8}\\.com$"},
                                      "verified": {"type": "boolean"}},
     "required": ["email", "verified"], "additionalProperties": False},
]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": NAME, "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
CONVERT = {"type": "function", "function": {
    "name": "convert_currency", "description": "Convert an amount between currencies",
    "parameters": {"type": "object", "properties": {
        "amount": {"type": "number", "minimum": 0, "maximum": 100000},
        "from": {"type": "string", "pattern": "^[A-Z]{3}$"}, "to": {"type": "string", "pattern": "^[A-Z]{3}$"}},
        "required": ["amount", "from", "to"], "additionalProperties": False}}}
TOOLS = [WEATHER, CONVERT]


@pytest.fixture(scope="module")
def server():
    with ServerProcess(ENGINE) as proc:  # started and healthy, stopped after the module
        yield proc


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0, timeout=300)


def _parallel(function, items):
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(function, items))


def _ask(client, content, seed, max_tokens=160, **kwargs):
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}],
                                           temperature=0.8, seed=seed, max_tokens=max_tokens, **kwargs)
    return reply.choices[0]


def test_twenty_json_schemas_always_validate(client):
    def run(indexed):
        index, schema = indexed
        choice = _ask(client, "Reply with one JSON value for this schema: " + json.dumps(schema), seed=index,
                      response_format={"type": "json_schema",
                                       "json_schema": {"name": f"s{index}", "schema": schema, "strict": True}})
        return index, choice.finish_reason, choice.message.content

    failures = []
    for index, finish, text in _parallel(run, list(enumerate(SCHEMAS))):
        try:
            assert finish == "stop", f"finish_reason {finish}"
            jsonschema.validate(json.loads(text), SCHEMAS[index])
        except (AssertionError, ValueError, jsonschema.ValidationError) as exc:
            failures.append((index, text, str(exc)[:200]))
    assert not failures, failures


def test_json_object_regex_and_choice_match(client):
    def json_object(seed):
        return _ask(client, "Describe a cat as a JSON object.", seed, max_tokens=200,
                    response_format={"type": "json_object"})

    def regex(seed):
        return _ask(client, "Give a phone number.", seed, max_tokens=24,
                    extra_body={"structured_outputs": {"regex": r"\+[0-9]{2} [0-9]{3}-[0-9]{4}"}})

    def guided_choice(seed):
        return _ask(client, "Pick a season.", seed, max_tokens=8,
                    extra_body={"guided_choice": ["spring", "summer", "autumn", "winter"]})

    objects = _parallel(json_object, range(4))
    for choice in objects:
        assert isinstance(json.loads(choice.message.content), dict), choice.message.content
    for choice in _parallel(regex, range(6)):
        assert re.fullmatch(r"\+[0-9]{2} [0-9]{3}-[0-9]{4}", choice.message.content), choice.message.content
    for choice in _parallel(guided_choice, range(6)):
        assert choice.message.content in ("spring", "summer", "autumn", "winter") and choice.finish_reason == "stop"


def _validate_call(call):
    tool = next(t for t in TOOLS if t["function"]["name"] == call.function.name)
    jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])


def test_tool_choice_required_and_named_give_valid_calls(client):
    prompts = ["What's the weather in Paris?", "Convert 20 EUR to USD.", "Tell me a joke.", "Hello!"]

    def required(seed):
        return _ask(client, prompts[seed % len(prompts)], seed, max_tokens=200, tools=TOOLS, tool_choice="required",
                    parallel_tool_calls=False)

    def named(seed):
        return _ask(client, prompts[seed % len(prompts)], seed, max_tokens=200, tools=TOOLS,
                    tool_choice={"type": "function", "function": {"name": "convert_currency"}})

    for choice in _parallel(required, range(20)):
        assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1, choice
        _validate_call(choice.message.tool_calls[0])
        assert not choice.message.content
    for choice in _parallel(named, range(8)):
        assert choice.finish_reason == "tool_calls" and choice.message.tool_calls, choice
        for call in choice.message.tool_calls:
            assert call.function.name == "convert_currency"
            _validate_call(call)


def test_streamed_json_schema_deltas_concatenate_to_valid_json(client):
    schema = SCHEMAS[1]
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "An address as JSON."}], temperature=0.8, seed=3,
        max_tokens=160, stream=True, stream_options={"include_usage": True},
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema, "strict": True}})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    jsonschema.validate(json.loads(text), schema)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 5
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


@pytest.mark.parametrize("body, message", [
    ({"response_format": {"type": "xml"}}, "response_format.type='xml' is not one of"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"a": {"type": "nonsense"}}}, "strict": True}}}, "nonsense"),
    ({"structured_outputs": {"grammar": "start: missing_rule"}}, "missing_rule"),
    ({"guided_regex": "(unclosed"}, "unclosed"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "exactly one of"),
    ({"guided_regex": "a+", "response_format": {"type": "json_object"}}, "give only one of them"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "bogus"}}}],
      "tool_choice": "required"}, "bogus"),
])
def test_bad_grammars_are_400s_and_the_server_keeps_serving(server, client, body, message):
    reply = httpx.post(f"{server.base_url}/chat/completions", timeout=60, json={
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **body})
    assert reply.status_code == 400, reply.text
    assert message in reply.json()["error"]["message"]
    assert client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=2, temperature=0).usage.completion_tokens >= 1


def test_completions_take_structured_outputs_and_pages_are_free_after(server, client):
    reply = client.completions.create(model=MODEL, prompt="The answer is", max_tokens=8, temperature=0.8, seed=1,
                                      extra_body={"guided_choice": ["yes", "no"]})
    assert reply.choices[0].text in ("yes", "no")
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    used = [line for line in metrics.splitlines() if line.startswith("surge:num_used_pages{")]
    assert used and float(used[0].rsplit(" ", 1)[1]) == 0
