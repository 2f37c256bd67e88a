"""Structured configuration for surge.

In: Hydra/OmegaConf configs composed from ``conf/`` (or keyword overrides from
``Engine.from_pretrained``). Out: frozen dataclasses, validated once at load time.

Every key is documented here, where it is declared, and only here: the YAML files in
``conf/`` set values (tests/test_config.py checks that each default they set equals the
schema's) and say in their header which dataclass documents them. ``OmegaConf.structured`` makes
unknown keys and wrongly typed values fail at merge time; ``__post_init__``
checks ranges, so ``cache.page_size=0`` fails with a message naming the key.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from omegaconf import II, MISSING, DictConfig, OmegaConf

# Most top log-probabilities a request may ask for (OpenAI's limit); SamplingParams checks requests against it.
MAX_LOGPROBS = 20


class ConfigError(ValueError):
    """A configuration key holds a value surge cannot use."""


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"invalid config value for '{key}': {message}")


@dataclass(frozen=True)
class ModelConfig:
    # Catalogue name (a file in conf/model/), a local Hugging Face directory, or a .gguf file.
    name: str = "smollm2-135m-instruct"
    # Where the weights live; empty means "resolve `name`" (catalogue download or local path).
    path: str = ""
    # Tokenizer source; empty means the model's own (HF directory or the GGUF's embedded vocab).
    tokenizer: str = ""
    # Parameter dtype: auto, float32, bfloat16 or quantized.
    # - auto: a GGUF file keeps its Q8_0 / Q4_0 / Q4_1 / Q4_K / Q5_K / Q6_K tensors quantized where the
    #   kernel backend multiplies quantized weights (the cpu backend: the embedded default model then holds
    #   ~100 MiB instead of ~500); on the other backends (reference, pallas, triton), whose matmul would
    #   dequantize the blocks at every use, and for a safetensors checkpoint, auto is the platform's float
    #   dtype: float32 on CPU, bfloat16 on GPU/TPU. A quantized model's other tensors (norms, biases, F32 / F16
    #   ones, a fused q/k/v or gate/up whose parts differ in type) are float32.
    # - float32 / bfloat16: every tensor dequantized to that dtype (the parity tests use float32).
    # - quantized: a GGUF file's quantized tensors kept on any backend (reference/pallas/triton dequantize
    #   them at every use: less memory, slower); not for safetensors (see `quantize`).
    dtype: str = "auto"
    # Quantize a safetensors checkpoint's weights as it loads: none, or q8_0 (every projection and the
    # embedding become GGUF Q8_0 blocks of 32 int8 weights and a float16 scale, multiplied in that form
    # by the cpu backend like a GGUF file's; norms and biases stay in `dtype`). Not for a .gguf file.
    quantize: str = "none"
    # Name reported by the server in /v1/models; empty means `name`.
    served_name: str = ""

    def __post_init__(self) -> None:
        _check(bool(self.name or self.path), "model.name", "give a catalogue name, an HF directory or a .gguf file")
        _check(self.dtype in ("auto", "float32", "bfloat16", "quantized"), "model.dtype",
               f"{self.dtype!r} is not auto|float32|bfloat16|quantized")
        _check(self.quantize in ("none", "q8_0"), "model.quantize", f"{self.quantize!r} is not none|q8_0")
        _check(not (self.quantize != "none" and self.dtype == "quantized"), "model.dtype",
               f"quantized keeps a GGUF file's own quantization; with model.quantize={self.quantize} give auto, "
               "float32 or bfloat16 (the dtype of the tensors that stay float)")


SPECULATIVE_METHODS = ("none", "ngram", "suffix", "draft_model")


@dataclass(frozen=True)
class SpeculativeConfig:
    # Who proposes draft tokens: none (no speculation) | ngram (prompt lookup: the tokens that followed the
    # latest earlier occurrence of the request's last n tokens, in its prompt and output) | suffix (suffix
    # decoding: what most often followed the longest match of the request's last tokens in recent
    # requests' outputs and in its own prompt and output; surge.spec_decode.suffix) | draft_model (a
    # smaller model sharing the target's tokenizer proposes its greedy tokens, `draft_model` below).
    method: str = "none"
    # Most draft tokens a request proposes per step (k); it then runs 1 + k tokens, verified in one step.
    num_speculative_tokens: int = 4
    # ngram: the shortest and longest suffix n-gram searched for (the longest match wins).
    prompt_lookup_min: int = 2
    prompt_lookup_max: int = 4
    # suffix: most tokens the cross-request index of finished outputs holds (the oldest are evicted);
    # each costs about 200 bytes of host memory.
    suffix_max_tokens: int = 65536
    # suffix: fewest of the request's last tokens a match must agree on, and the most compared
    # (the longest match wins).
    suffix_min_match: int = 2
    suffix_max_match: int = 16
    # draft_model: the draft (a catalogue name, a Hugging Face directory or a .gguf file), which must have the
    # target's vocabulary and tokenizer; it runs k greedy steps per proposing request with its own paged KV cache.
    draft_model: str = ""
    # draft_model: pages of the draft's own KV pool (page size cache.page_size); 0 = what engine.max_num_seqs
    # requests of engine.max_model_len + k tokens can hold. A request the pool cannot hold proposes nothing.
    draft_num_pages: int = 0
    # Adaptive k: a request whose mean accepted tokens per verification falls below this stops proposing
    # (k = 0) for `adaptive_backoff_steps` steps, then probes again; 0 = never back off.
    adaptive_min_accepted: float = 0.5
    adaptive_backoff_steps: int = 16
    # Price drafts by what they cost in the current step (surge.spec_decode.cost_rule): measured = the engine
    # times its steps per compiled token bucket and a request's drafts must be worth more (expected accepted
    # tokens x a token's share of a step) than the seconds of the bigger step they make, so speculation stays on
    # where extra tokens are nearly free (one sequence) and backs off where the step is compute-bound (many
    # sequences, rare acceptance); none = acceptance alone decides (the adaptive_* keys), which makes the
    # proposals, not only the tokens, independent of timing. The tokens never depend on it.
    cost_model: str = "measured"

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    def __post_init__(self) -> None:
        _check(self.method in SPECULATIVE_METHODS, "engine.speculative.method",
               f"{self.method!r} is not {'|'.join(SPECULATIVE_METHODS)}")
        _check(1 <= self.num_speculative_tokens <= 16, "engine.speculative.num_speculative_tokens",
               f"{self.num_speculative_tokens} must be in [1, 16]")
        _check(self.prompt_lookup_min >= 1, "engine.speculative.prompt_lookup_min",
               f"{self.prompt_lookup_min} must be >= 1")
        _check(self.prompt_lookup_max >= self.prompt_lookup_min, "engine.speculative.prompt_lookup_max",
               f"{self.prompt_lookup_max} must be >= engine.speculative.prompt_lookup_min "
               f"({self.prompt_lookup_min})")
        _check(self.suffix_max_tokens >= 1, "engine.speculative.suffix_max_tokens",
               f"{self.suffix_max_tokens} must be >= 1")
        _check(self.suffix_min_match >= 1, "engine.speculative.suffix_min_match", f"{self.suffix_min_match} must be >= 1")
        _check(self.suffix_max_match >= self.suffix_min_match, "engine.speculative.suffix_max_match",
               f"{self.suffix_max_match} must be >= engine.speculative.suffix_min_match ({self.suffix_min_match})")
        if self.method == "draft_model":
            _check(bool(self.draft_model), "engine.speculative.draft_model",
                   "engine.speculative.method=draft_model needs a draft (catalogue name, HF directory or .gguf file)")
        else:
            _check(not self.draft_model, "engine.speculative.draft_model",
                   f"{self.draft_model!r} is only used with engine.speculative.method=draft_model "
                   f"(method is {self.method!r})")
        _check(self.draft_num_pages == 0 or self.draft_num_pages >= 2, "engine.speculative.draft_num_pages",
               f"{self.draft_num_pages} must be 0 (auto) or >= 2 (page 0 is the null page)")
        _check(self.adaptive_min_accepted >= 0, "engine.speculative.adaptive_min_accepted", "must be >= 0")
        _check(self.adaptive_backoff_steps >= 1, "engine.speculative.adaptive_backoff_steps", "must be >= 1")
        _check(self.cost_model in ("measured", "none"), "engine.speculative.cost_model",
               f"{self.cost_model!r} is not measured|none")


@dataclass(frozen=True)
class DistributedConfig:
    # Multi-host serving (surge.parallel.distributed): the processes join through jax.distributed, the mesh
    # spans every process's devices, process 0 runs the scheduler and the HTTP server and the others step in
    # lockstep on the inputs it broadcasts (surge.parallel.lockstep). Each key left at its default is read
    # from the usual JAX variable (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); with none
    # set the engine is one process.
    # host:port of the coordinator, which process 0 serves; "" = $JAX_COORDINATOR_ADDRESS or one process.
    coordinator_address: str = ""
    # Processes in the cluster; 0 = $JAX_NUM_PROCESSES, or 1.
    num_processes: int = 0
    # This process's index in [0, num_processes); -1 = $JAX_PROCESS_ID, or 0.
    process_id: int = -1
    # Seconds a process may go without a heartbeat before the others count it lost and exit naming it.
    heartbeat_timeout_s: int = 20
    # Seconds every process waits at start-up for all of them to join the coordinator.
    initialization_timeout_s: int = 300

    def __post_init__(self) -> None:
        address = self.coordinator_address
        if address:
            host, _, port = address.rpartition(":")
            _check(bool(host) and port.isdigit() and 0 < int(port) < 65536, "engine.distributed.coordinator_address",
                   f"{address!r} is not host:port")
        _check(self.num_processes >= 0, "engine.distributed.num_processes",
               f"{self.num_processes} must be >= 1 (or 0: from $JAX_NUM_PROCESSES)")
        _check(self.process_id >= -1, "engine.distributed.process_id",
               f"{self.process_id} must be >= 0 (or -1: from $JAX_PROCESS_ID)")
        _check(self.num_processes == 0 or self.process_id < self.num_processes, "engine.distributed.process_id",
               f"{self.process_id} must be < engine.distributed.num_processes ({self.num_processes})")
        _check(self.heartbeat_timeout_s >= 1, "engine.distributed.heartbeat_timeout_s", "must be >= 1")
        _check(self.initialization_timeout_s >= 1, "engine.distributed.initialization_timeout_s", "must be >= 1")


@dataclass(frozen=True)
class EngineConfig:
    # Longest sequence (prompt + generated tokens) a request may reach; 0 = the model's own limit.
    max_model_len: int = 2048
    # Most sequences in one step (the decode batch size).
    max_num_seqs: int = 32
    # Token budget of one step: prefill chunks and decodes together.
    max_num_batched_tokens: int = 512
    # Token-count buckets the step is compiled for; empty = powers of two from 1 up to the budget
    # (max_num_batched_tokens, always a bucket).
    token_buckets: List[int] = field(default_factory=list)
    # Sequence-count buckets; empty = powers of two from 1 up to max_num_seqs.
    seq_buckets: List[int] = field(default_factory=list)
    # Compile every bucket at start-up (with a progress bar) instead of on first use.
    compile_at_startup: bool = True
    # Keep compiled step programs in $SURGE_CACHE/xla so the next start-up reuses them.
    compilation_cache: bool = True
    # Widest top-logprobs a request may ask for (the width the step is compiled with); at most MAX_LOGPROBS,
    # what SamplingParams accepts.
    max_logprobs: int = 20
    # Seed for requests that do not bring their own.
    seed: int = 0
    # Devices the weights and KV heads are split over (the `tp` axis of the mesh; surge.parallel.tensor_parallel):
    # q/k/v and gate/up by column, o/down by row, embedding and lm_head by vocabulary, KV heads split (or
    # replicated when tp exceeds them). It must divide the attention heads and the intermediate size, and
    # divide the KV heads or be a multiple of them; start-up fails naming the numbers otherwise.
    tensor_parallel_size: int = 1
    # Replicas of the model (the `dp` axis of the mesh, surge.parallel): each runs on its own
    # tensor_parallel_size devices (mesh row r) with its own KV page pool (cache.num_pages /
    # hbm_utilization size each replica's pool), scheduler and max_num_seqs, behind the one engine and server.
    # data_parallel_size x tensor_parallel_size devices must be visible (checked at start-up).
    data_parallel_size: int = 1
    # Data parallel: a prompt whose first full page is cached on a replica (or is being computed there for
    # a live request) joins that replica while it holds at most this many more sequences (running +
    # waiting) than the least-loaded replica; beyond that it joins the least-loaded one. 0 = affinity only
    # between equally loaded replicas.
    data_parallel_affinity_slack: int = 8
    # Logging level of the `surge` logger: DEBUG | INFO | WARNING | ERROR.
    log_level: str = "INFO"
    # Tokens a request's grammar forces (fixed keys, closing brackets) join its next step as extra tokens
    # instead of taking one step each; false = one step per token (same text either way at temperature 0).
    structured_output_fast_forward: bool = True
    # Threads that compile grammars (JSON schema, regex, choice, Lark) off the step loop.
    structured_output_compile_workers: int = 1
    # Build and dispatch step N+1 before step N's sampled ids reach the host (they feed N+1 on the device);
    # false = the serial loop (schedule, run, wait, update). Same tokens either way.
    async_scheduling: bool = True
    # Speculative decoding (surge.spec_decode): draft tokens verified in the target's one ragged step.
    speculative: SpeculativeConfig = field(default_factory=SpeculativeConfig)
    # Many processes (hosts) serving one model: see DistributedConfig.
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def __post_init__(self) -> None:
        _check(self.structured_output_compile_workers >= 1, "engine.structured_output_compile_workers",
               f"{self.structured_output_compile_workers} must be >= 1")
        _check(self.max_model_len >= 0, "engine.max_model_len", f"{self.max_model_len} must be >= 0")
        _check(self.max_num_seqs >= 1, "engine.max_num_seqs", f"{self.max_num_seqs} must be >= 1")
        _check(self.max_num_batched_tokens >= self.max_num_seqs, "engine.max_num_batched_tokens",
               f"{self.max_num_batched_tokens} must be >= engine.max_num_seqs ({self.max_num_seqs})")
        _check(all(b > 0 for b in self.token_buckets), "engine.token_buckets", "buckets must be positive")
        _check(all(b > 0 for b in self.seq_buckets), "engine.seq_buckets", "buckets must be positive")
        _check(self.tensor_parallel_size >= 1, "engine.tensor_parallel_size", "must be >= 1")
        _check(self.data_parallel_size >= 1, "engine.data_parallel_size", "must be >= 1")
        _check(self.data_parallel_affinity_slack >= 0, "engine.data_parallel_affinity_slack",
               f"{self.data_parallel_affinity_slack} must be >= 0")
        _check(0 <= self.max_logprobs <= MAX_LOGPROBS, "engine.max_logprobs",
               f"{self.max_logprobs} must be in [0, {MAX_LOGPROBS}] (what a request's SamplingParams may ask for)")
        _check(self.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"), "engine.log_level",
               f"{self.log_level!r} is not DEBUG|INFO|WARNING|ERROR")


@dataclass(frozen=True)
class SchedulerConfig:
    # fcfs: arrival order. priority: lower `priority` first, ties by arrival; preempts the lowest.
    policy: str = "fcfs"
    # Split prompts longer than the step's remaining token budget into chunks.
    enable_chunked_prefill: bool = True
    # Largest prefill chunk one request may take in a step; 0 = the whole remaining budget.
    long_prefill_token_threshold: int = 0
    # Most requests that compute prompt tokens (a prefill chunk) in one step; 0 = no limit.
    max_num_prefill_seqs: int = 0

    def __post_init__(self) -> None:
        _check(self.policy in ("fcfs", "priority"), "scheduler.policy", f"{self.policy!r} is not fcfs|priority")
        _check(self.long_prefill_token_threshold >= 0, "scheduler.long_prefill_token_threshold", "must be >= 0")
        _check(self.max_num_prefill_seqs >= 0, "scheduler.max_num_prefill_seqs", "must be >= 0")


@dataclass(frozen=True)
class CacheConfig:
    # Tokens per KV page.
    page_size: int = 16
    # Fraction of the memory left after the weights that the KV cache takes (device memory on
    # GPU/TPU, `cpu_memory_gb` on CPU).
    hbm_utilization: float = 0.9
    # Exact page count (including the reserved null page 0); overrides hbm_utilization when set.
    num_pages: Optional[int] = None
    # RAM budget on CPU for weights + KV cache, in GiB.
    cpu_memory_gb: float = 4.0
    # Reuse the KV of prompt prefixes already in the cache (hash chain of full pages).
    enable_prefix_caching: bool = True
    # Most of the page pool (a fraction in [0, 1]) kept as cached prefixes no request holds;
    # beyond it the page cached longest ago is evicted first. 1.0 = every free page may keep its prefix.
    prefix_cache_capacity: float = 1.0
    # KV cache dtype: auto (the model dtype), float32 or bfloat16.
    dtype: str = "auto"

    def __post_init__(self) -> None:
        _check(self.page_size >= 1 and self.page_size & (self.page_size - 1) == 0, "cache.page_size",
               f"{self.page_size} must be a power of two >= 1")
        _check(0.0 < self.hbm_utilization <= 1.0, "cache.hbm_utilization",
               f"{self.hbm_utilization} must be in (0, 1]")
        _check(self.num_pages is None or self.num_pages >= 2, "cache.num_pages",
               f"{self.num_pages} must be >= 2 (page 0 is the reserved null page)")
        _check(self.cpu_memory_gb > 0, "cache.cpu_memory_gb", f"{self.cpu_memory_gb} must be > 0")
        _check(0.0 <= self.prefix_cache_capacity <= 1.0, "cache.prefix_cache_capacity",
               f"{self.prefix_cache_capacity} must be in [0, 1]")
        _check(self.dtype in ("auto", "float32", "bfloat16"), "cache.dtype", f"{self.dtype!r} is not auto|float32|bfloat16")


@dataclass(frozen=True)
class BackendConfig:
    # Kernel backend: auto (resolved at start-up by platform, e.g. tpu->pallas, gpu->triton,
    # cpu->cpu, falling back to reference) or a name of surge.kernels.registry.names(). Must
    # equal the name of its conf/backend/<name>.yaml.
    name: str = "auto"
    # That backend's own keys, written flat (backend.num_threads=4): its options dataclass, in its
    # module under surge/kernels/, documents each. Checked against it at load; under auto, against
    # the backend auto resolves to, when the engine starts.
    options: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from surge.kernels import registry

        known = registry.names()
        _check(self.name == registry.AUTO or self.name in known, "backend.name",
               f"{self.name!r} is not {'|'.join([registry.AUTO, *known])}")
        _check(isinstance(self.options, Mapping), "backend.options", f"{self.options!r} is not a mapping")
        if self.name != registry.AUTO:
            try:
                built = registry.make_options(self.name, self.options)
            except ValueError as exc:  # the options dataclass and the registry name the key
                raise ConfigError(str(exc)) from None
            # Values as the options dataclass holds them (e.g. an int where a float is declared).
            object.__setattr__(self, "options", {key: getattr(built, key) for key in self.options})


@dataclass(frozen=True)
class ServerConfig:
    # Interface the OpenAI-compatible server binds to.
    host: str = "127.0.0.1"
    # TCP port; 0 picks a free one.
    port: int = 8000
    # Reject requests without a valid API key (401); /health stays open (/metrics: metrics_require_api_key).
    require_api_key: bool = False
    # Accepted API keys.
    api_keys: List[str] = field(default_factory=list)
    # File of API keys, one per line, optional label after a space.
    api_keys_file: str = ""
    # Salt each request's prefix-cache hashes with its API key, so tenants never share pages.
    isolate_prefix_cache_per_key: bool = False
    # Most requests waiting for a slot before the server answers 503 (with Retry-After).
    max_queue: int = 1024
    # Largest request body in bytes; a bigger one is answered 413 before it is parsed (8 MiB).
    max_request_bytes: int = 8 * 1024 * 1024
    # Longest prompt in tokens; a longer one is answered 400. 0 = the model's context (engine.max_model_len).
    max_prompt_tokens: int = 0
    # Chat requests (/v1/chat/completions, /v1/responses, /v1/messages) without max_tokens generate the rest
    # of the context capped at this many tokens (0 = no cap); /v1/completions without max_tokens generates 16
    # (OpenAI's default).
    default_max_tokens: int = 1024
    # With require_api_key, /metrics needs a key too (Prometheus sends it as a bearer token);
    # false leaves /metrics open. Without require_api_key it is always open.
    metrics_require_api_key: bool = True
    # Live console table of throughput, queue and KV use.
    enable_console_monitor: bool = False
    # Log every request line.
    access_log: bool = False
    # Longest a request's grammar (response_format, structured_outputs, tool_choice) may take to compile;
    # beyond it the request is answered 400.
    structured_output_compile_timeout_s: float = 30.0
    # Where /v1/responses keeps stored responses (store=true, previous_response_id, background):
    # sqlite (a file that survives restarts), memory (lost on exit) or none (store=true is refused).
    responses_store: str = "sqlite"
    # The SQLite file; empty = $SURGE_CACHE/responses.sqlite.
    responses_store_path: str = ""
    # Most stored responses (all keys together); the oldest are evicted first beyond it.
    responses_store_max: int = 10000
    # Split model output into reasoning and answer: none, deepseek_r1 or qwen3 (<think>...</think>).
    reasoning_parser: str = "none"

    def __post_init__(self) -> None:
        _check(0 <= self.port <= 65535, "server.port", f"{self.port} is not a TCP port")
        _check(self.structured_output_compile_timeout_s > 0, "server.structured_output_compile_timeout_s",
               f"{self.structured_output_compile_timeout_s} must be > 0")
        _check(self.max_queue >= 1, "server.max_queue", "must be >= 1")
        _check(self.max_request_bytes >= 1, "server.max_request_bytes", f"{self.max_request_bytes} must be >= 1")
        _check(self.max_prompt_tokens >= 0, "server.max_prompt_tokens",
               f"{self.max_prompt_tokens} must be >= 0 (0 = the model's context)")
        _check(self.default_max_tokens >= 0, "server.default_max_tokens",
               f"{self.default_max_tokens} must be >= 0 (0 = no cap)")
        _check(self.responses_store in ("sqlite", "memory", "none"), "server.responses_store",
               f"{self.responses_store!r} is not sqlite|memory|none")
        _check(self.responses_store_max >= 1, "server.responses_store_max", "must be >= 1")
        _check(self.reasoning_parser in ("none", "deepseek_r1", "qwen3"), "server.reasoning_parser",
               f"{self.reasoning_parser!r} is not none|deepseek_r1|qwen3")


@dataclass(frozen=True)
class SamplingConfig:
    # surge-generate's sampling (surge-serve's requests bring their own, so it does not read this section).
    # Tokens to generate.
    max_tokens: int = 64
    # OpenAI's default temperature is 1; 0 is greedy.
    temperature: float = 1.0
    # Nucleus mass kept, in (0, 1].
    top_p: float = 1.0
    # Keep the k most likely tokens; 0 = off.
    top_k: int = 0
    # Seed of the request; null = the engine's (engine.seed).
    seed: Optional[int] = None
    # Keep generating past end-of-sequence.
    ignore_eos: bool = False
    # Constrain the output (vLLM's fields): one of json (a schema), regex, choice, grammar, json_object,
    # e.g. '+sampling.structured_outputs.choice=[yes,no]'; empty = unconstrained.
    structured_outputs: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.structured_outputs:
            from surge.structured.spec import StructuredOutputsParams

            try:
                StructuredOutputsParams.of(dict(self.structured_outputs))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"sampling.structured_outputs: {exc}") from None
        _check(self.max_tokens >= 1, "sampling.max_tokens", f"{self.max_tokens} must be >= 1")
        _check(self.temperature >= 0, "sampling.temperature", f"{self.temperature} must be >= 0")
        _check(0 < self.top_p <= 1, "sampling.top_p", f"{self.top_p} must be in (0, 1]")


@dataclass(frozen=True)
class BenchConfig:
    # Which workload surge-bench runs: offline | serve | attention | prefix (conf/bench/<mode>.yaml).
    mode: str = "offline"
    # Requests in the workload, submitted together (offline) or as the arrival process lets them (serve);
    # by default engine.max_num_seqs, one full batch, so a sweep over engine.max_num_seqs sweeps the
    # concurrent sequences (`surge-bench -m engine.max_num_seqs=1,8,32,128`).
    num_prompts: int = II("engine.max_num_seqs")
    # Prompt length in tokens (random token ids).
    input_len: int = 32
    # Generated tokens per request (ignore_eos).
    output_len: int = 128
    # Seed for the random prompts.
    seed: int = 0
    # JSONL of {"prompt": ...} lines instead of random prompts; empty = random.
    dataset: str = ""
    # offline / serve, random prompts: random (independent random ids) | copy (copy-heavy: a random piece of
    # 2/5 input_len ids repeated up to input_len, so the natural continuation repeats it, as when editing
    # code or quoting a passage).
    workload: str = "random"
    # Also run the workload through `transformers` and print the ratio ("" or "transformers").
    compare: str = ""
    # serve: endpoint to load; empty = start surge-serve on a free loopback port.
    url: str = ""
    # serve: Poisson request rate per second; 0 = all at once (bounded by max_concurrency).
    request_rate: float = 0.0
    # serve: most requests in flight; 0 = unbounded.
    max_concurrency: int = 0
    # prefix: fractions of the prompt shared between requests.
    prefix_shares: List[float] = field(default_factory=lambda: [0.0, 0.5, 0.9])
    # Warm-up requests run (and excluded from the figures) before timing.
    num_warmup: int = 1
    # serve: none | json_schema (every request constrained by a JSON schema that cannot close before
    # output_len tokens) | compare (both, alternating, on the same server).
    structured_output: str = "none"
    # serve: times the workload runs (alternating variants with structured_output=compare); medians are given.
    rounds: int = 1

    def __post_init__(self) -> None:
        _check(self.mode in ("offline", "serve", "attention", "prefix"), "bench.mode",
               f"{self.mode!r} is not offline|serve|attention|prefix")
        if not isinstance(self.num_prompts, str):  # "${engine.max_num_seqs}" until the tree is resolved
            _check(self.num_prompts >= 1, "bench.num_prompts", "must be >= 1")
        _check(self.input_len >= 1, "bench.input_len", "must be >= 1")
        _check(self.output_len >= 1, "bench.output_len", "must be >= 1")
        _check(self.workload in ("random", "copy"), "bench.workload", f"{self.workload!r} is not random|copy")
        _check(self.workload == "random" or (self.mode in ("offline", "serve") and not self.dataset), "bench.workload",
               f"{self.workload!r} needs bench.mode offline|serve and no bench.dataset")
        _check(self.structured_output in ("none", "json_schema", "compare"), "bench.structured_output",
               f"{self.structured_output!r} is not none|json_schema|compare")
        _check(self.rounds >= 1, "bench.rounds", "must be >= 1")
        _check(self.compare in ("", "transformers"), "bench.compare", f"{self.compare!r} is not ''|transformers")


@dataclass(frozen=True)
class SurgeConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    # surge-generate: the prompt to complete (chat-templated when `chat` is true).
    prompt: str = "The capital of France is"
    # surge-generate: wrap the prompt in the model's chat template.
    chat: bool = False


# Short names accepted by Engine.from_pretrained(**overrides), mapped to their config keys.
SHORT_NAMES = {
    "dtype": "model.dtype",
    "quantize": "model.quantize",
    "tokenizer": "model.tokenizer",
    "backend": "backend.name",
    "max_model_len": "engine.max_model_len",
    "max_num_seqs": "engine.max_num_seqs",
    "max_num_batched_tokens": "engine.max_num_batched_tokens",
    "token_buckets": "engine.token_buckets",
    "seq_buckets": "engine.seq_buckets",
    "compile_at_startup": "engine.compile_at_startup",
    "compilation_cache": "engine.compilation_cache",
    "max_logprobs": "engine.max_logprobs",
    "seed": "engine.seed",
    "async_scheduling": "engine.async_scheduling",
    "structured_output_fast_forward": "engine.structured_output_fast_forward",
    "speculative_method": "engine.speculative.method",
    "num_speculative_tokens": "engine.speculative.num_speculative_tokens",
    "draft_model": "engine.speculative.draft_model",
    "draft_num_pages": "engine.speculative.draft_num_pages",
    "speculative_cost_model": "engine.speculative.cost_model",
    "page_size": "cache.page_size",
    "num_pages": "cache.num_pages",
    "hbm_utilization": "cache.hbm_utilization",
    "cpu_memory_gb": "cache.cpu_memory_gb",
    "enable_prefix_caching": "cache.enable_prefix_caching",
    "prefix_cache_capacity": "cache.prefix_cache_capacity",
    "kv_cache_dtype": "cache.dtype",
    "scheduling_policy": "scheduler.policy",
    "enable_chunked_prefill": "scheduler.enable_chunked_prefill",
    "long_prefill_token_threshold": "scheduler.long_prefill_token_threshold",
    "max_num_prefill_seqs": "scheduler.max_num_prefill_seqs",
}


def register_configs() -> None:
    """Register the schema in Hydra's ConfigStore (primary configs list `surge_schema` first)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="surge_schema", node=schema())


