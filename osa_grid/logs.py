"""Structured logs: one line per event, ``event key=value ...``, with run and task ids as fields."""

from __future__ import annotations

import logging
import sys
from typing import Any

from osa_grid.core.redaction import HIDDEN, is_secret_name, redact_text

LOGGER_NAME = "osa_grid"


def get_logger(name: str = "") -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        # Logs are kept and shared: a field named like a secret, or a password in a URL, is never written.
        text = " ".join(f"{k}={HIDDEN if is_secret_name(k) else _quote(v)}" for k, v in fields.items())
        logger.log(level, "%s %s", name, redact_text(text))


def _quote(value: Any) -> str:
    text = str(value)
    return f'"{text}"' if (" " in text or not text) else text


def configure(verbosity: int) -> None:
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_Redact())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger(LOGGER_NAME)
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


class _Redact(logging.Filter):
    """Hides secrets in every message of osa-grid's loggers, also those written without ``event``."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        hidden = redact_text(message)
        if hidden != message:
            record.msg, record.args = hidden, None
        return True
