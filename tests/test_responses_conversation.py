"""Responses input items to chat messages, and a response's output back into the turn a later call replays."""

from __future__ import annotations

from surge.server.chat import ChatPrompt
from surge.server.reasoning import ReasoningParser
from surge.server.responses.conversation import input_messages, output_messages
from surge.server.responses.output import OutputBuilder
from surge.server.responses.protocol import ResponsesRequest


def _items(items):
    return ResponsesRequest.model_validate({"input": items}).input


def test_items_become_chat_messages():
    history = [{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "answer"}]
    items = _items([
        {"role": "developer", "content": [{"type": "input_text", "text": "be terse"}]},
        {"type": "message", "role": "user", "content": "weather?"},
        {"type": "reasoning", "content": [{"type": "reasoning_text", "text": "need a tool"}], "summary": []},
        {"type": "function_call", "call_id": "c1", "name": "get", "arguments": '{"a": 1}'},
        {"type": "function_call", "call_id": "c2", "name": "get", "arguments": '{"a": 2}'},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
    ])
    messages = input_messages(items, "You are kind.", history)
    assert messages[0] == {"role": "system", "content": "You are kind."}
    assert messages[1:3] == history
    assert messages[3] == {"role": "developer", "content": "be terse"}
    assert messages[5]["role"] == "assistant" and messages[5]["reasoning_content"] == "need a tool"
    assert [c["id"] for c in messages[5]["tool_calls"]] == ["c1", "c2"]  # consecutive calls: one turn
    assert messages[6] == {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
    assert input_messages("hi", None, []) == [{"role": "user", "content": "hi"}]


def test_streamed_events_build_the_same_items_as_the_replayed_turn():
    builder = OutputBuilder(ChatPrompt(text="q", parse_tools=True, tool_names=("get",)), ReasoningParser("qwen3", ""))
    text = '<think>hmm</think>Let me check. <tool_call>\n{"name": "get", "arguments": {"city": "Paris"}}\n</tool_call>'
    events = [e for ch in text for e in builder.feed(ch)] + builder.finish()
    assert [item["type"] for item in builder.items] == ["reasoning", "message", "function_call"]
    assert builder.items[1]["content"][0]["text"] == "Let me check."
    arguments = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta")
    assert arguments == builder.items[2]["arguments"] == '{"city": "Paris"}'
    assert [e["output_index"] for e in events if e["type"] == "response.output_item.done"] == [0, 1, 2]
    assert all(item["status"] == "completed" for item in builder.items)
    replay = output_messages(builder.items)
    assert replay == [{"role": "assistant", "content": "Let me check.", "reasoning_content": "hmm",
                       "tool_calls": [{"id": builder.items[2]["call_id"], "type": "function",
                                       "function": {"name": "get", "arguments": '{"city": "Paris"}'}}]}]
