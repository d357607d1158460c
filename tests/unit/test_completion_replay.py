"""A replayed dead letter of a completion rule's instance (README "Study and series
completion"): its header keeps its first reception time, so its group's clocks have run out
and it goes at once, not held for stable_for again; letters of one group replayed together
go as one batch in Instance Number order."""

from __future__ import annotations

from .test_completion_share import T0, W1, Clock, held, make


def test_a_replayed_letter_is_not_held_again() -> None:
    clock = Clock()
    clock.now = T0 + 3600  # replayed an hour after its reception
    d = make(max_jobs=100, clock=clock)
    for n in (3, 1, 2):
        d.add_job(held(n))  # as take_replays adds them: one turn, old received_at
    d.worker_ready(W1, 10, clock.now)
    sent = d.dispatch(clock.now)
    assert [[job.instance_number for job in delivery.jobs] for _, delivery in sent] == [
        [1, 2, 3]]
