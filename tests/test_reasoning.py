"""Reasoning output: `<think>...</think>` split from the answer, in the parser and through the server.

The served model is scripted: a one-layer Llama whose attention and MLP write nothing (zero output
projections), whose embeddings are one-hot and whose LM head maps each token to one successor, so greedy or
not, the next token is a function of the last one. After the generation prompt's `:` it says
`<think> Hmm let me think </think> The answer is 42 </s>`; after `</think>` (the template closes the block
when `enable_thinking` is false) it answers at once.
"""

from __future__ import annotations

import httpx
import openai
import pytest
from inprocess_server import serve

import surge
from surge.server.reasoning import ReasoningParser, split_reasoning

WORDS = ["<pad>", "<s>", "</s>", "[UNK]", "user", "assistant", ":", "<think>", "Hmm", "let", "me", "think",
         "</think>", "The", "answer", "is", "42", "hi", *[f"w{i}" for i in range(6)]]  # >= engine.max_logprobs
CHAIN = [":", "<think>", "Hmm", "let", "me", "think", "</think>", "The", "answer", "is", "42", "</s>"]
TEMPLATE = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant :"
            "{% if enable_thinking is defined and not enable_thinking %} <think> </think>{% endif %}{% endif %}")


# ---- the parser ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["qwen3", "deepseek_r1"])
def test_split_is_the_same_whole_or_character_by_character(kind):
    text = "<think>step one</thi then </think>\n\nThe answer <think is 42"
    whole = split_reasoning(kind, "", text)
    parser = ReasoningParser(kind, "")
    reasoning = content = ""
    for ch in text:
        r, c = parser.feed(ch)
        reasoning, content = reasoning + r, content + c
    r, c = parser.finish()
    assert (reasoning + r, content + c, None) == whole == ("step one</thi then ", "The answer <think is 42", None)


def test_prompt_decides_where_the_output_starts():
    assert split_reasoning("qwen3", "", "no tags here") == (None, "no tags here", None)
    assert split_reasoning("deepseek_r1", "", "thinking</think>answer") == ("thinking", "answer", None)
    assert split_reasoning("qwen3", "assistant: <think>\n", "thinking</think> answer") == ("thinking", "answer", None)
    assert split_reasoning("deepseek_r1", "<think>\n\n</think>\n\n", "plain answer") == (None, "plain answer", None)
    assert split_reasoning("qwen3", "", "<think>cut short") == ("cut short", "", None)


def test_stop_strings_apply_to_the_answer_only():
    from surge.server.reasoning import AnswerStops

    stops = AnswerStops(("one", "42"))
    assert split_reasoning("qwen3", "", "<think>step one</think>The answer is 42 indeed", stops) == \
        ("step one", "The answer is ", "42")
    kept = AnswerStops(("42",), include_stop_str_in_output=True)
    assert split_reasoning("qwen3", "", "<think>42?</think>It is 42 indeed", kept) == ("42?", "It is 42", "42")


