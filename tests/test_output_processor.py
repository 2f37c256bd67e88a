"""Stop-string matching and the OutputProcessor: deltas, stops, n>1 aggregation, abort, logprobs."""

import pytest

from surge.engine.output_processor import OutputProcessor
from surge.engine.outputs import TokenLogprobs
from surge.engine.stop_strings import StopStringMatcher
from surge.sampling.params import SamplingParams


class PieceTokenizer:
    """A byte-level test tokenizer: token i is the UTF-8 bytes of PIECES[i] (or one raw byte)."""

    PIECES = ["<eos>", "Hello", " world", "!", " ST", "OP", " more", " text", "\n", "##", "#", " é", " 🤖"]
    EOS = 0
    all_special_ids = [EOS]

    def __init__(self):
        self.piece_bytes = [p.encode() for p in self.PIECES]
        # Raw single bytes follow the named pieces, so a character can be split over tokens.
        self.byte_base = len(self.piece_bytes)

    def byte_token(self, value: int) -> int:
        return self.byte_base + value

    def encode(self, text: str) -> list:
        ids, rest = [], text
        while rest:
            match = max((i for i, p in enumerate(self.PIECES) if i != self.EOS and rest.startswith(p)),
                        key=lambda i: len(self.PIECES[i]), default=None)
            if match is None:
                ids.extend(self.byte_token(b) for b in rest[0].encode())
                rest = rest[1:]
            else:
                ids.append(match)
                rest = rest[len(self.PIECES[match]):]
        return ids

    def decode(self, ids, skip_special_tokens=True):
        chunks = []
        for token in ids:
            if skip_special_tokens and token in self.all_special_ids:
                continue
            chunks.append(self.piece_bytes[token] if token < self.byte_base else bytes([token - self.byte_base]))
        return b"".join(chunks).decode("utf-8", errors="replace")


@pytest.fixture
def tokenizer():
    return PieceTokenizer()


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        self.now += 1.0
        return self.now


# ---- StopStringMatcher ----------------------------------------------------------------------


def feed(matcher, chunks):
    emitted, matched = [], None
    for chunk in chunks:
        text, hit = matcher.push(chunk)
        emitted.append(text)
        matched = matched or hit
    return emitted, matched


def test_stop_in_the_middle_of_a_chunk():
    emitted, matched = feed(StopStringMatcher(["STOP"]), ["abc STOP def"])
    assert emitted == ["abc "] and matched == "STOP"


def test_stop_spanning_pushes_is_never_partially_emitted():
    matcher = StopStringMatcher(["STOP"])
    emitted, matched = feed(matcher, ["abc S", "T", "O", "P and more"])
    assert emitted == ["abc ", "", "", ""] and matched == "STOP"
    assert matcher.push("later") == ("", None)  # nothing after a match


def test_partial_prefix_is_held_then_released():
    matcher = StopStringMatcher(["STOP"])
    assert matcher.push("abc ST") == ("abc ", None)
    assert matcher.held_text == "ST"
    assert matcher.push("ART") == ("START", None)
    assert matcher.push("xS") == ("x", None)
    assert matcher.flush() == "S"
    assert matcher.flush() == ""


def test_include_stop_str_in_output():
    emitted, matched = feed(StopStringMatcher(["</s>"], include_stop_str_in_output=True), ["a</", "s>b"])
    assert "".join(emitted) == "a</s>" and matched == "</s>"


def test_overlapping_stops_pick_the_first_to_end_whatever_the_chunking():
    stops = ["abcd", "bc", "cde"]
    for chunks in (["abcde"], ["a", "b", "c", "d", "e"], ["ab", "cde"]):
        emitted, matched = feed(StopStringMatcher(stops), chunks)
        assert ("".join(emitted), matched) == ("a", "bc"), chunks
    # Stops sharing a prefix: the longer one is held while it can still match.
    matcher = StopStringMatcher(["###", "##x"])
    assert matcher.push("a##") == ("a", None)
    assert matcher.push("#") == ("", "###")


