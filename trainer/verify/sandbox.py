"""Run untrusted Python (a response's function and its unit tests) in a bounded subprocess.

What bounds it:
- wall time (the whole process group is killed at the deadline) and CPU time (RLIMIT_CPU);
- memory (RLIMIT_AS), open files (RLIMIT_NOFILE), no core files;
- output: stdout and stderr go to files capped by RLIMIT_FSIZE, so a flood of prints ends the
  run instead of filling the trainer's memory;
- a fresh temporary directory as working directory and HOME, removed afterwards;
- no network: a new network namespace where the kernel allows it (root, or user namespaces), and
  in every case an audit hook that refuses sockets;
- no processes, no native code: the audit hook refuses fork, exec, subprocess, os.system, kill
  and ctypes, and any write, rename or removal outside the temporary directory;
- no privileges: run as root (CI, containers), the child drops to `nobody` before it starts, so
  file permissions and a process limit hold even if the audit hook were got round.

The test arguments go to the child as Python literals; only the `repr` of each result comes
back, and the comparison with the expected value happens here, as literals (an object whose
`__eq__` always says yes is not a pass). The runner reports through a line on stdout tagged with
a random nonce the code under test is not given (gc introspection is refused; frames are not:
the standard library needs them to import).

Threat model: the boundary is the operating system's. Run as root (CI, containers, the usual
training node) the child is `nobody` in its own network namespace, so it can write only to
world-writable places and reach no network whatever the Python inside does. Run as another
user, the audit hook and the resource limits are what remains; a determined program can get
round an audit hook, so run untrusted code as root in a container or use a dedicated uid.
A result is what the process reported: code written to forge it can; verify labels that matter
by other means too.
"""

from __future__ import annotations

import ast
import contextlib
import ctypes
import functools
import json
import logging
import os
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Status = Literal["passed", "failed", "error", "timeout", "memory", "output_limit", "forbidden"]
TestCase = tuple[tuple[object, ...], object]

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
NOBODY = 65534
NPROC = 64  # processes of the unprivileged user; a fork is refused anyway


@dataclass(frozen=True)
class Limits:
    """Resource bounds of one sandboxed run."""

    wall_s: float = 10.0
    cpu_s: int = 5
    memory_mb: int = 512
    output_bytes: int = 64 * 1024
    max_files: int = 64


@dataclass(frozen=True)
class TestOutcome:
    """One unit test: its input and expected value as literals, what the code gave or raised."""

    args: str
    expected: str
    actual: str | None
    error: str | None
    passed: bool


@dataclass(frozen=True)
class SandboxResult:
    """How a run ended. `error` says what failed for error/forbidden/timeout/limits."""

    status: Status
    tests: list[TestOutcome] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# The runner: installs the audit hook, runs the code, runs each test, reports. It reads its
