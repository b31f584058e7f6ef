"""Hiding secrets before text reaches a log line, a message or the provenance of a task.

Provenance and logs are read by many and kept for years; the tokens, passwords and keys a step or a service
needs must never be written there. What looks like a secret is replaced by ``***``: an environment variable
or setting whose name says so, a ``--password=...``-like argument (or the argument after ``--password``),
the password of a URL (``scheme://user:***@host``) and an HTTP bearer token. Pure functions, no I/O.

Short options say nothing about their value: ``-p`` is a pedestal file for ``lstchain_data_r0_to_dl1``, a
file pattern for ``lstchain_merge_hdf5_files``, a port for ``psql``, and a password for ``mysql`` or
``sshpass``. Hiding every ``-p`` would hide the provenance our own payload needs, hiding none leaks those
passwords, so the rule is per program: once an argument names a program of ``SECRET_SHORT_OPTIONS`` (its
file name, also after a wrapper such as ``env`` or ``srun``), the value of its listed options is hidden from
there to the end of the command line, as a separate argument (``-p X``) or attached (``-pX``). For every other
program a short option is kept as written (``lstchain_data_r0_to_dl1 -p pedestal.h5``, ``psql -p 5432``): a
step that must pass a secret should use a long ``--password``-like option or a ``*_PASSWORD`` variable.

Secrets written inline in a production, a transformation or a campaign file are the step's to use, not the
catalog's to keep: the definitions the catalog records (``redact_production``, ``redact_transformation``)
hide the step's secret-named variables, its command line as above, secret-named parameters and backend
options; the file's text is kept with the same values hidden (``redact_source``), and a task's provenance
hides them wherever a template put them (``hide_values``). Steps run with the real values.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

import yaml

from osa_grid.core import yaml_limits

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


# Programs whose manual gives a short option a password (or a user:password) value.
_MYSQL = frozenset({"-p"})
SECRET_SHORT_OPTIONS: Mapping[str, frozenset[str]] = {
    "mysql": _MYSQL,
    "mysqldump": _MYSQL,
    "mysqladmin": _MYSQL,
    "mariadb": _MYSQL,
    "mariadb-dump": _MYSQL,
    "sshpass": frozenset({"-p"}),
    "mongo": frozenset({"-p"}),
    "mongosh": frozenset({"-p"}),
    "mongodump": frozenset({"-p"}),
    "redis-cli": frozenset({"-a"}),
    "ldapsearch": frozenset({"-w"}),
    "ldapmodify": frozenset({"-w"}),
    "ldapadd": frozenset({"-w"}),
    "ldapdelete": frozenset({"-w"}),
    "zip": frozenset({"-P"}),
    "unzip": frozenset({"-P"}),
    "7z": frozenset({"-p"}),
    "curl": frozenset({"-u"}),
    "smbclient": frozenset({"-U"}),
}


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
    """A command line as it may be recorded: the value after ``--token`` hidden, as ``redact_text`` does,
    and the values of the short options that carry a secret for the program they follow (``mysql -pX``)."""
    hidden: list[str] = []
    secret_next = False
    short_options: frozenset[str] = frozenset()
    for arg in argv:
        if secret_next:
            hidden.append(HIDDEN)
            secret_next = False
            continue
        short = next((option for option in short_options if arg.startswith(option)), None)
        if short is not None:
            # "-p" alone announces its value in the next argument; "-pX" carries it.
            secret_next = arg == short
            hidden.append(arg if secret_next else short + HIDDEN)
            continue
        if not arg.startswith("-"):
            short_options = SECRET_SHORT_OPTIONS.get(PurePosixPath(arg).name, short_options)
        # "--password" alone announces its value in the next argument; "--password=x" is one argument.
        secret_next = arg.startswith("-") and "=" not in arg and is_secret_name(arg)
        hidden.append(redact_text(arg))
    return hidden


def redact_mapping(values: Mapping[str, Any]) -> dict[str, Any]:
    """Settings-like values (production parameters, backend options): secret-named ones hidden, the
    other texts redacted, numbers and dates kept as they are."""
    return {
        key: HIDDEN if is_secret_name(key) else redact_text(value) if isinstance(value, str) else value
        for key, value in values.items()
    }


def redact_transformation(definition: Mapping[str, Any]) -> dict[str, Any]:
    """A transformation's definition (its JSON dump) as it may be recorded: the step's command line and
    environment as ``redact_argv`` and ``redact_env`` leave them, its free texts as ``redact_text`` does.
    Queries and templates of file names are kept: they name metadata, not secrets."""
    step = dict(definition["step"])
    step["argv"] = redact_argv(step["argv"])
    step["env"] = redact_env(step.get("env") or {})
    if step.get("container"):
        step["container"] = redact_text(step["container"])
    return {**definition, "description": redact_text(definition.get("description") or ""), "step": step}


def redact_production(definition: Mapping[str, Any]) -> dict[str, Any]:
    """A production's definition (its JSON dump) as it may be recorded (see ``redact_transformation``)."""
    return {
        **definition,
        "description": redact_text(definition.get("description") or ""),
        "parameters": redact_mapping(definition.get("parameters") or {}),
        "transformations": [redact_transformation(t) for t in definition["transformations"]],
    }


