"""What a request asks its output to match, and the llguidance grammar for it.

In: vLLM's ``structured_outputs`` fields (``json``, ``regex``, ``choice``,
``grammar``, ``json_object``), from Python callers, ``surge-generate`` or the
server (which also maps OpenAI's ``response_format`` and the tool-call grammar
here). Out: a validated, hashable ``StructuredOutputsParams`` whose ``key`` is
the compile cache's key and whose ``to_grammar()`` is the llguidance grammar
text (JSON in llguidance's format) the compile worker turns into a matcher.

Exactly one field is set. Shape errors (two fields, a schema that is not JSON,
an empty choice) raise ``ValueError`` here; whether a schema, regex or Lark
grammar compiles is the compile worker's question (``GrammarError``).

JSON output is compact with ``", "`` and ``": "`` separators (what
``json.dumps`` writes and small models imitate), so a schema's keys and
punctuation are forced bytes that fast-forward can skip.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, List, Optional, Union

FIELDS = ("json", "regex", "choice", "grammar", "json_object")
# How JSON is laid out (llguidance JSON options): compact, json.dumps's separators.
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class GrammarError(ValueError):
    """A grammar that llguidance rejects (or that did not compile in time); the message names the problem."""


@dataclass(frozen=True)
class StructuredOutputsParams:
    # A JSON schema (dict or its JSON text) the output must validate against.
    json: Union[dict, str, None] = None
    # A regular expression (Rust regex syntax) the whole output must match.
    regex: Optional[str] = None
    # The output is exactly one of these strings.
    choice: Optional[List[str]] = None
    # A Lark grammar (llguidance's dialect, `%json {...}` allowed) or a GBNF grammar.
    grammar: Optional[str] = None
    # Any JSON object.
    json_object: bool = False
    # With a schema: reject keywords llguidance does not implement instead of ignoring them.
    strict: bool = False
    # The canonical JSON of the fields above (the compile cache's key); derived.
    key: str = field(init=False, repr=False, compare=True)

    def __post_init__(self) -> None:
        given = [name for name in FIELDS if _is_set(getattr(self, name))]
        if len(given) != 1:
            raise ValueError(f"structured_outputs: give exactly one of {', '.join(FIELDS)} "
                             f"(got {', '.join(given) or 'none'})")
        schema = self.json
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError as exc:
                raise ValueError(f"structured_outputs.json is not valid JSON: {exc}") from None
        if schema is not None and not isinstance(schema, (dict, bool)):
            raise ValueError(f"structured_outputs.json must be a JSON schema object, got {type(schema).__name__}")
        object.__setattr__(self, "json", schema)
        if self.regex is not None and not isinstance(self.regex, str):
            raise ValueError("structured_outputs.regex must be a string")
        if self.grammar is not None and not isinstance(self.grammar, str):
            raise ValueError("structured_outputs.grammar must be a string")
        if self.choice is not None:
            choice = [self.choice] if isinstance(self.choice, str) else list(self.choice)
            if not choice or not all(isinstance(c, str) and c for c in choice):
                raise ValueError("structured_outputs.choice must be a non-empty list of non-empty strings")
            object.__setattr__(self, "choice", tuple(choice))
        name = given[0]
        value = getattr(self, name)
        value = list(value) if name == "choice" else value
        object.__setattr__(self, "key", json.dumps({name: value, "strict": self.strict}, sort_keys=True))

    @classmethod
    def of(cls, value: Union["StructuredOutputsParams", dict, None]) -> Optional["StructuredOutputsParams"]:
        """From a dict of the fields (vLLM's extra-body shape), or unchanged."""
        if value is None or isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"structured_outputs must be a dict or StructuredOutputsParams, got "
                             f"{type(value).__name__}")
        unknown = sorted(set(value) - set(FIELDS) - {"strict"})
        if unknown:
            raise ValueError(f"structured_outputs: unknown field(s) {', '.join(unknown)} "
                             f"(known: {', '.join(FIELDS)}, strict)")
        return cls(**{k: v for k, v in value.items() if v is not None})

    @property
    def kind(self) -> str:
        return next(name for name in FIELDS if _is_set(getattr(self, name)))

    def to_grammar(self) -> str:
        """The llguidance grammar text; raises GrammarError when the input cannot be converted."""
        import llguidance

        kind = self.kind
        try:
            if kind in ("json", "json_object"):
                schema = {"type": "object"} if kind == "json_object" else self.json
                options = dict(JSON_LAYOUT, lenient=not self.strict)
                return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=options)
            if kind == "regex":
                return llguidance.grammar_from("regex", self.regex)
            if kind == "choice":
                return llguidance.grammar_from("choice", list(self.choice))
            return llguidance.grammar_from("grammar", self.grammar)
        except ValueError as exc:
            raise GrammarError(f"structured_outputs.{kind}: {exc}") from None


def _is_set(value: Any) -> bool:
    return value is not None and value is not False


__all__ = ["FIELDS", "GrammarError", "JSON_LAYOUT", "StructuredOutputsParams"]