def test_answer_grammar_puts_the_request_grammar_after_the_think_block():
    from conftest import make_tiny_tokenizer

    from surge.structured import StructuredOutputsParams
    from surge.structured.bitmask import build_token_bitmask
    from surge.structured.compiler import GrammarCompiler
    from surge.structured.state import GrammarState
    from surge.structured.tool_calls import tool_call_grammar
    from surge.server.reasoning import answer_grammar

    tokenizer = make_tiny_tokenizer()
    compiler = GrammarCompiler(tokenizer, len(tokenizer), [2])

    def accepts(spec, text):
        state = GrammarState(compiler.submit(spec).result(timeout=60).new_matcher(), fast_forward=False)
        for token in tokenizer.encode(text, add_special_tokens=False):
            mask = build_token_bitmask([state], 1, len(tokenizer))
            if not (mask[0, token // 32] >> (token % 32)) & 1:
                return False
            state.accept(token, max_forced=0)
        return state.matcher.is_accepting()

    try:
        schema = StructuredOutputsParams(json={"type": "object", "properties": {"a": {"type": "integer"}},
                                               "required": ["a"]})
        r1 = answer_grammar("deepseek_r1", "user: hi", schema)
        qwen = answer_grammar("qwen3", "user: hi", schema)
        thought = '<think>a {x} </thin</think>\n\n{"a": 1}'
        assert [accepts(r1, t) for t in (thought, 'hm</think>{"a": 2}', '{"a": 3}', "<think>x</think>hi",
                                         '<think>x</think></think>{"a": 1}')] == [True, True, False, False, False]
        assert [accepts(qwen, t) for t in (thought, 'hm</think>{"a": 2}', '{"a": 3}', "<think>x</think>hi")] == \
            [True, False, True, False]
        assert answer_grammar("qwen3", "assistant:<think>\n\n</think>\n\n", schema) is schema  # block closed
        assert answer_grammar("none", "", schema) is schema
        regex = answer_grammar("deepseek_r1", "", StructuredOutputsParams(regex="[0-9]+/x"))
        assert (accepts(regex, "r</think>12/x"), accepts(regex, "r</think>12x")) == (True, False)
        choice = answer_grammar("deepseek_r1", "", StructuredOutputsParams(choice=["yes", "no}"]))
        assert (accepts(choice, "</think>no}"), accepts(choice, "</think>maybe")) == (True, False)
        tools = [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"q": {"type": "string"}}}}}]
        call = answer_grammar("deepseek_r1", "", tool_call_grammar(tools, open_tag="<tool_call>",
                                                                   close_tag="</tool_call>"))
        assert accepts(call, 'z</think>\n<tool_call>\n{"name": "f", "arguments": {"q": "v"}}\n</tool_call>')
        assert not accepts(call, 'z</think>\n<tool_call>\n{"name": "g", "arguments": {}}\n</tool_call>')
    finally:
        compiler.shutdown()


# ---- through the server --------------------------------------------------------------------------