def test_same_end_prefers_the_longer_stop():
    emitted, matched = feed(StopStringMatcher(["bc", "abc"], include_stop_str_in_output=True), ["xabc"])
    assert emitted == ["xabc"] and matched == "abc"


def test_no_stops_passes_text_through():
    assert feed(StopStringMatcher([]), ["a", "b"]) == (["a", "b"], None)


def test_empty_stop_string_is_rejected():
    with pytest.raises(ValueError, match="stop"):
        StopStringMatcher(["ok", ""])


# ---- OutputProcessor ------------------------------------------------------------------------


def run_stream(processor, request_id, token_ids, final_reason="length", stop_reason=None):
    """Feed tokens one per step; the last step carries the finish reason. Returns (outputs, hit step)."""
    outputs, hit_at = [], None
    for step, token in enumerate(token_ids):
        last = step == len(token_ids) - 1
        out, hit = processor.process(request_id, [token], final_reason if last else None,
                                     stop_reason if last else None)
        if out is not None:
            outputs.append(out)
        if hit:
            hit_at = step
            break
    return outputs, hit_at


def test_deltas_concatenate_to_the_final_text(tokenizer):
    processor = OutputProcessor(tokenizer, clock=FakeClock())
    prompt_ids = tokenizer.encode("Hello")
    processor.add_request("r1", "Hello", prompt_ids, SamplingParams(max_tokens=10), arrival_time=50.0)
    tokens = tokenizer.encode(" world! more text é 🤖") + [tokenizer.byte_token(b) for b in "ü".encode()]
    outputs, _ = run_stream(processor, "r1", tokens)
    final = outputs[-1]
    assert final.finished and final.outputs[0].finish_reason == "length"
    assert "".join(o.delta_text for o in outputs) == final.outputs[0].text == " world! more text é 🤖ü"
    assert all("\ufffd" not in o.delta_text for o in outputs)
    assert final.outputs[0].token_ids == tokens
    assert sum(len(o.outputs[0].delta_token_ids) for o in outputs) == len(tokens)
    assert final.request_id == "r1" and final.prompt == "Hello" and final.prompt_token_ids == prompt_ids
    metrics = final.metrics
    assert metrics.arrival_time == 50.0 and metrics.num_prompt_tokens == 1
    assert metrics.num_generation_tokens == len(tokens)
    assert metrics.first_token_time < metrics.last_token_time <= metrics.finished_time
    assert not processor.has_unfinished()


def test_split_character_is_reported_once_complete(tokenizer):
    processor = OutputProcessor(tokenizer)
    processor.add_request("r", None, [], SamplingParams())
    emoji = [tokenizer.byte_token(b) for b in "🤖".encode()]
    reports = [processor.process("r", [t], None)[0] for t in emoji]
    assert reports[:3] == [None, None, None]
    assert reports[3].delta_text == "🤖" and reports[3].outputs[0].delta_token_ids == emoji


def test_stop_string_never_appears_in_a_delta(tokenizer):
    processor = OutputProcessor(tokenizer)
    processor.add_request("r", "Hello", tokenizer.encode("Hello"), SamplingParams(stop=["STOP"]))
    tokens = tokenizer.encode(" world STOP more text")
    outputs, hit_at = run_stream(processor, "r", tokens)
    assert hit_at == tokens.index(tokenizer.encode("OP")[0])
    final = outputs[-1]
    completion = final.outputs[0]
    assert final.finished
    assert (completion.finish_reason, completion.stop_reason) == ("stop", "STOP")
    assert completion.text == " world " and "".join(o.delta_text for o in outputs) == " world "
    assert all("ST" not in o.delta_text for o in outputs)
    # Tokens after the one that completed the stop are not reported.
    assert completion.token_ids == tokens[:hit_at + 1]
    assert processor.process("r", [5], None) == (None, False)


