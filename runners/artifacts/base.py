"""Artifact storage: where adapters, merged exports, plots, predictions and configs are kept.

Two stores behind one interface: `LocalStorage` (a directory under the data dir, the default)
and `OssStorage` (Alibaba Cloud OSS through oss2). Keys are relative, laid out per job
(`<job-id>/<kind>/<name>`, see `job_key`); each store puts them under its own root or prefix.

A directory is stored file by file, then a manifest (`tunebot-manifest.json`: each file's path,
size and CRC-64/ECMA) is written last. Readers trust a directory only when its manifest is there
and every file matches it, so a half-uploaded export is never taken for a whole one. Single files
are checked against the CRC-64 OSS reports for the object, the same checksum OSS itself keeps.

Credentials come only from the environment (`StorageSettings.from_env`); they are kept out of
reprs, error texts and logs (oss2's own log records are filtered, see `_SecretFilter`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import crcmod

from ..env import Setting, parse_duration
from ..errors import UserError

log = logging.getLogger(__name__)

# (bytes done, bytes in all): called from upload threads, so keep it cheap.
ProgressCallback = Callable[[int, int], None]

MANIFEST_NAME = "tunebot-manifest.json"
MANIFEST_FORMAT = "tunebot-artifact/1"
# OSS refuses V4 signed URLs valid for longer than 7 days; V1 links get the same ceiling.
MAX_URL_EXPIRES = 7 * 86400.0
# STS hands out one-hour tokens unless asked otherwise; without the real expiry, assume that.
STS_DEFAULT_LIFETIME = 3600.0
# A directory's manifest is re-signed when its file links would die within this of a new link.
_LINK_REFRESH_SLACK = 3600.0
_CHUNK = 1 << 20

_CRC64_POLY = 0x142F0E1EBA9EA3693  # CRC-64/ECMA-182, reflected: OSS's x-oss-hash-crc64ecma
_new_crc64 = crcmod.Crc(_CRC64_POLY, initCrc=0, rev=True, xorOut=0xFFFFFFFFFFFFFFFF).new

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_KIND = re.compile(r"^[a-z][a-z0-9_-]*$")


# --- settings --------------------------------------------------------------------------------

STORAGE_SETTINGS_TABLE: list[Setting] = [
    Setting("TUNEBOT_STORAGE", "local", "local/oss",
            "Where artifacts are kept: `local` (the job folders under TUNEBOT_DATA_DIR, nothing copied) "
            "or `oss` (uploaded after each job, fetched by jobs on other hosts)"),
    Setting("TUNEBOT_OSS_ENDPOINT", "(none)", "URL",
            "OSS endpoint, e.g. `https://oss-cn-hangzhou.aliyuncs.com` (https assumed without a scheme)"),
    Setting("TUNEBOT_OSS_BUCKET", "(none)", "name", "OSS bucket that holds the artifacts"),
    Setting("TUNEBOT_OSS_PREFIX", "tunebot", "key prefix", "Artifacts go under `<prefix>/<job-id>/<kind>/`"),
    Setting("TUNEBOT_OSS_ACCESS_KEY_ID", "(none)", "secret", "AccessKey id (or an STS temporary one)"),
    Setting("TUNEBOT_OSS_ACCESS_KEY_SECRET", "(none)", "secret", "AccessKey secret; never logged or posted"),
    Setting("TUNEBOT_OSS_SECURITY_TOKEN", "(none)", "secret", "STS security token (temporary key pair)"),
    Setting("TUNEBOT_OSS_SECURITY_TOKEN_EXPIRES", "(unknown: links last 1h)", "time",
            "The STS token's `Expiration` (ISO 8601); signed links never outlive it"),
    Setting("TUNEBOT_OSS_REGION", "(none: V1 signatures)", "region",
            "e.g. `cn-hangzhou`; when set, requests and links are signed with V4"),
    Setting("TUNEBOT_OSS_URL_EXPIRES", "7d", "duration", "Lifetime of signed links (at most 7d)"),
]


@dataclass(frozen=True)
class StorageSettings:
    backend: str = "local"
    oss_endpoint: str | None = None
    oss_bucket: str | None = None
    oss_prefix: str = "tunebot"
    oss_access_key_id: str | None = field(default=None, repr=False)
    oss_access_key_secret: str | None = field(default=None, repr=False)
    oss_security_token: str | None = field(default=None, repr=False)
    oss_token_expires_at: float | None = None  # seconds since the epoch
    oss_region: str | None = None
    url_expires: float = MAX_URL_EXPIRES
    # Transfer tuning (not read from the environment; tests and the benchmark change them).
    multipart_threshold: int = 32 << 20
    part_size: int = 16 << 20
    threads: int = 4
    connect_timeout: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StorageSettings:
        env = dict(os.environ if env is None else env)

        def get(name: str) -> str | None:
            value = env.get(name)
            return value.strip() if value and value.strip() else None

        backend = (get("TUNEBOT_STORAGE") or "local").lower()
        if backend not in ("local", "oss"):
            raise UserError(f"TUNEBOT_STORAGE={backend!r} is not a store tunebot knows.",
                            field="TUNEBOT_STORAGE", fix="TUNEBOT_STORAGE=local (or oss)")
        url_expires = parse_duration(get("TUNEBOT_OSS_URL_EXPIRES") or "7d", name="TUNEBOT_OSS_URL_EXPIRES")
        if not 0 < url_expires <= MAX_URL_EXPIRES:
            raise UserError("TUNEBOT_OSS_URL_EXPIRES must be more than 0 and at most 7d (OSS's limit for "
                            "signed links).", field="TUNEBOT_OSS_URL_EXPIRES",
                            fix="TUNEBOT_OSS_URL_EXPIRES=7d")
        prefix = (get("TUNEBOT_OSS_PREFIX") or "tunebot").strip("/")
        if not all(_SEGMENT.match(part) for part in prefix.split("/")):
            raise UserError(f"TUNEBOT_OSS_PREFIX={prefix!r} is not a usable key prefix.",
                            field="TUNEBOT_OSS_PREFIX",
                            fix="TUNEBOT_OSS_PREFIX=tunebot (letters, digits, . _ - /)")
        settings = cls(
            backend=backend,
            oss_endpoint=get("TUNEBOT_OSS_ENDPOINT"),
            oss_bucket=get("TUNEBOT_OSS_BUCKET"),
            oss_prefix=prefix,
            oss_access_key_id=get("TUNEBOT_OSS_ACCESS_KEY_ID"),
            oss_access_key_secret=get("TUNEBOT_OSS_ACCESS_KEY_SECRET"),
            oss_security_token=get("TUNEBOT_OSS_SECURITY_TOKEN"),
            oss_token_expires_at=_parse_time(get("TUNEBOT_OSS_SECURITY_TOKEN_EXPIRES"),
                                             "TUNEBOT_OSS_SECURITY_TOKEN_EXPIRES"),
            oss_region=get("TUNEBOT_OSS_REGION"),
            url_expires=url_expires,
        )
        if backend == "oss":
            missing = [name for name, value in (
                ("TUNEBOT_OSS_ENDPOINT", settings.oss_endpoint),
                ("TUNEBOT_OSS_BUCKET", settings.oss_bucket),
                ("TUNEBOT_OSS_ACCESS_KEY_ID", settings.oss_access_key_id),
                ("TUNEBOT_OSS_ACCESS_KEY_SECRET", settings.oss_access_key_secret),
            ) if not value]
            if missing:
                raise UserError(f"TUNEBOT_STORAGE=oss also needs {', '.join(missing)}.", field=missing[0],
                                fix="Set them in the bot's and the runner's environment, never in a message.")
        return settings

    def link_lifetime(self, now: float | None = None) -> float:
        """Seconds a link signed now may live: TUNEBOT_OSS_URL_EXPIRES, cut to what the STS token has left."""
        if not self.oss_security_token:
            return self.url_expires
        now = time.time() if now is None else now
        if self.oss_token_expires_at is None:
            return min(self.url_expires, STS_DEFAULT_LIFETIME)
        left = self.oss_token_expires_at - now
        if left < 1:
            expired = _iso(self.oss_token_expires_at)
            raise UserError(f"The STS token in TUNEBOT_OSS_SECURITY_TOKEN expired at {expired}.",
                            field="TUNEBOT_OSS_SECURITY_TOKEN",
                            fix="Get a new token (with its key id, secret and Expiration); restart tunebot.")
        return min(self.url_expires, left)


def _parse_time(text: str | None, name: str) -> float | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UserError(f"{name}={text!r} is not an ISO 8601 time.", field=name,
                        fix=f"{name}=2026-11-28T12:00:00Z (the token's Expiration)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- keys, checksums, results ----------------------------------------------------------------

def job_key(job_id: int, kind: str, name: str = "") -> str:
    """The key of a job's artifact: `<job-id>/<kind>/<name>` (the store adds its root or prefix).

    `kind` says what it is (adapter, export, eval, plot, config, ...); `name` may hold `/`.
    """
    if isinstance(job_id, bool) or not isinstance(job_id, int) or job_id < 0:
        raise UserError(f"Job id {job_id!r} is not a job number.", field="job")
    if not _KIND.match(kind):
        raise UserError(f"Artifact kind {kind!r} is not a plain word.", field="kind",
                        fix="adapter, export, eval, plot, config, ...")
    key = f"{job_id}/{kind}"
    return check_key(f"{key}/{name.strip('/')}") if name.strip("/") else key


def check_key(key: str) -> str:
    """A key is relative, `/`-separated, without empty, `.` or `..` parts or odd characters."""
    parts = key.split("/")
    if not key or not all(_SEGMENT.match(part) and part not in (".", "..") for part in parts):
        raise UserError(f"{key!r} is not an artifact key.", field="key",
                        fix="e.g. 17/adapter/lora (letters, digits, . _ - separated by /)")
    return key


def _check_member(path: str) -> str:
    # A file inside a stored directory: any name a file system allows, but never out of it.
    pure = PurePosixPath(path)
    if (not path or pure.is_absolute() or any(part in ("", ".", "..") for part in path.split("/"))
            or "\\" in path or any(ord(ch) < 32 for ch in path)):
        raise UserError(f"The manifest lists {path!r}, which is not a path inside the artifact.",
                        field="manifest")
    return path


def file_crc64(path: Path, progress: ProgressCallback | None = None) -> int:
    """CRC-64/ECMA of a file, the checksum OSS keeps for each object (x-oss-hash-crc64ecma)."""
    crc, done, total = _new_crc64(), 0, path.stat().st_size if progress else 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc.update(chunk)
            if progress:
                done += len(chunk)
                progress(done, total)
    return crc.crcValue


def bytes_crc64(data: bytes) -> int:
    crc = _new_crc64()
    crc.update(data)
    return crc.crcValue


def human_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    exponent = min(int(math.log(size, 1024)), 4)
    return f"{size / 1024 ** exponent:.1f} {'BKMGT'[exponent]}iB"


@dataclass(frozen=True)
class StoredFile:
    path: str  # inside the artifact; for a single file, its name
    size: int
    crc64: int | None
    url: str | None = None

    def to_manifest(self) -> dict:
        entry = {"path": self.path, "size": self.size, "crc64ecma": str(self.crc64)}
        if self.url:
            entry["url"] = self.url
        return entry


@dataclass(frozen=True)
class StoredObject:
    """An artifact in a store: what `put_*`/`stat` return and `describe` shows."""

    key: str
    location: str  # oss://bucket/prefix/17/adapter/lora/  or  /data/artifacts/17/adapter/lora/
    is_dir: bool
    size: int
    files: tuple[StoredFile, ...]
    link: str | None = None  # signed URL (OSS) or file:// URI; for a directory, its manifest's
    link_expires_at: float | None = None

    @property
    def manifest_url(self) -> str | None:
        return self.link if self.is_dir else None

    @property
    def crc64(self) -> int | None:
        return None if self.is_dir else self.files[0].crc64

    def to_record(self) -> dict:
        """What a job keeps about its artifact (no links: they expire; `describe` signs fresh ones)."""
        return {"key": self.key, "location": self.location, "is_dir": self.is_dir, "size": self.size,
                "files": len(self.files)}


# --- the interface -----------------------------------------------------------------------------

class Storage(ABC):
    """Put and get files and whole directories under relative keys, and link to them.

    Subclasses implement the primitives (one object each); the manifest rules live here once.
    """

    # Primitives. `key` is always a checked relative key.
    @abstractmethod
    def _upload(self, local: Path, key: str, progress: ProgressCallback | None) -> int:
        """Store `local` at `key`, check it arrived whole; return its CRC-64."""

    @abstractmethod
    def _download(self, key: str, dest: Path, expected: StoredFile | None,
                  progress: ProgressCallback | None) -> StoredFile:
        """Fetch `key` to `dest` (atomically), checked against `expected` or the store's own checksum."""

    @abstractmethod
    def _head(self, key: str) -> tuple[int, int | None] | None:
        """(size, crc64 or None) of the object at `key`, or None when there is none."""

    @abstractmethod
    def _write_bytes(self, key: str, data: bytes, content_type: str) -> None: ...

    @abstractmethod
    def _read_bytes(self, key: str) -> bytes | None: ...

    @abstractmethod
    def _delete(self, key: str) -> None: ...

    @abstractmethod
    def location(self, key: str, *, is_dir: bool = False) -> str:
        """Where people find `key`: `oss://bucket/prefix/key` or a local path (`/` ends a directory)."""

    @abstractmethod
    def _file_link(self, key: str) -> tuple[str, float | None]:
        """A link to one object and when it stops working (None: never)."""

    def _dir_link(self, key: str, manifest: dict) -> tuple[str, float | None]:
        return self._file_link(f"{key}/{MANIFEST_NAME}")

    def _manifest_files(self, key: str, files: list[StoredFile]) -> tuple[list[StoredFile], float | None]:
        """The file entries as the manifest lists them (OSS adds signed links)."""
        return files, None

    # Public API.
    def put_file(self, local: Path, key: str, *, progress: ProgressCallback | None = None) -> StoredObject:
        """Store one file at `key`; the local file stays."""
        local, key = Path(local), check_key(key)
        size = _regular_file_size(local)
        crc = self._upload(local, key, progress)
        log.info("stored %s (%s)", self.location(key), human_size(size))
        link, expires_at = self._file_link(key)
        entry = StoredFile(key.rsplit("/", 1)[-1], size, crc)
        return StoredObject(key, self.location(key), False, size, (entry,), link, expires_at)

    def put_dir(self, local_dir: Path, key: str, *, progress: ProgressCallback | None = None) -> StoredObject:
        """Store every file under `local_dir` at `key/...`, then the manifest, last."""
        local_dir, key = Path(local_dir), check_key(key)
        if not local_dir.is_dir():
            raise UserError(f"{local_dir} is not a directory, so it cannot be stored as one.", field="path")
        members = sorted((p for p in local_dir.rglob("*") if p.is_file()), key=lambda p: p.as_posix())
        if not members:
            raise UserError(f"{local_dir} holds no files; there is nothing to store.", field="path")
        names = [p.relative_to(local_dir).as_posix() for p in members]
        if MANIFEST_NAME in names:
            raise UserError(f"{local_dir} already holds a {MANIFEST_NAME}; tunebot writes that name itself.",
                            field="path", fix=f"Rename or remove {local_dir / MANIFEST_NAME}.")
        sizes = [_regular_file_size(p) for p in members]
        total, done = sum(sizes), 0
        # The old manifest goes first: while files change, nobody may take the directory as whole.
        self._delete(f"{key}/{MANIFEST_NAME}")
        files = []
        for path, name, size in zip(members, names, sizes, strict=True):
            file_progress = None
            if progress:
                def file_progress(n: int, _total: int, base: int = done) -> None:
                    progress(base + n, total)
            crc = self._upload(path, f"{key}/{_check_member(name)}", file_progress)
            files.append(StoredFile(name, size, crc))
            done += size
        manifest = self._write_manifest(key, files)
        log.info("stored %s (%d files, %s)", self.location(key, is_dir=True), len(files), human_size(total))
        link, expires_at = self._dir_link(key, manifest)
        return StoredObject(key, self.location(key, is_dir=True), True, total, tuple(files), link, expires_at)

    def get_file(self, key: str, dest: Path, *, progress: ProgressCallback | None = None) -> Path:
        """Fetch one object to `dest`, checked against the store's checksum; returns `dest`."""
        key, dest = check_key(key), Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        self._download(key, dest, None, progress)
        return dest

    def get_dir(self, key: str, dest_dir: Path, *, progress: ProgressCallback | None = None) -> Path:
        """Fetch a stored directory into `dest_dir`, every file checked against its manifest.

        Refuses a directory without a manifest (an upload that never finished). Files already in
        `dest_dir` that match the manifest are kept, so a second fetch costs a local read only;
        files the manifest does not list are left alone.
        """
        key, dest_dir = check_key(key), Path(dest_dir)
        manifest = self._load_manifest(key)
        files = _manifest_entries(manifest, self.location(key, is_dir=True))
        total, done = sum(f.size for f in files), 0
        for entry in files:
            target = dest_dir / entry.path
            if not _matches(target, entry):
                target.parent.mkdir(parents=True, exist_ok=True)
                file_progress = None
                if progress:
                    def file_progress(n: int, _total: int, base: int = done) -> None:
                        progress(base + n, total)
                self._download(f"{key}/{entry.path}", target, entry, file_progress)
            done += entry.size
            if progress:
                progress(done, total)
        return dest_dir

    def exists(self, key: str) -> bool:
        """A file at `key`, or a directory whose manifest is there."""
        return self.stat(key) is not None

    def stat(self, key: str) -> StoredObject | None:
        """What is stored at `key` (no links signed), or None."""
        key = check_key(key)
        manifest_bytes = self._read_bytes(f"{key}/{MANIFEST_NAME}")
        if manifest_bytes is not None:
            files = _manifest_entries(_parse_manifest(manifest_bytes, self.location(key, is_dir=True)),
                                      self.location(key, is_dir=True))
            return StoredObject(key, self.location(key, is_dir=True), True, sum(f.size for f in files),
                                tuple(files))
        head = self._head(key)
        if head is None:
            return None
        size, crc = head
        entry = StoredFile(key.rsplit("/", 1)[-1], size, crc)
        return StoredObject(key, self.location(key), False, size, (entry,))

    def link(self, key: str) -> str:
        """A link people can open: signed URL (OSS) or file:// URI; a directory's is its manifest's."""
        obj = self.stat(key)
        if obj is None:
            raise UserError(f"There is no artifact at {self.location(check_key(key))}.", field="key")
        return self._link_of(obj)[0]

    def describe(self, obj: StoredObject) -> dict:
        """What a thread post or `tunebot show` prints about an artifact, with fresh links."""
        link, expires_at = self._link_of(obj)
        return {
            "kind": "directory" if obj.is_dir else "file",
            "location": obj.location,
            "link": link,  # for a directory: its manifest, which lists a link per file
            "link_expires_at": _iso(expires_at) if expires_at else None,
            "size": obj.size,
            "size_text": human_size(obj.size),
            "files": len(obj.files),
        }

    # Manifest handling, shared.
    def _link_of(self, obj: StoredObject) -> tuple[str, float | None]:
        if obj.is_dir:
            return self._dir_link(obj.key, self._load_manifest(obj.key))
        return self._file_link(obj.key)

    def _write_manifest(self, key: str, files: list[StoredFile]) -> dict:
        listed, links_expire_at = self._manifest_files(key, files)
        manifest = {
            "format": MANIFEST_FORMAT,
            "key": key,
            "location": self.location(key, is_dir=True),
            "created_at": _iso(time.time()),
            "total_size": sum(f.size for f in files),
            "files": [f.to_manifest() for f in listed],
        }
        if links_expire_at is not None:
            manifest["links_expire_at"] = _iso(links_expire_at)
        data = json.dumps(manifest, indent=1).encode()
        self._write_bytes(f"{key}/{MANIFEST_NAME}", data, "application/json")
        return manifest

    def _load_manifest(self, key: str) -> dict:
        where = self.location(key, is_dir=True)
        data = self._read_bytes(f"{key}/{MANIFEST_NAME}")
        if data is None:
            if self._head(key) is not None:
                raise UserError(f"{self.location(key)} is a single file, not a directory.", field="key",
                                fix="Fetch it as a file.")
            raise UserError(f"{where} has no {MANIFEST_NAME}: the upload never finished (or nothing is "
                            "there), so tunebot will not use it.", field="key",
                            fix="Upload the directory again; it is whole once its manifest is written.")
        return _parse_manifest(data, where)


