"""Chat messages (and tools) to the prompt text the model continues.

In: a `ChatCompletionRequest` (system / developer / user / assistant / tool
messages, text content parts, `tools`, `tool_choice`) and the tokenizer, whose
chat template renders them. Out: a `ChatPrompt` — the prompt text, whether
tool calls are parsed (and the declared names a call must use), and the
grammar that `tool_choice` imposes on the output.

Templates that know about tools (they mention `tools`) get them natively, with
assistant tool calls' arguments as objects. For templates that do not (SmolLM2's
among them) the tools are described in the system message in the Hermes format
the parser reads, assistant tool calls become `<tool_call>` text, and tool
results become user turns wrapped in `<tool_response>`.

The deprecated `functions` / `function_call` are read as tools / tool_choice.
tool_choice: "none" hides the tools; "auto" (the default with tools) lets the
model choose, unconstrained; "required" and a named function constrain the
output with a grammar (surge.structured.tool_calls) in the Hermes format the
parser reads: every call names a declared function (the named one) with
arguments valid for its schema, one call when parallel_tool_calls is false.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

from surge.server.errors import bad_request
from surge.server.protocol import ChatCompletionRequest, ChatMessage, NamedFunction, NamedToolChoice
from surge.server.tool_parser import CLOSE_TAG, OPEN_TAG
from surge.structured import StructuredOutputsParams
from surge.structured.tool_calls import tool_call_grammar

_TEXT_PART_TYPES = ("text", "input_text")


@dataclass(frozen=True)
class ChatPrompt:
    text: str
    parse_tools: bool = False
    # The declared function names (a parsed call naming another function is content).
    tool_names: tuple[str, ...] = ()
    # The grammar tool_choice="required" or a named tool_choice imposes; None otherwise.
    tool_grammar: Optional[StructuredOutputsParams] = None


def render_chat(tokenizer, req: ChatCompletionRequest) -> ChatPrompt:
    """The prompt for `req`; a 400 when the messages or tools cannot be rendered."""
    tools, choice = _tools_and_choice(req)
    if choice is not None and not tools:
        raise bad_request("tool_choice is only allowed when tools are given", param="tool_choice")
    if choice == "none":
        tools = []
    grammar = _tool_grammar(choice, tools, req.parallel_tool_calls)
    template = getattr(tokenizer, "chat_template", None) or ""
    if not template:
        raise bad_request("this model has no chat template; use /v1/completions with a prompt instead",
                          param="messages")
    native = "tools" in template
    messages = [_message(m, native, i) for i, m in enumerate(req.messages)]
    if tools and not native:
        messages = _with_tool_instructions(messages, tools)
    kwargs = dict(req.chat_template_kwargs or {})
    try:
        text = tokenizer.apply_chat_template(messages, tools=tools if (tools and native) else None, tokenize=False,
                                             add_generation_prompt=req.add_generation_prompt, **kwargs)
    except Exception as exc:  # jinja2 raises TemplateError, TypeError, ... for messages it cannot render
        raise bad_request(f"the model's chat template cannot render these messages: {exc}",
                          param="messages") from None
    if not isinstance(text, str):
        raise bad_request("the model's chat template did not produce text", param="messages")
    return ChatPrompt(text=text, parse_tools=bool(tools),
                      tool_names=tuple(tool["function"]["name"] for tool in tools), tool_grammar=grammar)


def _tools_and_choice(req: ChatCompletionRequest) -> tuple[list[dict], object]:
    """The tools as dicts and tool_choice, from `tools` or the deprecated `functions` / `function_call`."""
    if req.functions and req.tools:
        raise bad_request("give tools or the deprecated functions, not both", param="functions")
    if req.functions:
        tools = [{"type": "function", "function": f.model_dump(exclude_none=True)} for f in req.functions]
        choice = req.function_call
        if isinstance(choice, NamedFunction):
            choice = NamedToolChoice(function=choice)
        return tools, choice
    return [tool.model_dump(exclude_none=True) for tool in req.tools or []], req.tool_choice


def _tool_grammar(choice, tools: list[dict], parallel: bool) -> Optional[StructuredOutputsParams]:
    if choice == "required":
        name = None
    elif isinstance(choice, NamedToolChoice):
        name = choice.function.name
        names = [tool["function"]["name"] for tool in tools]
        if name not in names:
            raise bad_request(f"tool_choice names function {name!r}, which is not among the tools {names}",
                              param="tool_choice")
    else:
        return None
    try:
        return tool_call_grammar(tools, open_tag=OPEN_TAG, close_tag=CLOSE_TAG, name=name, parallel=parallel)
    except ValueError as exc:
        raise bad_request(f"tools: {exc}", param="tools") from None


def _text_of(message: ChatMessage, index: int) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.type not in _TEXT_PART_TYPES:
            raise bad_request(f"messages[{index}]: content parts of type {part.type!r} are not supported "
                              "(this server serves text-only models)", param=f"messages[{index}].content")
        texts.append(part.text or "")
    return "".join(texts)


def _message(message: ChatMessage, native: bool, index: int) -> dict[str, Any]:
    role = {"developer": "system", "function": "tool"}.get(message.role, message.role)
    text = _text_of(message, index)
    calls = message.tool_calls or []
    if role != "assistant" and calls:
        raise bad_request(f"messages[{index}]: only assistant messages carry tool_calls",
                          param=f"messages[{index}].tool_calls")
    if native:
        rendered: dict[str, Any] = {"role": role, "content": text}
        if calls:
            rendered["tool_calls"] = [{"id": c.id, "type": "function",
                                       "function": {"name": c.function.name,
                                                    "arguments": _arguments_object(c.function.arguments)}}
                                      for c in calls]
        if message.tool_call_id is not None:
            rendered["tool_call_id"] = message.tool_call_id
        if message.name is not None:
            rendered["name"] = message.name
        reasoning = message.reasoning_content or message.reasoning
        if reasoning and role == "assistant":
            rendered["reasoning_content"] = reasoning  # what reasoning models' templates read
        return rendered
    if role == "tool":
        return {"role": "user", "content": f"<tool_response>\n{text}\n</tool_response>"}
    if calls:
        blocks = [f"{OPEN_TAG}\n" + json.dumps({"name": c.function.name,
                                                 "arguments": _arguments_object(c.function.arguments)})
                  + f"\n{CLOSE_TAG}" for c in calls]
        text = "\n".join(([text] if text else []) + blocks)
    return {"role": role, "content": text}


def _arguments_object(arguments: str) -> Any:
    """Tool-call arguments arrive as JSON text; templates want the object (kept as text if it is not JSON)."""
    try:
        return json.loads(arguments) if arguments else {}
    except ValueError:
        return arguments


def _tool_instructions(tools: list[dict]) -> str:
    schemas = "\n".join(json.dumps(tool["function"], ensure_ascii=False) for tool in tools)
    return ("You can call functions to help with the user's request. The functions, as JSON schemas:\n"
            f"<tools>\n{schemas}\n</tools>\n"
            "To call one, reply with a JSON object holding its name and arguments inside tags, one block per "
            "call:\n"
            f'{OPEN_TAG}\n{{"name": "<function name>", "arguments": {{<arguments as JSON>}}}}\n{CLOSE_TAG}')


def _with_tool_instructions(messages: list[dict], tools: list[dict]) -> list[dict]:
    instructions = _tool_instructions(tools)
    if messages and messages[0]["role"] == "system":
        first = dict(messages[0])
        first["content"] = (first["content"] + "\n\n" + instructions) if first["content"] else instructions
        return [first] + messages[1:]
    return [{"role": "system", "content": instructions}] + messages