def test_stop_string_inside_one_token_step_with_include(tokenizer):
    processor = OutputProcessor(tokenizer)
    params = SamplingParams(stop=["wor"], include_stop_str_in_output=True)
    processor.add_request("r", None, [], params)
    out, hit = processor.process("r", tokenizer.encode("Hello world!"), None)
    assert hit and out.finished and out.outputs[0].text == "Hello wor" and out.delta_text == "Hello wor"
    assert out.outputs[0].token_ids == tokenizer.encode("Hello world")


def test_partial_stop_is_released_when_finishing_by_length(tokenizer):
    processor = OutputProcessor(tokenizer)
    processor.add_request("r", None, [], SamplingParams(stop=["##x"]))
    first, _ = processor.process("r", tokenizer.encode("Hello"), None)
    assert first.delta_text == "Hello"
    held, _ = processor.process("r", tokenizer.encode("##"), None)
    assert held is None
    final, hit = processor.process("r", tokenizer.encode("#"), "length")
    assert not hit and final.delta_text == "###" and final.outputs[0].text == "Hello###"


def test_eos_token_is_kept_in_ids_but_not_in_text(tokenizer):
    processor = OutputProcessor(tokenizer)
    processor.add_request("r", None, [], SamplingParams(stop_token_ids=[3], skip_special_tokens=False))
    tokens = tokenizer.encode("Hello world")
    run_stream(processor, "r", tokens, final_reason=None)
    out, hit = processor.process("r", [3], "stop", 3)  # "!" is a stop token id here
    assert not hit and out.outputs[0].text == "Hello world" and out.outputs[0].stop_reason == 3
    assert out.outputs[0].token_ids == tokens + [3]

    processor.add_request("e", None, [], SamplingParams(skip_special_tokens=False))
    out, _ = processor.process("e", tokenizer.encode("Hello") + [tokenizer.EOS], "stop")
    assert out.outputs[0].text == "Hello" and out.outputs[0].stop_reason is None


def test_n2_aggregates_children_under_the_parent_id(tokenizer):
    processor = OutputProcessor(tokenizer)
    params = SamplingParams(n=2, max_tokens=3)
    for index in range(2):
        processor.add_request(f"p-{index}", "Hello", [1], params, parent_id="p", index=index)
    assert processor.child_ids("p") == ["p-0", "p-1"]
    out, _ = processor.process("p-1", tokenizer.encode(" world"), None)
    assert out.request_id == "p" and not out.finished and out.delta_text == " world"
    assert [c.index for c in out.outputs] == [0, 1]
    assert out.outputs[1].delta_text == " world" and out.outputs[0].delta_text == ""
    out, _ = processor.process("p-0", tokenizer.encode("!"), "length")
    assert not out.finished and out.outputs[0].finish_reason == "length"
    out, _ = processor.process("p-1", tokenizer.encode(" more"), "length")
    assert out.finished
    assert [c.text for c in out.outputs] == ["!", " world more"]
    assert out.metrics.num_generation_tokens == 3
    assert not processor.has_unfinished()


def test_abort_finishes_every_child(tokenizer):
    processor = OutputProcessor(tokenizer)
    params = SamplingParams(n=2, stop=["STOP"])
    for index in range(2):
        processor.add_request(f"a-{index}", None, [], params, parent_id="a", index=index)
    processor.process("a-0", tokenizer.encode("Hello"), None)
    processor.process("a-1", tokenizer.encode(" world ST"), None)  # "ST" is held as a possible stop
    out = processor.abort("a")
    assert out.finished and [c.finish_reason for c in out.outputs] == ["abort", "abort"]
    assert [c.text for c in out.outputs] == ["Hello", " world ST"]
    assert out.delta_text == "ST"
    assert processor.abort("a") is None and not processor.has_unfinished()