# payload from stdin before the hook exists; the code under test never sees the nonce.
RUNNER = r"""
import ast, json, os, sys

def main():
    payload = json.loads(sys.stdin.read())
    nonce = payload.pop("nonce")
    root = os.path.realpath(os.getcwd())
    report = sys.stdout.write
    flush = sys.stdout.flush

    def inside(path):
        if isinstance(path, int):
            return True
        try:
            real = realpath(fsdecode(path))
        except (TypeError, ValueError):
            return False
        return real == root or real.startswith(root + os.sep)

    # Frozen, and bound here: code that reaches this frame cannot empty or rebind them.
    realpath, fsdecode = os.path.realpath, os.fsdecode
    refused = frozenset({
        "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo",
        "socket.sendto", "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn",
        "os.spawn", "os.fork", "os.forkpty", "os.kill", "os.killpg", "pty.spawn",
        "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function",
        "os.chdir", "gc.get_objects", "gc.get_referrers", "gc.get_referents", "os.mkfifo",
        "os.mknod",
    })
    path_events = frozenset({
        "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown",
        "os.link", "os.symlink", "os.truncate", "os.utime", "shutil.rmtree", "shutil.move",
        "shutil.copyfile", "os.replace",
    })
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    violations = []

    def refuse(message):
        # Recorded as well as raised: code that catches the error is still reported.
        violations.append(message)
        raise PermissionError(message)

    def hook(event, args):
        if event in refused:
            refuse(f"sandbox: {event} is not allowed")
        if event == "open":
            path, mode, flags = (list(args) + [None, None, 0])[:3]
            writing = bool(mode and any(c in mode for c in "wax+")) or bool((flags or 0) & write_flags)
            if writing and not inside(path):
                refuse("sandbox: writing outside the sandbox is not allowed")
        elif event in path_events:
            for arg in args:
                if isinstance(arg, (str, bytes, os.PathLike)) and not inside(arg):
                    refuse(f"sandbox: {event} outside the sandbox is not allowed")

    sys.addaudithook(hook)
    out = {"tests": [], "error": None, "kind": None}
    try:
        namespace = {"__name__": "__sandbox__"}
        exec(compile(payload["source"], "<response>", "exec"), namespace)
        fn = namespace.get(payload["name"])
        if not callable(fn):
            raise NameError(f"no function named {payload['name']!r}")
        for args_src in payload["tests"]:
            args = ast.literal_eval(args_src)
            try:
                got = fn(*args)
                # Only the repr goes back; the trainer compares it (an object whose __eq__
                # always says yes compares as the text it prints, not as a pass).
                text = repr(got)
                out["tests"].append([args_src, text[:2000], None])
            except PermissionError as exc:
                out["kind"], out["error"] = "forbidden", str(exc)
                break
            except MemoryError:
                out["kind"], out["error"] = "memory", "MemoryError"
                break
            except Exception as exc:
                out["tests"].append([args_src, None, f"{type(exc).__name__}: {exc}"[:200]])
    except PermissionError as exc:
        out["kind"], out["error"] = "forbidden", str(exc)
    except MemoryError:
        out["kind"], out["error"] = "memory", "MemoryError"
    except BaseException as exc:
        out["kind"], out["error"] = "error", f"{type(exc).__name__}: {exc}"[:300]
    if violations:
        out["kind"], out["error"] = "forbidden", violations[0]
    report("\n" + nonce + json.dumps(out) + "\n")
    flush()

main()
"""


def _drop_privileges() -> None:
    resource.setrlimit(resource.RLIMIT_NPROC, (NPROC, NPROC))
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


@functools.cache
def _interpreter() -> tuple[str, bool]:
    """(python to run the sandbox with, whether to drop to `nobody`). Run as root, the child
    needs an interpreter that `nobody` can run (a virtualenv under /root is not one); the
    runner uses the standard library alone, so the system's python3 serves."""
    if os.geteuid() != 0:
        return sys.executable, False
    for candidate in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            probe = subprocess.run(
                [candidate, "-I", "-S", "-c", "import sys; assert sys.version_info >= (3, 8)"],
                preexec_fn=_drop_privileges,
                capture_output=True,
                timeout=30,
                cwd="/",
            )
            if probe.returncode == 0:
                return candidate, True
    log.warning("no python that an unprivileged user can run: the sandbox keeps root's uid")
    return sys.executable, False


def _limit_child(limits: Limits, drop: bool) -> None:
    """In the child, before exec: resource limits, and a network namespace when permitted."""
    memory = limits.memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.output_bytes, limits.output_bytes))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.max_files, limits.max_files))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.unshare(CLONE_NEWNET)  # EPERM without privileges: the audit hook still refuses
    if drop:
        _drop_privileges()


