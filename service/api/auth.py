"""API keys: where they come from, and the bearer checks of the routes.

Once any key source is configured (CRM_API_KEYS set, even to an empty string, or
CRM_API_KEYS_FILE set) the service denies by default: a source that is empty, missing or
unreadable denies every scoring request with a 503 rather than letting anyone in. Only a service
with no key source at all is open (local use), and it says so at start and in /ready.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fastapi import Request

from service.api.errors import AuthError
from service.settings import Settings

log = logging.getLogger(__name__)

AuthMode = Literal["open", "keys", "unavailable"]
REREAD_S = 5.0


@dataclass(frozen=True)
class KeyState:
    """What the key sources say right now. `reason` never names a server path."""

    mode: AuthMode
    keys: tuple[str, ...] = ()
    reason: str | None = None


def parse_keys(text: str) -> list[str]:
    """One key per line; blank lines and lines starting with '#' (after spaces) are skipped."""
    out = []
    for line in text.splitlines():
        key = line.strip().lstrip("\ufeff")
        if key and not key.startswith("#"):
            out.append(key)
    return out


class KeySource:
    """Keys from the environment plus a file that is re-read whenever it changes on disk (a
    rotated Kubernetes Secret swaps a symlink: stat follows it, so the new file is seen)."""

    def __init__(self, env_keys: list[str], env_configured: bool, file: Path | None) -> None:
        self.env_keys = tuple(env_keys)
        self.file = file
        self.configured = env_configured or file is not None
        self._stamp: tuple[int, int, int, int] | None = None
        self._read_at = 0.0
        self._file_keys: tuple[str, ...] = ()
        self._lock = threading.Lock()
        self._last_mode: AuthMode | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> KeySource:
        # CRM_API_KEYS="" (an empty Secret value, say) is a configured source that holds no key.
        env_configured = bool(settings.api_keys) or "api_keys" in settings.model_fields_set
        return cls(list(settings.api_keys), env_configured, settings.api_keys_file)

    def state(self) -> KeyState:
        if not self.configured:
            return self._report(KeyState("open"))
        keys = list(self.env_keys)
        problem: str | None = None
        if self.file is not None:
            file_keys, problem = self._read_file(self.file)
            keys += file_keys
        if not keys:
            reason = problem or "the configured API key sources hold no key"
            return self._report(KeyState("unavailable", reason=f"{reason}; denying every request"))
        return self._report(KeyState("keys", tuple(keys), reason=problem))

    def _read_file(self, file: Path) -> tuple[tuple[str, ...], str | None]:
        try:
            st = os.stat(file)
            stamp = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
            now = time.monotonic()
            with self._lock:
                # Re-read on any change, and every REREAD_S anyway: an in-place rewrite of the
                # same size within one mtime tick leaves the stamp unchanged.
                if stamp != self._stamp or now - self._read_at > REREAD_S:
                    self._file_keys = tuple(parse_keys(file.read_text(encoding="utf-8")))
                    self._stamp, self._read_at = stamp, now
                return self._file_keys, None
        except FileNotFoundError:
            return (), "the API key file is missing"
        except (OSError, UnicodeDecodeError) as exc:
            return (), f"the API key file cannot be read ({type(exc).__name__})"

    def _report(self, state: KeyState) -> KeyState:
        """Log each change of mode once (not on every request)."""
        if state.mode != self._last_mode:
            self._last_mode = state.mode
            if state.mode == "open":
                log.warning("auth: OPEN, no API key source is configured (set CRM_API_KEYS_FILE)")
            elif state.mode == "unavailable":
                log.error("auth: %s", state.reason)
            else:
                log.info("auth: %d API keys accepted", len(state.keys))
        return state


def bearer_token(request: Request, what: str) -> str:
    """The token of an `Authorization: Bearer <token>` header (401 without one); `what` names
    the key the route wants, for the message."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError(401, f"missing bearer token (Authorization: Bearer <{what}>)")
    return token.strip()


def _matches(token: str, keys: tuple[str, ...]) -> bool:
    """Every key is compared in constant time, so timing does not reveal which prefix matched."""
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(token.encode(), key.encode())
    return ok


def key_source(request: Request) -> KeySource:
    source: KeySource = request.app.state.keys
    return source


async def require_api_key(request: Request) -> None:
    """Scoring routes (and what describes them): a valid key once any key source is set."""
    state = key_source(request).state()
    if state.mode == "open":
        return
    if state.mode == "unavailable":
        raise AuthError(503, f"no API key can be checked: {state.reason}")
    if not _matches(bearer_token(request, "api key"), state.keys):
        raise AuthError(403, "invalid API key")


async def require_admin_key(request: Request) -> None:
    """/admin/* needs CRM_ADMIN_API_KEY when one is set; without one, admin routes are open only
    on a service whose scoring routes are open too (local use), else refused."""
    admin = request.app.state.settings.admin_api_key
    if admin is None:
        if key_source(request).configured:
            raise AuthError(403, "admin API disabled: set CRM_ADMIN_API_KEY")
        return
    if not admin.strip():
        raise AuthError(503, "the admin key is empty; denying every admin request")
    if not _matches(bearer_token(request, "admin key"), (admin,)):
        raise AuthError(403, "not an admin key")
