"""Responses input items to the chat messages the chat template renders, and output items back.

In: `input` (a string or items), `instructions`, and the stored conversation of
`previous_response_id`. Out: one list of chat-message dicts (the shape
`ChatMessage` parses): instructions as a system message first (they are not
carried over from earlier turns, as OpenAI specifies), then the earlier
turns, then this input — user / system / developer / assistant messages,
`function_call` items as an assistant message's `tool_calls` (consecutive calls
join one turn), `function_call_output` as `tool` messages, a `reasoning` item
as the next assistant message's `reasoning_content`. `output_messages` turns a
response's output items into the assistant message that a later turn replays.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

from surge.server.responses.protocol import (FunctionCallItem, FunctionCallOutputItem, InputContentPart,
                                             MessageItem, ReasoningItem)


def _text(content: Union[str, Sequence[InputContentPart]]) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.text if part.text is not None else (part.refusal or "") for part in content)


def input_messages(items, instructions: Optional[str], history: Sequence[dict]) -> list[dict]:
    messages: list[dict] = [{"role": "system", "content": instructions}] if instructions else []
    messages += [dict(m) for m in history]
    if isinstance(items, str):
        return messages + [{"role": "user", "content": items}]
    reasoning: Optional[str] = None
    for item in items:
        if isinstance(item, MessageItem):
            message = {"role": item.role, "content": _text(item.content)}
            if item.role == "assistant" and reasoning is not None:
                message["reasoning_content"], reasoning = reasoning, None
            messages.append(message)
        elif isinstance(item, FunctionCallItem):
            call = {"id": item.call_id, "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and (last.get("tool_calls") or not reasoning):
                last.setdefault("tool_calls", []).append(call)
            else:
                message = {"role": "assistant", "content": "", "tool_calls": [call]}
                if reasoning is not None:
                    message["reasoning_content"], reasoning = reasoning, None
                messages.append(message)
        elif isinstance(item, FunctionCallOutputItem):
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": _text(item.output)})
        elif isinstance(item, ReasoningItem):
            parts = item.content or item.summary
            reasoning = "".join(part.text for part in parts)
    return messages


def output_messages(output: Sequence[dict]) -> list[dict]:
    """The assistant turn a response's output items make, for replay under previous_response_id."""
    content, calls, reasoning = [], [], []
    for item in output:
        if item["type"] == "message":
            content += [part.get("text", "") for part in item["content"]]
        elif item["type"] == "function_call":
            calls.append({"id": item["call_id"], "type": "function",
                          "function": {"name": item["name"], "arguments": item["arguments"]}})
        elif item["type"] == "reasoning":
            reasoning += [part["text"] for part in item.get("content") or []]
    if not (content or calls):
        return []
    message: dict = {"role": "assistant", "content": "".join(content)}
    if calls:
        message["tool_calls"] = calls
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    return [message]