def _regular_file_size(path: Path) -> int:
    if not path.is_file():
        raise UserError(f"{path} is not a file tunebot can read.", field="path")
    return path.stat().st_size


def _parse_manifest(data: bytes, where: str) -> dict:
    try:
        manifest = json.loads(data)
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise UserError(f"The manifest of {where} is not one tunebot wrote ({MANIFEST_FORMAT}).", field="key")
    return manifest


def _manifest_entries(manifest: dict, where: str) -> list[StoredFile]:
    try:
        return [StoredFile(_check_member(str(e["path"])), int(e["size"]), int(e["crc64ecma"]), e.get("url"))
                for e in manifest["files"]]
    except (KeyError, TypeError, ValueError):
        raise UserError(f"The manifest of {where} is damaged.", field="key",
                        fix="Upload the directory again.") from None


def _matches(path: Path, entry: StoredFile) -> bool:
    return path.is_file() and path.stat().st_size == entry.size and file_crc64(path) == entry.crc64


def _damaged(where: str, expected: StoredFile, size: int, crc: int | None) -> UserError:
    if size != expected.size:
        what = f"{size} bytes arrived, {expected.size} expected"
    else:
        what = f"CRC-64 {crc} does not match the stored {expected.crc64}"
    return UserError(f"{where} arrived damaged ({what}); nothing was kept.",
                     fix="Fetch it again; if it fails the same way, the stored copy is bad: upload it again.")


def _copy_with_crc(src: Path, dest: Path, progress: ProgressCallback | None) -> int:
    crc, done, total = _new_crc64(), 0, src.stat().st_size
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        while chunk := fin.read(_CHUNK):
            fout.write(chunk)
            crc.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    if progress and total == 0:
        progress(0, 0)
    return crc.crcValue
