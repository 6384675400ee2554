"""The engine processes a gateway leaves behind: every one dies with the gateway.

vLLM runs each engine core (and its workers) in child processes. A clean shutdown stops them,
but not an engine still starting: its start-up blocks a thread that nothing can interrupt, and
an engine core that is compiling ignores SIGTERM. So on the way out the gateway ends whatever
descendants remain: SIGTERM, a grace period, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import logging

import psutil

log = logging.getLogger(__name__)


def descendants() -> list[psutil.Process]:
    """Every live process below this one."""
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def reap_descendants(grace_s: float = 5.0) -> list[int]:
    """Terminate every descendant, kill those still alive after `grace_s`; the pids ended."""
    procs = descendants()
    if not procs:
        return []
    log.warning("ending %d leftover engine processes: %s", len(procs), [p.pid for p in procs])
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _gone, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace_s)
    return [p.pid for p in procs]
