"""Start the built CPU image as a container runtime would and check that it serves.

    python -m loadtests.image_check                      # localhost/critic-rm:cpu, `make image-check`
    python -m loadtests.image_check --image NAME --starts 1

No container can run on the dev machines (podman: "cgroups in hybrid mode not supported"), so
the check does what the runtime would do, from the image's own metadata: it mounts the image's
root filesystem, gives it fresh /proc, /dev, /tmp and a /checkpoints volume in a private mount
and PID namespace, and starts the image's ENTRYPOINT + CMD there (tini as PID 1) as the image's
USER, with exactly the image's environment (plus the port, a loopback host and an API key, as
`docker run -e` would). Then it waits for /ready, runs the image's HEALTHCHECK command, scores
a request with and without the key, reads /metrics, and stops the container with SIGTERM.

--starts 2 (the default) starts it twice on the same /checkpoints volume: first on an empty
volume (the entrypoint assembles the default checkpoint from the delta baked into the image,
and vLLM's compile cache is cold), then again as a restarted pod would (the volume holds the
checkpoint; the compile cache in $HOME is not kept, as in a container). Results (image size,
the time to /ready of each start, the answers) go to --out as JSON and markdown. Needs root
(mount, chroot) and podman with the vfs driver, as `make image` built it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from loadtests.bench_train import _cpu_model as cpu_model

SCORE_BODY = {
    "items": [
        {"prompt": "What is 17 * 3?", "response": "17 * 3 = 51."},
        {"prompt": "What is 17 * 3?", "response": "17 * 3 = 41."},
    ],
    "num_critiques": 2,
    "max_critique_tokens": 32,
}
# Series the dashboard's panels read; each must be exported once a request was served.
METRICS = (
    "critic_rm_requests_total",
    "critic_rm_request_duration_seconds_bucket",
    "critic_rm_items_total",
    "process_resident_memory_bytes",
)


def podman(*args: str, conf: Path) -> str:
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    cmd = ["podman", "--storage-driver=vfs", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout


@contextmanager
def mounted(image: str, conf: Path) -> Iterator[Path]:
    root = Path(podman("image", "mount", image, conf=conf).strip())
    try:
        yield root
    finally:
        podman("image", "unmount", image, conf=conf)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(
    method: str, url: str, body: Any = None, key: str | None = None, timeout: float = 600.0
) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    if key:
        req.add_header("authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()
    except OSError:
        return 0, b""


def launch(
    root: Path, config: dict[str, Any], env: dict[str, str], vols: dict[str, Path], log: Path
) -> subprocess.Popen[bytes]:
    """The image's entrypoint in its own PID and mount namespaces, chrooted into `root`."""
    user = config.get("User") or "0:0"
    uid, _, gid = user.partition(":")
    argv = [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]
    workdir = config.get("WorkingDir") or "/"
    mounts = [
        f"mount -t proc proc {root}/proc",
        f"mount --rbind /dev {root}/dev",
        f"mount --rbind /sys {root}/sys",
        f"mount -t tmpfs -o mode=1777 tmpfs {root}/tmp",
        *(f"mount --bind {src} {root}{dst}" for dst, src in vols.items()),
    ]
    inner = " ".join(shlex.quote(a) for a in ["env", "-i", *(f"{k}={v}" for k, v in env.items())])
    run = (
        f"exec chroot --userspec={uid}:{gid or uid} {root} /bin/sh -c "
        + shlex.quote(f'cd {shlex.quote(workdir)} && exec {inner} "$@"')
        + " entrypoint "
        + " ".join(shlex.quote(a) for a in argv)
    )
    script = "set -e; mount --make-rprivate /; " + "; ".join(mounts) + "; " + run
    return subprocess.Popen(
        ["unshare", "--fork", "--pid", "--mount", "sh", "-c", script],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def pid1(unshare_pid: int) -> int | None:
    """The container's PID 1 (tini) as this machine sees it: unshare's only child."""
    for task in Path(f"/proc/{unshare_pid}/task").glob("*"):
        kids = (task / "children").read_text().split()
        if kids:
            return int(kids[0])
    return None


def one_start(
    root: Path,
    config: dict[str, Any],
    env: dict[str, str],
    vols: dict[str, Path],
    key: str,
    log: Path,
    ready_timeout: float,
) -> dict[str, Any]:
    port = int(env["CRM_PORT"])
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    proc = launch(root, config, env, vols, log)
    out: dict[str, Any] = {"ready": False}
    try:
        while time.monotonic() - started < ready_timeout:
            if proc.poll() is not None:
                out["exited_early"] = proc.returncode
                return out
            status, ready_body = http("GET", f"{base}/ready", timeout=5)
            if status == 200:
                out["ready"] = True
                break
            if b'"failed"' in ready_body:  # the model load failed: it will not get ready
                out["load_failed"] = ready_body.decode(errors="replace")[:500]
                break
            time.sleep(1.0)
        out["seconds_to_ready"] = round(time.monotonic() - started, 1)
        if not out["ready"]:
            return out
        # The image's own HEALTHCHECK command, run in its root filesystem as its user.
        hc = config.get("Healthcheck", {}).get("Test") or []
        if hc and hc[0] in ("CMD", "CMD-SHELL"):
            cmd = hc[1:] if hc[0] == "CMD" else ["/bin/sh", "-c", hc[1]]
            user = (config.get("User") or "0").split(":")[0]
            r = subprocess.run(
                [
                    "chroot",
                    f"--userspec={user}:{user}",
                    str(root),
                    "env",
                    "-i",
                    *(f"{k}={v}" for k, v in env.items()),
                    *cmd,
                ],
                capture_output=True,
                timeout=30,
            )
            out["healthcheck_exit"] = r.returncode
        t = time.monotonic()
        status, body = http("POST", f"{base}/score", SCORE_BODY, key=key)
        out["score_status"] = status
        out["score_seconds"] = round(time.monotonic() - t, 2)
        if status == 200:
            payload = json.loads(body)
            out["model_version"] = payload.get("model_version")
            out["rewards"] = [r["reward"] for r in payload.get("results", [])]
        out["score_status_without_key"] = http("POST", f"{base}/score", SCORE_BODY)[0]
        out["score_status_wrong_key"] = http("POST", f"{base}/score", SCORE_BODY, key="x" + key)[0]
        status, body = http("GET", f"{base}/metrics")
        text = body.decode(errors="replace")
        out["metrics_status"] = status
        out["metrics_series"] = sum(1 for ln in text.splitlines() if ln and ln[0] != "#")
        out["metrics_missing"] = [m for m in METRICS if m not in text]
        for ln in text.splitlines():
            if ln.startswith("process_resident_memory_bytes "):
                out["gateway_rss_mib"] = round(float(ln.split()[1]) / 2**20, 1)
        status, body = http("GET", f"{base}/info", key=key)
        if status == 200:
            info = json.loads(body)
            out["engine_layout"] = info.get("engines", {}).get("layout")
    finally:
        t = time.monotonic()
        init = pid1(proc.pid)
        if init is not None:
            os.kill(init, signal.SIGTERM)  # tini forwards it: the gateway drains and exits
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        out["exit_code"] = proc.returncode
        out["seconds_to_stop"] = round(time.monotonic() - t, 1)
    return out


def passed(start: dict[str, Any]) -> bool:
    return bool(
        start.get("ready")
        and start.get("healthcheck_exit") == 0
        and start.get("score_status") == 200
        and start.get("score_status_without_key") == 401
        and start.get("score_status_wrong_key") == 403
        and start.get("metrics_status") == 200
        and not start.get("metrics_missing")
        and start.get("exit_code") == 0
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", default="localhost/critic-rm:cpu")
    ap.add_argument("--starts", type=int, default=2)
    ap.add_argument("--ready-timeout", type=float, default=1200.0)
    ap.add_argument("--out", type=Path, default=Path("loadtests/results"))
    ap.add_argument("--machine", default=cpu_model())
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="crm-image-check-") as tmp:
        work = Path(tmp)
        conf = work / "containers.conf"
        conf.write_text("[containers]\ndefault_ulimits = []\n")
        meta = json.loads(podman("image", "inspect", args.image, conf=conf))[0]
        config = dict(meta.get("Config") or {})
        # podman keeps a Docker-format image's HEALTHCHECK beside Config, not in it.
        config["Healthcheck"] = config.get("Healthcheck") or meta.get("Healthcheck") or {}
        uid = int((config.get("User") or "0").split(":")[0])
        env = dict(e.split("=", 1) for e in config.get("Env") or [])
        key = os.urandom(12).hex()
        env.update(CRM_HOST="127.0.0.1", CRM_PORT=str(free_port()), CRM_API_KEYS=key)
        checkpoints = work / "checkpoints"
        checkpoints.mkdir()
        os.chown(checkpoints, uid, uid)
        starts = []
        with mounted(args.image, conf) as root:
            for i in range(args.starts):
                home = work / f"home-{i}"  # a container's writable layer: not kept across starts
                home.mkdir()
                os.chown(home, uid, uid)
                vols = {"/checkpoints": checkpoints, env.get("HOME", "/root"): home}
                log = work / f"start-{i}.log"
                s = one_start(root, config, env, vols, key, log, args.ready_timeout)
                s["volume"] = "empty" if i == 0 else "kept"
                s["passed"] = passed(s)
                if not s["passed"]:
                    s["log_tail"] = log.read_text(errors="replace")[-4000:]
                starts.append(s)
                print(json.dumps({k: v for k, v in s.items() if k != "log_tail"}))
                if not s["passed"]:
                    print(s.get("log_tail", ""))
                    break
    report = {
        "image": args.image,
        "image_id": meta.get("Id"),
        "size_bytes": meta.get("Size"),
        "size_gib": round(int(meta.get("Size") or 0) / 2**30, 2),
        "user": config.get("User"),
        "entrypoint": config.get("Entrypoint"),
        "cmd": config.get("Cmd"),
        "machine": args.machine,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "starts": starts,
        "passed": bool(starts) and all(s["passed"] for s in starts),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"image-check-{report['date']}"
    Path(f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    Path(f"{stem}.md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {stem}.json and {stem}.md")
    return 0 if report["passed"] else 1


def markdown(r: dict[str, Any]) -> str:
    lines = [
        f"`{r['image']}` ({r['size_gib']} GiB), started from its root filesystem as user "
        f"{r['user']}: {' '.join(r['entrypoint'] or [])} {' '.join(r['cmd'] or [])}. {r['machine']}, "
        f"{r['date']}.",
        "",
        "| start | volume | s to /ready | healthcheck | /score | no key | wrong key | /metrics series "
        "| gateway RSS MiB | layout | SIGTERM → exit | passed |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for i, s in enumerate(r["starts"], 1):
        lines.append(
            f"| {i} | {s.get('volume')} | {s.get('seconds_to_ready')} | {s.get('healthcheck_exit')} "
            f"| {s.get('score_status')} ({s.get('score_seconds')} s) "
            f"| {s.get('score_status_without_key')} | {s.get('score_status_wrong_key')} "
            f"| {s.get('metrics_series')} | {s.get('gateway_rss_mib')} | {s.get('engine_layout')} "
            f"| {s.get('exit_code')} in {s.get('seconds_to_stop')} s | {s.get('passed')} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
