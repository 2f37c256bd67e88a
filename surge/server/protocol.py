"""The OpenAI wire protocol: request bodies in, response bodies out (pydantic v2).

In: JSON bodies of `POST /v1/chat/completions` and `POST /v1/completions`.
Unknown fields are accepted and ignored, as OpenAI clients send fields a
server may not know; known fields are type-checked strictly, as OpenAI does
(parse bodies with `model_validate_json`; a wrong type is a 400).
Ranges are checked where the value is turned into `SamplingParams`
(`request_params.py`), so the message names the field. Out: the response
objects (`ChatCompletion`, `ChatCompletionChunk`, `Completion`, `ModelList`)
dumped to JSON exactly as the `openai` client parses them.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class _Lenient(BaseModel):
    """Ignore fields this server does not know; check the types of those it does, strictly ("3" is no int)."""

    model_config = ConfigDict(extra="ignore", strict=True)


# ---- requests ----------------------------------------------------------------------------------

class StreamOptions(_Lenient):
    include_usage: bool = False


class FunctionDefinition(_Lenient):
    name: str
    description: Optional[str] = None
    parameters: Optional[Dict[str, Any]] = None
    strict: Optional[bool] = None


class ToolDefinition(_Lenient):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(_Lenient):
    name: str


class NamedToolChoice(_Lenient):
    type: Literal["function"] = "function"
    function: NamedFunction


class JsonSchemaFormat(_Lenient):
    model_config = ConfigDict(extra="ignore", strict=True, populate_by_name=True)

    name: Optional[str] = None
    description: Optional[str] = None
    schema_: Optional[Dict[str, Any]] = Field(default=None, alias="schema")
    strict: Optional[bool] = None


class ResponseFormat(_Lenient):
    # "text" | "json_object" | "json_schema"; anything else is a 400 (checked in structured_request.py).
    type: str
    json_schema: Optional[JsonSchemaFormat] = None


class FunctionCall(_Lenient):
    name: str
    arguments: str = ""


class ToolCallMessagePart(_Lenient):
    id: Optional[str] = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ContentPart(_Lenient):
    type: str
    text: Optional[str] = None


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Union[str, List[ContentPart], None] = None
    name: Optional[str] = None
    tool_calls: Optional[List[ToolCallMessagePart]] = None
    tool_call_id: Optional[str] = None
    # An earlier assistant turn's reasoning, under either client camp's name.
    reasoning_content: Optional[str] = None
    reasoning: Optional[str] = None


class _SamplingFields(_Lenient):
    """Fields shared by both endpoints (OpenAI's, then vLLM's extensions)."""

    model: Optional[str] = None
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    n: int = 1
    stop: Union[str, List[str], None] = None
    seed: Optional[int] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    logit_bias: Optional[Dict[str, float]] = None
    user: Optional[str] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    # vLLM extensions.
    top_k: Optional[int] = None
    min_p: Optional[float] = None
    repetition_penalty: Optional[float] = None
    ignore_eos: bool = False
    min_tokens: int = 0
    stop_token_ids: Optional[List[int]] = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    priority: int = 0
    cache_salt: Optional[str] = None
    request_id: Optional[str] = None
    # Structured output: OpenAI's response_format, vLLM's structured_outputs (json | regex | choice |
    # grammar | json_object) and its older guided_* spellings.
    response_format: Optional[ResponseFormat] = None
    structured_outputs: Optional[Dict[str, Any]] = None
    guided_json: Union[Dict[str, Any], str, None] = None
    guided_regex: Optional[str] = None
    guided_choice: Optional[List[str]] = None
    guided_grammar: Optional[str] = None


class ChatCompletionRequest(_SamplingFields):
    messages: List[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = None
    logprobs: bool = False
    top_logprobs: Optional[int] = None
    tools: Optional[List[ToolDefinition]] = None
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    # OpenAI's deprecated spelling of tools / tool_choice (answered with tool_calls).
    functions: Optional[List[FunctionDefinition]] = None
    function_call: Union[Literal["none", "auto"], NamedFunction, None] = None
    parallel_tool_calls: bool = True
    add_generation_prompt: bool = True
    chat_template_kwargs: Optional[Dict[str, Any]] = None
    # vLLM's extension: the rendered prompt's token log-probs with this many alternatives (prompt_logprobs).
    prompt_logprobs: Optional[int] = None


class CompletionRequest(_SamplingFields):
    prompt: Union[str, List[str], List[int], List[List[int]]]
    logprobs: Optional[int] = None
    echo: bool = False
    # vLLM's extension: the prompt tokens' log-probs with this many alternatives, in choices[].prompt_logprobs.
    prompt_logprobs: Optional[int] = None
    suffix: Optional[str] = None
    best_of: Optional[int] = None


# ---- responses ---------------------------------------------------------------------------------

def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> "Usage":
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens)


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: Optional[List[int]] = None


class TokenLogprob(TopLogprob):
    top_logprobs: List[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: Optional[List[TokenLogprob]] = None


class CompletionLogprobs(BaseModel):
    text_offset: List[int] = Field(default_factory=list)
    token_logprobs: List[Optional[float]] = Field(default_factory=list)
    tokens: List[str] = Field(default_factory=list)
    top_logprobs: List[Optional[Dict[str, float]]] = Field(default_factory=list)


class PromptLogprob(BaseModel):
    logprob: float
    rank: Optional[int] = None
    decoded_token: Optional[str] = None


class ResponseFunctionCall(BaseModel):
    name: str
    arguments: str


class ResponseToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: ResponseFunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: Optional[str] = None
    tool_calls: List[ResponseToolCall] = Field(default_factory=list)
    # With server.reasoning_parser: the <think> part, under both names clients read.
    reasoning_content: Optional[str] = None
    reasoning: Optional[str] = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Optional[str] = None
    logprobs: Optional[ChoiceLogprobs] = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=now)
    model: str
    choices: List[ChatChoice]
    usage: Usage
    # With the request's prompt_logprobs (vLLM's shape, see CompletionChoice.prompt_logprobs).
    prompt_logprobs: Optional[List[Optional[Dict[str, PromptLogprob]]]] = None


class DeltaFunctionCall(BaseModel):
    name: Optional[str] = None
    arguments: Optional[str] = None


class DeltaToolCall(BaseModel):
    index: int
    id: Optional[str] = None
    type: Optional[Literal["function"]] = None
    function: DeltaFunctionCall


class DeltaMessage(BaseModel):
    role: Optional[Literal["assistant"]] = None
    content: Optional[str] = None
    tool_calls: Optional[List[DeltaToolCall]] = None
    reasoning_content: Optional[str] = None
    reasoning: Optional[str] = None


class ChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    finish_reason: Optional[str] = None
    logprobs: Optional[ChoiceLogprobs] = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=now)
    model: str
    choices: List[ChunkChoice]
    usage: Optional[Usage] = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Optional[str] = None
    logprobs: Optional[CompletionLogprobs] = None
    # vLLM's shape: per prompt token, None (the first) or token id -> its log-prob, rank and text.
    prompt_logprobs: Optional[List[Optional[Dict[str, PromptLogprob]]]] = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=now)
    model: str
    choices: List[CompletionChoice]
    usage: Optional[Usage] = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=now)
    owned_by: str = "surge"
    max_model_len: Optional[int] = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: List[ModelCard]


class HealthStatus(BaseModel):
    status: Literal["ok"] = "ok"
    model: str


def chunk_json(chunk: ChatCompletionChunk | Completion) -> str:
    """A streamed chunk as JSON: fields that carry nothing are left out, except each choice's finish_reason."""
    body = chunk.model_dump(exclude_none=True)
    for choice, source in zip(body["choices"], chunk.choices):
        choice["finish_reason"] = source.finish_reason
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))
