"""Generated text to Responses output items, streamed as events or built whole.

In: the text deltas of one completion (and, at the end, its finish reason),
the chat prompt (whether tool calls are parsed, which tool names they may call)
and the reasoning parser, if the server has one. The text goes through the
reasoning split, then the tool-call parser, exactly as for chat completions.
Out: the output items in order — a `reasoning` item, a `message` with one
`output_text` part, `function_call` items — and, per delta, the Responses
stream events that build them: `response.output_item.added`,
`response.content_part.added`, `response.output_text.delta`,
`response.reasoning_text.delta`, `response.function_call_arguments.delta`,
then each item's `.done` events. The non-streamed path runs the same builder
and keeps only `items`, so both answers agree.
"""

from __future__ import annotations

from typing import Optional

from surge.server.chat import ChatPrompt
from surge.server.reasoning import ReasoningParser
from surge.server.responses.protocol import (function_call_item, message_item, new_item_id, output_text_part,
                                             reasoning_item)
from surge.server.tool_parser import ParserDelta, ToolCallDelta, ToolCallParser


class OutputBuilder:
    def __init__(self, prompt: ChatPrompt, reasoning: Optional[ReasoningParser]) -> None:
        self.items: list[dict] = []
        self._reasoning = reasoning
        self._tools = ToolCallParser(prompt.tool_names) if prompt.parse_tools else None
        self._open: Optional[dict] = None  # the item being written
        self._calls: dict[int, dict] = {}  # tool parser index -> function_call item

    @property
    def called_tools(self) -> bool:
        return bool(self._calls)

    @property
    def stopped(self) -> Optional[str]:
        """The stop string that ended the answer (applied here when a reasoning parser runs), if any."""
        return self._reasoning.stopped if self._reasoning is not None else None

    def feed(self, text: str) -> list[dict]:
        """The events for the next piece of generated text."""
        reasoning, content = self._reasoning.feed(text) if self._reasoning is not None else ("", text)
        return self._route(reasoning, content)

    def finish(self) -> list[dict]:
        """Flush what parsers held back and close every item."""
        reasoning, content = self._reasoning.finish() if self._reasoning is not None else ("", "")
        events = self._route(reasoning, content, final=True)
        events += self._close()
        return events

    @property
    def reasoning_text(self) -> str:
        return "".join(part["text"] for item in self.items if item["type"] == "reasoning"
                       for part in item["content"])

    # ---- internals ------------------------------------------------------------------------------
    def _route(self, reasoning: str, content: str, final: bool = False) -> list[dict]:
        events: list[dict] = []
        if reasoning:
            events += self._text("reasoning", reasoning)
        delta = ParserDelta()
        if self._tools is None:
            delta.content += content
        else:
            delta.extend(self._tools.feed(content))
            if final:
                delta.extend(self._tools.finish())
        if delta.content:
            events += self._text("message", delta.content)
        for call in delta.tool_calls:
            events += self._tool_call(call)
        return events

    def _text(self, kind: str, text: str) -> list[dict]:
        events = []
        if self._open is None or self._open["type"] != kind:
            events += self._close()
            item = (reasoning_item(new_item_id("rs"), "", "in_progress") if kind == "reasoning"
                    else message_item(new_item_id("msg"), "", "in_progress"))
            events += self._add(item)
            part = {"type": "reasoning_text", "text": ""} if kind == "reasoning" else output_text_part("")
            item["content"].append(part)
            events.append(self._at(item, {"type": "response.content_part.added", "content_index": 0,
                                          "part": dict(part)}))
        item = self._open
        item["content"][0]["text"] += text
        delta_type = "response.reasoning_text.delta" if kind == "reasoning" else "response.output_text.delta"
        event = self._at(item, {"type": delta_type, "content_index": 0, "delta": text})
        if kind == "message":
            event["logprobs"] = []
        events.append(event)
        return events

    def _tool_call(self, call: ToolCallDelta) -> list[dict]:
        events = []
        item = self._calls.get(call.index)
        if item is None:
            events += self._close()
            item = function_call_item(new_item_id("fc"), call.id or "", call.name or "", "", "in_progress")
            self._calls[call.index] = item
            events += self._add(item)
        if call.arguments:
            item["arguments"] += call.arguments
            events.append(self._at(item, {"type": "response.function_call_arguments.delta",
                                          "delta": call.arguments}))
        return events

    def _add(self, item: dict) -> list[dict]:
        self.items.append(item)
        self._open = item
        return [{"type": "response.output_item.added", "output_index": len(self.items) - 1, "item": dict(item,
                 content=list(item["content"])) if "content" in item else dict(item)}]

    def _close(self) -> list[dict]:
        item, self._open = self._open, None
        if item is None:
            return []
        events = []
        if item["type"] == "function_call":
            events.append(self._at(item, {"type": "response.function_call_arguments.done",
                                          "name": item["name"], "arguments": item["arguments"]}))
        else:
            part = item["content"][0]
            done = "response.reasoning_text.done" if item["type"] == "reasoning" else "response.output_text.done"
            event = self._at(item, {"type": done, "content_index": 0, "text": part["text"]})
            if item["type"] == "message":
                event["logprobs"] = []
            events.append(event)
            events.append(self._at(item, {"type": "response.content_part.done", "content_index": 0,
                                          "part": dict(part)}))
        item["status"] = "completed"
        events.append({"type": "response.output_item.done", "output_index": self.items.index(item),
                       "item": item})
        return events

    def _at(self, item: dict, event: dict) -> dict:
        event["item_id"] = item["id"]
        event["output_index"] = self.items.index(item)
        return event
