"""The library's messages go through Python's ``logging``, to the ``finetune`` logger.

An application that configures logging decides what is shown and where. One that does not still sees
them: at the first message, when neither the ``finetune`` logger nor the root logger has a handler, the
``finetune`` logger gets one of its own at INFO: rich's on a terminal, plain lines elsewhere (both on
stderr). ``fit(..., log=callable)`` sends a run's messages to that callable instead.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from typing import Callable, Iterator

LOGGER_NAME = 'finetune'
logger = logging.getLogger(LOGGER_NAME)


def _handler() -> logging.Handler:
    """Rich's handler on a terminal, plain lines elsewhere; both on the current stderr, message only."""
    if sys.stderr.isatty():
        from rich.logging import RichHandler
        handler: logging.Handler = RichHandler(show_time=False, show_path=False, show_level=False, markup=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter('%(message)s'))
    return handler


def ensure_handler() -> None:
    """Give the ``finetune`` logger a handler, unless the application has configured logging itself."""
    if logger.handlers or logging.getLogger().handlers:
        return
    logger.addHandler(_handler())
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    logger.propagate = False


@contextlib.contextmanager
def to_stderr() -> Iterator[None]:
    """For the command line: the ``finetune`` logger writes INFO lines to the current stderr (rich's handler on
    a terminal) while the block runs, whatever the process's logging is."""
    saved = logger.handlers[:], logger.level, logger.propagate
    logger.handlers[:] = [_handler()]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.handlers[:], logger.propagate = saved[0], saved[2]
        logger.setLevel(saved[1])


def info(message: str) -> None:
    """Log `message` at INFO on the ``finetune`` logger."""
    ensure_handler()
    logger.info(message)


def log_function(log: Callable[[str], None] | None) -> Callable[[str], None]:
    """Where a run's messages go: `log` when given, else the ``finetune`` logger."""
    if log is not None and not callable(log):
        from .errors import OptionError
        raise OptionError(f'log: expected a function taking one message (e.g. print), or None, got {log!r}.')
    return log or info
