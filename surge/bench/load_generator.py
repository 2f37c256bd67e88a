"""An async load generator for an OpenAI-compatible `/v1/completions` endpoint.

In: the server's base URL, the prompts (token-id lists or strings), the model
name, output length, a Poisson request rate (0 = every request at once) and a
concurrency bound (0 = none). Out: one `StreamRecord` per prompt (send time,
arrival time of every streamed chunk that carried choices, end time, token
counts from the usage chunk, or the error) and the run's wall time.

Every request streams (`stream: true`, `stream_options.include_usage`), is
greedy and ignores EOS, so each one generates exactly `output_len` tokens.
`extra_body` adds fields to every request (e.g. a `response_format`).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Optional, Sequence, Union

import numpy as np

from surge.bench.serve_metrics import StreamRecord

Prompt = Union[str, Sequence[int]]


def arrival_offsets(num_requests: int, request_rate: float, seed: int = 0) -> list[float]:
    """Send times (seconds after the start) of a Poisson process of `request_rate` per second.

    The first request goes at 0; the gaps between requests are exponential with mean 1 / rate.
    A rate of 0 (or infinity) sends everything at once.
    """
    if num_requests <= 0:
        return []
    if request_rate <= 0 or np.isinf(request_rate):
        return [0.0] * num_requests
    gaps = np.random.default_rng(seed).exponential(1.0 / request_rate, num_requests - 1)
    return [0.0] + np.cumsum(gaps).tolist()


def completion_payload(prompt: Prompt, model: str, output_len: int, extra_body: Optional[dict] = None) -> dict:
    return {**(extra_body or {}),
        "model": model,
        "prompt": prompt if isinstance(prompt, str) else list(prompt),
        "max_tokens": output_len,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def stream_completion(client, url: str, payload: dict, headers: Optional[dict] = None) -> StreamRecord:
    """POST one streamed completion and time its chunks; failures are recorded, never raised."""
    record = StreamRecord(sent=time.perf_counter())
    try:
        async with client.stream("POST", url, json=payload, headers=headers) as response:
            if response.status_code != 200:
                body = (await response.aread()).decode("utf-8", "replace")
                record.error = f"HTTP {response.status_code}: {body[:300]}"
                return record
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    break
                now = time.perf_counter()
                chunk = json.loads(data)
                if "error" in chunk:
                    error = chunk["error"]
                    record.error = f"stream error: {error.get('message', error) if isinstance(error, dict) else error}"
                    return record
                if chunk.get("choices"):
                    record.chunk_times.append(now)
                usage = chunk.get("usage")
                if usage:
                    record.prompt_tokens = usage.get("prompt_tokens", 0)
                    record.output_tokens = usage.get("completion_tokens", 0)
        record.ended = time.perf_counter()
        if not record.chunk_times:
            record.error = "the stream ended without a single chunk"
        elif not record.output_tokens:  # a server without usage chunks: one token per chunk
            record.output_tokens = len(record.chunk_times)
    except Exception as exc:  # a benchmark reports a broken request and goes on
        record.error = f"{type(exc).__name__}: {exc}"
    return record


async def run_load(base_url: str, prompts: Sequence[Prompt], *, model: str, output_len: int,
                   request_rate: float = 0.0, max_concurrency: int = 0, seed: int = 0,
                   headers: Optional[dict] = None, progress: bool = True,
                   transport=None, extra_body: Optional[dict] = None) -> tuple[list[StreamRecord], float]:
    """Send every prompt on its Poisson schedule; returns (records in prompt order, wall seconds)."""
    import httpx
    from tqdm.auto import tqdm

    url = base_url.rstrip("/") + "/v1/completions"
    offsets = arrival_offsets(len(prompts), request_rate, seed)
    gate = asyncio.Semaphore(max_concurrency) if max_concurrency > 0 else None
    connections = max_concurrency if max_concurrency > 0 else len(prompts)
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    bar = tqdm(total=len(prompts), desc="requests", unit="req", disable=not progress)

    async with httpx.AsyncClient(timeout=httpx.Timeout(None, connect=30.0), limits=limits,
                                 transport=transport) as client:
        start = time.perf_counter()

        async def one(prompt: Prompt, offset: float) -> StreamRecord:
            delay = start + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            payload = completion_payload(prompt, model, output_len, extra_body)
            if gate is None:
                record = await stream_completion(client, url, payload, headers)
            else:
                async with gate:
                    record = await stream_completion(client, url, payload, headers)
            bar.update(1)
            return record

        records = await asyncio.gather(*(one(p, o) for p, o in zip(prompts, offsets)))
        duration = time.perf_counter() - start
    bar.close()
    return list(records), duration
