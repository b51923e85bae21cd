import pytest

from benchmarks.load_client import Outcome
from scripts.reliability.load_thread import LoadThread


class Counting(LoadThread):
    """Records answers until stopped; fails on purpose when told to."""

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__("counting load")
        self.fail_after = fail_after

    def drive(self) -> None:
        sent = 0
        while not self._stop.is_set():
            if self.fail_after is not None and sent == self.fail_after:
                raise ValueError("client broke")
            self.record(Outcome(client=0, started=float(sent), finished=float(sent), status=200, body=b"", headers={}))
            sent += 1
            self._stop.wait(0.001)  # pacing of the fake client, not a readiness wait


def test_answers_recorded_on_the_thread_are_seen_in_order_and_end_stops_it():
    load = Counting().start()
    while len(load.snapshot()) < 5:  # polls the condition itself
        assert load.running
    load.end()
    answers = load.snapshot()
    assert not load.running and len(answers) >= 5
    assert [answer.started for answer in answers] == [float(index) for index in range(len(answers))]


def test_a_failure_of_the_load_thread_is_raised_in_the_caller():
    load = Counting(fail_after=3).start()
    while load.running:
        pass
    with pytest.raises(RuntimeError, match="the counting load failed: ValueError") as raised:
        load.end()
    assert isinstance(raised.value.__cause__, ValueError) and len(load.snapshot()) == 3
