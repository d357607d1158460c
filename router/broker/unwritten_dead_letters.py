"""Dead letters the spool could not take (its disk full, read-only, failing).

Their jobs stay on the spool (a restart recovers them), and the broker writes them again once
a heartbeat until the spool takes them: before, the job was forgotten until a restart, in no
queue and in no dead-letter list. A job settled meanwhile (its other destinations done) is
held, and its files removed only once its last dead letter is written.

A start also leaves here the dead letters it makes (a destination removed while jobs waited
for it): the broker writes them in small batches between its other work, so that 50,000 of
them (minutes of fsyncs) do not keep it from taking new instances meanwhile; the folder is
fsync'd once a batch (router/broker/main.py `_write_deferred_dead_letters`).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from router.broker.deliveries import DeadLetter, Outcome, Settled


@dataclass
class UnwrittenDeadLetters:
    letters: dict[tuple[str, str], DeadLetter] = field(default_factory=dict)
    held: dict[str, Settled] = field(default_factory=dict)  # settled but for these letters
    _per_job: Counter[str] = field(default_factory=Counter)

    def add(self, letter: DeadLetter) -> None:
        key = letter.delivery.key
        if key not in self.letters:
            self._per_job[key[0]] += 1
        self.letters[key] = letter

    def hold(self, settled: Settled) -> bool:
        """Keep a settled job's files while one of its dead letters waits; False if none."""
        if self._per_job[settled.job.job_id] == 0:
            return False
        self.held[settled.job.job_id] = settled
        return True

    def by_destination(self) -> Counter[str]:
        return Counter(destination for _, destination in self.letters)

    def retry(self, write: Callable[[DeadLetter], bool], limit: int | None = None
              ) -> list[Outcome]:
        """Write each again (at most `limit`), oldest first, stopping at the first that still
        fails (a full spool: one try a heartbeat, not one per letter). Returns the jobs now
        settled."""
        settled: list[Outcome] = []
        for key, letter in list(itertools.islice(self.letters.items(), limit)):
            if not write(letter):
                break
            del self.letters[key]
            self._per_job[key[0]] -= 1
            if self._per_job[key[0]] <= 0:
                del self._per_job[key[0]]
                if (done := self.held.pop(key[0], None)) is not None:
                    settled.append(done)
        return settled
