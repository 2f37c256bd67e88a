"""Every example of EasyDeL's eSurge, vSurge and oDrive pages, run as written with `surge.` for `ed.`.

The pages are ../shared/reference/esurge.rst, vsurge-example.rst and odrive-odriver.rst. What differs
from the page, and only that:
- the model-loading lines become the catalogue name `MODEL` (the embedded SmolLM2-135M-Instruct GGUF),
  and `AutoTokenizer.from_pretrained(model_id)` becomes the same tokenizer loaded by transformers from
  that GGUF file (a transformers tokenizer object, as the pages pass);
- prompts keep their text, `max_tokens` / `max_new_tokens` are lowered to a few tokens, and the
  vSurge page's `prefill_length` of 4096 is 128, so the module stays fast on a 2-core CPU;
- servers and exporters bind loopback on free ports instead of 0.0.0.0:8000 / 9090, the console
  monitor draws into a captured rich Console, and the chat loop reads scripted input.
Examples whose arguments are identical share one engine (the quick start's, the chat application's);
the configuration examples each build their own, once.
"""

from __future__ import annotations

import asyncio
import gc
import io
import os
import socket
import threading
import time
from typing import Dict, List

import httpx
import pytest

import surge

MODEL = "smollm2-135m-instruct"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def hf_tokenizer_of(smollm2_gguf):
    """`AutoTokenizer.from_pretrained(model_id)` for the embedded model: a fresh transformers tokenizer."""
    from transformers import AutoTokenizer

    directory, name = os.path.split(smollm2_gguf)

    def load():
        return AutoTokenizer.from_pretrained(directory, gguf_file=name)

    return load


def assert_all_pages_returned(engine) -> None:
    stats = engine.stats()
    assert stats.pages.num_used_pages == 0 and stats.num_running == 0 and stats.num_waiting == 0
    engine.block_manager.check_integrity()


@pytest.fixture(autouse=True)
def collect_garbage():
    """Free each finished example's engine (its KV cache is GiBs) before the next one builds its own."""
    yield
    gc.collect()


