"""Random kill -9 of router processes under a steady stream of senders (loadtest/chaos.py,
bounded here; its full length is `python -m loadtest.chaos --minutes 10`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.chaos import DESTINATION, GRACEFUL_STOP, RELOAD, WHOLE_ROUTER, run_chaos

pytestmark = pytest.mark.integration


def test_random_kills_under_load_lose_nothing_acknowledged(tmp_path: Path) -> None:
    """Three storescu senders; one rule forwards to two destinations that each serve one
    association at a time; an acceptor, the broker, a worker, the whole router or a
    destination killed every ~2.5 s, or the router stopped (SIGTERM) and started, or its
    config changed and reloaded: every file a sender was told Success for arrives
    byte-identical at both, every killed process comes back, every stop exits 0, every
    reload is applied, nothing is dead-lettered and the spool drains. Victims are dealt
    from a shuffled deck of every kind, and the run goes on until the deck is through.
    Meanwhile a viewer's relayed C-FIND and C-GET to a dcmqrscp archive each end within
    half the router's request_timeout (no kill leaves a requester waiting for it), whatever
    is answered Success is the archive's, and no retrieve's instance stays in relay/."""
    report = run_chaos(tmp_path, seconds=15, kill_every=2.0, senders=3, instances=900,
                       seed=7, destinations=2, whole_deck=True, queries=True)
    print("\n" + "\n".join(report.lines()))
    assert report.ok, "\n".join(report.lines())
    assert set(report.missing) == {"pacs", "archive"}
    assert sum(report.kills.values()) >= 9  # a whole deck of nine kinds
    assert report.kills[WHOLE_ROUTER] >= 1
    assert report.kills[GRACEFUL_STOP] >= 1 and report.kills[RELOAD] >= 1, report.kills
    assert report.kills[f"{DESTINATION} pacs"] >= 1, report.kills
    assert report.kills[f"{DESTINATION} archive"] >= 1, report.kills
    assert {"acceptor-1", "broker"} <= set(report.kills), report.kills
    assert any(name.startswith("worker-") for name in report.kills), report.kills
    assert report.distinct_acknowledged >= 200  # the senders got through between the kills
    assert report.queries is not None  # and so did the viewer
    assert report.queries.finds_ok >= 1 and report.queries.gets_ok >= 1, report.lines()


def test_random_kills_under_load_over_tls_lose_nothing_acknowledged(tmp_path: Path) -> None:
    """The same over TLS from the senders, shorter, to one destination, and only what TLS
    meets (the broker, workers and destinations are the plain run's): an acceptor killed
    mid-handshake or mid-transfer, the whole router killed, a stop draining TLS
    associations and a reload (which loads the TLS material again) lose nothing
    acknowledged either."""
    report = run_chaos(tmp_path, seconds=8, kill_every=2.0, senders=3, instances=600,
                       seed=147, destinations=1, tls=True, whole_deck=True,
                       victims=("acceptor-", WHOLE_ROUTER, RELOAD))
    print("\n" + "\n".join(report.lines()))
    assert report.ok, "\n".join(report.lines())
    assert report.kills["acceptor-1"] >= 1 and report.kills[RELOAD] >= 1, report.kills
    assert report.kills[GRACEFUL_STOP] >= 1 and report.kills[WHOLE_ROUTER] >= 1, report.kills
    assert set(report.kills) == {"acceptor-1", WHOLE_ROUTER, GRACEFUL_STOP, RELOAD}, \
        report.kills
    assert report.distinct_acknowledged >= 100
