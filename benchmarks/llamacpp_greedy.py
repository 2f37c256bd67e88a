"""Greedy SmolLM2 tokens from surge and from llama.cpp on the same GGUF files, compared token by token.

In: a llama.cpp build folder holding bin/llama-server (benchmarks/cpu_vs_llamacpp.sh build makes one),
GGUF files (default: the embedded SmolLM2 Q4_1), surge's model.dtype (default quantized: Q4_1 / Q8_0
weights stay quantized). Out: per file and prompt, whether the 32 greedy token ids agree and, at the
first position where they do not, both engines' top-2 tokens and log-probability margins there (the
context up to that position is the same on both sides, so the margins are comparable); with --reference
(the --json of a float32 run on the file's exact F32 conversion), also that run's top-2 there; with --json,
all token ids and top-2 log-probs. Runs outside the test suite; it times nothing.

Both engines get the same prompt token ids: llama.cpp's /tokenize of the raw prompt with its special
tokens (SmolLM2's GGUF sets add_bos_token false, so no BOS), checked against surge's own tokenization.
llama.cpp decodes with temperature 0 and top-k 1, ignore_eos, and reports the log-softmax of its raw
logits (n_probs, post_sampling_probs false); surge reports log_softmax of its raw logits (logprobs=2).
ignore_eos differs: llama.cpp bars end-of-sequence from sampling, surge samples it and goes on, so a
position where both rank it first counts as equal up to the end of the sequence.

    B=~/.cache/surge/llamacpp/build; Q4_1=~/.cache/surge/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
    $B/bin/llama-quantize --allow-requantize $Q4_1 q4_1-as-f32.gguf F32     # exact dequantization
    python benchmarks/llamacpp_greedy.py --llamacpp-build $B --dtype float32 q4_1-as-f32.gguf --json f32.json
    python benchmarks/llamacpp_greedy.py --llamacpp-build $B $Q4_1 --reference f32.json --json q4_1.json
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

PROMPTS = (
    "The capital of France is",
    "Once upon a time, a robot",
    "def fibonacci(n):",
    "The three primary colors are",
)


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def llama_server(build: Path, gguf: str, threads: int, log_path: Path):
    """A llama-server on a free loopback port for one GGUF; yields its base URL."""
    binary = build / "bin" / "llama-server"
    if not binary.is_file():
        sys.exit(f"--llamacpp-build: {binary} not found (benchmarks/cpu_vs_llamacpp.sh build makes it)")
    port = _free_port()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(binary), "-m", gguf, "--host", "127.0.0.1", "--port", str(port),
                                 "-t", str(threads), "-tb", str(threads), "-c", "512", "-np", "1",
                                 "--no-webui"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                sys.exit(f"llama-server did not come up for {gguf}; see {log_path}")
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def llama_greedy(url: str, prompt_ids: list[int], num_tokens: int) -> list[dict]:
    """[{id, top: [(id, logprob), (id, logprob)]}] for each generated position."""
    reply = _post(url + "/completion", {
        "prompt": prompt_ids, "n_predict": num_tokens, "temperature": 0.0, "top_k": 1,
        "ignore_eos": True, "n_probs": 2, "post_sampling_probs": False, "cache_prompt": False,
        "return_tokens": True,
    })
    steps = reply["completion_probabilities"]
    if [s["id"] for s in steps] != reply["tokens"]:
        raise RuntimeError("llama-server's tokens and completion_probabilities disagree")
    return [{"id": s["id"], "top": [(t["id"], t["logprob"]) for t in s["top_logprobs"][:2]]} for s in steps]


def surge_greedy(gguf: str, dtype: str, threads: int, prompts_ids: list[list[int]], num_tokens: int):
    """(the per-position records of llama_greedy for each prompt, surge's own tokenization of PROMPTS,
    the model's end-of-sequence ids)."""
    import surge

    engine = surge.Engine.from_pretrained(gguf, dtype=dtype, backend="cpu", max_num_seqs=len(prompts_ids),
                                          max_model_len=128, compile_at_startup=False, progress=False,
                                          **{"backend.num_threads": threads})
    own_ids = [engine.tokenizer.encode(p, add_special_tokens=True) for p in PROMPTS]
    params = surge.SamplingParams(max_tokens=num_tokens, temperature=0.0, ignore_eos=True, logprobs=2)
    outputs = engine.generate(prompt_token_ids=prompts_ids, sampling_params=params, use_tqdm=False)
    results = []
    for out in outputs:
        completion = out.outputs[0]
        steps = []
        for token, alternatives in zip(completion.token_ids, completion.logprobs):
            ranked = sorted(alternatives.items(), key=lambda kv: -kv[1].logprob)[:2]
            steps.append({"id": int(token), "top": [(int(t), float(lp.logprob)) for t, lp in ranked]})
        results.append(steps)
    return results, [list(map(int, ids)) for ids in own_ids], set(engine.eos_token_ids)


def first_difference(a: list[dict], b: list[dict]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x["id"] != y["id"]:
            return i
    return None


def margin(step: dict) -> float:
    return step["top"][0][1] - step["top"][1][1]


def describe(name: str, step: dict) -> str:
    (t1, l1), (t2, l2) = step["top"][:2]
    return f"{name}: chose {step['id']}; top-2 {t1} ({l1:.4f}) {t2} ({l2:.4f}), margin {l1 - l2:.4f}"


def barred_eos(llama_step: dict, surge_step: dict, eos_ids: set[int]) -> bool:
    """Both rank end-of-sequence first; llama.cpp's ignore_eos bars it from sampling, surge's samples it
    and goes on. The outputs are equal up to the end of the sequence."""
    top = llama_step["top"][0][0]
    return top in eos_ids and surge_step["id"] == top and llama_step["id"] != top


def reference_step(reference: list[dict], record: dict, where: int) -> list[str]:
    """The reference run's top-2 at `where` for this prompt, on each engine whose prefix matches."""
    lines = []
    for ref in reference:
        if ref["prompt"] != record["prompt"]:
            continue
        prefix = [s["id"] for s in record["llama_cpp"][:where]]
        for side in ("llama_cpp", "surge"):
            if [s["id"] for s in ref[side][:where]] == prefix:
                lines.append(describe(f"reference {side:<9}", ref[side][where]) + f" ({ref['gguf']})")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gguf", nargs="*", help="GGUF files (default: the embedded SmolLM2 Q4_1)")
    parser.add_argument("--llamacpp-build", required=True, type=Path,
                        help="llama.cpp build folder (bin/llama-server)")
    parser.add_argument("--dtype", default="quantized", help="surge's model.dtype")
    parser.add_argument("--tokens", type=int, default=32, help="greedy tokens per prompt")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write every token id and top-2 log-prob here")
    parser.add_argument("--reference", type=Path,
                        help="--json of another run (e.g. float32 on the file's F32 conversion): at each "
                             "difference, its top-2 there wherever its tokens before that position match")
    args = parser.parse_args()
    files = args.gguf
    if not files:
        from surge.models.catalogue import resolve_model

        files = [resolve_model("smollm2-135m-instruct")]
    reference = json.loads(args.reference.read_text()) if args.reference else []
    report, all_equal = [], True
    for gguf in files:
        log_path = (args.json.parent if args.json else Path(".")) / f"llama-server.{Path(gguf).stem}.log"
        with llama_server(args.llamacpp_build, gguf, args.threads, log_path) as url:
            prompt_ids = [_post(url + "/tokenize", {"content": p, "add_special": True})["tokens"] for p in PROMPTS]
            theirs = [llama_greedy(url, ids, args.tokens) for ids in prompt_ids]
        ours, own_ids, eos_ids = surge_greedy(gguf, args.dtype, args.threads, prompt_ids, args.tokens)
        print(f"== {gguf} (surge model.dtype={args.dtype})")
        for prompt, ids, own, a, b in zip(PROMPTS, prompt_ids, own_ids, theirs, ours):
            where = first_difference(a, b)
            record = {"gguf": gguf, "prompt": prompt, "prompt_ids": ids, "surge_prompt_ids": own,
                      "first_difference": where, "llama_cpp": a, "surge": b}
            same_prompt = "same" if ids == own else f"DIFFERENT (surge: {own})"
            print(f"  {prompt!r}: prompt ids {ids} ({same_prompt} tokenization)")
            print(f"    llama.cpp: {[s['id'] for s in a]}")
            print(f"    surge:     {[s['id'] for s in b]}")
            if where != 0:
                print(f"    smallest top-2 margin before the first difference: llama.cpp "
                      f"{min(margin(s) for s in a[:where]):.4f}, surge {min(margin(s) for s in b[:where]):.4f}")
            if where is None:
                print(f"    equal: all {len(a)} tokens")
            elif barred_eos(a[where], b[where], eos_ids):
                print(f"    equal up to end-of-sequence at position {where}: both rank {b[where]['id']} first "
                      f"(llama.cpp's ignore_eos bars it, surge samples it)")
            else:
                all_equal = False
                print(f"    first difference at generated position {where}")
                print("      " + describe("llama.cpp", a[where]))
                print("      " + describe("surge    ", b[where]))
                for line in reference_step(reference, record, where):
                    print("      " + line)
            report.append(record)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print("all equal" if all_equal else "some differ (see the margins above)")

if __name__ == "__main__":
    main()
