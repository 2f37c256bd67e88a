"""Keep transformers' "PyTorch was not found" advice off surge's start-up.

In: nothing (called once from `surge/__init__.py`, before anything imports transformers).
Out: a filter on the `transformers` logger that drops that one record. surge uses transformers
for tokenizers only, which need no PyTorch; every other transformers message still prints, and
code that does need PyTorch (bench.compare=transformers) fails with its own ImportError.
"""

from __future__ import annotations

import logging

_ADVICE = "PyTorch was not found."


class _DropTorchAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_ADVICE)


def silence_torch_advice() -> None:
    logger = logging.getLogger("transformers")  # the logger transformers/__init__.py warns on
    if not any(isinstance(f, _DropTorchAdvice) for f in logger.filters):
        logger.addFilter(_DropTorchAdvice())
