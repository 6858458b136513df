"""``driver._bounded``: a call into Ray in a thread, given up on at a timeout or a signal."""

from __future__ import annotations

import signal
import threading

import pytest

from mvae_dist.train import driver


@pytest.fixture
def fresh_flag(monkeypatch):
    monkeypatch.setattr(driver, "ABANDONED_RAY_THREAD", False)


def test_a_result_and_an_error_come_back_from_the_thread(fresh_flag):
    assert driver._bounded(lambda: 42, 5, "late") == 42
    with pytest.raises(ZeroDivisionError):
        driver._bounded(lambda: 1 / 0, 5, "late")
    assert driver.ABANDONED_RAY_THREAD is False


def test_a_timeout_abandons_the_thread_still_blocked(fresh_flag):
    release = threading.Event()
    with pytest.raises(driver.TrainingError, match="^no answer$"):
        driver._bounded(lambda: release.wait(30), 0.3, "no answer")
    assert driver.ABANDONED_RAY_THREAD is True
    release.set()


def test_a_signal_while_waiting_marks_the_thread_abandoned(fresh_flag):
    """Ctrl-C / SIGTERM arrive as an exception raised in the waiting (main) thread. The thread that
    still runs must be known as such: Python 3.11's Thread.join, interrupted this way, marks it
    stopped, and the CLI then called ray.shutdown() under it (a crash, exit -11). Repeated: the
    signal must land inside the wait, which it does nearly always."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    release = threading.Event()
    try:
        for _ in range(5):
            driver.ABANDONED_RAY_THREAD = False
            signal.setitimer(signal.ITIMER_REAL, 0.3)
            with pytest.raises(KeyboardInterrupt):
                driver._bounded(lambda: release.wait(30), None, "")
            assert driver.ABANDONED_RAY_THREAD is True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        release.set()