def schema() -> DictConfig:
    """The typed (unknown keys fail) but writable config tree of SurgeConfig."""
    node = OmegaConf.structured(SurgeConfig)
    # Frozen dataclasses mark every section read-only; composition needs to write them.
    stack = [node]
    while stack:
        current = stack.pop()
        current._set_flag("readonly", False)
        stack.extend(v for v in current.values() if isinstance(v, DictConfig))
    # A backend's keys are its own (its options dataclass), so `backend` is open here; to_config folds them
    # into backend.options and the registry checks them against the named backend.
    node.backend._set_flag("struct", False)
    # Dataclass-typed nodes already reject unknown keys; no explicit struct flag on the root, which Hydra
    # would otherwise propagate into its own `hydra.callbacks` dict.
    return node


def to_config(cfg: DictConfig | SurgeConfig) -> SurgeConfig:
    """Turn a composed DictConfig into validated frozen dataclasses (raises ConfigError)."""
    if isinstance(cfg, SurgeConfig):
        return cfg
    cfg = _fold_backend_options(cfg)
    for key in _unknown_keys(cfg, SurgeConfig, ""):  # e.g. added with '+' on the command line
        raise ConfigError(unknown_key_message(key))
    try:
        merged = OmegaConf.merge(schema(), cfg)
        obj = OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"invalid config: {_one_line(exc)}") from None
    assert isinstance(obj, SurgeConfig)
    return obj


