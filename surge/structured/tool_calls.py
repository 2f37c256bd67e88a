"""The grammar that makes tool calls valid: declared names, arguments that match their schemas.

In: the request's declared tools (OpenAI shape: ``{"type": "function",
"function": {"name", "parameters", "strict"}}``), which function must be
called (a name, or None for any declared one), whether several calls may
follow each other, and the model's tool-call format (the tags around each
call's JSON, as ``surge.server.tool_parser`` reads them). Out: a
``StructuredOutputsParams`` holding a Lark grammar: one or more blocks
``<open>{"name": <declared name>, "arguments": <object valid for it>}<close>``
separated by newlines, then the end of the output. The call object is an
``anyOf`` of one JSON schema per tool, with ``name`` first so its head is
forced (and fast-forwarded) the moment the grammar knows the function.
"""

from __future__ import annotations

import json
from typing import Optional, Sequence

from surge.structured.spec import JSON_LAYOUT, StructuredOutputsParams


def tool_call_grammar(tools: Sequence[dict], *, open_tag: str, close_tag: str, name: Optional[str] = None,
                      parallel: bool = True) -> StructuredOutputsParams:
    functions = [tool["function"] for tool in tools]
    if name is not None:
        functions = [f for f in functions if f["name"] == name]
    if not functions:
        raise ValueError(f"no declared tool named {name!r}" if name is not None else "no tools are declared")
    strict = all(bool(f.get("strict")) for f in functions)
    schema = {
        "x-guidance": dict(JSON_LAYOUT, lenient=not strict),
        "anyOf": [_call_schema(f) for f in functions],
    }
    repeat = ' ("\\n" block)*' if parallel else ""
    lark = "\n".join([
        f"start: block{repeat}",
        f"block: {json.dumps(open_tag + chr(10))} call {json.dumps(chr(10) + close_tag)}",
        f"call: %json {json.dumps(schema)}",
    ])
    return StructuredOutputsParams(grammar=lark, strict=strict)


def _call_schema(function: dict) -> dict:
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    return {
        "type": "object",
        "properties": {"name": {"const": function["name"]}, "arguments": parameters},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


__all__ = ["tool_call_grammar"]
