"""Tool-call parsing: recorded model outputs parsed whole and streamed in every kind of piece.

The streamed runs must agree with the whole parse (same calls, same content), never show tag text
as content, and give argument fragments that concatenate to valid JSON.
"""

from __future__ import annotations

import json
import random

import pytest

from surge.server.partial_json import JsonScanner
from surge.server.tool_parser import ToolCallParser, parse_tool_calls

# Outputs as models that speak the Hermes / Llama tool formats write them.
RECORDED = {
    "hermes_single": (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>',
        None, [("get_weather", {"city": "Paris", "unit": "celsius"})]),
    "hermes_two_calls": (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {"timezone": "Europe/Paris"}}\n</tool_call>',
        None, [("get_weather", {"city": "Paris"}), ("get_time", {"timezone": "Europe/Paris"})]),
    "hermes_after_text": (
        "Let me look that up for you.\n<tool_call>\n"
        '{"name": "search", "arguments": {"query": "JAX paged attention", "limit": 5}}\n</tool_call>',
        "Let me look that up for you.", [("search", {"query": "JAX paged attention", "limit": 5})]),
    "hermes_nested_escapes": (
        '<tool_call>{"name": "run_python", "arguments": {"code": "print(\\"hi\\")\\nx = {\'a\': [1, 2]}", '
        '"opts": {"timeout": 2.5, "env": null, "flags": [true, false, -3e2]}, "note": "caf\\u00e9 \u00fcber"}}'
        "</tool_call>",
        None, [("run_python", {"code": "print(\"hi\")\nx = {'a': [1, 2]}",
                               "opts": {"timeout": 2.5, "env": None, "flags": [True, False, -300.0]},
                               "note": "caf\u00e9 \u00fcber"})]),
    "hermes_arguments_first": (
        '<tool_call>{"arguments": {"q": "surge"}, "name": "search"}</tool_call>',
        None, [("search", {"q": "surge"})]),
    "hermes_arguments_as_string": (
        '<tool_call>{"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 2}"}</tool_call>',
        None, [("add", {"a": 1, "b": 2})]),
    "hermes_no_arguments": (
        '<tool_call>{"name": "list_files"}</tool_call>', None, [("list_files", {})]),
    "hermes_unclosed_at_eos": (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}', None,
        [("get_weather", {"city": "Oslo"})]),
    "hermes_truncated_in_string": (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "San Fra', None,
        [("get_weather", {"city": "San Fra"})]),
    "hermes_truncated_after_comma": (
        '<tool_call>{"name": "f", "arguments": {"a": 1, "b', None, [("f", {"a": 1})]),
    "hermes_truncated_in_number": (
        '<tool_call>{"name": "f", "arguments": {"a": [1, 23', None, [("f", {"a": [1]})]),
    "hermes_truncated_before_arguments": (
        '<tool_call>{"name": "f", "arguments": ', None, [("f", {})]),
    "hermes_raw_newline_in_string": (
        '<tool_call>{"name": "write", "arguments": {"text": "line one\nline two"}}</tool_call>', None,
        [("write", {"text": "line one\nline two"})]),
    "hermes_trailing_text": (
        '<tool_call>{"name": "f", "arguments": {}}</tool_call>\nI called f.', "I called f.", [("f", {})]),
    "bare_llama_parameters": (
        '{"name": "get_weather", "parameters": {"city": "Tokyo"}}', None, [("get_weather", {"city": "Tokyo"})]),
    "bare_with_space_and_list": (
        '\n [{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {"y": "2"}}]', None,
        [("a", {"x": 1}), ("b", {"y": "2"})]),
    "bare_two_objects_semicolon": (
        '{"name": "a", "arguments": {}}; {"name": "b", "arguments": {"k": [1]}}', None,
        [("a", {}), ("b", {"k": [1]})]),
    "bare_then_stray_close_tag": (
        '{"name": "a", "arguments": {"x": 1}}</tool_call>', None, [("a", {"x": 1})]),
    "plain_text": ("The capital of France is Paris.", "The capital of France is Paris.", []),
    "plain_text_with_angle_brackets": ("if a < b and b <tool then <b>bold</b> <", 
                                       "if a < b and b <tool then <b>bold</b> <", []),
    "plain_json_answer": ('{"answer": 42, "unit": "m"}', '{"answer": 42, "unit": "m"}', []),
    "plain_list_answer": ("[1] See the docs.", "[1] See the docs.", []),
    "invalid_block_is_content": ("Hmm <tool_call>I am not JSON</tool_call> ok", "Hmm I am not JSON ok", []),
    "whitespace_kept_in_text": ("  Hello\n\nWorld \n", "  Hello\n\nWorld \n", []),
}


