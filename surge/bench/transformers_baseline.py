"""The transformers baseline: the same prompts through Hugging Face `generate`.

In: the model source (HF directory or .gguf file), token-id prompts of equal
length, the number of new tokens. Out: generated tokens/s of one batched greedy
`generate` call in float32 on PyTorch (after a short warm-up, excluded).
"""

from __future__ import annotations

import os
import time


def load_transformers_model(source: str):
    import torch
    from transformers import AutoModelForCausalLM

    if source.endswith(".gguf"):
        model = AutoModelForCausalLM.from_pretrained(os.path.dirname(source), gguf_file=os.path.basename(source),
                                                     torch_dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(source, torch_dtype=torch.float32)
    return model.eval()


def run_transformers(source: str, prompts, output_len: int) -> dict:
    import torch

    if any(isinstance(p, str) for p in prompts) or len({len(p) for p in prompts}) != 1:
        raise ValueError("the transformers baseline needs token-id prompts of equal length (random workload)")
    model = load_transformers_model(source)
    input_ids = torch.tensor(prompts, dtype=torch.long)
    attention_mask = torch.ones_like(input_ids)
    kwargs = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.inference_mode():
        model.generate(input_ids[:2], attention_mask=attention_mask[:2], max_new_tokens=4, min_new_tokens=4, **kwargs)
        started = time.perf_counter()
        out = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=output_len,
                             min_new_tokens=output_len, **kwargs)
        elapsed = time.perf_counter() - started
    num_generated = (out.shape[1] - input_ids.shape[1]) * out.shape[0]
    return {"output_tokens_per_s": num_generated / elapsed, "elapsed_s": elapsed, "num_output_tokens": num_generated}
