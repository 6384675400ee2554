"""Checkpoint root on disk: versions/<id>/ directories, a `current` pointer, atomic publish, checks.

Layout::

    root/
      current -> versions/<id>           symlink, replaced atomically
      versions/<id>/
        manifest.json
        generator/   HF causal-LM directory (config, model*.safetensors, tokenizer)
        scorer/      HF sequence-classification directory (num_labels=1); its backbone
                     weight files are symlinks into generator/, plus reward_head.safetensors
                     and a model.safetensors.index.json naming both
        READY        written last
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from service.checkpoint.manifest import FORMAT_VERSIONS, MANIFEST_FILE, READY_FILE, Manifest

VERSIONS_DIR = "versions"
_VERSION_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
CURRENT_LINK = "current"


class CheckpointError(Exception):
    """A checkpoint version that cannot be served, with the reason."""


@dataclass(frozen=True)
class CheckpointVersion:
    """A validated version directory and its manifest."""

    path: Path
    manifest: Manifest

    @property
    def generator_path(self) -> Path:
        return self.path / self.manifest.generator_dir

    @property
    def scorer_path(self) -> Path:
        return self.path / self.manifest.scorer_dir


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_version(path: Path, verify_hashes: bool = True) -> CheckpointVersion:
    """Validate a version directory: READY, manifest, views, every weight file and its hash."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint version directory")
    if not (path / READY_FILE).is_file():
        raise CheckpointError(f"{path}: no {READY_FILE} marker (incomplete or unpublished version)")
    try:
        raw = json.loads((path / MANIFEST_FILE).read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: {MANIFEST_FILE} is missing") from exc
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: {MANIFEST_FILE} is not valid JSON: {exc}") from exc
    if raw.get("format_version") not in FORMAT_VERSIONS:
        raise CheckpointError(
            f"{path}: manifest format_version {raw.get('format_version')!r}, "
            f"this service reads {' and '.join(map(str, FORMAT_VERSIONS))}"
        )
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        raise CheckpointError(f"{path}: invalid manifest: {exc}") from exc
    version = CheckpointVersion(path=path, manifest=manifest)
    for view in (version.generator_path, version.scorer_path):
        if not (view / "config.json").is_file():
            raise CheckpointError(f"{path}: {view.name}/config.json is missing")
    scorer_cfg = json.loads((version.scorer_path / "config.json").read_text())
    if scorer_cfg.get("num_labels", len(scorer_cfg.get("id2label", {}))) != 1:
        raise CheckpointError(f"{path}: scorer view must have num_labels=1")
    if not manifest.files:
        raise CheckpointError(f"{path}: manifest lists no weight files")
    for rel, expected in manifest.files.items():
        file = path / rel
        if not file.is_file():
            raise CheckpointError(f"{path}: weight file {rel} is missing")
        if verify_hashes and sha256_file(file) != expected:
            raise CheckpointError(f"{path}: sha256 of {rel} does not match the manifest")
    return version


class CheckpointRoot:
    """A directory of published versions and the `current` pointer."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def versions_dir(self) -> Path:
        return self.root / VERSIONS_DIR

    def version_path(self, version: str) -> Path:
        if not _VERSION_ID.fullmatch(version):
            raise CheckpointError(
                f"invalid version id {version[:80]!r}: 1-128 of letters, digits, '.', '_', '-', "
                "not starting with '.'"
            )
        return self.versions_dir / version

    def current_version(self) -> str | None:
        link = self.root / CURRENT_LINK
        if not link.is_symlink() and not link.exists():
            return None
        return Path(os.readlink(link)).name if link.is_symlink() else link.read_text().strip()

    def list_versions(self) -> list[str]:
        if not self.versions_dir.is_dir():
            return []
        return sorted(p.name for p in self.versions_dir.iterdir() if (p / READY_FILE).is_file())

    def resolve(self, version: str | None = None, verify_hashes: bool = True) -> CheckpointVersion:
        """Load `version`, or the one `current` points to."""
        name = version or self.current_version()
        if name is None:
            raise CheckpointError(
                f"{self.root}: no `current` version; run `critic-rm bootstrap` or publish one"
            )
        loaded = load_version(self.version_path(name), verify_hashes=verify_hashes)
        if loaded.manifest.model_version != name:
            # An alias folder (or a copied version) would be served under a name the watcher
            # can never match, so it would reload the same weights on every poll, without end.
            raise CheckpointError(
                f"{name}: the folder holds version {loaded.manifest.model_version!r}; a version "
                "in a root is published under its own id (versions/<model_version>)"
            )
        return loaded

    def staging_dir(self) -> Path:
        """A fresh directory on the same filesystem, to build a version in before publishing."""
        staging = self.root / ".staging" / uuid.uuid4().hex
        staging.mkdir(parents=True)
        return staging

    def publish(self, staging: Path, manifest: Manifest, make_current: bool = True) -> Path:
        """Write manifest and READY into `staging`, fsync, rename it into versions/, then
        (optionally) switch `current`. A reader never sees a half-written version."""
        target = self.version_path(manifest.model_version)
        if target.exists():
            raise CheckpointError(f"version {manifest.model_version} already exists at {target}")
        (staging / MANIFEST_FILE).write_text(manifest.to_json())
        _fsync_tree(staging)
        ready = staging / READY_FILE
        ready.write_text(manifest.model_version + "\n")
        _fsync_path(ready)
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        os.rename(staging, target)
        _fsync_path(self.versions_dir)
        if make_current:
            self.set_current(manifest.model_version)
        return target

    def set_current(self, version: str) -> None:
        """Point `current` at a published version, atomically (symlink + rename)."""
        target = self.version_path(version)
        if not (target / READY_FILE).is_file():
            raise CheckpointError(f"version {version} is not published (no READY)")
        tmp = self.root / f".current.{uuid.uuid4().hex}"
        os.symlink(Path(VERSIONS_DIR) / version, tmp)
        os.replace(tmp, self.root / CURRENT_LINK)
        _fsync_path(self.root)

    def discard_staging(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            file = Path(dirpath) / name
            if not file.is_symlink():
                _fsync_path(file)
        _fsync_path(Path(dirpath))
