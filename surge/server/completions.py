"""`POST /v1/completions`: a prompt (text, token ids, or a list of either) in, its completions out.

In: the HTTP request. Out: a `Completion` with one choice per prompt and
completion (choice index = prompt index * n + completion index) and `usage`,
or Server-Sent Events of `Completion` chunks ending with an optional usage
chunk (only when `stream_options.include_usage` asks) and `data: [DONE]`.
`echo` puts the prompt text before each completion; with `logprobs` the
echoed prompt tokens carry their log-probs too (the first one null), and
`max_tokens=0` (echo only) answers the prompt alone — how evaluation harnesses
score choices. vLLM's `prompt_logprobs` adds `choices[].prompt_logprobs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Optional

from fastapi.responses import JSONResponse
from starlette.requests import Request
from starlette.responses import Response

from surge.engine.outputs import FinishReason
from surge.engine.streams import merge
from surge.server.context import ServerContext, close_all
from surge.server.errors import bad_request, stream_error
from surge.server.logprobs import (completion_logprobs, delta_entries, join_logprobs, prompt_completion_logprobs,
                                   vllm_prompt_logprobs)
from surge.server.protocol import (Completion, CompletionChoice, CompletionLogprobs, CompletionRequest, Usage,
                                   chunk_json, new_id)
from surge.server.request_params import EngineLimits, completion_sampling_params, prompt_limit, prompt_too_long
from surge.server.sse import DONE, ClientDisconnected, EventStreamResponse, event, run_until_disconnect
from surge.server.workers import TooManyTokens, encode

MAX_PROMPTS = 256


def _prompts(req: CompletionRequest, tokenizer, limits: EngineLimits) -> list[tuple[str, list[int]]]:
    """(text, token ids) per prompt; text prompts are tokenized as the engine would (special tokens added).

    Runs on the worker pool: a prompt may be megabytes of text or a million token ids.
    """
    prompt = req.prompt
    if isinstance(prompt, str):
        items: list = [prompt]
    elif prompt and all(isinstance(x, int) for x in prompt):
        items = [list(prompt)]
    else:
        items = list(prompt)
    if not items:
        raise bad_request("prompt is empty: give a string, a list of strings, or token ids", param="prompt")
    if len(items) > MAX_PROMPTS:
        raise bad_request(f"prompt holds {len(items)} prompts; at most {MAX_PROMPTS} per request", param="prompt")
    result = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            try:
                ids = encode(tokenizer, item, add_special_tokens=True, limit=prompt_limit(limits))
            except TooManyTokens as exc:
                raise prompt_too_long(exc.num_tokens, limits, "prompt") from None
            text = item
        else:
            ids = list(item)
            text = None
        if not ids:
            raise bad_request(f"prompt[{i}] is empty: it must have at least one token", param="prompt")
        bad = [t for t in ids if not 0 <= t < limits.vocab_size]
        if bad:
            raise bad_request(f"prompt[{i}] holds token ids outside the vocabulary [0, {limits.vocab_size}): "
                              f"{bad[:5]}", param="prompt")
        result.append((text, ids))
    return result


def _echoes(echo: bool, prompts: list[tuple[str, list[int]]], tokenizer) -> list[str]:
    return [(text if text is not None else tokenizer.decode(ids)) if echo else "" for text, ids in prompts]


async def create_completion(ctx: ServerContext, req: CompletionRequest, request: Request) -> Response:
    principal = ctx.authorize(request)
    ctx.check_model(req.model)
    engine = ctx.require_ready().engine
    limits = ctx.limits()
    prompts = await ctx.workers.run(_prompts, req, engine.tokenizer, limits)
    # The longest prompt decides whether max_tokens fits (and must leave room for one token).
    params = completion_sampling_params(req, max(len(ids) for _, ids in prompts), limits)
    echoes = await ctx.workers.run(_echoes, req.echo, prompts, engine.tokenizer)
    scoring = _Scoring(score_echo=req.echo and req.logprobs is not None, no_completion=req.max_tokens == 0,
                       vllm_prompt_logprobs=req.prompt_logprobs is not None,
                       decode=lambda t: engine.tokenizer.decode([t], skip_special_tokens=False))
    request_id = new_id("cmpl")
    streams = await ctx.open_streams([ids for _, ids in prompts], params, request_id=request_id,
                                     priority=req.priority, principal=principal, cache_salt=req.cache_salt)
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return EventStreamResponse(_events(ctx, streams, request_id, params, echoes, include_usage, scoring),
                                   on_close=lambda: close_all(streams))
    try:
        finals = await run_until_disconnect(request, _finals(streams))
    except ClientDisconnected:
        return Response(status_code=499)
    finally:
        await close_all(streams)
    return JSONResponse(_completion(ctx, finals, request_id, params, echoes, scoring).model_dump())


async def _finals(streams: list[AsyncIterator]) -> list:
    finals: list = [None] * len(streams)
    async for index, output in merge(streams):
        finals[index] = output
    return finals


@dataclass(frozen=True)
class _Scoring:
    """What an answer carries about its prompt: echo's log-probs, vLLM's prompt_logprobs, no completion."""

    score_echo: bool  # echo=true with logprobs: the echoed prompt tokens carry theirs (the first null)
    no_completion: bool  # max_tokens=0: the sampled token is left out
    vllm_prompt_logprobs: bool  # prompt_logprobs asked: choices[].prompt_logprobs
    decode: object

    def prompt_part(self, final, params) -> Optional[CompletionLogprobs]:
        if not self.score_echo or final.prompt_logprobs is None:
            return None
        return prompt_completion_logprobs(final.prompt_token_ids, final.prompt_logprobs, params.logprobs,
                                          self.decode)

    def vllm_part(self, final) -> Optional[list]:
        if not self.vllm_prompt_logprobs or final.prompt_logprobs is None:
            return None
        return vllm_prompt_logprobs(final.prompt_logprobs)


def _logprobs(params, entries, offset: int):
    if params.logprobs is None or entries is None:
        return None
    return completion_logprobs(entries, params.logprobs, start_offset=offset)


def _completion(ctx: ServerContext, finals: list, request_id: str, params, echoes: list[str],
                scoring: _Scoring) -> Completion:
    choices = []
    prompt_tokens = completion_tokens = 0
    for p, final in enumerate(finals):
        prompt_tokens += len(final.prompt_token_ids)
        prompt_part = scoring.prompt_part(final, params)
        for completion in final.outputs:
            text, token_ids, entries = completion.text, completion.token_ids, completion.logprobs
            finish = completion.finish_reason
            if scoring.no_completion:
                text, token_ids, entries, finish = "", [], None, FinishReason.LENGTH
            completion_tokens += len(token_ids)
            logprobs = _logprobs(params, entries, len(echoes[p]))
            if prompt_part is not None:
                logprobs = join_logprobs(prompt_part, logprobs)
            choices.append(CompletionChoice(
                index=p * params.n + completion.index, text=echoes[p] + text, finish_reason=finish,
                logprobs=logprobs, prompt_logprobs=scoring.vllm_part(final)))
    return Completion(id=request_id, model=ctx.model_name, choices=choices,
                      usage=Usage.of(prompt_tokens, completion_tokens))


async def _events(ctx: ServerContext, streams: list[AsyncIterator], request_id: str, params, echoes: list[str],
                  include_usage: bool, scoring: _Scoring) -> AsyncIterator[str]:
    n = params.n
    offsets = {}
    prompt_tokens: dict[int, int] = {}
    generated: dict[int, int] = {}
    # Prompt log-probs exist once the prefill ran, so a scored echo waits for the prompt's first output.
    echo_sent = [not echo or not (scoring.score_echo or scoring.vllm_prompt_logprobs) for echo in echoes]

    def chunk(index: int, text: str, finish: Optional[str] = None, logprobs=None, prompt_logprobs=None) -> str:
        body = Completion(id=request_id, model=ctx.model_name,
                          choices=[CompletionChoice(index=index, text=text, finish_reason=finish, logprobs=logprobs,
                                                    prompt_logprobs=prompt_logprobs)])
        return event(chunk_json(body))

    merged = merge(streams)
    try:
        for p, echo in enumerate(echoes):
            for j in range(n):
                offsets[p * n + j] = len(echo)
                if echo and echo_sent[p]:
                    yield chunk(p * n + j, echo)
        done: set[int] = set()
        async for p, output in merged:
            prompt_tokens[p] = len(output.prompt_token_ids)
            generated[p] = 0 if scoring.no_completion else sum(len(c.token_ids) for c in output.outputs)
            if not echo_sent[p]:
                echo_sent[p] = True
                for j in range(n):
                    yield chunk(p * n + j, echoes[p], logprobs=scoring.prompt_part(output, params),
                                prompt_logprobs=scoring.vllm_part(output))
            for completion in output.outputs:
                index = p * n + completion.index
                if index in done or not (completion.delta_text or completion.delta_token_ids
                                         or completion.finish_reason):
                    continue
                if scoring.no_completion:
                    if completion.finish_reason is not None:
                        yield chunk(index, "", FinishReason.LENGTH)
                        done.add(index)
                    continue
                logprobs = None
                if params.logprobs is not None:
                    entries = delta_entries(completion)
                    if entries:
                        logprobs = completion_logprobs(entries, params.logprobs, start_offset=offsets[index])
                offsets[index] += len(completion.delta_text)
                yield chunk(index, completion.delta_text, completion.finish_reason, logprobs)
                if completion.finish_reason is not None:
                    done.add(index)
        if include_usage:
            usage = Usage.of(sum(prompt_tokens.values()), sum(generated.values()))
            yield event(Completion(id=request_id, model=ctx.model_name, choices=[], usage=usage)
                        .model_dump_json(exclude_none=True))
        yield DONE
    except Exception as exc:  # the response has started: report in-band, as OpenAI does
        yield event(stream_error(exc, request_id).json())
        yield DONE
    finally:
        await merged.aclose()