# ---- Quick start, streaming, batch, monitoring, API server: one engine ------------------------------------
class TestQuickStartEngine:
    @pytest.fixture(scope="class")
    @classmethod
    def engine(cls, hf_tokenizer_of):
        # Load model and tokenizer
        model_id = MODEL
        tokenizer = hf_tokenizer_of()
        tokenizer.pad_token_id = tokenizer.eos_token_id

        model = model_id

        # Initialize eSurge engine
        engine = surge.eSurge(
            model=model,
            tokenizer=tokenizer,
            max_model_len=8192,
            max_num_seqs=16,
            hbm_utilization=0.9,
            page_size=64,
        )
        assert engine.tokenizer is tokenizer
        yield engine

    def test_basic_usage(self, engine):
        response = engine.generate(
            "What is the meaning of life?",
            sampling_params=surge.SamplingParams(
                max_tokens=8,
                temperature=0.7,
            )
        )
        print(response[0].outputs[0].text)
        assert isinstance(response[0].outputs[0].text, str) and response[0].outputs[0].text
        assert 1 <= len(response[0].outputs[0].token_ids) <= 8
        assert engine.max_model_len == 8192 and engine.kv_plan.page_size == 64
        assert engine.config.engine.max_num_seqs == 16 and engine.config.cache.hbm_utilization == 0.9

    def test_streaming_generation(self, engine):
        deltas, outputs = [], []
        # Stream tokens as they're generated
        for output in engine.stream(
            "Tell me a story about a robot",
            sampling_params=surge.SamplingParams(
                max_tokens=8,
                temperature=0.8,
            )
        ):
            print(output.delta_text, end="", flush=True)
            deltas.append(output.delta_text)
            outputs.append(output)
        assert len(outputs) > 1 and outputs[-1].finished
        assert "".join(deltas) == outputs[-1].outputs[0].text
        assert_all_pages_returned(engine)

    def test_batch_processing(self, engine):
        prompts = [
            "Explain quantum computing",
            "What is machine learning?",
            "How does the internet work?",
        ]

        # Process multiple prompts
        outputs = engine.generate(
            prompts,
            sampling_params=surge.SamplingParams(
                max_tokens=8,
                temperature=0.7,
            )
        )

        for output in outputs:
            print(f"Request {output.request_id}: {output.outputs[0].text}")
        assert [o.prompt for o in outputs] == prompts
        assert len({o.request_id for o in outputs}) == 3 and all(o.outputs[0].token_ids for o in outputs)

    def test_console_monitoring(self, engine):
        from rich.console import Console

        screen = io.StringIO()
        # Start Prometheus exporter and console monitor
        handle = engine.start_monitoring(enable_console=True, prometheus_port=free_port(), refresh_interval=0.05,
                                         console=Console(file=screen, width=120, force_terminal=True))
        try:
            engine.generate(["Explain quantum computing", "What is machine learning?"],
                            sampling_params=surge.SamplingParams(max_tokens=8, temperature=0.7), use_tqdm=False)
            time.sleep(0.3)
        finally:
            handle.stop()
        drawn = screen.getvalue()
        # The console will display: request throughput, token generation rate, memory utilization,
        # cache hit rates, active request count.
        for row in ("request throughput", "token generation rate", "memory (KV cache)", "cache hit rate",
                    "active requests"):
            assert row in drawn, row
        assert "tok/s" in drawn and "req/s" in drawn and "pages)" in drawn

    def test_grafana_prometheus(self, engine):
        from prometheus_client.parser import text_string_to_metric_families

        port = free_port()
        # Start Prometheus metrics server
        handle = engine.start_monitoring(prometheus_port=port)
        try:
            # Access metrics at http://localhost:9090/metrics (here: the free port)
            assert handle.url == f"http://127.0.0.1:{port}/metrics"
            text = httpx.get(handle.url, timeout=5).text
        finally:
            handle.stop()
        values = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
        assert values["surge:num_total_pages"] == engine.stats().pages.num_total_pages
        assert values["surge:num_cached_pages"] == engine.stats().pages.num_cached_pages
        assert values["surge:num_requests_running"] == 0

    def test_api_server_with_keys_and_the_openai_client(self, engine):
        import openai

        # Start monitoring (optional)
        monitor = engine.start_monitoring(prometheus_port=free_port())

        # Launch API server (API keys optional)
        server = surge.eSurgeApiServer(
            engine,
            require_api_key=True,                 # Optional: enforce keys at runtime
            api_keys={"demo-key": {"label": "UI"}},  # Pre-provisioned keys
        )

        # Additional keys can be issued programmatically
        notebook_key = server.generate_api_key(label="notebook")
        print("Generated key:", notebook_key)

        port = free_port()
        thread = threading.Thread(target=server.fire, kwargs={"host": "127.0.0.1", "port": port}, daemon=True)
        thread.start()
        try:
            wait_healthy(port)
            client = openai.OpenAI(
                base_url=f"http://localhost:{port}/v1",
                api_key="demo-key",  # Matches the key configured on the server
            )

            response = client.chat.completions.create(
                model="default",
                messages=[
                    {"role": "user", "content": "Hello, how are you?"}
                ],
                temperature=0.7,
                max_tokens=8,
                stream=True,  # Streaming is supported
            )

            pieces = []
            for chunk in response:
                print(chunk.choices[0].delta.content, end="")
                pieces.append(chunk.choices[0].delta.content or "")
            assert "".join(pieces)

            # Keys may come as a Bearer token, an X-API-Key header or an api_key query parameter.
            base = f"http://127.0.0.1:{port}"
            assert httpx.get(f"{base}/v1/models", headers={"X-API-Key": "demo-key"}).status_code == 200
            assert httpx.get(f"{base}/v1/models", params={"api_key": notebook_key}).status_code == 200
            assert httpx.get(f"{base}/v1/models").status_code == 401
            reply = openai.OpenAI(base_url=f"{base}/v1", api_key=notebook_key).completions.create(
                model="default", prompt="Hello", max_tokens=3, temperature=0, extra_body={"ignore_eos": True})
            assert reply.usage.completion_tokens == 3

            # /metrics carries per-key prompt and completion token totals, by each key's label; with keys
            # required it needs one too (Prometheus sends it as a bearer token).
            assert httpx.get(f"{base}/metrics", timeout=5).status_code == 401
            metrics = httpx.get(f"{base}/metrics", headers={"Authorization": "Bearer demo-key"}, timeout=5).text
            assert key_total(metrics, "surge:api_key_completion_tokens_total", "UI") >= 1
            assert key_total(metrics, "surge:api_key_prompt_tokens_total", "UI") >= 1
            assert key_total(metrics, "surge:api_key_completion_tokens_total", "notebook") == 3
        finally:
            server.shutdown()
            thread.join(timeout=60)
            monitor.stop()
        assert not thread.is_alive()
        assert_all_pages_returned(engine)


