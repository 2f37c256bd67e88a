"""The input side: from what a caller passes to `add_request` to the scheduler's Requests.

In: a prompt (text or token ids) with SamplingParams, an optional request id, priority, cache salt and
arrival time, from any thread. Out: a `NewRequest` — the user request id, the prompt's text and token ids
(tokenized once, here), its params, and one scheduler `Request` per completion (n > 1 fans out into
children `id#0 .. id#n-1`, each with its own seed derived from the request's), plus the future of its
grammar when the output is constrained. Bad input raises ValueError naming what is wrong, before anything
is queued. The engine registers the NewRequest with the output side and the scheduler on its own thread.
"""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import dataclass
from typing import Optional, Sequence, Union

from surge.sampling.params import SamplingParams
from surge.scheduler.request import Request

PromptLike = Union[str, Sequence[int]]


@dataclass
class NewRequest:
    """One user request, validated and tokenized, with its children for the scheduler."""

    request_id: str
    prompt: Optional[str]
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival_time: float
    children: list[Request]
    grammar: Optional[object] = None  # the Future of its CompiledGrammar (structured outputs)

    @property
    def child_ids(self) -> list[str]:
        return [child.request_id for child in self.children]

    @property
    def is_fanned_out(self) -> bool:
        """n > 1: the children are `id#i` and the output side aggregates them under `request_id`."""
        return self.params.n > 1


class InputProcessor:
    def __init__(self, tokenizer, vocab_size: int, max_model_len: int, eos_token_ids: Sequence[int],
                 seed: int = 0, grammar_compiler=None) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        self.eos_token_ids = tuple(eos_token_ids)
        self.grammar_compiler = grammar_compiler
        self._ids = itertools.count()
        self._seed_rng = random.Random(seed)

    def new_request_id(self) -> str:
        return f"req-{next(self._ids)}"

    def process(self, prompt: Optional[PromptLike] = None, sampling_params: Optional[SamplingParams] = None, *,
                request_id: Optional[str] = None, prompt_token_ids: Optional[Sequence[int]] = None,
                priority: int = 0, cache_salt: Optional[str] = None,
                arrival_time: Optional[float] = None) -> NewRequest:
        params = sampling_params if sampling_params is not None else SamplingParams()
        if not isinstance(params, SamplingParams):
            raise ValueError(f"sampling_params must be a SamplingParams, got {type(params).__name__}")
        token_ids = self.tokenize(prompt, prompt_token_ids)
        request_id = str(request_id) if request_id is not None else self.new_request_id()
        arrival = arrival_time if arrival_time is not None else time.time()
        base_seed = params.seed if params.seed is not None else self._seed_rng.getrandbits(31)
        child_ids = [request_id] if params.n == 1 else [f"{request_id}#{i}" for i in range(params.n)]
        children = []
        for index, child_id in enumerate(child_ids):
            seed = base_seed if params.n == 1 else (base_seed * 1_000_003 + index) % (2**31)
            children.append(Request(child_id, token_ids, params, eos_token_ids=self.eos_token_ids, seed=seed,
                                    priority=priority, cache_salt=cache_salt, arrival_time=arrival))
        grammar = None
        if params.structured_outputs is not None:
            grammar = self.grammar_compiler.submit(params.structured_outputs)
        return NewRequest(request_id, prompt if isinstance(prompt, str) else None, token_ids, params, arrival,
                          children, grammar)

    def tokenize(self, prompt: Optional[PromptLike], prompt_token_ids: Optional[Sequence[int]]) -> list[int]:
        if prompt_token_ids is None and prompt is not None and not isinstance(prompt, str):
            prompt_token_ids, prompt = prompt, None
        if prompt_token_ids is not None:
            token_ids = [int(t) for t in prompt_token_ids]
            bad = [t for t in token_ids if not 0 <= t < self.vocab_size]
            if bad:
                raise ValueError(f"prompt_token_ids holds ids outside the vocabulary [0, {self.vocab_size}): "
                                 f"{bad[:5]}")
        elif isinstance(prompt, str):
            token_ids = self.tokenizer.encode(prompt, add_special_tokens=True)
        else:
            raise ValueError("give a prompt (str) or prompt_token_ids")
        if not token_ids:
            raise ValueError("the prompt is empty: it must have at least one token")
        if len(token_ids) >= self.max_model_len:
            raise ValueError(f"the prompt has {len(token_ids)} tokens but engine.max_model_len is "
                             f"{self.max_model_len} (prompt + at least one generated token must fit): "
                             f"shorten the prompt or raise engine.max_model_len")
        return token_ids


__all__ = ["InputProcessor", "NewRequest", "PromptLike"]
