"""A signal sets its event without the handler taking the event's lock (process_util.py).

The handler runs in the main thread between two bytecodes, possibly while that thread holds
the event's lock inside `event.wait()`; an acceptor hung so at SIGTERM in a CI run. The
scenario runs in a child interpreter, so that a hang fails the test instead of the suite.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import signal, threading
from router.core.process_util import set_on_signal

event = threading.Event()
heard = []
set_on_signal([signal.SIGUSR1, signal.SIGUSR2], event, heard.append)
with event._cond:  # what Event.wait holds while it decides: where the acceptor hung
    # To this thread itself: the Python handler runs inside pthread_kill, lock held.
    signal.pthread_kill(threading.get_ident(), signal.SIGUSR2)
    print("handler returned", flush=True)
print("set" if event.wait(10) else "not set", heard == [signal.SIGUSR2], flush=True)
"""


def test_a_signal_sets_the_event_even_while_its_lock_is_held() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["handler returned", "set True"], done.stdout
