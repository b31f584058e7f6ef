"""Hiding secrets before text reaches a log line, a message or the provenance of a task.

Provenance and logs are read by many and kept for years; the tokens, passwords and keys a step or a service
needs must never be written there. What looks like a secret is replaced by ``***``: an environment variable
or setting whose name says so, a ``--password=...``-like argument (or the argument after ``--password``),
the password of a URL (``scheme://user:***@host``) and an HTTP bearer token. Pure functions, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

HIDDEN = "***"
# Names of variables, options and fields holding a secret (OSA_GRID_RUCIO_PASSWORD, DIRACX_TOKEN, api_key).
SECRET_NAME = re.compile(r"TOKEN|PASSWORD|PASSWD|SECRET|KEY|CREDENTIAL", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*):(?P<secret>[^/\s@]*)@")
_BEARER = re.compile(r"(?P<head>\bBearer\s+)(?P<secret>[A-Za-z0-9._~+/=-]+)", re.IGNORECASE)
# name=value or name: value where the name says secret (in argv, messages, config dumps).
_ASSIGNMENT = re.compile(
    r"(?P<head>(?:--?)?\b[A-Za-z0-9_.-]*(?:token|password|passwd|secret|key|credential)[A-Za-z0-9_.-]*"
    r"['\"]?\s*[=:]\s*['\"]?)(?P<secret>[^\s'\",;&]+)",
    re.IGNORECASE,
)


def is_secret_name(name: str) -> bool:
    return SECRET_NAME.search(name) is not None


def redact_text(text: str) -> str:
    """``text`` with URL passwords, bearer tokens and ``secret-name=value`` values hidden."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}:{HIDDEN}@", text)
    text = _BEARER.sub(lambda m: f"{m['head']}{HIDDEN}", text)
    return _ASSIGNMENT.sub(lambda m: f"{m['head']}{HIDDEN}", text)


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    """An environment as it may be recorded: secret-named variables hidden, other values redacted."""
    return {key: HIDDEN if is_secret_name(key) else redact_text(str(value)) for key, value in env.items()}


def redact_argv(argv: Sequence[str]) -> list[str]:
    """A command line as it may be recorded: the value after ``--token`` hidden, as ``redact_text`` does."""
    hidden: list[str] = []
    secret_next = False
    for arg in argv:
        if secret_next:
            hidden.append(HIDDEN)
            secret_next = False
            continue
        # "--password" alone announces its value in the next argument; "--password=x" is one argument.
        secret_next = arg.startswith("-") and "=" not in arg and is_secret_name(arg)
        hidden.append(redact_text(arg))
    return hidden