def run_tests(
    source: str, name: str, tests: Sequence[TestCase], limits: Limits | None = None
) -> SandboxResult:
    """Define `name` from `source` in the sandbox and run `tests` (args, expected) against it."""
    limits = limits or Limits()
    nonce = secrets.token_hex(16)
    sent = [repr(tuple(args)) for args, _want in tests]
    payload = {"nonce": nonce, "source": source, "name": name, "tests": sent}
    expected = [repr(want) for _args, want in tests]
    for args_src, want_src in zip(sent, expected, strict=True):
        ast.literal_eval(args_src)  # the tests themselves must be plain literals
        ast.literal_eval(want_src)
    t0 = time.monotonic()
    python, drop = _interpreter()
    with tempfile.TemporaryDirectory(prefix="crm-sandbox-") as tmp:
        if drop:
            os.chown(tmp, NOBODY, NOBODY)
        code, timed_out, stdout = _run(python, drop, Path(tmp), json.dumps(payload), limits)
    seconds = time.monotonic() - t0
    if timed_out or code in (-signal.SIGXCPU, -signal.SIGKILL):
        return SandboxResult(
            "timeout", error=f"did not finish within {limits.wall_s:g} s", seconds=seconds
        )
    if code == -signal.SIGXFSZ:
        return SandboxResult(
            "output_limit", error=f"wrote over {limits.output_bytes} bytes", seconds=seconds
        )
    report = _report(stdout, nonce)
    if report is None:
        if len(stdout.encode()) >= limits.output_bytes - 1:
            return SandboxResult("output_limit", error="output filled the limit", seconds=seconds)
        return SandboxResult(
            "error", error=f"the run ended without a report (exit {code})", seconds=seconds
        )
    outcomes = _outcomes(report.get("tests"), sent, expected)
    if outcomes is None:
        return SandboxResult("error", error="the run sent a malformed report", seconds=seconds)
    kind = report.get("kind")
    if kind in ("forbidden", "memory", "error"):
        error = report.get("error")
        return SandboxResult(kind, outcomes, str(error)[:300] if error else None, seconds)
    complete = len(outcomes) == len(tests)
    status: Status = "passed" if complete and all(t.passed for t in outcomes) else "failed"
    return SandboxResult(status, outcomes, None, seconds)


def _run(
    python: str, drop: bool, tmp: Path, payload: str, limits: Limits
) -> tuple[int | None, bool, str]:
    """(exit code, timed out, stdout). Output is read back through the handles opened here, never
    by path: the code may replace the file (with a FIFO, say, that would block a reader)."""
    env = {"HOME": str(tmp), "TMPDIR": str(tmp), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [python, "-I", "-S", "-c", RUNNER],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=err,
            cwd=tmp,
            env=env,
            start_new_session=True,  # its own process group, killed whole when it ends
            # Limits must be set in the child, between fork and exec.
            preexec_fn=lambda: _limit_child(limits, drop),
        )
        timed_out = False
        try:
            proc.communicate(payload.encode(), timeout=limits.wall_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            # Whatever it started is ended too, also after a normal exit.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        out.seek(0)
        stdout = out.read(limits.output_bytes + 1).decode("utf-8", "replace")
        return proc.returncode, timed_out, stdout


def _outcomes(
    rows: object, args: Sequence[str], expected: Sequence[str]
) -> list[TestOutcome] | None:
    """Check the report's rows against the tests sent, and compare here, as literals: None
    for a report that does not fit the tests."""
    if not isinstance(rows, list) or len(rows) > len(args):
        return None
    out = []
    for row, args_src, want_src in zip(rows, args, expected, strict=False):
        if not (isinstance(row, list) and len(row) == 3 and row[0] == args_src):
            return None
        _, actual, error = row
        if not (actual is None or isinstance(actual, str)) or not (
            error is None or isinstance(error, str)
        ):
            return None
        passed = actual is not None and _literal_equal(actual, want_src)
        out.append(TestOutcome(args_src, want_src, actual and actual[:200], error, passed))
    return out


def _literal_equal(actual: str, want_src: str) -> bool:
    try:
        return bool(ast.literal_eval(actual) == ast.literal_eval(want_src))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False  # not a plain literal: never equal to an expected value


def _report(stdout: str, nonce: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(nonce):
            with contextlib.suppress(ValueError):
                data = json.loads(line[len(nonce) :])
                if isinstance(data, dict):
                    return data
    return None
