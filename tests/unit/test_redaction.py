"""Secrets are hidden before they reach a log line, a message or a task's provenance."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from osa_grid.cli.app import app
from osa_grid.core.redaction import HIDDEN, redact_argv, redact_env, redact_text
from osa_grid.errors import BadInput, OsaGridError
from osa_grid.logs import configure, event, get_logger
from osa_grid.services.notify import WebhookNotifier, notifier_from_url

SECRET = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.~", min_size=6, max_size=40)


@given(
    SECRET, st.sampled_from(["OSA_GRID_RUCIO_PASSWORD", "DIRACX_TOKEN", "api_key", "X_SECRET", "CREDENTIAL"])
)
@settings(max_examples=300)
def test_a_secret_named_variable_is_never_recorded(secret: str, name: str) -> None:
    assert redact_env({name: secret, "OMP_NUM_THREADS": "1"}) == {name: HIDDEN, "OMP_NUM_THREADS": "1"}


@given(SECRET, st.sampled_from(["https", "http", "smtp", "postgresql+psycopg", "amqp"]))
@settings(max_examples=300)
def test_the_password_of_a_url_is_hidden_wherever_it_appears(secret: str, scheme: str) -> None:
    url = f"{scheme}://user:{secret}@host.example.org:99/path?q=1"
    for text in (url, f"cannot reach {url}: refused", f"NOTIFY={url}"):
        # Exactly the password goes (a secret may also be a piece of the rest, e.g. "postgr").
        assert redact_text(text) == text.replace(f"user:{secret}@", "user:***@")


@given(SECRET)
@settings(max_examples=300)
def test_secret_options_in_a_command_line(secret: str) -> None:
    argv = [
        "step",
        "--password",
        secret,
        f"--api-key={secret}",
        f"token={secret}",
        "--token",
        secret,
        "in.h5",
    ]
    hidden = redact_argv(argv)
    assert secret not in " ".join(hidden)
    assert hidden == [
        "step",
        "--password",
        HIDDEN,
        f"--api-key={HIDDEN}",
        f"token={HIDDEN}",
        "--token",
        HIDDEN,
        "in.h5",
    ]


def test_plain_values_are_kept() -> None:
    argv = [
        "python",
        "-m",
        "lstchain",
        "--input",
        "/data/R0/run.fits.fz",
        "--key-file-less",
        "x",
        "--max-events=10",
    ]
    assert redact_argv(argv)[:5] == argv[:5] and redact_argv(argv)[-1] == "--max-events=10"
    assert redact_text("Authorization: Bearer eyJhbGciOi.abc.def") == "Authorization: Bearer ***"
    assert redact_text("https://host.example.org/path") == "https://host.example.org/path"


def test_log_lines_hide_secret_fields_and_urls(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger("osa_grid")
    saved = (root.handlers[:], root.level, root.propagate)
    configure(2)  # the CLI's handler, on the (captured) stderr
    try:
        logger = get_logger("test")
        event(logger, "connected", password="pw-1", url="https://u:pw-2@h/x", run=1807)
        logger.warning("retrying %s", "https://u:pw-3@h/x")
    finally:  # other tests capture osa-grid's records through the root logger
        root.handlers[:], root.level, root.propagate = saved[0], saved[1], saved[2]
    written = capsys.readouterr().err
    assert "password=*** url=https://u:***@h/x run=1807" in written
    assert "retrying https://u:***@h/x" in written
    assert "pw-1" not in written and "pw-2" not in written and "pw-3" not in written


def test_notify_errors_never_show_the_urls_credentials() -> None:
    with pytest.raises(OsaGridError) as raised:
        WebhookNotifier("http://osa:hook-pw@127.0.0.1:1/hooks/T0/B0").send("subject", "body")
    assert "hook-pw" not in str(raised.value) and "127.0.0.1:1" in str(raised.value)
    with pytest.raises(BadInput) as bad:
        notifier_from_url("smtp://osa:mail-pw@mail.site:25")  # no recipient
    assert "mail-pw" not in str(bad.value)
    with pytest.raises(BadInput) as bad:
        notifier_from_url("gopher://osa:other-pw@site")
    assert "other-pw" not in str(bad.value)


@given(SECRET)
@settings(max_examples=200)
def test_short_password_options_of_the_programs_that_have_them(secret: str) -> None:
    """``-p SECRET`` was recorded as written: hidden for the programs whose ``-p`` (``-a``, ``-w``...) is a
    password."""
    for argv, expected in [
        (["mysql", "-u", "osa", f"-p{secret}", "runs"], ["mysql", "-u", "osa", f"-p{HIDDEN}", "runs"]),
        (["/usr/bin/mysqldump", "-p", secret, "db"], ["/usr/bin/mysqldump", "-p", HIDDEN, "db"]),
        (["sshpass", "-p", secret, "scp", "a", "b:"], ["sshpass", "-p", HIDDEN, "scp", "a", "b:"]),
        (
            ["env", "A=1", "redis-cli", "-a", secret, "ping"],
            ["env", "A=1", "redis-cli", "-a", HIDDEN, "ping"],
        ),
        (["ldapsearch", "-x", f"-w{secret}"], ["ldapsearch", "-x", f"-w{HIDDEN}"]),
    ]:
        assert redact_argv(argv) == expected


def test_short_options_of_other_programs_are_kept() -> None:
    """``-p`` is a pedestal file, a file pattern or a port for the payload and common tools: kept."""
    for argv in [
        ["lstchain_data_r0_to_dl1", "-i", "run.fits.fz", "-o", "dl1/", "-p", "drs4_pedestal.h5"],
        ["lstchain_merge_hdf5_files", "-d", "dl1/", "-p", "dl1_*.h5", "-o", "merged.h5"],
        ["psql", "-h", "db.site", "-p", "5432", "-U", "osa"],
        ["python", "-m", "osa_grid.steps.lstchain", "-p", "pedestal.h5", "-pfile.h5"],
        ["mytool", "-w", "4", "-a", "all", "-u", "user"],
    ]:
        assert redact_argv(argv) == argv


@pytest.mark.parametrize(
    "url",
    [
        "oracle://osa:S3cr3t-pw@db.site/catalog",
        "postgersql://osa:S3cr3t-pw@db.site/catalog",  # a typo
        "postgresql+nodriver://osa:S3cr3t-pw@db.site/catalog",  # a traceback before
        "not a url://osa:S3cr3t-pw@db.site",
    ],
)
def test_an_unsupported_catalog_url_is_named_without_its_password(url: str) -> None:
    result = CliRunner().invoke(app, ["--catalog", url, "status"])
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert "S3cr3t-pw" not in output and "osa:***@db.site" in output
    assert "supported URL schemes: sqlite:///PATH, postgresql://" in output
    assert "Traceback" not in output
