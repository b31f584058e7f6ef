"""Telling operators: a log line (default), e-mail over SMTP or a webhook, chosen by a URL in settings."""

from __future__ import annotations

import base64
import http.client
import json
import smtplib
import urllib.request
from collections.abc import Callable
from email.message import EmailMessage
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

from osa_grid.core.redaction import redact_text
from osa_grid.errors import BadInput, OsaGridError
from osa_grid.logs import event, get_logger

log = get_logger("notify")


class Notifier(Protocol):
    def send(self, subject: str, body: str) -> None: ...


class LogNotifier:
    def send(self, subject: str, body: str) -> None:
        event(log, "notify", subject=subject, body=body.replace("\n", " | "))


class SmtpNotifier:
    """``smtp://host:port?from=osa@site&to=a@site,b@site``"""

    def __init__(self, host: str, port: int, sender: str, recipients: list[str]) -> None:
        self.host, self.port, self.sender, self.recipients = host, port, sender, recipients

    def send(self, subject: str, body: str) -> None:
        message = EmailMessage()
        message["Subject"] = subject
        message["From"] = self.sender
        message["To"] = ", ".join(self.recipients)
        message.set_content(body)
        try:
            with smtplib.SMTP(self.host, self.port, timeout=10) as server:
                server.send_message(message)
        except (
            OSError,
            smtplib.SMTPException,
            ValueError,
        ) as exc:  # ValueError: e.g. an address it cannot encode
            raise OsaGridError(f"cannot send e-mail through {self.host}:{self.port}: {exc}") from exc


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A webhook that redirects is an error: following it would send the credentials to another address."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_NO_REDIRECTS = urllib.request.build_opener(_RefuseRedirects)


class WebhookNotifier:
    """POSTs ``{"subject": ..., "text": ...}`` as JSON to the URL.

    A ``user:password@`` in the URL is sent as HTTP Basic authentication (urllib would take it for part of the
    host name); it is kept apart from the URL so that no message or log line can show it.
    """

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018 - urlsplit checks the port only when asked
        except ValueError:
            raise BadInput(f"notify URL {redact_text(url)!r}: the port is not a number") from None
        if not parts.hostname:
            raise BadInput(f"notify URL {redact_text(url)!r}: expected http(s)://host[:port]/path")
        self.where = f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname
        self._headers = {"Content-Type": "application/json"}
        if parts.username is not None:
            user_password = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(user_password.encode()).decode()
        self.url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))

    def __repr__(self) -> str:
        return f"WebhookNotifier({self.where!r})"

    def send(self, subject: str, body: str) -> None:
        payload = json.dumps({"subject": subject, "text": f"{subject}\n{body}"}).encode()
        request = urllib.request.Request(self.url, data=payload, headers=self._headers, method="POST")
        try:
            with _NO_REDIRECTS.open(request, timeout=10) as response:
                response.read()
        except (OSError, http.client.HTTPException, ValueError) as exc:
            # Only the host: a webhook URL carries its secret in the path or the query.
            raise OsaGridError(redact_text(f"cannot call the webhook {self.where}: {exc}")) from exc


def _smtp(url: str) -> Notifier:
    parts = urlsplit(url)
    options = parse_qs(parts.query)
    recipients = [a for value in options.get("to", []) for a in value.split(",") if a]
    if not parts.hostname or not recipients:
        raise BadInput(
            f"notify URL {redact_text(url)!r}: expected smtp://host:port?to=someone@site[&from=...]"
        )
    sender = options.get("from", ["osa-grid@localhost"])[0]
    return SmtpNotifier(parts.hostname, parts.port or 25, sender, recipients)


NOTIFIERS: dict[str, Callable[[str], Notifier]] = {
    "log": lambda _url: LogNotifier(),
    "smtp": _smtp,
    "http": WebhookNotifier,
    "https": WebhookNotifier,
}


def notifier_from_url(url: str) -> Notifier:
    scheme = urlsplit(url).scheme or url
    factory = NOTIFIERS.get(scheme)
    if factory is None:
        raise BadInput(f"notify {redact_text(url)!r}: use 'log', an smtp:// URL or an http(s):// webhook URL")
    return factory(url)