def _fold_backend_options(cfg: DictConfig) -> DictConfig:
    """`backend: {name: cpu, num_threads: 4}` (the YAML and command-line spelling) -> backend.options."""
    backend = cfg.get("backend") if isinstance(cfg, DictConfig) else None
    if not isinstance(backend, DictConfig):
        return cfg
    flat = [key for key in backend.keys() if key not in ("name", "options")]
    if not flat:
        return cfg
    folded = OmegaConf.to_container(cfg, resolve=True)
    section = folded["backend"]
    nested = section.get("options") or {}
    options = {**nested, **{key: section.pop(key) for key in flat}}
    clash = sorted(set(nested) & set(flat))
    _check(not clash, f"backend.{clash[0] if clash else ''}", "is set both flat and under backend.options")
    section["options"] = options
    return OmegaConf.create(folded)


def config_keys(cls: type = SurgeConfig, prefix: str = "") -> List[str]:
    """Every dotted key of the schema, e.g. 'cache.page_size'."""
    keys: List[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            keys.extend(config_keys(kind, f"{prefix}{f.name}."))
        else:
            keys.append(prefix + f.name)
    return keys


def unknown_key_message(key: str) -> str:
    """'unknown config key X' with the closest real keys, for a typo or a key added with '+'."""
    import difflib

    known = config_keys()
    section = key.rsplit(".", 1)[0] + "." if "." in key else ""
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.75)
    if close:
        hint = f"; did you mean {' or '.join(repr(k) for k in close)}?"
    elif section and any(k.startswith(section) for k in known):
        hint = f"; '{section[:-1]}' has {', '.join(k[len(section):] for k in known if k.startswith(section))}"
    else:
        hint = f"; the top-level keys are {', '.join(f.name for f in dataclasses.fields(SurgeConfig))}"
    return f"unknown config key '{key}'{hint}"


