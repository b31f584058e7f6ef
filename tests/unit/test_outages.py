"""Outages of Rucio / DiracX: the alert rule (a fake clock), its record in the catalog, and ``status``."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from osa_grid.catalog import outages as records
from osa_grid.catalog.store import Catalog
from osa_grid.cli.app import app
from osa_grid.core.outages import Outage, alert_due
from osa_grid.errors import OsaGridError
from osa_grid.ports import ServiceHealth
from osa_grid.services.outages import OutageWatch

T0 = datetime(2026, 12, 8, 1, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, str]] = []
        self.fail = fail

    def send(self, subject: str, body: str) -> None:
        if self.fail:
            raise OsaGridError("cannot call the webhook hooks.example: connection refused")
        self.sent.append((subject, body))


def kinds(catalog: Catalog) -> list[str]:
    return [e["kind"] for e in catalog.events() if e["kind"].startswith("service_outage")]


# ------------------------------------------------------------------------------- the rule alone


def test_the_alert_is_due_once_the_outage_has_lasted_alert_after_and_only_once() -> None:
    after = timedelta(seconds=900)
    outage = Outage("rucio", "https://rucio", T0, "refused", T0)
    assert not alert_due(outage, T0, after)
    assert not alert_due(outage, T0 + timedelta(seconds=899), after)
    assert alert_due(outage, T0 + timedelta(seconds=900), after)
    assert alert_due(outage, T0 + timedelta(days=3), after)
    told = Outage("rucio", "https://rucio", T0, "refused", T0, alerted_at=T0 + timedelta(seconds=900))
    assert not alert_due(told, T0 + timedelta(days=3), after)
    # A clock that went back never makes an outage look older than it is.
    assert not alert_due(outage, T0 - timedelta(hours=1), after)
    assert alert_due(outage, T0, timedelta(0))


# ------------------------------------------------------------------------------- the watch


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_an_outage_is_recorded_alerted_once_after_alert_after_and_its_end_noticed(
    catalog: Catalog, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Recorder()
    watch = OutageWatch(catalog, {"rucio": 900}, notifier, clock, noticed_by="prod")
    health = ServiceHealth("rucio", "https://rucio.example:443")

    health.not_reached("list replicas: https://rucio.example:443 is unreachable: connection refused")
    watch.observe(health)
    [outage] = records.outages(catalog)
    assert (outage.service, outage.since, outage.alerted_at) == ("rucio", T0, None)
    assert "connection refused" in outage.last_error
    assert kinds(catalog) == ["service_outage_started"] and notifier.sent == []

    for _ in range(3):  # passes go on failing: 899 s is not long enough
        clock.advance(299.6)
        health.not_reached("stage: https://rucio.example:443 is unreachable: timed out")
        watch.observe(health)
    assert notifier.sent == [] and kinds(catalog) == ["service_outage_started"]
    [outage] = records.outages(catalog)
    assert outage.last_error.endswith("timed out") and outage.last_failure_at == clock.now

    with caplog.at_level(logging.WARNING, logger="osa_grid"):
        clock.advance(1.2)
        health.not_reached("stage: https://rucio.example:443 is unreachable: timed out")
        watch.observe(health)
    assert [s for s, _ in notifier.sent] == ["osa-grid: rucio not reached for 15 min 00 s"]
    assert "https://rucio.example:443" in notifier.sent[0][1] and "timed out" in notifier.sent[0][1]
    assert kinds(catalog) == ["service_outage_started", "service_outage_alert"]
    assert any(
        r.levelno == logging.WARNING and "service_outage_alert" in r.getMessage() for r in caplog.records
    )

    for _ in range(5):  # hours more: no second alert
        clock.advance(3600)
        health.not_reached("stage: https://rucio.example:443 is unreachable: timed out")
        watch.observe(health)
    assert len(notifier.sent) == 1 and kinds(catalog).count("service_outage_alert") == 1

    clock.advance(10)
    health.answered()
    watch.observe(health)
    assert records.outages(catalog) == []
    assert kinds(catalog)[-1] == "service_outage_over"
    assert notifier.sent[-1][0] == "osa-grid: rucio reached again"
    over = next(e for e in catalog.events() if e["kind"] == "service_outage_over")["detail"]
    assert over["down_seconds"] == 900 + 5 * 3600 + 10 and over["alerted"] is True

    # The next outage is a new one: its own start, its own alert.
    health.not_reached("is unreachable: refused")
    watch.observe(health)
    assert records.outages(catalog)[0].since == clock.now


def test_a_short_outage_is_recorded_but_nobody_is_told(catalog: Catalog, clock: FakeClock) -> None:
    notifier = Recorder()
    watch = OutageWatch(catalog, {"dirac": 900}, notifier, clock)
    health = ServiceHealth("dirac", "https://diracx:8000")
    health.not_reached("DiracX does not answer: ConnectError")
    watch.observe(health)
    clock.advance(30)
    health.answered()
    watch.observe(health)
    assert notifier.sent == [] and records.outages(catalog) == []
    assert kinds(catalog) == ["service_outage_started", "service_outage_over"]


def test_no_call_since_the_last_look_records_nothing(catalog: Catalog, clock: FakeClock) -> None:
    watch = OutageWatch(catalog, {"rucio": 60}, Recorder(), clock)
    health = ServiceHealth("rucio", "https://rucio")
    watch.observe(health)  # never asked: nothing known
    assert records.outages(catalog) == []
    health.not_reached("unreachable")
    watch.observe(health)
    clock.advance(120)
    watch.observe(health)  # the client made no call meanwhile: no failed attempt to record, no alert
    [outage] = records.outages(catalog)
    assert outage.last_failure_at == T0 and outage.alerted_at is None


def test_the_outage_outlives_the_shepherd_and_two_shepherds_alert_once(
    catalog: Catalog, clock: FakeClock
) -> None:
    first_notifier, second_notifier = Recorder(), Recorder()
    first = OutageWatch(catalog, {"dirac": 600}, first_notifier, clock)
    seen_by_first = ServiceHealth("dirac", "https://diracx:8000")
    seen_by_first.not_reached("DiracX does not answer")
    first.observe(seen_by_first)

    clock.advance(700)  # the first shepherd stopped; another starts, also failing to reach it
    second = OutageWatch(catalog, {"dirac": 600}, second_notifier, clock)
    seen_by_second = ServiceHealth("dirac", "https://diracx:8000")
    seen_by_second.not_reached("DiracX does not answer")
    second.observe(seen_by_second)
    assert records.outages(catalog)[0].since == T0  # not reset by the restart
    assert len(second_notifier.sent) == 1

    seen_by_first.not_reached("DiracX does not answer")
    first.observe(seen_by_first)
    assert first_notifier.sent == []  # already told by the other one

    # A shepherd started after the outage began sees the service answer: the recorded outage ends.
    third = OutageWatch(catalog, {"dirac": 600}, Recorder(), clock)
    answered = ServiceHealth("dirac", "https://diracx:8000")
    answered.answered()
    third.observe(answered)
    assert records.outages(catalog) == []
    assert kinds(catalog).count("service_outage_over") == 1


def test_credentials_are_never_stored_or_sent(catalog: Catalog, clock: FakeClock) -> None:
    notifier = Recorder()
    watch = OutageWatch(catalog, {"rucio": 0}, notifier, clock)
    health = ServiceHealth("rucio", "https://root:s3cretpw@rucio.example/")
    health.not_reached("connect to https://root:s3cretpw@rucio.example/ failed; password=s3cretpw")
    watch.observe(health)
    [outage] = records.outages(catalog)
    stored = " ".join([outage.url, outage.last_error, *(str(e["detail"]) for e in catalog.events())])
    assert "s3cretpw" not in stored and "s3cretpw" not in str(notifier.sent)
    assert "rucio.example" in outage.url and len(notifier.sent) == 1


def test_a_notifier_that_fails_does_not_stop_the_watch(
    catalog: Catalog, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    watch = OutageWatch(catalog, {"rucio": 0}, Recorder(fail=True), clock)
    health = ServiceHealth("rucio", "https://rucio")
    health.not_reached("unreachable")
    with caplog.at_level(logging.WARNING, logger="osa_grid"):
        watch.observe(health)
    assert records.outages(catalog)[0].alerted_at == T0
    assert any("notification_failed" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------- status


def test_status_shows_the_outage_with_its_error_as_text(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    catalog = Catalog.open(url)
    try:
        now = datetime.now(UTC)
        records.note_outage(
            catalog, "dirac", "https://diracx.example:8000", "DiracX does not answer: [bold]refused[/]", now
        )
    finally:
        catalog.close()
    result = CliRunner().invoke(
        app, ["status"], env={"OSA_GRID_HOME": str(tmp_path), "OSA_GRID_CATALOG_URL": url, "COLUMNS": "250"}
    )
    assert result.exit_code == 0, result.output
    assert "services not reached" in result.output
    assert "dirac" in result.output and "https://diracx.example:8000" in result.output
    assert "[bold]refused[/]" in result.output  # data, not markup
    assert f"{now:%Y-%m-%d %H:%M:%S}" in result.output