def test_abort_single_request(tokenizer):
    processor = OutputProcessor(tokenizer)
    processor.add_request("x", None, [], SamplingParams())
    processor.process("x", tokenizer.encode("Hello"), None)
    out = processor.abort("x")
    assert out.finished and out.outputs[0].finish_reason == "abort" and out.outputs[0].text == "Hello"
    assert out.delta_text == ""


def test_logprobs_become_logprob_dicts(tokenizer):
    processor = OutputProcessor(tokenizer)
    processor.add_request("l", None, [], SamplingParams(logprobs=2))
    tokens = tokenizer.encode("Hello world")
    sampled = [TokenLogprobs(tokens[0], -0.5, 2, ((3, -0.1), (tokens[0], -0.5), (7, -3.0))),
               TokenLogprobs(tokens[1], -0.25, 1, ((tokens[1], -0.25), (3, -2.0), (8, -4.0)))]
    out, _ = processor.process("l", tokens, "length", logprobs=sampled)
    completion = out.outputs[0]
    assert completion.cumulative_logprob == pytest.approx(-0.75)
    first, second = completion.logprobs
    assert set(first) == {tokens[0], 3}  # the sampled token plus the top 2 (which include it)
    assert (first[tokens[0]].logprob, first[tokens[0]].rank, first[tokens[0]].decoded_token) == (-0.5, 2, "Hello")
    assert (first[3].rank, first[3].decoded_token) == (1, "!")
    assert set(second) == {tokens[1], 3} and second[tokens[1]].decoded_token == " world"


def test_no_logprobs_when_not_asked(tokenizer):
    processor = OutputProcessor(tokenizer)
    processor.add_request("l", None, [], SamplingParams())
    out, _ = processor.process("l", [1], "length", logprobs=[TokenLogprobs(1, -1.0, 1, ((1, -1.0),))])
    assert out.outputs[0].logprobs is None and out.outputs[0].cumulative_logprob is None


def test_output_processor_rejects_logprobs_of_another_token(tokenizer):
    processor = OutputProcessor(tokenizer)
    processor.add_request("l", None, [], SamplingParams(logprobs=1))
    with pytest.raises(ValueError, match="token 5 given for token 6"):
        processor.process("l", [6], None, logprobs=[TokenLogprobs(5, -1.0, 1, ((5, -1.0),))])


def test_errors_name_the_input(tokenizer):
    processor = OutputProcessor(tokenizer)
    processor.add_request("d", None, [], SamplingParams())
    with pytest.raises(ValueError, match="request_id"):
        processor.add_request("d", None, [], SamplingParams())
    with pytest.raises(ValueError, match="finish_reason"):
        processor.process("d", [1], "done")
    with pytest.raises(ValueError, match="index"):
        processor.add_request("c", None, [], SamplingParams(n=2), parent_id="q", index=2)
    assert processor.process("unknown", [1], None) == (None, False)


# ---- output kinds and per-report cost -------------------------------------------------------


STREAM_TEXT = " world! more text é 🤖 Hello world"


def test_delta_kind_reports_only_what_is_new(tokenizer):
    processor = OutputProcessor(tokenizer)
    processor.add_request("r1", "Hello", tokenizer.encode("Hello"),
                          SamplingParams(max_tokens=50, logprobs=1, output_kind="delta"))
    tokens = tokenizer.encode(STREAM_TEXT)
    outputs = []
    for step, token in enumerate(tokens):
        entry = TokenLogprobs(token, -0.5 - step, 1, ((token, -0.5 - step), (1, -3.0)))
        out, _ = processor.process("r1", [token], "length" if step == len(tokens) - 1 else None, None, [entry])
        if out is not None:
            outputs.append(out)
    completions = [o.outputs[0] for o in outputs]
    assert "".join(c.text for c in completions) == STREAM_TEXT
    assert all(c.text == c.delta_text and list(c.token_ids) == list(c.delta_token_ids) for c in completions)
    assert [t for c in completions for t in c.token_ids] == tokens
    assert [next(iter(e)) for c in completions for e in c.logprobs] == tokens
    assert [e[t].logprob for c in completions for t, e in zip(c.token_ids, c.logprobs)] == \
        [-0.5 - s for s in range(len(tokens))]
    assert outputs[-1].finished and completions[-1].finish_reason == "length"


