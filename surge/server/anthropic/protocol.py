"""Anthropic's Messages API wire format: request bodies in, message objects and errors out.

In: the JSON body the `anthropic` client's `messages.create` / `count_tokens`
sends — `system` (text or text blocks), `messages` whose content is text or
blocks (`text`, `tool_use`, `tool_result`, `thinking`), `max_tokens`
(required, as Anthropic's API requires it), `stop_sequences`, `temperature`,
`top_p`, `top_k`, `tools` (name, description, input_schema), `tool_choice`
(auto, any, tool, none), `thinking` (its type reaches the chat template as
`enable_thinking`), `stream`, `metadata`. Unknown fields are ignored,
known ones type-checked strictly. Out: `error_body` — Anthropic's error shape
`{"type": "error", "error": {"type", "message"}}` for a status code.
"""

from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, Field

from surge.server.protocol import _Lenient


class TextBlock(_Lenient):
    type: Literal["text"]
    text: str


class ToolUseBlock(_Lenient):
    type: Literal["tool_use"]
    id: str
    name: str
    input: Dict[str, Any] = Field(default_factory=dict)


class ToolResultBlock(_Lenient):
    type: Literal["tool_result"]
    tool_use_id: str
    content: Union[str, List[TextBlock], None] = None
    is_error: bool = False


class ThinkingBlock(_Lenient):
    type: Literal["thinking"]
    thinking: str
    signature: Optional[str] = None


class OtherBlock(_Lenient):
    """Any other block type (image, document, ...): refused with a 400 naming it."""

    type: str


Block = Union[TextBlock, ToolUseBlock, ToolResultBlock, ThinkingBlock, OtherBlock]


class Message(_Lenient):
    role: Literal["user", "assistant"]
    content: Union[str, List[Block]]


class Tool(_Lenient):
    name: str
    description: Optional[str] = None
    input_schema: Dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    type: Optional[Literal["custom"]] = None


class ToolChoice(_Lenient):
    type: Literal["auto", "any", "tool", "none"]
    name: Optional[str] = None
    disable_parallel_tool_use: bool = False


class ThinkingConfig(_Lenient):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: Optional[int] = None


class CountTokensRequest(_Lenient):
    model: Optional[str] = None
    messages: List[Message] = Field(min_length=1)
    system: Union[str, List[TextBlock], None] = None
    tools: Optional[List[Tool]] = None
    tool_choice: Optional[ToolChoice] = None
    # Reaches the chat template as enable_thinking (Qwen3-style templates read it).
    thinking: Optional[ThinkingConfig] = None


class MessagesRequest(CountTokensRequest):
    max_tokens: int
    stop_sequences: Optional[List[str]] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    stream: bool = False
    metadata: Optional[Dict[str, Any]] = None


class MessageUsage(BaseModel):
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0


class MessageResponse(BaseModel):
    """The `message` object answered by /v1/messages (content blocks: text, tool_use, thinking)."""

    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: List[Dict[str, Any]]
    stop_reason: Optional[Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]] = None
    stop_sequence: Optional[str] = None
    usage: MessageUsage


class CountTokensResponse(BaseModel):
    input_tokens: int


_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
                503: "overloaded_error", 529: "overloaded_error"}


def error_body(status: int, message: str) -> dict:
    return {"type": "error", "error": {"type": _ERROR_TYPES.get(status, "invalid_request_error"), "message": message}}
