"""From a request body's structured-output fields to one `StructuredOutputsParams`, and its compile wait.

In: a parsed chat or completion request (OpenAI `response_format`; vLLM's
`structured_outputs` extra body and its `guided_json` / `guided_regex` /
`guided_choice` / `guided_grammar` spellings) and, for chat, the tool-call
grammar `tool_choice` asks for. Out: the spec the engine enforces (None when
the output is free), or a 400 naming the field. At most one source may
constrain a request. `wait_until_compiled` holds the request (before the
engine sees it) until its grammar is compiled, and turns a grammar llguidance
rejects, or one that takes longer than
`server.structured_output_compile_timeout_s`, into a 400.
"""

from __future__ import annotations

import asyncio
from typing import Optional

from surge.server.errors import bad_request
from surge.structured import GrammarError, StructuredOutputsParams

RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema")


def structured_outputs_of(req, tool_grammar: Optional[StructuredOutputsParams] = None
                          ) -> Optional[StructuredOutputsParams]:
    sources = {}
    if req.response_format is not None:
        spec = _response_format(req.response_format)
        if spec is not None:
            sources["response_format"] = spec
    if req.structured_outputs is not None:
        sources["structured_outputs"] = _spec("structured_outputs", lambda: StructuredOutputsParams.of(
            req.structured_outputs))
    for name, field in (("guided_json", "json"), ("guided_regex", "regex"), ("guided_choice", "choice"),
                        ("guided_grammar", "grammar")):
        value = getattr(req, name)
        if value is not None:
            sources[name] = _spec(name, lambda: StructuredOutputsParams(**{field: value}))
    if tool_grammar is not None:
        sources["tool_choice"] = tool_grammar
    if len(sources) > 1:
        names = ", ".join(sources)
        raise bad_request(f"{names} each constrain the output: give only one of them", param=next(iter(sources)))
    return next(iter(sources.values()), None)


def _response_format(response_format) -> Optional[StructuredOutputsParams]:
    kind = response_format.type
    if kind not in RESPONSE_FORMAT_TYPES:
        raise bad_request(f"response_format.type={kind!r} is not one of {', '.join(RESPONSE_FORMAT_TYPES)}",
                          param="response_format.type")
    if kind == "text":
        return None
    if kind == "json_object":
        return StructuredOutputsParams(json_object=True)
    json_schema = response_format.json_schema
    if json_schema is None or json_schema.schema_ is None:
        raise bad_request("response_format.type='json_schema' needs response_format.json_schema.schema",
                          param="response_format.json_schema")
    return _spec("response_format.json_schema", lambda: StructuredOutputsParams(
        json=json_schema.schema_, strict=bool(json_schema.strict)))


def _spec(param: str, build) -> StructuredOutputsParams:
    try:
        return build()
    except (TypeError, ValueError) as exc:
        raise bad_request(f"{param}: {exc}", param=param) from None


async def wait_until_compiled(engine, spec: Optional[StructuredOutputsParams]) -> None:
    if spec is None:
        return
    timeout = engine.config.server.structured_output_compile_timeout_s
    future = asyncio.wrap_future(engine.compile_grammar(spec))
    try:
        # shield: a timed-out compile keeps running in the worker (and is cached) instead of being cancelled.
        await asyncio.wait_for(asyncio.shield(future), timeout)
    except asyncio.TimeoutError:
        raise bad_request(f"the {spec.kind} grammar did not compile within {timeout:g} s "
                          "(server.structured_output_compile_timeout_s); simplify it", param=spec.kind) from None
    except GrammarError as exc:
        raise bad_request(str(exc), param=spec.kind, code="invalid_grammar") from None
