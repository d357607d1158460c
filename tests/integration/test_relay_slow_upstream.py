"""A relayed C-GET whose instance trickles in from its upstream over a slow link: timeouts
count the upstream's silence, not how long an instance takes to arrive (README "Instances of
several GB"). A 2.3 GB whole-slide image over a WAN link takes minutes; here 3 MB at 400 KB/s
against 2 s timeouts, the same shape in seconds."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from tests.dicom_samples import EXPLICIT_VR_LE, write_instance
from tests.integration.router_process import RouterProcess, wait_for
from tests.integration.test_relay_outcomes import (
    GET,
    Upstream,
    _counts,
    _no_traceback,
    _query,
    _requester,
    _router,
)
from tests.slow_link import SlowLink

pytestmark = pytest.mark.integration

RATE = 400_000  # bytes per second from the upstream: 3 MB take 7.5 s, past 2 s timeouts
SIZE = 3_000_000


def _instance(tmp_path: Path) -> Path:
    folder = tmp_path / "src"
    folder.mkdir()
    return write_instance(folder, sop_class="1.2.840.10008.5.1.4.1.1.2",
                          transfer_syntax=EXPLICIT_VR_LE, size_bytes=SIZE)


def _dataset_bytes(path: Path) -> bytes:
    """The file's dataset, after its preamble and file meta information."""
    data = path.read_bytes()
    meta_length = int.from_bytes(data[140:144], "little")  # (0002,0000) UL, explicit VR
    return data[144 + meta_length:]


def _get(router: RouterProcess) -> tuple[tuple[int, ...], str, list[bytes]]:
    """The final (status, remaining, completed, failed, warning), its comment, and the
    datasets the requester received."""
    got: list[bytes] = []

    def on_store(event: Any) -> int:
        got.append(event.request.DataSet.getvalue())
        return 0x0000

    assoc = _requester(router.port, [GET], on_store=on_store)
    answers = list(assoc.send_c_get(_query(), GET))
    assoc.release()
    status = answers[-1][0]
    return _counts(status), str(status.get("ErrorComment", "")), got


def test_a_c_get_instance_slower_than_both_timeouts_arrives_while_data_flows(
        tmp_path: Path) -> None:
    """The upstream's dimse_timeout and request_timeout 2 s, its one 3 MB instance 7.5 s on
    the way: the requester gets Success and the instance byte for byte (before: pynetdicom's
    DIMSE wait ended only with a whole message, the worker aborted the upstream after 2 s
    and the acceptor had failed the C-GET with 0xA701 by then)."""
    source = _instance(tmp_path)
    upstream = Upstream("GETQR", [source])
    with SlowLink(upstream.port, rate=0.0, back_rate=RATE) as link:
        router = _router(tmp_path, upstream, pacs={"port": link.port, "dimse_timeout": 2},
                         request_timeout=2)
        try:
            final, comment, got = _get(router)
            assert final[0] == 0x0000 and final[2:] == (1, 0, 0), (final, comment)
            assert got == [_dataset_bytes(source)]
            assert dcmread(source).SOPInstanceUID  # the sample is a readable instance
            _no_traceback(router)
        finally:
            router.stop()
            upstream.close()


# (dimse_timeout, request_timeout, the cause the requester reads) for a stalled upstream
STALLS = [
    (2, 30, "did not answer in time"),  # the worker's wait: the upstream's silence
    (5, 2, "no answer from the router's worker within 2s"),  # the acceptor's wait
]


@pytest.mark.parametrize(("dimse_timeout", "request_timeout", "cause"), STALLS)
def test_a_c_get_whose_upstream_stalls_mid_instance_fails_on_the_silence(
        tmp_path: Path, dimse_timeout: int, request_timeout: int, cause: str) -> None:
    """The link stops carrying the upstream's data 1 MB into the instance and stays open:
    the requester gets 0xA701 from the timer that counts the silence, not at the other one.
    The upstream waits long for its C-STORE's answer: pynetdicom's abort waits for its
    reader, which a stalled link held in the middle of a PDU until the upstream gave up (so
    the requester heard only at request_timeout) unless the router shuts the socket down."""
    upstream = Upstream("GETQR", [_instance(tmp_path)])
    upstream.ae.dimse_timeout = upstream.ae.network_timeout = 120
    with SlowLink(upstream.port, rate=0.0, back_rate=RATE, stall_after=1_000_000) as link:
        router = _router(tmp_path, upstream,
                         pacs={"port": link.port, "dimse_timeout": dimse_timeout},
                         request_timeout=request_timeout)
        try:
            final, comment, got = _get(router)
            assert final[0] == 0xA701 and not got, (final, comment)
            assert cause in comment, comment
            _no_traceback(router)
        finally:
            router.stop()
            upstream.close()


def test_a_c_cancel_ends_a_c_get_whose_upstream_stalled_mid_instance(tmp_path: Path) -> None:
    """The link stops carrying the upstream's data 1 MB into the instance and stays open;
    the requester sends C-CANCEL, which the upstream (busy sending) never answers: the
    worker aborts the upstream 5 s later and the requester gets its final answer then.
    Both timeouts are 60 s, far past the requester's 20 s wait here (before: the abort
    waited for pynetdicom's reader, held in the middle of a PDU, until the relay's 60 s
    silence wait shut the socket down)."""
    upstream = Upstream("GETQR", [_instance(tmp_path)])
    upstream.ae.dimse_timeout = upstream.ae.network_timeout = 120
    with SlowLink(upstream.port, rate=0.0, stall_after=1_000_000) as link:
        router = _router(tmp_path, upstream, pacs={"port": link.port, "dimse_timeout": 60},
                         request_timeout=60)
        try:
            assoc = _requester(router.port, [GET], on_store=lambda event: 0x0000)
            answers: list[int] = []  # -1: the requester's own timeout, an empty status

            def get() -> None:
                answers.extend(int(status.get("Status", -1))
                               for status, _ in assoc.send_c_get(_query(), GET))

            requester = threading.Thread(target=get, daemon=True)
            requester.start()
            assert link.stalled.wait(15), "the upstream never sent its instance"
            assoc.send_c_cancel(1, query_model=GET)
            requester.join(20)
            assert not requester.is_alive(), "no final answer 20 s after the C-CANCEL"
            assert answers[-1:] == [0xFE00], answers
            assert wait_for(lambda: "aborting the association" in router.log(), 5)
            assoc.release()
            _no_traceback(router)
        finally:
            router.stop()
            upstream.close()
