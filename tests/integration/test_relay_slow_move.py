"""A relay-mode C-MOVE whose instance trickles in from its upstream over a slow link: the
upstream sends it on an association of its own to an acceptor and says nothing on the
C-MOVE's association meanwhile, yet timeouts count silence, not how long an instance takes
to arrive (README "Instances of several GB"). 3 MB at 400 KB/s against 2 s timeouts: the
shape of a 2 GB instance over a WAN link, in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.dcmtk import LOCALHOST, StoreSCP
from tests.integration.router_process import RouterProcess
from tests.integration.test_relay_outcomes import Upstream, _move_to, _no_traceback, _router
from tests.integration.test_relay_slow_upstream import RATE, STALLS, _dataset_bytes, _instance
from tests.slow_link import SlowLink

pytestmark = pytest.mark.integration


def _start(tmp_path: Path, target: StoreSCP, upstream: Upstream, dimse_timeout: int,
           request_timeout: int) -> RouterProcess:
    """A router relaying C-MOVEs to the upstream, the storescp known as TARGET."""
    # drain_grace: a stalled instance's association holds the stop no longer than that.
    return _router(tmp_path, upstream, pacs={"dimse_timeout": dimse_timeout},
                   request_timeout=request_timeout, drain_grace=1,
                   known_aes={"TARGET": {"host": LOCALHOST, "port": target.port}})


def _slow_move(router: RouterProcess, upstream: Upstream, stall_after: int | None = None
               ) -> tuple[tuple[int, ...], str]:
    """A C-MOVE to TARGET whose upstream stores to the router through a slow link: the
    final (status, remaining, completed, failed, warning) and its comment."""
    with SlowLink(router.port, rate=RATE, send_stall_after=stall_after) as link:
        upstream.move_to = (LOCALHOST, link.port)
        final = _move_to(router.port, "TARGET")
    return tuple(int(value) for value in final[:5]), str(final[5])


def test_a_relayed_c_move_instance_slower_than_both_timeouts_arrives_while_data_flows(
        tmp_path: Path) -> None:
    """The upstream's dimse_timeout and request_timeout 2 s, its one 3 MB instance 7.5 s on
    its way to the router: the storescp gets it byte for byte and the requester Success
    (before: the C-MOVE's association stayed silent meanwhile, the worker aborted the
    upstream after 2 s and the requester got 0xA701)."""
    source = _instance(tmp_path)
    upstream = Upstream("MOVEQR", [source])
    with StoreSCP(tmp_path / "target", "TARGET") as target:
        router = _start(tmp_path, target, upstream, 2, 2)
        try:
            final, comment = _slow_move(router, upstream)
            assert final[0] == 0x0000 and final[2:] == (1, 0, 0), (final, comment)
            received = target.received_files()
            assert [_dataset_bytes(path) for path in received] == [_dataset_bytes(source)]
            _no_traceback(router)
        finally:
            router.stop()
            upstream.close()


@pytest.mark.parametrize(("dimse_timeout", "request_timeout", "cause"), STALLS)
def test_a_relayed_c_move_whose_instance_stalls_fails_on_the_silence(
        tmp_path: Path, dimse_timeout: int, request_timeout: int, cause: str) -> None:
    """The link stops carrying the upstream's instance 1 MB in and stays open: the data no
    longer flows, so the requester gets 0xA701 from the timer that counts the silence, and
    the storescp nothing."""
    upstream = Upstream("MOVEQR", [_instance(tmp_path)])
    upstream.ae.dimse_timeout = upstream.ae.network_timeout = 120
    with StoreSCP(tmp_path / "target", "TARGET") as target:
        router = _start(tmp_path, target, upstream, dimse_timeout, request_timeout)
        try:
            final, comment = _slow_move(router, upstream, stall_after=1_000_000)
            assert final[0] == 0xA701, (final, comment)
            assert cause in comment, comment
            assert target.received_files() == []
            _no_traceback(router)
        finally:
            router.stop()
            upstream.close()
