"""The supervisor's side of the acceptors' seats (router/core/acceptor_seat.py): one
listening socket per acceptor on the same port (SO_REUSEPORT), the state each reports for
/readyz, and the limits counted across them.

The sockets are bound before any child is spawned (after a plain bind checked the port is
free) and kept for the router's life; an acceptor that died gets a fresh socket when it
restarts, so that connections never queue in a backlog nobody reads."""

from __future__ import annotations

import socket
from multiprocessing.context import SpawnContext
from pathlib import Path
from typing import Any

from router.acceptor.admission import AcceptorState
from router.core.acceptor_seat import AcceptorSeat, SharedLimits
from router.core.config import ListenConfig
from router.service.ports import check_bindable, listening_socket


class AcceptorSeats:
    def __init__(self, listen: ListenConfig, mp: SpawnContext, folder: Path) -> None:
        self.listen = listen
        count = listen.acceptors
        # Written by each acceptor (AcceptorState codes): whether it takes work, and why not.
        self.states: list[Any] = [mp.Value("i", AcceptorState.STARTING, lock=False)
                                  for _ in range(count)]
        self.limits = SharedLimits.create(listen, count, folder)
        self.listeners: dict[int, socket.socket] = {}  # by acceptor index, while it runs

    def seat(self, index: int) -> AcceptorSeat:
        """Acceptor `index`'s (1..N) seat, with a listening socket bound now if it has none."""
        if index not in self.listeners:
            listen = self.listen
            if not self.listeners:  # no sibling holds the port: it may have been taken
                check_bindable(listen.host, listen.port, "DICOM", "listen.host/listen.port")
            self.listeners[index] = listening_socket(listen.host, listen.port, listen.backlog,
                                                     "DICOM", "listen.host/listen.port")
        return AcceptorSeat(index, self.states[index - 1], self.listeners[index], self.limits)

    def reconfigure(self, listen: ListenConfig) -> None:
        """A reloaded config: a new `listen.backlog` applies to the sockets at once (listen()
        again on a listening socket resizes its queue; the acceptors share these sockets).
        The address and the number of acceptors only change with a restart."""
        if listen.backlog != self.listen.backlog:
            for sock in self.listeners.values():
                sock.listen(listen.backlog)
        self.listen = listen

    def vacate(self, index: int) -> None:
        """An acceptor died: close its socket (the kernel then sends every new connection to
        the others; one waiting in its backlog is reset, never acknowledged) and drop its
        counts."""
        self.states[index - 1].value = AcceptorState.STARTING
        sock = self.listeners.pop(index, None)
        if sock is not None:
            sock.close()
        self.limits.forget(index - 1)

    def state(self, index: int) -> int:
        return int(self.states[index - 1].value)

    def all_states(self) -> list[int]:
        return [int(s.value) for s in self.states]

    def close(self) -> None:
        """At stop: the acceptors' own copies stay open until each stops listening."""
        for sock in self.listeners.values():
            sock.close()
        self.listeners.clear()
