"""Benchmark workloads: the prompts a run sends.

In: the bench config (num_prompts, input_len, seed, dataset, workload) and the vocabulary.
Out: a list of prompts — token-id lists (random, seeded, avoiding special ids; with
workload=copy each is a random piece repeated, so the output copies it) or strings
from a JSONL file of {"prompt": ...} lines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import numpy as np

from surge.config import BenchConfig

Prompt = Union[str, list[int]]


def random_token_prompts(num_prompts: int, input_len: int, vocab_size: int, seed: int,
                         shared_prefix_len: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    # Skip the first ids (special tokens in most vocabularies) and the tail (added tokens).
    low, high = min(100, vocab_size // 4), max(vocab_size - 100, vocab_size // 2)
    prefix = rng.integers(low, high, shared_prefix_len).tolist()
    return [prefix + rng.integers(low, high, input_len - shared_prefix_len).tolist() for _ in range(num_prompts)]


def copy_token_prompts(num_prompts: int, input_len: int, vocab_size: int, seed: int) -> list[list[int]]:
    """Copy-heavy prompts: a random piece of 2/5 input_len ids repeated up to input_len tokens.

    The prompt stops part-way through its third copy, so a model's natural continuation (induction:
    what followed the same tokens before) goes on repeating the piece, as output that edits code or
    quotes a passage repeats its input.
    """
    piece_len = max(1, (2 * input_len) // 5)
    pieces = random_token_prompts(num_prompts, piece_len, vocab_size, seed)
    return [(piece * (input_len // piece_len + 1))[:input_len] for piece in pieces]


def load_prompts(bench: BenchConfig, vocab_size: int) -> list[Prompt]:
    if bench.dataset:
        path = Path(bench.dataset)
        if not path.is_file():
            raise FileNotFoundError(f"bench.dataset={bench.dataset!r} is not a file")
        prompts = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    prompts.append(json.loads(line)["prompt"])
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise ValueError(f"{path}:{number}: expected a JSON object with a 'prompt' field ({exc})") from None
        return prompts[: bench.num_prompts]
    if bench.workload == "copy":
        return copy_token_prompts(bench.num_prompts, bench.input_len, vocab_size, bench.seed)
    return random_token_prompts(bench.num_prompts, bench.input_len, vocab_size, bench.seed)