def _streamed(text: str, pieces: list[str]):
    parser = ToolCallParser()
    deltas = [parser.feed(piece) for piece in pieces] + [parser.finish()]
    content = "".join(d.content for d in deltas)
    calls: dict[int, dict] = {}
    for delta in deltas:
        for tc in delta.tool_calls:
            call = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
            if tc.id is not None:
                assert call["id"] is None, "a call's id is sent once"
                call["id"], call["name"] = tc.id, tc.name
            call["arguments"] += tc.arguments
    assert sorted(calls) == list(range(len(calls)))
    return content, [calls[i] for i in sorted(calls)], parser


def _splits(text: str) -> dict[str, list[str]]:
    rng = random.Random(len(text))
    splits = {"whole": [text], "chars": list(text)}
    for size in (2, 3, 5, 7):
        splits[f"size{size}"] = [text[i:i + size] for i in range(0, len(text), size)]
    for trial in range(3):
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, 6))) if len(text) > 1 else []
        bounds = [0] + cuts + [len(text)]
        splits[f"random{trial}"] = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    return splits


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_whole_parse_matches_recorded_expectation(name):
    text, content, calls = RECORDED[name]
    parsed = parse_tool_calls(text)
    assert parsed.content == content
    assert [(c.name, json.loads(c.arguments)) for c in parsed.tool_calls] == calls
    assert all(c.id.startswith("call_") and len(c.id) == 29 for c in parsed.tool_calls)
    assert len({c.id for c in parsed.tool_calls}) == len(parsed.tool_calls)


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_streaming_any_split_agrees_with_whole_parse(name):
    text, content, calls = RECORDED[name]
    for split_name, pieces in _splits(text).items():
        streamed_content, streamed_calls, parser = _streamed(text, pieces)
        where = f"{name} split {split_name}"
        assert streamed_content == (content or ""), where
        assert "<tool_call>" not in streamed_content and "</tool_call>" not in streamed_content, where
        assert [(c["name"], json.loads(c["arguments"])) for c in streamed_calls] == calls, where
        # The parser's own summary agrees with what it streamed.
        assert parser.content == content, where
        assert [c.arguments for c in parser.tool_calls] == [c["arguments"] for c in streamed_calls], where


def test_argument_fragments_stream_before_the_call_ends():
    parser = ToolCallParser()
    first = parser.feed('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par')
    assert first.content == ""
    assert [(d.index, d.name, d.id is not None) for d in first.tool_calls] == [(0, "get_weather", True)]
    assert "".join(d.arguments for d in first.tool_calls) == '{"city": "Par'
    second = parser.feed('is"}}\n</tool_call>')
    assert [(d.index, d.name, d.arguments) for d in second.tool_calls] == [(0, None, 'is"}')]
    assert not parser.finish()


def test_partial_tag_is_held_back_then_released():
    parser = ToolCallParser()
    assert parser.feed("Answer: 3 <tool").content == "Answer: 3"
    assert parser.feed("box> done").content == " <toolbox> done"
    assert parser.finish().content == ""


def test_partial_tag_at_end_of_output_is_content():
    parser = ToolCallParser()
    assert parser.feed("a <tool_ca").content == "a"
    assert parser.finish().content == " <tool_ca"