def wait_healthy(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the server did not come up"
        time.sleep(0.1)


def key_total(metrics_text: str, name: str, label: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for family in text_string_to_metric_families(metrics_text) for s in family.samples
               if s.name == name and s.labels.get("label") == label)


# ---- Configuration examples: each builds its own engine -----------------------------------------------------
pytestmark_slow = pytest.mark.slow


@pytestmark_slow
def test_engine_configuration(hf_tokenizer_of):
    model, tokenizer = MODEL, hf_tokenizer_of()
    engine = surge.eSurge(
        model=model,
        tokenizer=tokenizer,

        # Model configuration
        max_model_len=16384,          # Maximum sequence length
        max_num_seqs=32,               # Maximum concurrent sequences

        # Memory configuration
        hbm_utilization=0.9,           # HBM utilization ratio (0.0-1.0)
        page_size=64,                  # KV cache page size

        # Performance options
        runner_verbose=False,          # Verbose runner logging
        min_input_pad=32,              # Minimum input padding

        # Naming
        esurge_name="my-engine",       # Engine instance name
    )
    assert engine.esurge_name == "my-engine"
    assert min(t for t, _ in engine.runner.buckets) == 32  # no step is padded to fewer than 32 tokens
    assert engine.config.engine.log_level == "INFO"
    out = engine.generate("Explain quantum computing", surge.SamplingParams(max_tokens=4))[0]
    assert 1 <= len(out.outputs[0].token_ids) <= 4


@pytestmark_slow
def test_advanced_configuration(hf_tokenizer_of):
    from surge.esurge import (
        Config,
        SchedulerConfig,
        CacheConfig,
    )

    model, tokenizer = MODEL, hf_tokenizer_of()
    engine = surge.eSurge(
        model=model,
        tokenizer=tokenizer,
        max_model_len=8192,
        max_num_seqs=16,
        max_num_batched_tokens=2048,  # Optional
        enable_prefix_caching=True,
        page_size=16,
        hbm_utilization=0.9,
    )
    assert isinstance(engine.config, Config)
    assert isinstance(engine.config.scheduler, SchedulerConfig) and isinstance(engine.config.cache, CacheConfig)
    assert engine.config.engine.max_num_batched_tokens == 2048 and engine.config.cache.enable_prefix_caching
    out = engine.generate("What is machine learning?", surge.SamplingParams(max_tokens=4))[0]
    assert out.outputs[0].token_ids


@pytestmark_slow
@pytest.mark.parametrize("platform", ["tpu", "gpu", "memory-constrained"])
def test_performance_tuning_settings(platform, hf_tokenizer_of):
    model, tokenizer = MODEL, hf_tokenizer_of()
    if platform == "tpu":
        engine = surge.eSurge(
            model=model,
            tokenizer=tokenizer,
            max_model_len=8192,
            max_num_seqs=64,        # TPUs handle larger batches well
            page_size=128,          # Larger pages for TPU
            use_aot_forward=True,   # Essential for TPU performance
            hbm_utilization=0.95,   # TPUs have abundant HBM
        )
        expected = (8192, 64, 128, 0.95)
        assert engine.config.engine.compile_at_startup
        assert engine.stats().num_compiled_buckets == len(engine.runner.buckets)
    elif platform == "gpu":
        engine = surge.eSurge(
            model=model,
            tokenizer=tokenizer,
            max_model_len=4096,
            max_num_seqs=32,
            page_size=64,
            hbm_utilization=0.85,       # Leave headroom for kernels
        )
        expected = (4096, 32, 64, 0.85)
    else:
        engine = surge.eSurge(
            model=model,
            tokenizer=tokenizer,
            max_model_len=2048,     # Reduce max length
            max_num_seqs=8,         # Fewer concurrent sequences
            page_size=32,           # Smaller pages
            hbm_utilization=0.7,    # Conservative memory usage
        )
        expected = (2048, 8, 32, 0.7)
    cfg = engine.config
    assert (engine.max_model_len, cfg.engine.max_num_seqs, engine.kv_plan.page_size,
            cfg.cache.hbm_utilization) == expected
    out = engine.generate(["How does the internet work?"] * 2, surge.SamplingParams(max_tokens=3), use_tqdm=False)
    assert all(o.outputs[0].token_ids for o in out)
    assert_all_pages_returned(engine)


@pytestmark_slow
def test_prefix_caching(hf_tokenizer_of):
    from surge.esurge import CacheConfig

    model, tokenizer = MODEL, hf_tokenizer_of()
    cache_config = CacheConfig(
        enable_prefix_caching=True,
        prefix_cache_capacity=0.3,  # 30% of cache for prefixes
    )

    engine = surge.eSurge(
        model=model,
        tokenizer=tokenizer,
        cache_config=cache_config,
    )
    stats = engine.stats()
    assert stats.pages.max_cached_pages == int(0.3 * stats.pages.num_total_pages)
    system = "You are a helpful assistant that answers questions about science in one short sentence. " * 2
    params = surge.SamplingParams(max_tokens=3, temperature=0)
    engine.generate(system + "What is gravity?", params)
    again = engine.generate(system + "What is light?", params)[0]
    assert again.metrics.num_cached_tokens >= engine.kv_plan.page_size  # the shared prefix was reused
    assert_all_pages_returned(engine)


def test_custom_scheduling_queue():
    from surge.esurge import PriorityRequestQueue
    from surge.scheduler.queues import make_queue

    # Priority scheduling is configured in the scheduler (scheduling_policy="priority").
    assert isinstance(make_queue("priority"), PriorityRequestQueue)


def test_argument_names_fail_clearly():
    from surge.esurge import CacheConfig

    with pytest.raises(ValueError, match="max_new_tokens=100 and max_tokens=50 differ"):
        surge.SamplingParams(max_tokens=50, max_new_tokens=100)
    assert surge.SamplingParams(max_new_tokens=100, temperature=0.7).max_tokens == 100
    with pytest.raises(ValueError, match="page_size=32 contradicts cache_config.page_size=16"):
        surge.eSurge(model=MODEL, page_size=32, cache_config=CacheConfig(page_size=16))
    with pytest.raises(ValueError, match="cache_config must be a surge CacheConfig"):
        surge.eSurge(model=MODEL, cache_config={"page_size": 16})


# ---- Chat application and batch-processing service: one engine ---------------------------------------------
class TestChatApplication:
    @pytest.fixture(scope="class")
    @classmethod
    def chat_engine(cls, hf_tokenizer_of):
        def create_chat_engine(model_id=MODEL):
            """Create an eSurge engine for chat."""
            tokenizer = hf_tokenizer_of()
            tokenizer.pad_token_id = tokenizer.eos_token_id

            model = model_id

            engine = surge.eSurge(
                model=model,
                tokenizer=tokenizer,
                max_model_len=4096,
                max_num_seqs=16,
                hbm_utilization=0.9,
                page_size=64,
                esurge_name="chat-engine",
            )

            return engine

        engine = create_chat_engine()
        yield engine

    def test_chat_loop(self, chat_engine, monkeypatch, capsys):
        def chat_loop(engine):
            """Interactive chat loop."""
            conversation = []

            while True:
                user_input = input("\nYou: ")
                if user_input.lower() in ['quit', 'exit']:
                    break

                conversation.append({"role": "user", "content": user_input})

                # Format conversation for model
                prompt = format_conversation(conversation)

                # Generate response
                print("Assistant: ", end="", flush=True)
                response_text = ""

                for output in engine.stream(
                    prompt,
                    sampling_params=surge.SamplingParams(
                        max_tokens=8,
                        temperature=0.7,
                        stop=["</s>", "\n\nYou:"],
                    )
                ):
                    print(output.delta_text, end="", flush=True)
                    response_text += output.delta_text

                print()  # New line after response
                conversation.append({"role": "assistant", "content": response_text})
            return conversation

        def format_conversation(messages):
            """Format messages for model input."""
            formatted = ""
            for msg in messages:
                role = msg["role"].capitalize()
                formatted += f"{role}: {msg['content']}\n"
            formatted += "Assistant: "
            return formatted

        scripted = iter(["Hello there", "What is a robot?", "quit"])
        monkeypatch.setattr("builtins.input", lambda _prompt="": next(scripted))
        engine = chat_engine
        monitor = engine.start_monitoring(prometheus_port=free_port())
        try:
            print("Chat engine ready! Type 'quit' to exit.")
            conversation = chat_loop(engine)
        finally:
            monitor.stop()
        assert engine.esurge_name == "chat-engine"
        assert [m["role"] for m in conversation] == ["user", "assistant", "user", "assistant"]
        assert all(m["content"] for m in conversation)
        printed = capsys.readouterr().out
        assert printed.count("Assistant: ") == 2 and conversation[1]["content"] in printed
        assert_all_pages_returned(engine)

    def test_batch_processing_service(self, chat_engine):
        class BatchProcessor:
            """Batch text processing service."""

            def __init__(self, engine: surge.eSurge):
                self.engine = engine
                self.pending_requests = {}

            async def process_batch(
                self,
                texts: List[str],
                sampling_params: surge.SamplingParams = None,
            ) -> List[str]:
                """Process a batch of texts."""
                if sampling_params is None:
                    sampling_params = surge.SamplingParams(
                        max_new_tokens=8,
                        temperature=0.7,
                    )

                # Submit all requests
                request_ids = []
                for text in texts:
                    request_id = self.engine.add_request(
                        prompt=text,
                        sampling_params=sampling_params,
                    )
                    request_ids.append(request_id)
                    self.pending_requests[request_id] = None

                # Wait for all completions
                results = {}
                while len(results) < len(request_ids):
                    outputs = self.engine.step()

                    for output in outputs:
                        if output.finished:
                            results[output.request_id] = output.outputs[0].text
                            self.pending_requests.pop(output.request_id, None)

                    await asyncio.sleep(0.01)  # Small delay

                # Return in original order
                return [results[rid] for rid in request_ids]

            async def process_stream(
                self,
                texts: List[str],
                callback=None,
            ):
                """Process texts with streaming callbacks."""
                for text in texts:
                    request_id = self.engine.add_request(
                        prompt=text,
                        sampling_params=surge.SamplingParams(
                            max_new_tokens=8,
                            temperature=0.7,
                        ),
                    )

                    # Stream this request to completion
                    while True:
                        outputs = self.engine.step()

                        for output in outputs:
                            if output.request_id == request_id:
                                if callback:
                                    await callback(output)

                                if output.finished:
                                    break
                        else:
                            await asyncio.sleep(0.01)
                            continue
                        break

        streamed: Dict[str, list] = {}

        async def collect(output):
            streamed.setdefault(output.request_id, []).append(output)

        # Usage example
        async def main():
            engine = chat_engine  # From previous example
            processor = BatchProcessor(engine)

            # Batch processing
            prompts = [
                "Explain quantum computing in simple terms",
                "What are the benefits of exercise?",
                "How does photosynthesis work?",
            ]

            results = await processor.process_batch(prompts)
            for prompt, result in zip(prompts, results):
                print(f"Q: {prompt}\nA: {result}\n")

            await processor.process_stream(prompts[:2], callback=collect)
            return processor, results

        processor, results = asyncio.run(main())
        # A raw prompt may end at once: on "How does photosynthesis work?" SmolLM2's most likely first token
        # is <|im_end|> (transformers agrees), so an empty completion is a valid result, not a lost one.
        assert len(results) == 3 and all(isinstance(r, str) for r in results) and results[0] and results[1]
        assert processor.pending_requests == {}
        assert len(streamed) == 2
        for outputs in streamed.values():
            assert outputs[-1].finished and len(outputs) > 1
            assert "".join(o.delta_text for o in outputs) == outputs[-1].outputs[0].text
        assert_all_pages_returned(chat_engine)


# ---- vSurge with the oDrive driver ---------------------------------------------------------------------------
class TestVSurge:
    @pytest.fixture(scope="class")
    @classmethod
    def vsurge(cls, hf_tokenizer_of):
        pretrained_model_name_or_path = MODEL
        max_length = 8192
        prefill_length = 128  # the page's 4096, lowered for CI
        processor = hf_tokenizer_of()
        processor.padding_side = "left"
        processor.pad_token_id = processor.eos_token_id

        model = pretrained_model_name_or_path
        assert max_length  # the page passes it to the model loader only

        max_concurrent_decodes = 64
        max_concurrent_prefill = 1

        vs = surge.vSurge.from_model(
            model=model,
            processor=processor,
            max_prefill_length=prefill_length,
            max_concurrent_prefill=max_concurrent_prefill,
            max_concurrent_decodes=max_concurrent_decodes,
            seed=877,
        )
        assert vs.processor is processor
        vs.compile()
        vs.start()
        yield vs
        vs.stop()

    def test_arguments_map_onto_scheduler_knobs(self, vsurge):
        cfg = vsurge.engine.config
        assert cfg.scheduler.max_num_prefill_seqs == 1  # max_concurrent_prefill
        assert cfg.scheduler.long_prefill_token_threshold == 128  # max_prefill_length: the prefill chunk
        assert cfg.engine.max_num_seqs == 64 and cfg.engine.seed == 877
        assert vsurge.get_total_concurrent_requests() == 64 and vsurge.num_used_slots == 0
        assert vsurge.driver_name == f"odriver-{MODEL}" and vsurge.vsurge_name == vsurge.driver_name
        assert vsurge.engine.stats().num_compiles_since_warmup == 0

    def test_non_streaming_generation(self, vsurge, capsys):
        surge_ = vsurge
        non_streaming_prompts = [
            "USER:What is the capital of France?\nASSISTANT:",
            "USER:Explain the concept of recursion\nASSISTANT:",
        ]
        non_streaming_sampling_params = [
            surge.SamplingParams(max_tokens=4, temperature=0.1),
            surge.SamplingParams(max_tokens=6, temperature=0.6, top_p=0.9),
        ]

        async def run_non_streaming():
            final_results = await surge_.generate(
                prompts=non_streaming_prompts,
                sampling_params=non_streaming_sampling_params,
                stream=False,
            )

            # final_results is a list of ReturnSample objects (one per prompt)
            for i, result in enumerate(final_results):
                print(f"Non-Streaming Result for Prompt {i + 1}:")
                print(f"  Generated Text: {result.text}")
                print(f"  Tokens per second: {result.tokens_per_second}")
            return final_results

        final_results = asyncio.run(run_non_streaming())
        assert len(final_results) == 2 and all(isinstance(r, surge.ReturnSample) for r in final_results)
        assert [1 <= r.num_generated_tokens <= n for r, n in zip(final_results, (4, 6))] == [True, True]
        assert all(r.text and r.tokens_per_second > 0 for r in final_results)
        assert "Tokens per second" in capsys.readouterr().out

    def test_streaming_generation(self, vsurge):
        surge_ = vsurge
        streaming_prompts = [
            "USER:Tell me a short story about a cat.\nASSISTANT:",
            "USER:Describe the process of photosynthesis.\nASSISTANT:",
        ]
        streaming_sampling_params = [
            surge.SamplingParams(max_tokens=5, temperature=0.7, ignore_eos=True),
            surge.SamplingParams(max_tokens=7, temperature=0.5, ignore_eos=True),
        ]
        updates: Dict[int, List[str]] = {0: [], 1: []}

        async def run_streaming():
            # generate with stream=True returns an async iterator
            async for request_output in surge_.generate(
                prompts=streaming_prompts,
                sampling_params=streaming_sampling_params,
                stream=True,
            ):
                # request_output is a list of ReturnSample objects, one for each prompt
                for i, sample in enumerate(request_output):
                    # The text field in streaming provides the cumulative generated text so far
                    print(f"Streaming Update for Prompt {i + 1}: {sample.text}")
                    if not updates[i] or updates[i][-1] != sample.text:
                        updates[i].append(sample.text)
                    last[i] = sample

        last: Dict[int, surge.ReturnSample] = {}
        asyncio.run(run_streaming())
        for i, num_tokens in ((0, 5), (1, 7)):
            assert len(updates[i]) > 1, updates[i]  # more than one update per prompt
            texts = [t for t in updates[i] if t]
            assert all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:]))  # cumulative
            assert last[i].num_generated_tokens == num_tokens and last[i].finish_reason == "length"
        assert_all_pages_returned(vsurge.engine)

    def test_submit_request_and_slots(self, vsurge):
        async def main():
            tasks = [vsurge.submit_request("USER:Say hi\nASSISTANT:",
                                           surge.SamplingParams(max_tokens=20, ignore_eos=True)) for _ in range(2)]
            busiest = 0
            while not all(t.done() for t in tasks):
                busiest = max(busiest, vsurge.num_used_slots)
                await asyncio.sleep(0.005)
            return busiest, [t.result() for t in tasks]

        busiest, results = asyncio.run(main())
        assert busiest >= 1 and all(r.num_generated_tokens == 20 for r in results)
        with pytest.raises(RuntimeError, match="running asyncio event loop"):
            vsurge.submit_request("hi")
        assert vsurge.num_used_slots == 0


