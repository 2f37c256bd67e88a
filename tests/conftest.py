"""Shared fixtures: the embedded SmolLM2 GGUF, tiny random Hugging Face checkpoints, a paged test driver.

- ``smollm2_gguf``: path of the catalogue's SmolLM2-135M-Instruct GGUF (fetched once into the surge cache).
- ``tiny_checkpoint(family, directory=None, **config_overrides)``: writes a random-weight transformers model
  of one family (llama, qwen2, qwen3, mistral) with a byte-level tokenizer to a directory and returns a
  ``TinyCheckpoint`` (path, the torch model in eval mode, its config).
- ``paged_model(model)``: a ``PagedModel`` that runs a CausalLM over a NaN-filled paged KV cache with the
  reference backend (or ``backend="cpu"``, whose weight packing it applies), building the AttentionMetadata
  by hand (a test harness, not an engine).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest

TINY_VOCAB = 320
# Special tokens first, then the 256 byte-level symbols, then letter-pair merges up to TINY_VOCAB.
TINY_SPECIALS = ("<pad>", "<s>", "</s>")

# Each family's tiny config exercises what sets it apart.
TINY_FAMILIES: Dict[str, dict] = {
    "llama": dict(
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
    ),
    "qwen2": dict(use_sliding_window=True, sliding_window=5, max_window_layers=1,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
    "qwen3": dict(head_dim=24, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
    "mistral": dict(sliding_window=4, head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
}
_COMMON = dict(vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6,
               initializer_range=0.1, pad_token_id=0, bos_token_id=1, eos_token_id=2)


@dataclasses.dataclass
class TinyCheckpoint:
    path: str
    # The transformers model the checkpoint was saved from (float32, eval mode).
    hf_model: object
    hf_config: object


@pytest.fixture(scope="session")
def smollm2_gguf() -> str:
    from surge.models.catalogue import resolve_model

    return resolve_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smollm2_surge(smollm2_gguf):
    """The SmolLM2 GGUF loaded by surge in float32 (LoadedModel)."""
    from surge.models import load_model

    return load_model(smollm2_gguf, dtype="float32")


@pytest.fixture(scope="session")
def smollm2_hf(smollm2_gguf):
    """The same GGUF loaded (and dequantized) by transformers, float32, eval mode."""
    import os

    from transformers import AutoModelForCausalLM

    _single_threaded_torch()
    directory, name = os.path.split(smollm2_gguf)
    return AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype="float32").eval()


def _single_threaded_torch() -> None:
    # On a small shared CPU, torch's OpenMP threads spin against each other and against XLA's pool:
    # one thread is an order of magnitude faster for these batch sizes.
    import torch

    torch.set_num_threads(1)


def _config_class(family: str):
    import transformers

    return {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
            "qwen3": transformers.Qwen3Config, "mistral": transformers.MistralConfig}[family]


def make_tiny_checkpoint(family: str, directory: str, seed: int = 0, **overrides) -> TinyCheckpoint:
    import torch
    from transformers import AutoModelForCausalLM

    _single_threaded_torch()
    config = _config_class(family)(**{**_COMMON, **TINY_FAMILIES[family], **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").float().eval()
    model.save_pretrained(directory)
    make_tiny_tokenizer(config.vocab_size).save_pretrained(directory)
    return TinyCheckpoint(path=str(directory), hf_model=model, hf_config=config)


def make_tiny_tokenizer(vocab_size: int = TINY_VOCAB):
    """A byte-level BPE tokenizer with exactly `vocab_size` ids, so any text encodes and any id decodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(TINY_SPECIALS)}
    for symbol in alphabet:
        vocab[symbol] = len(vocab)
    merges: List[Tuple[str, str]] = []
    letters = "etaoinshrdlu" + "\u0120"  # \u0120 is the byte-level symbol for a space
    for first in letters:
        for second in letters:
            if len(vocab) >= vocab_size:
                break
            vocab[first + second] = len(vocab)
            merges.append((first, second))
    if len(vocab) != vocab_size:
        raise ValueError(f"tiny tokenizer: cannot fill {vocab_size} ids (reached {len(vocab)})")
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>")
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}assistant:{% endif %}")
    return tokenizer


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Session-wide: the same (family, overrides) returns the same checkpoint; treat it as read-only."""
    made: Dict[tuple, TinyCheckpoint] = {}

    def make(family: str, directory: Optional[str] = None, **overrides) -> TinyCheckpoint:
        if directory is not None:
            return make_tiny_checkpoint(family, directory, **overrides)
        key = (family, tuple(sorted((k, repr(v)) for k, v in overrides.items())))
        if key not in made:
            made[key] = make_tiny_checkpoint(family, str(tmp_path_factory.mktemp(f"tiny-{family}")), **overrides)
        return made[key]

    return make


class PagedModel:
    """Runs a CausalLM step by step over a paged KV cache whose unwritten slots hold NaN.

    ``step([(seq_id, token_ids), ...])`` schedules a chunk of new tokens per sequence (a prompt, part of
    one, or a single decode token), pads the batch with padding tokens and a padding sequence, and returns
    the float32 logits of every scheduled token, one array per chunk.
    """

    def __init__(self, model, *, page_size: int = 4, num_pages: int = 64, pages_per_seq: int = 16,
                 max_seqs: int = 4, token_buckets: Sequence[int] = (32,), backend: str = "reference"):
        import jax.numpy as jnp
        from flax import nnx

        from surge.models.decoder import kv_cache_spec

        # Every step is padded to the smallest of `token_buckets` that fits and to `max_seqs` sequences,
        # so a model compiles once per bucket.
        self.page_size, self.pages_per_seq, self.max_seqs = page_size, pages_per_seq, max_seqs
        self.token_buckets = sorted(token_buckets)
        num_layers, num_kv_heads, head_dim = kv_cache_spec(model.arch)
        self.backend = backend
        if backend != "reference":
            _backend(backend).prepare_model(model)
        shape = _backend(backend).kv_cache_shape(num_pages, page_size, num_kv_heads, head_dim)
        self.caches = [(jnp.full(shape, jnp.nan, model.dtype), jnp.full(shape, jnp.nan, model.dtype))
                       for _ in range(num_layers)]
        self.free_pages = list(range(num_pages - 1, 0, -1))
        self.seq_pages: Dict[int, List[int]] = {}
        self.seq_lens: Dict[int, int] = {}
        self.graphdef, self.state = nnx.split(model)

    def step(self, chunks: Sequence[Tuple[int, Sequence[int]]]) -> List[np.ndarray]:
        from surge.kernels.metadata import AttentionMetadata

        ids, positions, slots, seq_ids, cu, kv_lens = [], [], [], [], [0], []
        page_table = np.zeros((self.max_seqs, self.pages_per_seq), np.int32)
        for s, (seq, tokens) in enumerate(chunks):
            start = self.seq_lens.get(seq, 0)
            pages = self.seq_pages.setdefault(seq, [])
            end = start + len(tokens)
            while len(pages) * self.page_size < end:
                pages.append(self.free_pages.pop())
            if len(pages) > self.pages_per_seq:
                raise ValueError(f"sequence {seq} needs {len(pages)} pages; the page table holds {self.pages_per_seq}")
            for offset, token in enumerate(tokens):
                pos = start + offset
                ids.append(token)
                positions.append(pos)
                slots.append(pages[pos // self.page_size] * self.page_size + pos % self.page_size)
                seq_ids.append(s)
            self.seq_lens[seq] = end
            page_table[s, :len(pages)] = pages
            cu.append(len(ids))
            kv_lens.append(end)
        num_real = len(ids)
        if num_real > self.token_buckets[-1] or len(chunks) >= self.max_seqs:
            raise ValueError(f"step of {num_real} tokens / {len(chunks)} sequences exceeds the buckets "
                             f"({self.token_buckets[-1]} tokens, {self.max_seqs - 1} sequences + one padding sequence)")
        bucket = next(b for b in self.token_buckets if b >= num_real)
        num_padding = bucket - num_real
        ids += [0] * num_padding
        positions += [0] * num_padding
        slots += [0] * num_padding
        seq_ids += [self.max_seqs] * num_padding
        cu += [num_real] * (self.max_seqs - len(chunks))
        kv_lens += [0] * (self.max_seqs - len(chunks))
        md = AttentionMetadata(
            positions=np.array(positions, np.int32), slot_mapping=np.array(slots, np.int32),
            token_seq_ids=np.array(seq_ids, np.int32), page_table=page_table, cu_q_lens=np.array(cu, np.int32),
            kv_lens=np.array(kv_lens, np.int32), num_seqs=np.int32(len(chunks)))
        # Logits rows are requested for every real token, padded with row 0 to the bucket.
        logits_indices = np.zeros(bucket, np.int32)
        logits_indices[:num_real] = np.arange(num_real)
        logits, self.caches = _jitted_forward(self.backend)(self.graphdef, self.state, np.array(ids, np.int32), md, self.caches,
                                                logits_indices)
        logits = np.asarray(logits)
        return [logits[cu[s]:cu[s + 1]] for s in range(len(chunks))]

    def greedy(self, prompts: Sequence[Sequence[int]], num_tokens: int,
               suppress: Sequence[int] = ()) -> List[List[int]]:
        """Prefill every prompt in one step, then decode `num_tokens` greedy tokens per prompt.

        Token ids in `suppress` are never chosen (as transformers' min_new_tokens does with EOS)."""

        def pick(logits: np.ndarray) -> int:
            logits = logits.copy()
            logits[list(suppress)] = -np.inf
            return int(np.argmax(logits))

        base = len(self.seq_lens)
        last = self.step([(base + i, list(p)) for i, p in enumerate(prompts)])
        generated = [[pick(chunk[-1])] for chunk in last]
        for _ in range(num_tokens - 1):
            last = self.step([(base + i, [g[-1]]) for i, g in enumerate(generated)])
            for g, chunk in zip(generated, last):
                g.append(pick(chunk[-1]))
        return generated


@functools.lru_cache(maxsize=None)
def _backend(name: str):
    from surge.kernels.registry import get_backend

    return get_backend(name)


@functools.lru_cache(maxsize=None)
def _jitted_forward(backend: str = "reference"):
    import jax
    from flax import nnx

    def forward(graphdef, state, input_ids, md, caches, logits_indices):
        return nnx.merge(graphdef, state)(input_ids, md, caches, logits_indices, _backend(backend))

    # Shared by every PagedModel, so models of the same shape compile once per session.
    return jax.jit(forward, static_argnums=0, donate_argnums=4)


@pytest.fixture
def paged_model():
    return PagedModel
