"""The Responses API wire format: the `POST /v1/responses` body in, Response objects and stream events out.

In: the JSON body the `openai` client's `responses.create` sends — `input` as
a string or a list of items (messages with text parts, `function_call`,
`function_call_output`, `reasoning`), `instructions`, function `tools`,
`tool_choice`, `max_output_tokens`, `temperature`, `top_p`, `text.format`,
`stream`, `store`, `previous_response_id`, `background`, `metadata`. Unknown
fields are ignored and known ones type-checked strictly, as in
`surge.server.protocol`. Out: helpers that build the Response object and the
output items (`message` with `output_text`, `function_call`, `reasoning`) as
plain dicts in the shape the client parses.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, Field

from surge.server.protocol import _Lenient


class InputContentPart(_Lenient):
    type: Literal["input_text", "output_text", "text", "refusal"]
    text: Optional[str] = None
    refusal: Optional[str] = None


class MessageItem(_Lenient):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: Union[str, List[InputContentPart]]
    id: Optional[str] = None
    status: Optional[str] = None


class FunctionCallItem(_Lenient):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str = ""
    id: Optional[str] = None
    status: Optional[str] = None


class FunctionCallOutputItem(_Lenient):
    type: Literal["function_call_output"]
    call_id: str
    output: Union[str, List[InputContentPart]]
    id: Optional[str] = None
    status: Optional[str] = None


class ReasoningText(_Lenient):
    type: Literal["reasoning_text", "summary_text"]
    text: str


class ReasoningItem(_Lenient):
    type: Literal["reasoning"]
    id: Optional[str] = None
    content: Optional[List[ReasoningText]] = None
    summary: List[ReasoningText] = Field(default_factory=list)


InputItem = Union[MessageItem, FunctionCallItem, FunctionCallOutputItem, ReasoningItem]


class FunctionTool(_Lenient):
    type: Literal["function"]
    name: str
    description: Optional[str] = None
    parameters: Optional[Dict[str, Any]] = None
    strict: Optional[bool] = None


class NamedFunctionChoice(_Lenient):
    type: Literal["function"]
    name: str


class TextFormat(_Lenient):
    type: Literal["text", "json_schema", "json_object"] = "text"
    name: Optional[str] = None
    schema_: Optional[Dict[str, Any]] = Field(default=None, alias="schema")
    strict: Optional[bool] = None


class TextConfig(_Lenient):
    format: Optional[TextFormat] = None


class ResponsesRequest(_Lenient):
    model: Optional[str] = None
    input: Union[str, List[InputItem]]
    instructions: Optional[str] = None
    tools: Optional[List[FunctionTool]] = None
    tool_choice: Union[Literal["none", "auto", "required"], NamedFunctionChoice, None] = None
    parallel_tool_calls: bool = True
    max_output_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    text: Optional[TextConfig] = None
    stream: bool = False
    # None = store when the server has a store (OpenAI stores by default); true with no store is a 400.
    store: Optional[bool] = None
    previous_response_id: Optional[str] = None
    background: bool = False
    metadata: Optional[Dict[str, str]] = None
    user: Optional[str] = None
    # Extensions shared with chat completions.
    chat_template_kwargs: Optional[Dict[str, Any]] = None
    priority: int = 0


# ---- output --------------------------------------------------------------------------------------

class ResponseObject(BaseModel):
    """A Response as `response_object` builds it (declared for /openapi.json; items stay open objects)."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    model: str
    status: Literal["queued", "in_progress", "completed", "incomplete", "cancelled", "failed"]
    output: List[Dict[str, Any]]
    error: Optional[Dict[str, Any]] = None
    incomplete_details: Optional[Dict[str, Any]] = None
    instructions: Optional[str] = None
    max_output_tokens: Optional[int] = None
    temperature: float
    top_p: float
    tools: List[Dict[str, Any]]
    tool_choice: Union[str, Dict[str, Any]]
    parallel_tool_calls: bool
    previous_response_id: Optional[str] = None
    background: bool
    store: bool
    metadata: Dict[str, str]
    text: Dict[str, Any]
    usage: Optional[Dict[str, Any]] = None
    user: Optional[str] = None
    completed_at: Optional[int] = None


class ResponseDeleted(BaseModel):
    id: str
    object: Literal["response.deleted"] = "response.deleted"
    deleted: bool


def new_item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def message_item(item_id: str, text: str, status: str = "completed") -> dict:
    return {"type": "message", "id": item_id, "role": "assistant", "status": status,
            "content": [output_text_part(text)] if status != "in_progress" else []}


def output_text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def function_call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}


def reasoning_item(item_id: str, text: str, status: str = "completed") -> dict:
    content = [{"type": "reasoning_text", "text": text}] if status != "in_progress" else []
    return {"type": "reasoning", "id": item_id, "summary": [], "content": content, "status": status}


def usage(input_tokens: int, output_tokens: int, cached_tokens: int, reasoning_tokens: int = 0) -> dict:
    return {"input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": cached_tokens, "cache_write_tokens": 0},
            "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": input_tokens + output_tokens}


def _text_format(req: ResponsesRequest) -> dict:
    fmt = req.text.format if req.text is not None else None
    return {"type": "text"} if fmt is None else fmt.model_dump(by_alias=True, exclude_none=True)


def response_object(response_id: str, req: ResponsesRequest, model: str, *, status: str, output: list,
                    usage_: Optional[dict] = None, incomplete_reason: Optional[str] = None,
                    error: Optional[dict] = None, created_at: Optional[float] = None) -> dict:
    """A Response object; `status` is queued | in_progress | completed | incomplete | cancelled | failed."""
    tool_choice: Any = req.tool_choice if isinstance(req.tool_choice, str) or req.tool_choice is None \
        else req.tool_choice.model_dump()
    return {
        "id": response_id, "object": "response", "created_at": int(created_at or time.time()), "model": model,
        "status": status, "output": output, "error": error,
        "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
        "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "top_p": 1.0 if req.top_p is None else req.top_p,
        "tools": [tool.model_dump(exclude_none=True) for tool in req.tools or []],
        "tool_choice": tool_choice or "auto", "parallel_tool_calls": req.parallel_tool_calls,
        "previous_response_id": req.previous_response_id, "background": req.background,
        "store": req.store is not False, "metadata": req.metadata or {},
        "text": {"format": _text_format(req)}, "usage": usage_, "user": req.user,
        "completed_at": int(time.time()) if status == "completed" else None,
    }
