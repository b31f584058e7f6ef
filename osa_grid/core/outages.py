"""Outages of the remote services a shepherd needs (Rucio, DiracX): when to tell the operator (no I/O).

A shepherd waits an outage out: nothing fails for it, every pass tries again. But an outage of hours
should not go unnoticed, so once one has lasted a service's ``alert_after`` the operator is told, once
per outage; and told again when the service is back, if they were told it was down.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

# The services whose outages are watched, by the name their client reports them under.
RUCIO = "rucio"
DIRAC = "dirac"


@dataclass(frozen=True)
class Outage:
    """A service not reached since ``since``; ``alerted_at`` when the operator was told."""

    service: str
    url: str
    since: datetime
    last_error: str
    last_failure_at: datetime
    alerted_at: datetime | None = None

    def lasted(self, now: datetime) -> timedelta:
        return max(now - self.since, timedelta(0))


def alert_due(outage: Outage, now: datetime, alert_after: timedelta) -> bool:
    """Tell the operator once the outage has lasted ``alert_after``, and only once per outage."""
    return outage.alerted_at is None and outage.lasted(now) >= alert_after


def alert_message(outage: Outage, now: datetime) -> tuple[str, str]:
    """Subject and body of the alert."""
    return (
        f"osa-grid: {outage.service} not reached for {duration_text(outage.lasted(now))}",
        f"{outage.service} ({outage.url}) has not answered since {outage.since:%Y-%m-%d %H:%M:%S} UTC.\n"
        f"Last error: {outage.last_error}\n"
        "Shepherds keep waiting and trying again; no task fails for it. "
        "`osa-grid status` shows the outage until the service answers again.",
    )


def recovery_message(outage: Outage, now: datetime) -> tuple[str, str]:
    """Subject and body of the notice that the service answers again."""
    return (
        f"osa-grid: {outage.service} reached again",
        f"{outage.service} ({outage.url}) answers again after {duration_text(outage.lasted(now))} "
        f"(down since {outage.since:%Y-%m-%d %H:%M:%S} UTC); shepherds carry on.",
    )


def duration_text(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {seconds:02d} s"
    return f"{seconds} s"