def test_final_only_kind_reports_once_with_everything(tokenizer):
    processor = OutputProcessor(tokenizer)
    for index in range(2):
        processor.add_request(f"r1#{index}", None, [1], SamplingParams(n=2, max_tokens=50, output_kind="final_only"),
                              parent_id="r1", index=index)
    tokens = tokenizer.encode(STREAM_TEXT)
    reports = []
    for step, token in enumerate(tokens):
        last = step == len(tokens) - 1
        for index in range(2):
            out, _ = processor.process(f"r1#{index}", [token], "length" if last and index == 0 else None)
            reports += [out] if out is not None else []
    assert reports == []  # child 1 still runs
    final, _ = processor.process("r1#1", [tokenizer.EOS], "stop")
    assert final.finished and [c.text for c in final.outputs] == [STREAM_TEXT, STREAM_TEXT]
    assert [list(c.token_ids) for c in final.outputs] == [tokens, tokens + [tokenizer.EOS]]
    assert final.delta_text == STREAM_TEXT * 2
    assert not processor.has_unfinished()


def test_cumulative_snapshots_keep_their_length_as_the_record_grows(tokenizer):
    processor = OutputProcessor(tokenizer)
    processor.add_request("r1", None, [1], SamplingParams(max_tokens=50))
    tokens = tokenizer.encode(STREAM_TEXT)
    outputs, _ = run_stream(processor, "r1", tokens)
    texts = [o.outputs[0].text for o in outputs]
    assert texts == ["".join(o.delta_text for o in outputs[:i + 1]) for i in range(len(outputs))]
    lengths = [len(o.outputs[0].token_ids) for o in outputs]
    assert lengths == sorted(lengths) and lengths[-1] == len(tokens) and lengths[0] < lengths[-1]
    first = outputs[0].outputs[0]
    assert first.token_ids == tokens[:lengths[0]] and first.token_ids[-1] == tokens[lengths[0] - 1]
    assert first.token_ids[:5] == tokens[:lengths[0]] and first.token_ids != tokens


class CountingTokenizer(PieceTokenizer):
    """Counts the token ids it is asked to decode (the output side's work per token)."""

    def __init__(self):
        super().__init__()
        self.num_decoded_ids = 0

    def decode(self, ids, skip_special_tokens=True):
        self.num_decoded_ids += len(ids)
        return super().decode(ids, skip_special_tokens)


