"""The engine processes a gateway leaves behind: every one dies with the gateway.

vLLM runs each engine core (and its workers) in child processes. A clean shutdown stops them,
but not an engine still starting: its start-up blocks a thread that nothing can interrupt, and
an engine core that is compiling ignores SIGTERM. So on the way out the gateway ends whatever
descendants remain: SIGTERM, a grace period, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing

import psutil

log = logging.getLogger(__name__)


def descendants() -> list[psutil.Process]:
    """Every live process below this one."""
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def reap_descendants(grace_s: float = 5.0) -> list[int]:
    """Terminate every live descendant, kill those still alive after `grace_s`, and reap them
    all (engines that vLLM killed itself stay zombies until waited for); the pids ended."""
    procs = descendants()
    live = [p for p in procs if _alive(p)]
    if live:
        log.warning("ending %d leftover engine processes: %s", len(live), [p.pid for p in live])
    for proc in live:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _gone, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace_s)
    return [p.pid for p in live]


def reap_exited() -> int:
    """Reap the engine processes that have exited (a retired version's engine cores: vLLM's
    shutdown ends them without waiting), so no zombie stays until the next engine start; the
    number of children still running. Through multiprocessing, which started them and would
    otherwise keep them listed as alive."""
    return len(multiprocessing.active_children())


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
