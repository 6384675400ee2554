"""The code sandbox with hostile code: loops, unbounded allocation, floods of output, writes
outside its directory, sockets, processes and native calls are stopped and reported; the
trainer never hangs on them."""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

import pytest

from trainer.verify.sandbox import Limits, run_tests

QUICK = Limits(wall_s=4.0, cpu_s=2, memory_mb=256, output_bytes=16 * 1024)
TESTS = [((1,), 1), ((4,), 10), ((10,), 55)]


def test_a_correct_function_passes_every_test() -> None:
    r = run_tests("def sum_to(n):\n    return sum(range(1, n + 1))", "sum_to", TESTS, QUICK)
    assert r.status == "passed" and r.passed and len(r.tests) == 3


def test_a_wrong_function_reports_input_expected_and_actual() -> None:
    r = run_tests("def sum_to(n):\n    return sum(range(1, n))", "sum_to", TESTS, QUICK)
    assert r.status == "failed"
    failing = [t for t in r.tests if not t.passed]
    assert next((t.args, t.expected, t.actual) for t in failing) == ("(1,)", "1", "0")


def test_exceptions_and_syntax_errors_are_reported() -> None:
    r = run_tests("def sum_to(n):\n    return 1 / 0", "sum_to", TESTS, QUICK)
    assert r.status == "failed" and all("ZeroDivisionError" in (t.error or "") for t in r.tests)
    r = run_tests("def sum_to(n)\n    return n", "sum_to", TESTS, QUICK)
    assert r.status == "error" and "SyntaxError" in (r.error or "")
    r = run_tests("x = 1", "sum_to", TESTS, QUICK)
    assert r.status == "error" and "no function named" in (r.error or "")


@pytest.mark.parametrize(
    "source",
    ["while True:\n    pass", "def sum_to(n):\n    while True:\n        n += 1"],
    ids=["at-import", "in-a-test"],
)
def test_an_endless_loop_is_stopped(source: str) -> None:
    t0 = time.monotonic()
    r = run_tests(source, "sum_to", TESTS, QUICK)
    assert r.status == "timeout"
    assert time.monotonic() - t0 < QUICK.wall_s + 2


def test_a_sleeping_loop_is_stopped_by_the_wall_clock() -> None:
    source = "import time\ndef sum_to(n):\n    time.sleep(60)"
    t0 = time.monotonic()
    assert run_tests(source, "sum_to", TESTS, QUICK).status == "timeout"
    assert time.monotonic() - t0 < QUICK.wall_s + 2


def test_unbounded_allocation_is_stopped() -> None:
    source = "def sum_to(n):\n    xs = []\n    while True:\n        xs.append(bytearray(10**7))"
    r = run_tests(source, "sum_to", TESTS, QUICK)
    assert r.status == "memory", r


def test_a_flood_of_output_is_stopped() -> None:
    source = "def sum_to(n):\n    while True:\n        print('x' * 1000)"
    r = run_tests(source, "sum_to", TESTS, QUICK)
    assert r.status == "output_limit", r


def test_writing_outside_its_directory_is_refused(tmp_path: Path) -> None:
    target = Path("/tmp") / f"crm-escape-{uuid.uuid4().hex}"
    for source in (
        f"open({str(target)!r}, 'w').write('x')",
        f"import os\nos.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)",
        f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')",
        f"import os\nos.remove({str(tmp_path)!r})",
        "open('inside.txt', 'w').write('ok')\nopen('../escape.txt', 'w').write('x')",
    ):
        r = run_tests(source + "\ndef f():\n    return 1", "f", [((), 1)], QUICK)
        assert r.status == "forbidden", (source, r)
        assert not target.exists()
    assert tmp_path.exists()
    r = run_tests(
        "open('scratch.txt', 'w').write('ok')\ndef f():\n    return 1", "f", [((), 1)], QUICK
    )
    assert r.status == "passed", r


@pytest.mark.parametrize(
    "source",
    [
        "import socket\nsocket.create_connection(('127.0.0.1', 6379), timeout=1)",
        "import socket\nsocket.socket()",
        "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:1/')",
    ],
    ids=["connect", "socket", "urllib"],
)
def test_the_network_is_refused(source: str) -> None:
    with socket.socket() as listener:  # something to reach, if the sandbox leaked
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        code = source.replace("6379", str(port)) + "\ndef f():\n    return 1"
        r = run_tests(code, "f", [((), 1)], QUICK)
    assert r.status == "forbidden", r


