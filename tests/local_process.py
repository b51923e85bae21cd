"""The lifecycle the test harnesses of real local servers share (Prometheus, nginx): a child process to stop."""

from __future__ import annotations

import subprocess
from typing import Self


class LocalProcess:
    """A server process the test session started; subclasses set `process` in start() and wait until it answers."""

    process: subprocess.Popen | None = None

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM and wait; SIGKILL if it does not exit in time (nginx: fast shutdown; Prometheus: clean exit)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