def hidden_values(real: Any, recorded: Any) -> set[str]:
    """The texts of ``real`` (a JSON-like value) that its redacted form ``recorded`` hides."""
    if isinstance(real, Mapping) and isinstance(recorded, Mapping):
        return set().union(*(hidden_values(value, recorded.get(key)) for key, value in real.items()))
    if isinstance(real, list) and isinstance(recorded, list) and len(real) == len(recorded):
        return set().union(*(hidden_values(a, b) for a, b in zip(real, recorded, strict=True)))
    if real == recorded:
        return set()
    text, shown = str(real), str(recorded)
    if HIDDEN not in shown:
        return {text}
    # What was kept around the hidden part is verbatim: the secret is what lies between.
    before = shown.index(HIDDEN)
    after = len(shown) - shown.rindex(HIDDEN) - len(HIDDEN)
    return {text[before : len(text) - after]}


# Shorter values are not searched for in other texts: hiding them would hide pieces of everything.
MIN_SECRET_LENGTH = 4


def hide_values(text: str, secrets: set[str]) -> str:
    """``text`` with each of ``secrets`` (say the values a production's definition hides) replaced, but
    those shorter than ``MIN_SECRET_LENGTH``."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= MIN_SECRET_LENGTH:
            text = text.replace(secret, HIDDEN)
    return text


def redact_source(text: str, secrets: set[str]) -> str | None:
    """The text of a YAML file as it may be recorded (to be read: an unquoted ``***`` is not valid YAML):
    each of ``secrets`` and what ``redact_text`` finds hidden. None when that cannot be done safely: a
    secret so short that hiding it would hide pieces of everything else, or one the text also writes in
    another form (escaped, folded), which would still be there once the text is read."""
    secrets = {secret for secret in secrets if secret}
    if any(len(secret) < MIN_SECRET_LENGTH for secret in secrets):
        return None
    # A plain word in the secrets' place keeps the text valid YAML, to check what it still says.
    marker = "hidden" + "x" * (max((len(w) for w in re.findall(r"hiddenx*", text)), default=0) + 1)
    checked = text
    for secret in sorted(secrets, key=len, reverse=True):
        checked = checked.replace(secret, marker)
    if secrets and _still_there(checked, secrets):
        return None
    return redact_text(checked.replace(marker, HIDDEN))


def _still_there(text: str, secrets: set[str]) -> bool:
    try:
        data = yaml_limits.safe_load(text)
    except yaml.YAMLError:
        return True  # cannot check what the text says: keep none of it
    return any(secret in piece for piece in _texts(data) for secret in secrets)


def _texts(data: Any) -> Iterator[str]:
    if isinstance(data, Mapping):
        for key, value in data.items():
            yield str(key)
            yield from _texts(value)
    elif isinstance(data, list):
        for item in data:
            yield from _texts(item)
    else:
        yield str(data)