@pytestmark_slow
def test_create_odriver_with_every_listed_parameter(hf_tokenizer_of):
    model, processor = MODEL, hf_tokenizer_of()
    prefill_length, page_size, hbm_utilization, max_concurrent_decodes = 128, 32, 0.5, 8

    surge_ = surge.vSurge.create_odriver(
        model=model,
        processor=processor,
        max_prefill_length=prefill_length,
        prefill_lengths=[prefill_length],
        page_size=page_size,
        hbm_utilization=hbm_utilization,
        max_concurrent_prefill=max_concurrent_decodes,
        max_concurrent_decodes=max_concurrent_decodes,
        seed=877,
        vsurge_name="my_odrive_server",
    )
    cfg = surge_.engine.config
    assert surge_.vsurge_name == "my_odrive_server" and surge_.processor is processor
    assert list(surge_.engine.runner.buckets) == [(128, 8)]  # prefill_lengths: the token buckets
    assert (cfg.cache.page_size, cfg.cache.hbm_utilization, cfg.scheduler.max_num_prefill_seqs,
            cfg.scheduler.long_prefill_token_threshold) == (32, 0.5, 8, 128)
    surge_.compile()
    surge_.start()
    try:
        results = asyncio.run(surge_.generate(["USER:Hi\nASSISTANT:"] * 3, surge.SamplingParams(max_tokens=3)))
        assert [type(r) for r in results] == [surge.ReturnSample] * 3 and all(r.text for r in results)
    finally:
        surge_.stop()
    assert_all_pages_returned(surge_.engine)
