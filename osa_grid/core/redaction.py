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
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath

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
