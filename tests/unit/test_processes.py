"""Engine processes a retired version leaves: reaped once they exit, not at the next start."""

from __future__ import annotations

import multiprocessing
import time

import psutil

from service.engines.processes import reap_exited


def _exit_now() -> None:
    return None


def test_an_exited_engine_process_is_reaped_not_left_a_zombie() -> None:
    child = multiprocessing.get_context("spawn").Process(target=_exit_now)  # as vLLM starts them
    child.start()
    pid = child.pid
    assert pid is not None
    deadline = time.monotonic() + 30
    while psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.05)
    reap_exited()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).ppid() != psutil.Process().pid
    assert child.exitcode == 0 and child not in multiprocessing.active_children()