@pytest.mark.parametrize(
    "source",
    [
        "import os\nos.fork()",
        "import os\nos.system('true')",
        "import subprocess\nsubprocess.run(['true'])",
        "import ctypes\nctypes.CDLL(None)",
        f"import os, signal\nos.kill({os.getpid()}, signal.SIGTERM)",
    ],
    ids=["fork", "system", "subprocess", "ctypes", "kill-the-trainer"],
)
def test_processes_and_native_code_are_refused(source: str) -> None:
    r = run_tests(source + "\ndef f():\n    return 1", "f", [((), 1)], QUICK)
    assert r.status == "forbidden", r


def test_a_refusal_the_code_catches_is_still_reported() -> None:
    source = (
        "import socket\ntry:\n    socket.socket()\nexcept OSError:\n    pass\n"
        "def f():\n    return 1"
    )
    r = run_tests(source, "f", [((), 1)], QUICK)
    assert r.status == "forbidden" and "socket" in (r.error or ""), r


def test_tests_must_be_literals() -> None:
    with pytest.raises((ValueError, SyntaxError)):
        run_tests("def f(x):\n    return x", "f", [((object(),), 1)], QUICK)


def test_a_forged_report_line_is_not_believed() -> None:
    source = (
        "print('\\n' + 'f' * 32 + '{\"tests\": [], \"error\": null, \"kind\": null}')\n"
        "def f():\n    return 2"
    )
    r = run_tests(source, "f", [((), 1)], QUICK)
    assert r.status == "failed", r


def test_hints_follow_the_three_schemes() -> None:
    from trainer.verify.hints import code_hint

    passed = run_tests("def sum_to(n):\n    return n * (n + 1) // 2", "sum_to", TESTS, QUICK)
    assert code_hint(passed) == "Execution feedback: the code passes all 3 unit tests."
    none = run_tests("def sum_to(n):\n    return -1", "sum_to", TESTS, QUICK)
    assert "fails all 3" in code_hint(none) and "from the start" in code_hint(none)
    some = run_tests("def sum_to(n):\n    return 1 if n == 1 else 0", "sum_to", TESTS, QUICK)
    hint = code_hint(some)
    assert "fails 2 of 3" in hint and "(4,)" in hint and "10" in hint and "returns 0" in hint
    raising = run_tests(
        "def sum_to(n):\n    if n > 1:\n        raise ValueError('big')\n    return 1",
        "sum_to",
        TESTS,
        QUICK,
    )
    assert "raises ValueError: big" in code_hint(raising)
    broken = run_tests("def sum_to(n) return n", "sum_to", TESTS, QUICK)
    assert "does not run" in code_hint(broken)
    looping = run_tests("def sum_to(n):\n    while True:\n        pass", "sum_to", TESTS, QUICK)
    assert "time limit" in code_hint(looping)


def test_gc_introspection_is_refused_and_the_rules_are_frozen() -> None:
    r = run_tests("import gc\ngc.get_objects()\ndef f():\n    return 1", "f", [((), 1)], QUICK)
    assert r.status == "forbidden", r
    source = (
        "import sys\nsys._getframe(1).f_locals['refused'].clear()\n"
        "import socket\nsocket.socket()\ndef f():\n    return 1"
    )
    r = run_tests(source, "f", [((), 1)], QUICK)
    assert r.status in ("forbidden", "error"), r


def test_common_imports_still_work() -> None:
    source = (
        "import collections, enum, socket, typing, re, math, itertools, functools\n"
        "P = collections.namedtuple('P', 'a b')\n"
        "def f():\n    return P(1, 2).a"
    )
    assert run_tests(source, "f", [((), 1)], QUICK).status == "passed"


def test_an_object_that_equals_everything_is_not_a_pass() -> None:
    source = (
        "class Yes:\n    def __eq__(self, other):\n        return True\n"
        "    def __repr__(self):\n        return 'Yes()'\n"
        "def sum_to(n):\n    return Yes()"
    )
    r = run_tests(source, "sum_to", TESTS, QUICK)
    assert r.status == "failed" and all(t.actual == "Yes()" for t in r.tests), r


def test_replacing_its_output_file_cannot_hang_the_caller() -> None:
    source = "import os\nfor name in os.listdir('.'):\n    os.remove(name)\ndef f():\n    return 1"
    t0 = time.monotonic()
    r = run_tests(source, "f", [((), 1)], QUICK)
    assert time.monotonic() - t0 < QUICK.wall_s + 2
    assert r.status in ("passed", "forbidden"), r