def _scripted_checkpoint(directory: str, byte_level_decoder: bool = False) -> str:
    """`byte_level_decoder`: tokens decode glued together (`<think>Hmmletmethink</think>...`), the decoder
    llguidance reads a vocabulary through, for the structured-output test."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(WORDS)}
    size, hidden = len(WORDS), 24
    config = LlamaConfig(vocab_size=size, hidden_size=hidden, intermediate_size=8, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=hidden // 2, max_position_embeddings=256,
                         tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config).float().eval()
    successor = {vocab[a]: vocab[b] for a, b in zip(CHAIN, CHAIN[1:])}
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(size, hidden))
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        head = torch.zeros(size, hidden)
        for token in range(size):
            head[successor.get(token, vocab["</s>"]), token] = 10.0
        model.lm_head.weight.copy_(head)
    model.save_pretrained(directory)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if byte_level_decoder:
        backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>", unk_token="[UNK]")
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(directory)
    return directory


def _serve_scripted(directory: str, byte_level_decoder: bool = False):
    path = _scripted_checkpoint(directory, byte_level_decoder)
    engine = surge.Engine.from_pretrained(path, dtype="float32", max_num_seqs=2, max_model_len=64,
                                          max_num_batched_tokens=16, token_buckets=[16], num_pages=32, page_size=4,
                                          progress=False)
    return serve(engine, responses_store="memory", reasoning_parser="qwen3")


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with _serve_scripted(str(tmp_path_factory.mktemp("scripted"))) as served:
        yield openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)


MESSAGES = [{"role": "user", "content": "hi"}]


def test_chat_splits_reasoning_from_content(client):
    reply = client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=20, temperature=0)
    message = reply.choices[0].message
    assert message.content == "The answer is 42"
    assert message.model_extra["reasoning_content"] == message.model_extra["reasoning"] == " Hmm let me think "
    assert reply.choices[0].finish_reason == "stop"


def test_streamed_deltas_concatenate_to_the_plain_answer(client):
    chunks = list(client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=20, temperature=0,
                                                 stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    content = "".join(d.content or "" for d in deltas)
    reasoning = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas)
    reasoning_alias = "".join((d.model_extra or {}).get("reasoning") or "" for d in deltas)
    assert content == "The answer is 42" and "<think>" not in content and "</think>" not in content
    assert reasoning == reasoning_alias == " Hmm let me think "


def test_chat_template_kwargs_reach_the_template(client):
    reply = client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=20, temperature=0,
                                           extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    message = reply.choices[0].message
    assert message.content == "The answer is 42" and message.model_extra["reasoning_content"] is None


def test_assistant_messages_with_either_reasoning_field_are_accepted(client):
    for field in ("reasoning_content", "reasoning"):
        reply = client.chat.completions.create(model="default", max_tokens=20, temperature=0, messages=[
            *MESSAGES, {"role": "assistant", "content": "The answer is 42", field: "Hmm"}, *MESSAGES])
        assert reply.choices[0].message.content == "The answer is 42"


def test_responses_put_reasoning_in_its_own_item(client):
    reply = client.responses.create(model="default", input="hi", max_output_tokens=20, temperature=0)
    assert [item.type for item in reply.output] == ["reasoning", "message"]
    assert reply.output[0].content[0].text == " Hmm let me think "
    assert reply.output_text == "The answer is 42"
    events = list(client.responses.create(model="default", input="hi", max_output_tokens=20, temperature=0,
                                          stream=True))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    thought = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert (thought, text) == (" Hmm let me think ", "The answer is 42")


def test_stop_strings_match_in_the_answer_not_the_reasoning(client):
    # "think" occurs only in the reasoning: it does not stop anything.
    kept = client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=20, temperature=0,
                                          stop=["think"])
    assert kept.choices[0].message.content == "The answer is 42"
    assert kept.choices[0].message.model_extra["reasoning_content"] == " Hmm let me think "
    cut = client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=20, temperature=0,
                                         stop=["is"])
    assert cut.choices[0].message.content == "The answer " and cut.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=20, temperature=0,
                                                 stop=["is"], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "The answer "
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    base = str(client.base_url).rstrip("/").removesuffix("/v1")
    message = httpx.post(f"{base}/v1/messages", timeout=30, json={
        "model": "default", "max_tokens": 20, "temperature": 0, "stop_sequences": ["is", "think"],
        "messages": MESSAGES}).json()
    assert message["stop_reason"] == "stop_sequence" and message["stop_sequence"] == "is"
    assert [b["type"] for b in message["content"]] == ["thinking", "text"]
    assert message["content"][1]["text"] == "The answer "

    disabled = httpx.post(f"{base}/v1/messages", timeout=30, json={
        "model": "default", "max_tokens": 20, "temperature": 0, "thinking": {"type": "disabled"},
        "messages": MESSAGES}).json()
    assert [b["type"] for b in disabled["content"]] == ["text"] and disabled["stop_reason"] == "end_turn"


def test_structured_output_constrains_the_answer_not_the_reasoning(tmp_path):
    # The grammar starts after </think>: the reasoning is the model's own, the answer the only allowed choice
    # (without the model's choice "The", greedy takes the grammar's "42").
    with _serve_scripted(str(tmp_path), byte_level_decoder=True) as served:
        client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
        free = client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=20, temperature=0)
        assert (free.choices[0].message.model_extra["reasoning_content"], free.choices[0].message.content) == \
            ("Hmmletmethink", "Theansweris42")
        reply = client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=20, temperature=0,
                                               extra_body={"guided_choice": ["42"]})
        assert (reply.choices[0].message.model_extra["reasoning_content"], reply.choices[0].message.content) == \
            ("Hmmletmethink", "42")
        # With the block closed by the template, the grammar applies from the first token.
        closed = client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=20, temperature=0,
                                                extra_body={"guided_choice": ["42"],
                                                            "chat_template_kwargs": {"enable_thinking": False}})
        assert (closed.choices[0].message.model_extra["reasoning_content"], closed.choices[0].message.content) == \
            (None, "42")
        # Responses' text.format takes the same path: the JSON document 42 after the model's reasoning.
        fmt = {"type": "json_schema", "name": "n", "schema": {"type": "integer", "enum": [42]}}
        response = client.responses.create(model="default", input="hi", max_output_tokens=20, temperature=0,
                                           text={"format": fmt})
        assert [item.type for item in response.output] == ["reasoning", "message"]
        assert (response.output[0].content[0].text, response.output_text) == ("Hmmletmethink", "42")
