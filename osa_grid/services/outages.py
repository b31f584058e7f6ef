"""Watching the remote services a shepherd needs: an outage recorded, alerted once, and its end noticed.

The clients (the Rucio data manager, the DiracX backend) say in their ``health`` whether their last call
reached the service; after each pass the shepherd hands it to an ``OutageWatch``, which keeps the catalog's
record (``osa_grid.catalog.outages``) and tells the operator: a WARNING log line and an event always, the
notifier (``notify`` setting) too. Errors and URLs are redacted before they are stored or sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from osa_grid.catalog import outages as records
from osa_grid.catalog.store import Catalog
from osa_grid.core.outages import DIRAC, RUCIO, Outage, alert_due, alert_message, recovery_message
from osa_grid.core.redaction import redact_text
from osa_grid.errors import OsaGridError
from osa_grid.logs import event, get_logger
from osa_grid.ports import ServiceHealth
from osa_grid.services.notify import Notifier

log = get_logger("outages")
DEFAULT_ALERT_AFTER = timedelta(seconds=900)


def default_alert_after() -> dict[str, float]:
    """Seconds per watched service, as the settings' defaults give them."""
    return dict.fromkeys((RUCIO, DIRAC), DEFAULT_ALERT_AFTER.total_seconds())


def _utcnow() -> datetime:
    return datetime.now(UTC)


class OutageWatch:
    def __init__(
        self,
        catalog: Catalog,
        alert_after: Mapping[str, float],
        notifier: Notifier | None = None,
        clock: Callable[[], datetime] = _utcnow,
        noticed_by: str | None = None,
    ) -> None:
        self.catalog = catalog
        self.alert_after = {service: timedelta(seconds=s) for service, s in alert_after.items()}
        self.notifier = notifier
        self.clock = clock
        self.noticed_by = noticed_by
        self._calls: dict[str, int] = {}  # per service: the client's call count last looked at
        self._up: dict[str, bool] = {}  # per service: known to be up (its recorded outage, if any, ended)

    def observe(self, health: ServiceHealth) -> None:
        """Record what the client's calls since the last look showed; nothing when it made none."""
        if health.reached is None or self._calls.get(health.service) == health.calls:
            return
        self._calls[health.service] = health.calls
        if health.reached:
            if not self._up.get(health.service):
                self._back(health)
                self._up[health.service] = True
        else:
            self._up[health.service] = False
            self._down(health)

    def _down(self, health: ServiceHealth) -> None:
        now = self.clock()
        outage = records.note_outage(
            self.catalog,
            health.service,
            redact_text(health.url),
            redact_text(health.error)[:2000],
            now,
            self.noticed_by,
        )
        after = self.alert_after.get(health.service, DEFAULT_ALERT_AFTER)
        if alert_due(outage, now, after) and records.claim_alert(self.catalog, outage, now):
            event(
                log,
                "service_outage_alert",
                logging.WARNING,
                service=outage.service,
                url=outage.url,
                since=outage.since.isoformat(timespec="seconds"),
                error=outage.last_error,
            )
            self._notify(outage, *alert_message(outage, now))

    def _back(self, health: ServiceHealth) -> None:
        now = self.clock()
        ended = records.end_outage(self.catalog, health.service, now, self.noticed_by)
        if ended is None:
            return
        alerted = ended.alerted_at is not None
        # The client says at once that it is back; the warning is for an outage the operator was told of.
        event(
            log,
            "service_outage_over",
            logging.WARNING if alerted else logging.INFO,
            service=ended.service,
            url=ended.url,
            down_seconds=round(ended.lasted(now).total_seconds()),
        )
        if alerted:  # the operator was told it was down: tell them it is back
            self._notify(ended, *recovery_message(ended, now))

    def _notify(self, outage: Outage, subject: str, body: str) -> None:
        if self.notifier is None:
            return
        try:
            self.notifier.send(subject, body)
        except OsaGridError as exc:
            # The log line and the catalog's event stand; a broken notifier must not stop the shepherd.
            event(log, "notification_failed", logging.WARNING, service=outage.service, error=exc)
