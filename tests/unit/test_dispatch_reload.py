"""router/broker/dispatch_state.py reconfigure: what a reload does to a destination's back-off."""

from __future__ import annotations

from typing import Any

import pytest

from router.broker.dispatch import Dispatcher
from router.broker.policies import policies
from router.core.config import RouterConfig, parse_config
from router.core.messages import Result

from .helpers import answer, make_header

W1 = b"worker-1"
W2 = b"worker-2"
RETRY = {"max_attempts": 3, "initial_delay": 60, "max_delay": 3600}


def config(**pacs: Any) -> RouterConfig:
    dest = {"type": "dicom", "ae_title": "PACS", "host": "10.0.0.1", "port": 104,
            "max_associations": 2, "retry": RETRY} | pacs
    return parse_config({"destinations": {"pacs": dest},
                         "rules": [{"name": "all", "forward": ["pacs"]}]})


def down_for_long() -> Dispatcher:
    """pacs failed to connect twice: its pause runs past t=100."""
    d = Dispatcher(policies(config()), 1000, 10**9, rand=lambda: 1.0)
    for i in range(3):
        d.add_job(make_header(f"r{i}", ("pacs",)))
    d.worker_ready(W1, 4, now=0.0)
    now = 0.0
    for _ in range(2):
        for _, delivery in d.dispatch(now):
            answer(d, W1, Result(delivery.job.job_id, "pacs", False, "connection", True,
                                 "refused"), now)
        now = d.paused_until["pacs"]
    assert d.is_paused("pacs", 100.0) and d.failures_in_a_row["pacs"] == 2
    return d


@pytest.mark.parametrize("change", [{"host": "10.0.0.2"}, {"port": 11112},
                                    {"ae_title": "PACS2"}, {"calling_ae": "ROUTER2"}])
def test_a_reload_that_changes_the_address_ends_the_back_off(change: dict[str, Any]) -> None:
    """An operator who fixed a wrong address waited out the pause the old one earned (up to
    max_delay) before the new one was tried. Now it is tried at once, with one probe; its
    failure starts a fresh back-off from initial_delay. The broker applies a reload before
    the workers restart with it: the back-off ends once no worker has the old settings (a
    probe sent to one failed at the old address and paused it again)."""
    d = down_for_long()
    new = config(**change)
    d.reconfigure(policies(new), 1000, 10**9)
    assert d.is_paused("pacs", 100.0)  # W1 still has the old address
    d.worker_ready(W2, 4, now=100.0)  # restarted with the new config
    d.worker_gone(W1)
    assert not d.is_paused("pacs", 100.0) and "pacs" not in d.backoff_reason
    assert not d.is_up("pacs")  # nothing says the new address works yet
    ((_, probe),) = d.dispatch(100.0)  # one probe, not the whole limit
    assert d.dispatch(100.0) == []
    (retry,) = answer(d, W2, Result(probe.job.job_id, "pacs", False, "connection", True), 100.0)
    assert retry.delay == pytest.approx(60.0)  # a fresh back-off, not the third doubling
    d.reconfigure(policies(new), 1000, 10**9)
    assert d.is_paused("pacs", 150.0)  # the same address again: the back-off stays
    ((_, probe),) = d.dispatch(160.0)
    answer(d, W2, Result(probe.job.job_id, "pacs", True), 160.0)
    assert d.is_up("pacs") and len(d.dispatch(160.0)) == 1  # it took one: the rest go


@pytest.mark.parametrize("change", [{"max_parallel": 8}, {"dimse_timeout": 5},
                                    {"retry": RETRY | {"max_attempts": 9}}])
def test_a_reload_that_keeps_the_address_keeps_the_back_off(change: dict[str, Any]) -> None:
    d = down_for_long()
    d.reconfigure(policies(config(**change)), 1000, 10**9)
    assert d.is_paused("pacs", 100.0) and d.failures_in_a_row["pacs"] == 2
    assert d.dispatch(100.0) == []



def learned(limit: int, probe_after: float) -> Dispatcher:
    """pacs, not pinned, as delivering to it left its learned concurrency."""
    d = Dispatcher(policies(config(max_associations=None, max_parallel=4)), 1000, 10**9,
                   rand=lambda: 1.0)
    d.concurrency["pacs"].limit, d.concurrency["pacs"].probe_after = limit, probe_after
    return d


@pytest.mark.parametrize("limit", [1, 3])
def test_a_reload_that_changes_the_address_learns_the_new_peers_limit_afresh(
        limit: int) -> None:
    """The old PACS took `limit` associations (1: it answered busy, and no probe comes for
    probe_interval); a reload moved the destination to another PACS. What the old one taught
    said nothing of the new one, which waited up to probe_interval at one association, or
    was sent three at once. It is now learned from the start, as a new destination is."""
    d = learned(limit, probe_after=60.0)
    d.reconfigure(policies(config(max_associations=None, max_parallel=4, host="10.0.0.2")),
                  1000, 10**9)
    assert (d.concurrency["pacs"].limit, d.concurrency["pacs"].probe_after) == (1, 0.0)


def test_a_reload_that_keeps_the_address_keeps_the_learned_limit() -> None:
    d = learned(1, probe_after=60.0)
    d.reconfigure(policies(config(max_associations=None, max_parallel=8)), 1000, 10**9)
    assert (d.concurrency["pacs"].limit, d.concurrency["pacs"].probe_after) == (1, 60.0)