def _unknown_keys(node: Any, cls: type, prefix: str) -> List[str]:
    if not isinstance(node, DictConfig):
        return []
    hints = typing.get_type_hints(cls)
    found: List[str] = []
    for key in node.keys():
        if key not in hints:
            found.append(f"{prefix}{key}")
        elif dataclasses.is_dataclass(hints[key]):
            found.extend(_unknown_keys(node._get_node(key), hints[key], f"{prefix}{key}."))
    return found


def _one_line(exc: BaseException) -> str:
    """An OmegaConf message without its `full_key:` / `object_type=` detail lines."""
    lines = [line.strip() for line in str(exc).splitlines()]
    return " ".join(line for line in lines if line and not line.startswith(("full_key:", "reference_type=",
                                                                              "object_type=")))


def make_config(model: str | None = None, **overrides: Any) -> SurgeConfig:
    """Build a SurgeConfig from short names (see SHORT_NAMES) or dotted keys."""
    base = schema()
    if model is not None:
        key = "model.path" if _looks_like_path(model) else "model.name"
        OmegaConf.update(base, key, model)
        if key == "model.path":
            OmegaConf.update(base, "model.name", model)
    for short, value in overrides.items():
        key = SHORT_NAMES.get(short, short)
        if "." not in key:
            raise ConfigError(
                f"unknown option '{short}': use one of {sorted(SHORT_NAMES)} or a dotted key like 'cache.page_size'")
        try:
            OmegaConf.update(base, key, value, merge=True)
        except Exception as exc:  # omegaconf's own messages name the key; keep them.
            raise ConfigError(f"invalid option '{short}' ({key}={value!r}): {exc}") from None
    return to_config(base)


def _looks_like_path(model: str) -> bool:
    import os

    return model.endswith(".gguf") or os.sep in model or os.path.isdir(model)


def replace(cfg: SurgeConfig, **sections: Any) -> SurgeConfig:
    """Functional update of whole sections: replace(cfg, cache=new_cache)."""
    return dataclasses.replace(cfg, **sections)


__all__ = [
    "BackendConfig", "BenchConfig", "CacheConfig", "ConfigError", "EngineConfig", "MISSING", "ModelConfig",
    "DistributedConfig", "SamplingConfig", "SchedulerConfig", "ServerConfig", "SpeculativeConfig", "SurgeConfig", "SHORT_NAMES", "config_keys", "make_config",
    "register_configs", "to_config", "unknown_key_message",
]
