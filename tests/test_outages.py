"""An outage is logged in proportion: one warning when it starts, a summary a minute, one line when
it ends; and only errors about reaching a server count as outages."""

from __future__ import annotations

import logging

import pytest
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import IntegrityError, OperationalError

from groklab.outages import BROKER, DATABASE, OutageLog, outage_of


def test_an_outage_is_one_warning_a_summary_a_minute_and_one_line_at_its_end(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    outage = OutageLog(logging.getLogger("test.outages"), DATABASE, clock=lambda: now[0])
    down = OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused\nDETAIL: more"))
    with caplog.at_level(logging.DEBUG, logger="test.outages"):
        for _ in range(300):  # five minutes of passes a second
            outage.failed(down, "reconciling runs")
            now[0] += 1.0
        outage.reachable()
        outage.reachable()  # nothing to end twice
    above_debug = [r for r in caplog.records if r.levelno > logging.DEBUG]
    assert [r.levelname for r in above_debug] == ["WARNING"] * 5 + ["INFO"]
    assert (
        above_debug[0].getMessage() == "database unreachable while reconciling runs: ConnectionRefusedError: connection refused"
    )
    assert "still unreachable after 60 s (61 failed attempts" in above_debug[1].getMessage()
    assert above_debug[-1].getMessage() == "database reachable again after 300 s (300 failed attempts)"
    assert all(r.exc_info is None for r in above_debug)  # tracebacks at DEBUG only
    assert not outage.down


def test_only_errors_about_reaching_a_server_are_outages() -> None:
    assert outage_of(OperationalError("x", {}, Exception("server closed the connection"))) == DATABASE
    assert outage_of(BrokerError("Error 111 connecting to 127.0.0.1:6379")) == BROKER
    assert outage_of(IntegrityError("x", {}, Exception("duplicate key"))) is None
    assert outage_of(ValueError("a bug")) is None
