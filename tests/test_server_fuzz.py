"""The server under schemathesis: every route of its own /openapi.json, fuzzed, never answers 5xx.

One in-process server (a tiny random Llama with a chat template, keys required, 2 slots, 128-token context)
serves the module. For every operation in the live /openapi.json, schemathesis generates schema-valid and
schema-violating requests (bodies, path parameters, query strings) — at least `MIN_REQUESTS` in all — sent
with a valid key and with generation bounded (`max_tokens`-like fields capped at `MAX_TOKENS`, `n` at 2).
Each answer must not be a 5xx, must carry a status, content type and body the schema declares. Afterwards
a plain chat completion is still served and every KV page is free again.
"""

from __future__ import annotations

import collections
import time

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core import NOT_SET
from schemathesis.specs.openapi.checks import (content_type_conformance, response_headers_conformance,
                                                response_schema_conformance, status_code_conformance)

from tests.inprocess_server import serve

KEY = "fuzz-key-0123456789"
MIN_REQUESTS = 1000
MAX_TOKENS = 4
# Examples per operation and mode: routes with a body or parameters reach it (~1,100 requests in all);
# hypothesis stops early where there is less to vary (GET /health has no parameters).
EXAMPLES_PER_MODE = 70
# Fields that set how many tokens (or sequences) a request generates: bounded so the fuzz run stays short.
TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def served(tiny_checkpoint):
    import surge

    engine = surge.Engine.from_pretrained(tiny_checkpoint("llama").path, max_num_seqs=2, max_model_len=128,
                                          max_num_batched_tokens=32, token_buckets=[8, 32], num_pages=64,
                                          progress=False)
    with serve(engine, require_api_key=True, api_keys={KEY: {"label": "fuzz"}}, responses_store="memory") as s:
        yield s


def _bounded(body):
    """The generated body with generation capped (anything not a JSON object is sent as generated)."""
    if isinstance(body, dict):
        body = dict(body)
        for name in TOKEN_FIELDS:
            if isinstance(body.get(name), int) and not isinstance(body.get(name), bool):
                body[name] = max(min(body[name], MAX_TOKENS), -1)
        if isinstance(body.get("n"), int) and not isinstance(body.get("n"), bool):
            body["n"] = min(body["n"], 2)
    return body


def _fuzz(operation, mode: GenerationMode, url: str, examples: int, counts: collections.Counter,
          statuses: collections.Counter) -> None:
    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        if case.body is not NOT_SET:
            case.body = _bounded(case.body)
        response = case.call(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
        counts[operation.label] += 1
        statuses[response.status_code] += 1
        case.validate_response(response, checks=CHECKS)

    try:
        run()
    except Unsatisfiable:
        # Nothing to get wrong (GET /health has no parameters): the positive run covered the route.
        assert mode is GenerationMode.NEGATIVE, operation.label


def test_fuzzed_requests_never_get_a_5xx(served):
    # The schema, like /metrics and /docs, needs the key on a server with keys required.
    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json", headers={"Authorization": f"Bearer {KEY}"})

    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}
    # Every route the server has is in the schema the fuzzer reads (the issue-21 routes included).
    assert {"POST /v1/chat/completions", "POST /v1/completions", "GET /v1/models", "GET /v1/models/{name}",
            "POST /v1/responses", "GET /v1/responses/{response_id}", "DELETE /v1/responses/{response_id}",
            "POST /v1/responses/{response_id}/cancel", "POST /v1/messages", "POST /v1/messages/count_tokens",
            "POST /tokenize", "POST /detokenize", "GET /version", "GET /health", "GET /metrics"} <= labels
    counts: collections.Counter = collections.Counter()
    statuses: collections.Counter = collections.Counter()
    per_operation = EXAMPLES_PER_MODE
    started = time.monotonic()
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(operation, mode, served.url, per_operation, counts, statuses)
    elapsed = time.monotonic() - started
    print(f"\n{sum(counts.values())} requests in {elapsed:.0f} s; statuses {dict(statuses)}")
    assert sum(counts.values()) >= MIN_REQUESTS, counts
    assert set(counts) == labels, labels - set(counts)
    assert not any(status >= 500 for status in statuses)
    assert statuses[200] >= 100  # the fuzzer reached the engine, not only the validators

    reply = httpx.post(f"{served.url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                       json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0,
                             "ignore_eos": True}, timeout=60)
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 3
    engine = served.server.host.engine
    deadline = time.monotonic() + 30
    while engine.stats().pages.num_used_pages and time.monotonic() < deadline:
        time.sleep(0.1)
    assert engine.stats().pages.num_used_pages == 0
