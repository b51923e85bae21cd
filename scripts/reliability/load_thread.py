"""Load on a background thread, for the fault checks that act on a server while clients keep calling it.

worker_kill and frontend_restart both run closed-loop clients (benchmarks/load_client.py) on a thread, read the
answers so far while they kill something, and must see a failure of the load thread in their own thread. The
thread, the answer log and the stop/re-raise are here; each check says only how its clients send (drive()).
"""

from __future__ import annotations

import threading
from typing import Self

from benchmarks.load_client import Outcome


class LoadThread:
    """Runs drive() on a daemon thread from start() until end(); every answer recorded lands in snapshot()."""

    def __init__(self, name: str) -> None:
        self.error: BaseException | None = None
        self._outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._guarded, name=name, daemon=True)

    def drive(self) -> None:
        """Sends requests until self._stop is set, passing each answer to record()."""
        raise NotImplementedError

    def record(self, outcome: Outcome) -> None:
        """Keeps one answer (called from the load thread)."""
        with self._lock:
            self._outcomes.append(outcome)

    def snapshot(self) -> list[Outcome]:
        """The answers so far."""
        with self._lock:
            return list(self._outcomes)

    @property
    def running(self) -> bool:
        """Whether the load thread still sends."""
        return self._thread.is_alive()

    def _guarded(self) -> None:
        try:
            self.drive()
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread by end()
            self.error = error

    def start(self) -> Self:
        """Starts the load thread; returns self."""
        self._thread.start()
        return self

    def end(self) -> None:
        """Stops sending and waits for the requests in flight.

        Raises:
            RuntimeError: the load thread failed.

        """
        self._stop.set()
        self._thread.join()
        if self.error is not None:
            raise RuntimeError(f"the {self._thread.name} failed: {self.error!r}") from self.error
