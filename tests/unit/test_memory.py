"""The gateway's heap helpers on this machine's libc (glibc on every supported Linux image)."""

from __future__ import annotations

import threading

from service.model import memory


def test_glibc_is_found_where_the_service_runs() -> None:
    assert memory._glibc() is not None


def test_no_cap_is_set_for_zero() -> None:
    assert memory.limit_arenas(0) is False


def test_free_pages_of_other_threads_arenas_go_back_to_the_os() -> None:
    """What the reload path relies on: pages freed on worker threads (as a load's tokenizers
    are) stay resident until trimmed."""

    kept: list[bytearray] = []

    def churn() -> None:
        blocks = [bytearray(4096) for _ in range(20_000)]  # ~80 MiB of small blocks
        # One block in 16 survives, as a live version's objects do among a retired one's: the
        # free runs between them are not at the heap's top, so free() alone keeps them.
        kept.extend(blocks[::16])

    workers = [threading.Thread(target=churn) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    before = _rss_kib()
    assert memory.release_free_heap() is True
    assert _rss_kib() < before - 40 * 1024
    assert len(kept) == 2 * 1250


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")
