"""surge-generate: complete one prompt with the engine and print the text.

In: Hydra overrides, e.g. `prompt="The capital of France is" sampling.max_tokens=32`, and
`+sampling.structured_outputs.choice=[yes,no]` (or .json / .regex / .grammar / .json_object) to
constrain the output.
Out: the prompt and its completion on stdout (streamed as it is generated); with `chat=true`
the assistant's answer alone.
"""

from __future__ import annotations

from omegaconf import DictConfig

from surge.cli.hydra_app import hydra_app
from surge.config import SurgeConfig


def run(cfg: SurgeConfig, raw: DictConfig) -> None:
    from surge.engine.engine import Engine
    from surge.sampling.params import SamplingParams

    engine = Engine(cfg)
    s = cfg.sampling
    params = SamplingParams(max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                            seed=s.seed, ignore_eos=s.ignore_eos,
                            structured_outputs=_plain(s.structured_outputs) or None)
    prompt = engine.apply_chat_template([{"role": "user", "content": cfg.prompt}]) if cfg.chat else cfg.prompt
    if not cfg.chat:  # a completion continues the prompt; a chat answer stands on its own
        print(cfg.prompt, end="", flush=True)
    for out in engine.stream(prompt, params):
        print(out.delta_text, end="", flush=True)
    print()


def _plain(value):
    """OmegaConf containers (a schema given on the command line) as plain dicts and lists."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


main = hydra_app("generate", top_level_keys=("prompt", "chat"))(run)

if __name__ == "__main__":
    main()