@pytest.mark.parametrize("kind", ["cumulative", "delta"])
def test_work_per_token_does_not_grow_with_the_completion(kind):
    """A 2,000-token stream: decoding work around token 2,000 is within 1.2x of that around token 100,
    and a cumulative report shares the records instead of copying them."""
    tokenizer = CountingTokenizer()
    processor = OutputProcessor(tokenizer)
    processor.add_request("r1", None, [1], SamplingParams(max_tokens=2000, stop=["never-seen"], output_kind=kind))
    pattern = tokenizer.encode(" world! more text é") + [tokenizer.byte_token(b) for b in "🤖".encode()]
    tokens = (pattern * (2000 // len(pattern) + 1))[:2000]
    work, records = [], set()
    for step, token in enumerate(tokens):
        before = tokenizer.num_decoded_ids
        out, _ = processor.process("r1", [token], "length" if step == 1999 else None)
        work.append(tokenizer.num_decoded_ids - before)
        if out is not None and kind == "cumulative":
            records.add(id(out.outputs[0].token_ids._items))
    early, late = sum(work[100:200]), sum(work[1900:2000])
    assert 0 < late <= 1.2 * early
    if kind == "cumulative":
        assert len(records) == 1  # every report is a view of the same token record
        assert out.outputs[0].token_ids == tokens and len(out.outputs[0].text) > 2000


@pytest.mark.parametrize("kind", ["cumulative", "delta"])
def test_output_side_work_per_emitted_token_at_2000_is_within_1_2x_of_that_at_100(kind, monkeypatch):
    """Issue 14's streaming-cost line, counted instead of timed: one 2,000-token completion fed one token per
    step (the runner's part faked), every unit of work the output side does per step is counted — ids the
    tokenizer decodes, characters the stop matcher scans (held-back plus new text, with a stop string whose
    prefixes keep being held), and characters and ids put into the output built for the caller. The work per
    emitted token around token 2,000 is within 1.2x of that around token 100, and cumulative fields are
    snapshots (no copy of the whole completion is made on the engine's side)."""
    from surge.engine.growing import ListPrefix, TextPrefix

    tokenizer = CountingTokenizer()
    scanned = [0]
    original_push = StopStringMatcher.push

    def counting_push(self, new_text):
        scanned[0] += len(self.held_text) + len(new_text)
        return original_push(self, new_text)

    monkeypatch.setattr(StopStringMatcher, "push", counting_push)
    processor = OutputProcessor(tokenizer)
    processor.add_request("r1", None, [1], SamplingParams(max_tokens=2000, stop=[" text éX"], output_kind=kind))
    pattern = tokenizer.encode(" world! more text é") + [tokenizer.byte_token(b) for b in "🤖".encode()]
    tokens = (pattern * (2000 // len(pattern) + 1))[:2000]
    work, deltas = [], []
    for step, token in enumerate(tokens):
        decoded, matched = tokenizer.num_decoded_ids, scanned[0]
        out, hit = processor.process("r1", [token], "length" if step == 1999 else None)
        assert not hit
        built = 0
        if out is not None:
            completion = out.outputs[0]
            built = len(out.delta_text) + len(completion.delta_token_ids)
            deltas.append(out.delta_text)
            if kind == "delta":
                built += len(completion._text) + len(completion.token_ids)
            else:  # O(1) views of the records, joined only if the caller reads them
                assert isinstance(completion._text, TextPrefix) and isinstance(completion.token_ids, ListPrefix)
        work.append(tokenizer.num_decoded_ids - decoded + scanned[0] - matched + built)
    early, late = sum(work[100:200]) / 100, sum(work[1900:2000]) / 100
    assert early > 0 and late <= 1.2 * early, (early, late)
    assert "".join(deltas) == tokenizer.decode(tokens)  # every character was reported, none twice
    if kind == "cumulative":
        assert out.outputs[0].text == tokenizer.decode(tokens)


def test_one_finish_reason_type_from_scheduler_to_caller(tokenizer):
    """The scheduler's reason, the output side's and the caller's are the one FinishReason (equal to its string)."""
    from surge.engine.outputs import FINISH_REASONS
    from surge.scheduler.request import FinishReason, RequestStatus

    assert FINISH_REASONS == (FinishReason.STOP, FinishReason.LENGTH, FinishReason.ABORT) == ("stop", "length", "abort")
    assert {RequestStatus(r.value).is_finished for r in FinishReason} == {True}
    processor = OutputProcessor(tokenizer)
    for rid, reason in (("a", "length"), ("b", FinishReason.STOP)):
        processor.add_request(rid, None, [1], SamplingParams(max_tokens=5))
        out, _ = processor.process(rid, tokenizer.encode("Hello"), reason)
        assert type(out.outputs[0].finish_reason) is FinishReason and out.outputs[0].finish_reason == reason
        assert f"{out.outputs[0].finish_reason}" == str(reason)
    processor.add_request("c", None, [1], SamplingParams(max_tokens=5))
    assert type(processor.abort("c").outputs[0].finish_reason) is FinishReason
