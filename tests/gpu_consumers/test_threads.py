"""ReusableThread: calls submitted once the previous one has ended run in one kept thread; a
call given up on (still running) does not hold the next one back."""

from __future__ import annotations

import threading

import pytest

from gpu_consumers.threads import ReusableThread

_DEADLINE_S = 10.0


def test_calls_run_in_one_kept_thread_with_their_results_and_errors():
    runner = ReusableThread("t")
    first = runner.submit(lambda: threading.get_ident())
    assert first.wait(_DEADLINE_S) and first.error is None

    def fails():
        raise ValueError("bad input")

    failed = runner.submit(fails)
    assert failed.wait(_DEADLINE_S)
    again = runner.submit(lambda: threading.get_ident())
    assert again.wait(_DEADLINE_S)
    assert isinstance(failed.error, ValueError) and failed.result is None
    assert again.result == first.result  # the same thread served all three
    assert again.elapsed_s >= 0.0
    runner.close()


def test_a_call_still_running_is_left_and_the_next_one_gets_a_new_thread():
    runner = ReusableThread("t")
    release = threading.Event()
    stuck = runner.submit(lambda: (release.wait(_DEADLINE_S), threading.get_ident())[1])
    assert not stuck.wait(0.05)  # given up on while it runs
    nxt = runner.submit(lambda: threading.get_ident())
    assert nxt.wait(_DEADLINE_S), "the next call waited behind the stuck one"
    release.set()
    assert stuck.wait(_DEADLINE_S)
    assert nxt.result != stuck.result
    runner.close()


def test_close_ends_the_thread_and_a_later_submit_starts_another():
    runner = ReusableThread("closing-test")
    first = runner.submit(threading.current_thread)
    assert first.wait(_DEADLINE_S)
    runner.close()
    first.result.join(_DEADLINE_S)
    assert not first.result.is_alive()
    later = runner.submit(lambda: 42)
    assert later.wait(_DEADLINE_S) and later.result == 42
    runner.close()


def test_a_base_exception_is_reported_and_the_thread_keeps_serving():
    runner = ReusableThread("t")

    def exits():
        raise SystemExit(3)

    exited = runner.submit(exits)
    assert exited.wait(_DEADLINE_S) and isinstance(exited.error, SystemExit)
    after = runner.submit(threading.get_ident)
    assert after.wait(_DEADLINE_S)
    kept = runner.submit(threading.get_ident)
    assert kept.wait(_DEADLINE_S) and kept.result == after.result
    runner.close()


@pytest.mark.parametrize("timeout", [-1.0, 0.0])
def test_wait_with_no_time_left_only_looks(timeout):
    runner = ReusableThread("t")
    release = threading.Event()
    call = runner.submit(lambda: release.wait(_DEADLINE_S))
    assert call.wait(timeout) is False and not call.done
    release.set()
    assert call.wait(_DEADLINE_S) and call.done
    runner.close()