def test_feed_after_finish_is_an_error():
    parser = ToolCallParser()
    parser.finish()
    with pytest.raises(ValueError, match="after finish"):
        parser.feed("x")


@pytest.mark.parametrize("value", [
    '{"a": "b\\"c", "n": [1, -2.5e3, true, null, {}], "e": []}',
    '[1, "two", {"three": 3}]',
    '"just a string \\u00e9"',
    '  {"spaced" : [ 1 , 2 ] }  trailing',
])
def test_scanner_finds_the_end_of_a_value(value):
    scanner = JsonScanner()
    used = scanner.feed(value)
    assert scanner.done and not scanner.failed
    assert json.loads(value[:used]) == json.loads(scanner.text)
    assert value[used:] in ("", "  trailing")


def test_scanner_every_prefix_closes_to_valid_json():
    value = '{"a": "x\\u00e9\\n", "b": [1, 22, {"c": null}], "d": -0.5, "e": {"f": "g"}}'
    for cut in range(len(value) + 1):
        scanner = JsonScanner()
        scanner.feed(value[:cut])
        closed = scanner.closed_text()
        if closed:
            json.loads(closed)  # raises if a prefix were closed wrongly
    scanner = JsonScanner()
    scanner.feed(value)
    assert scanner.done and json.loads(scanner.closed_text()) == json.loads(value)


@pytest.mark.parametrize("bad", ['{"a" 1}', '{"a": tru}', '[1,, 2]', '{"a": "\\x"}', "{'a': 1}", '{"a": 1]'])
def test_scanner_reports_syntax_errors(bad):
    scanner = JsonScanner()
    scanner.feed(bad)
    scanner.finish()
    assert scanner.failed and scanner.error
    assert not scanner.done


def test_deltas_merge_fragments_of_the_same_call():
    from surge.server.tool_parser import ParserDelta, ToolCallDelta

    delta = ParserDelta("a", [ToolCallDelta(0, "", "call_1", "f")])
    delta.extend(ParserDelta("b", [ToolCallDelta(0, '{"x": '), ToolCallDelta(0, "1}"), ToolCallDelta(1, "", "c2", "g")]))
    assert delta.content == "ab"
    assert [(d.index, d.id, d.name, d.arguments) for d in delta.tool_calls] == [
        (0, "call_1", "f", '{"x": 1}'), (1, "c2", "g", "")]


# ---- rendering tools through chat templates -----------------------------------------------------

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}}}}}
NATIVE_TEMPLATE = (
    "{% if tools %}TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}\n{% endif %}"
    "{% for m in messages %}{{ m.role }}: {{ m.content }}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}[call {{ c.function.name }} "
    "{{ c.function.arguments.city }}]{% endfor %}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}")


def _request(**fields):
    from surge.server.protocol import ChatCompletionRequest

    return ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "Weather in Paris?"}],
                                                 **fields})


@pytest.fixture
def plain_tokenizer():
    """A template that knows nothing of tools (like SmolLM2's): tools go into the system message."""
    from conftest import make_tiny_tokenizer

    return make_tiny_tokenizer()


def test_tools_are_described_in_the_system_message_when_the_template_cannot(plain_tokenizer):
    from surge.server.chat import render_chat

    prompt = render_chat(plain_tokenizer, _request(tools=[WEATHER]))
    assert prompt.parse_tools and prompt.tool_grammar is None and prompt.tool_names == ("get_weather",)
    assert prompt.text.startswith("system: You can call functions")
    assert '"name": "get_weather"' in prompt.text and "<tool_call>" in prompt.text
    assert prompt.text.endswith("user: Weather in Paris?\nassistant:")


