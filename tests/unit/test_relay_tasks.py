"""workers/relay_tasks.py: when a relayed request's C-CANCEL goes upstream."""

from __future__ import annotations

from typing import Any

from router.core.messages import RelayRequest
from workers.relay_tasks import RelayTask

FIND = "1.2.840.10008.5.1.4.1.2.2.1"


class Upstream:
    """The upstream association: the C-CANCELs sent on it."""

    def __init__(self) -> None:
        self.cancels: list[int] = []

    def send_c_cancel(self, msg_id: int, query_model: Any = None) -> None:
        self.cancels.append(msg_id)


def _task(command: str = "C-FIND") -> tuple[RelayTask, Upstream]:
    request = RelayRequest(request_id="1-a", command=command, upstreams=["pacs"],
                           calling_ae="VIEWER", called_ae="DICOM-ROUTER",
                           peer_address="127.0.0.1", sop_class_uid=FIND,
                           transfer_syntax_uid="1.2.840.10008.1.2")
    task, upstream = RelayTask(request, None), Upstream()
    task.assoc = upstream  # type: ignore[assignment]
    return task, upstream


def test_a_cancel_before_the_request_went_follows_the_request() -> None:
    """Regression: a C-CANCEL that came once the upstream association was open but before
    the request was on the wire went first, and the upstream ignored it (it names no request
    in progress): the query ran until the 5 s abort."""
    task, upstream = _task()
    task.cancel()
    assert task.cancelled.is_set() and upstream.cancels == []  # not ahead of the request
    task.request_went()
    assert upstream.cancels == [1]
    task.request_went()  # later PDUs of the request change nothing
    assert upstream.cancels == [1]


def test_a_cancel_after_the_request_went_goes_at_once() -> None:
    task, upstream = _task()
    task.request_went()
    assert upstream.cancels == []
    task.cancel()
    assert upstream.cancels == [1]


def test_n_services_get_no_c_cancel() -> None:
    task, upstream = _task("N-ACTION")
    task.cancel()
    task.request_went()
    assert upstream.cancels == [] and task.cancelled.is_set()
