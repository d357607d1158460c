"""pydicom and pynetdicom set up when a process first uses them, not at its start.

The acceptor's C-STORE and C-ECHO path is the router's engine: it needs pydicom only for a
header its rules or audit read, and pynetdicom only for a relayed request. Importing them at
start cost each acceptor ~0.4 s of CPU and ~18 MB; net.configure_pynetdicom() (its settings,
the version check) runs once, before the first use.
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_configured = False


def dicom_libraries() -> None:
    """Import and configure pydicom and pynetdicom once in this process (RouterError if the
    installed pynetdicom is not a supported version)."""
    global _configured
    if _configured:
        return
    with _lock:  # the connection threads and the relay threads may all come first
        if not _configured:
            from router.dicom.net import configure_pynetdicom

            configure_pynetdicom()
            _configured = True