def test_tool_history_is_rendered_as_text_for_plain_templates(plain_tokenizer):
    from surge.server.chat import render_chat

    req = _request(tools=[WEATHER], messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21C"}])
    text = render_chat(plain_tokenizer, req).text
    assert text.startswith("system: Be brief.\n\nYou can call functions")
    assert 'assistant: <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    assert "user: <tool_response>\n21C\n</tool_response>" in text


def test_native_templates_get_tools_and_call_objects(plain_tokenizer):
    from surge.server.chat import render_chat

    plain_tokenizer.chat_template = NATIVE_TEMPLATE
    req = _request(tools=[WEATHER], messages=[
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]}])
    text = render_chat(plain_tokenizer, req).text
    # (Hugging Face renders templates with trim_blocks: no newline after a block tag.) The arguments reached
    # the template as an object, so it could read `.city`.
    assert text == "TOOLS:get_weather;user: Weather?assistant: [call get_weather Oslo]assistant:"


def test_tool_choice_none_required_and_named(plain_tokenizer):
    from surge.server.chat import render_chat
    from surge.server.errors import OpenAIError

    hidden = render_chat(plain_tokenizer, _request(tools=[WEATHER], tool_choice="none"))
    assert not hidden.parse_tools and "get_weather" not in hidden.text
    required = render_chat(plain_tokenizer, _request(tools=[WEATHER], tool_choice="required"))
    # The grammar, not a prefill, makes the call: the prompt ends where the assistant's turn starts.
    assert required.tool_grammar is not None and required.text.endswith("assistant:")
    assert 'start: block ("\\n" block)*' in required.tool_grammar.grammar
    named = render_chat(plain_tokenizer, _request(
        tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False))
    assert '"const": "get_weather"' in named.tool_grammar.grammar
    assert named.tool_grammar.grammar.startswith("start: block\n")
    with pytest.raises(OpenAIError, match="not among the tools"):
        render_chat(plain_tokenizer, _request(tools=[WEATHER],
                                              tool_choice={"type": "function", "function": {"name": "nope"}}))
    with pytest.raises(OpenAIError, match="only allowed when tools are given"):
        render_chat(plain_tokenizer, _request(tool_choice="auto"))


def test_template_errors_become_400s(plain_tokenizer):
    from surge.server.chat import render_chat
    from surge.server.errors import OpenAIError

    plain_tokenizer.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(OpenAIError, match="roles must alternate") as info:
        render_chat(plain_tokenizer, _request())
    assert info.value.status == 400 and info.value.param == "messages"


def test_deprecated_functions_are_read_as_tools(plain_tokenizer):
    from surge.server.chat import render_chat

    named = render_chat(plain_tokenizer, _request(functions=[WEATHER["function"]],
                                                  function_call={"name": "get_weather"}))
    assert named.parse_tools and '"name": "get_weather"' in named.text
    assert '"const": "get_weather"' in named.tool_grammar.grammar
    hidden = render_chat(plain_tokenizer, _request(functions=[WEATHER["function"]], function_call="none"))
    assert not hidden.parse_tools and "get_weather" not in hidden.text


@pytest.mark.parametrize("text, content, calls", [
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>', None,
     [("get_weather", {"city": "Rome"})]),
    ('<tool_call>\n{"name": "delete_files", "arguments": {"path": "/"}}\n</tool_call>',
     '{"name": "delete_files", "arguments": {"path": "/"}}', []),
    ('{"name": "delete_files", "arguments": {}}', '{"name": "delete_files", "arguments": {}}', []),
    ('[{"name": "get_weather", "arguments": {}}, {"name": "nope", "arguments": {}}]',
     '[{"name": "get_weather", "arguments": {}}, {"name": "nope", "arguments": {}}]', []),
])
def test_calls_to_undeclared_functions_are_content(text, content, calls):
    declared = ("get_weather",)
    parsed = parse_tool_calls(text, declared)
    assert parsed.content == content
    assert [(c.name, json.loads(c.arguments)) for c in parsed.tool_calls] == calls
    for pieces in _splits(text).values():
        parser = ToolCallParser(declared)
        deltas = [parser.feed(piece) for piece in pieces] + [parser.finish()]
        assert "".join(d.content for d in deltas) == (content or "")
        assert [c.name for d in deltas for c in d.tool_calls if c.name] == [name for name, _ in calls]
