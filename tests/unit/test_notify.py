"""Notifiers against real servers on loopback: an SMTP server (aiosmtpd) and an HTTP webhook."""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import pytest
from aiosmtpd.controller import Controller

from osa_grid.errors import BadInput, OsaGridError
from osa_grid.services.notify import LogNotifier, SmtpNotifier, WebhookNotifier, notifier_from_url


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope)
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Controller, Inbox]]:
    inbox = Inbox()
    with socket.socket() as probe:  # a free port: aiosmtpd checks readiness by connecting, so 0 won't do
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield controller, inbox
    finally:
        controller.stop()


def test_email_reaches_a_real_smtp_server(smtp: tuple[Controller, Inbox]) -> None:
    controller, inbox = smtp
    port = controller.port
    notifier = notifier_from_url(f"smtp://127.0.0.1:{port}?to=ops@site,shifter@site&from=osa@site")
    assert isinstance(notifier, SmtpNotifier)
    notifier.send("night 2026-11-21 closed", "seq 1 DATA run 1807: COMPLETED")
    (message,) = inbox.messages
    assert message.mail_from == "osa@site" and message.rcpt_tos == ["ops@site", "shifter@site"]
    assert b"Subject: night 2026-11-21 closed" in message.content
    assert b"run 1807: COMPLETED" in message.content


class Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        Hook.received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_a_webhook_receives_json() -> None:
    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        notifier = notifier_from_url(f"http://127.0.0.1:{server.server_port}/hooks/osa")
        assert isinstance(notifier, WebhookNotifier)
        notifier.send("step vetoed", "task abc")
    finally:
        server.shutdown()
    assert Hook.received[-1] == {"subject": "step vetoed", "text": "step vetoed\ntask abc"}


def test_unreachable_servers_are_clear_errors() -> None:
    with pytest.raises(OsaGridError, match=r"cannot send e-mail through 127\.0\.0\.1:1"):
        notifier_from_url("smtp://127.0.0.1:1?to=a@b").send("s", "b")
    with pytest.raises(OsaGridError, match=r"cannot call the webhook 127\.0\.0\.1:1"):
        notifier_from_url("http://127.0.0.1:1/x").send("s", "b")


def test_notifier_urls() -> None:
    assert isinstance(notifier_from_url("log"), LogNotifier)
    with pytest.raises(BadInput, match="expected smtp://host:port"):
        notifier_from_url("smtp://127.0.0.1:25")
    with pytest.raises(BadInput, match="use 'log'"):
        notifier_from_url("carrier-pigeon://coop")


class AuthHook(BaseHTTPRequestHandler):
    """A webhook that wants HTTP Basic authentication, as a chat service's incoming hook may."""

    calls: ClassVar[list[tuple[str | None, dict[str, Any]]]] = []
    expected = "Basic " + base64.b64encode(b"osa:p@ss:word").decode()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        AuthHook.calls.append((self.headers["Authorization"], body))
        self.send_response(204 if self.headers["Authorization"] == self.expected else 401)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_a_webhook_url_with_user_and_password_delivers_with_basic_auth() -> None:
    server = HTTPServer(("127.0.0.1", 0), AuthHook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        # The password percent-encoded as URLs want it: "p@ss:word".
        notifier = notifier_from_url(f"http://osa:p%40ss%3Aword@127.0.0.1:{server.server_port}/hooks/osa")
        notifier.send("night closed", "all done")
        with pytest.raises(OsaGridError, match="HTTP Error 401") as refused:
            notifier_from_url(f"http://osa:wrong-pw@127.0.0.1:{server.server_port}/hooks/osa").send("s", "b")
    finally:
        server.shutdown()
    assert AuthHook.calls[0] == (
        AuthHook.expected,
        {"subject": "night closed", "text": "night closed\nall done"},
    )
    assert "wrong-pw" not in str(refused.value) and f"127.0.0.1:{server.server_port}" in str(refused.value)
    assert "p%40ss" not in repr(notifier) and "p%40ss" not in vars(notifier)["url"]


def test_a_webhook_url_with_a_bad_port_is_bad_input() -> None:
    with pytest.raises(BadInput, match="the port is not a number") as bad:
        notifier_from_url("http://osa:hook-pw@127.0.0.1:eighty/x")
    assert "hook-pw" not in str(bad.value)


def test_a_webhook_that_redirects_is_an_error_and_the_credentials_stay_home() -> None:
    target = HTTPServer(("127.0.0.1", 0), AuthHook)

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(307)
            self.send_header("Location", f"http://127.0.0.1:{target.server_port}/elsewhere")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    redirecting = HTTPServer(("127.0.0.1", 0), Redirect)
    for server in (target, redirecting):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    before = len(AuthHook.calls)
    try:
        with pytest.raises(OsaGridError, match="HTTP Error 307"):
            notifier_from_url(f"http://osa:p%40ss%3Aword@127.0.0.1:{redirecting.server_port}/h").send(
                "s", "b"
            )
    finally:
        target.shutdown()
        redirecting.shutdown()
    assert len(AuthHook.calls) == before
