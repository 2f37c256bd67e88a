"""Structured output: a request's grammar, compiled off the step loop, enforced inside the jitted sampler.

Flow: ``spec.StructuredOutputsParams`` (from SamplingParams.structured_outputs, OpenAI's
response_format, vLLM's guided_* fields or a tool-call grammar from ``tool_calls``) ->
``compiler.GrammarCompiler`` (worker threads, cache by grammar and tokenizer) -> one
``state.GrammarState`` per request (consumes sampled tokens, returns the tokens the grammar
forces for fast-forward) -> ``bitmask.build_token_bitmask`` (the step's packed int32 rows,
applied by ``surge.sampling.sampler``). llguidance does the grammar work; it is imported only
when a request is constrained.
"""

from surge.structured.spec import FIELDS, GrammarError, StructuredOutputsParams

__all__ = ["FIELDS", "GrammarError", "StructuredOutputsParams"]
