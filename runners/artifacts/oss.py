"""Artifacts in an Alibaba Cloud OSS bucket, through oss2 (secrets never in logs or errors)."""

from __future__ import annotations

import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import oss2

from ..errors import UserError
from .base import (
    _LINK_REFRESH_SLACK,
    MANIFEST_NAME,
    ProgressCallback,
    Storage,
    StorageSettings,
    StoredFile,
    _damaged,
    _manifest_entries,
    _parse_time,
    bytes_crc64,
    file_crc64,
    log,
)


class OssStorage(Storage):
    """Artifacts in an OSS bucket under `<prefix>/`, moved with oss2's resumable transfers.

    Uploads above `multipart_threshold` go in parallel parts; a checkpoint per upload (under
    `checkpoint_dir`) lets an interrupted upload send only its missing parts when run again.
    Every transfer ends with a CRC-64 comparison between the local file and the object.
    """

    def __init__(self, settings: StorageSettings, checkpoint_dir: Path, *,
                 session: oss2.Session | None = None):
        if not (settings.oss_endpoint and settings.oss_bucket and settings.oss_access_key_id
                and settings.oss_access_key_secret):
            raise UserError("OSS storage needs TUNEBOT_OSS_ENDPOINT, TUNEBOT_OSS_BUCKET, "
                            "TUNEBOT_OSS_ACCESS_KEY_ID and TUNEBOT_OSS_ACCESS_KEY_SECRET.",
                            field="TUNEBOT_STORAGE")
        self.settings = settings
        _SecretFilter.guard(settings)
        endpoint = settings.oss_endpoint if "://" in settings.oss_endpoint else f"https://{settings.oss_endpoint}"
        auth_version = oss2.AUTH_VERSION_4 if settings.oss_region else oss2.AUTH_VERSION_1
        key_id, secret = settings.oss_access_key_id, settings.oss_access_key_secret
        if settings.oss_security_token:
            auth = oss2.StsAuth(key_id, secret, settings.oss_security_token, auth_version=auth_version)
        elif settings.oss_region:
            auth = oss2.AuthV4(key_id, secret)
        else:
            auth = oss2.Auth(key_id, secret)
        try:
            # enable_crc=False: tunebot checks whole files itself (below), which also covers parts
            # sent before a resume; oss2's per-request CRC would hash every byte a second time.
            self._bucket = oss2.Bucket(auth, endpoint, settings.oss_bucket, session=session,
                                       region=settings.oss_region, enable_crc=False,
                                       connect_timeout=settings.connect_timeout)
        except oss2.exceptions.ClientError as error:
            raise UserError(f"OSS settings are not usable: {error.body or error}.",
                            field="TUNEBOT_OSS_ENDPOINT",
                            fix="TUNEBOT_OSS_ENDPOINT=https://oss-cn-hangzhou.aliyuncs.com") from None
        checkpoint_dir = Path(checkpoint_dir)
        self._upload_store = oss2.ResumableStore(root=str(checkpoint_dir), dir="upload")
        self._download_store = oss2.ResumableDownloadStore(root=str(checkpoint_dir), dir="download")

    def _full_key(self, key: str) -> str:
        return f"{self.settings.oss_prefix}/{key}" if self.settings.oss_prefix else key

    def location(self, key: str, *, is_dir: bool = False) -> str:
        return f"oss://{self.settings.oss_bucket}/{self._full_key(key)}" + ("/" if is_dir else "")

    def _upload(self, local: Path, key: str, progress: ProgressCallback | None) -> int:
        s = self.settings
        # The local checksum is computed beside the upload, not before it: no second pass on the wall clock.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="crc64") as pool:
            local_crc = pool.submit(file_crc64, local)
            self._call("uploading", key, oss2.resumable_upload, self._bucket, self._full_key(key), str(local),
                       store=self._upload_store, multipart_threshold=s.multipart_threshold,
                       part_size=s.part_size, num_threads=s.threads, progress_callback=progress)
            crc = local_crc.result()
        head = self._head(key)
        size = local.stat().st_size
        if head is None or head[0] != size or head[1] != crc:
            # A damaged object must not be read as good later.
            self._call("removing the damaged copy at", key, self._bucket.delete_object, self._full_key(key))
            got = f"{head[0]} bytes, CRC-64 {head[1]}" if head else "nothing"
            raise UserError(f"The upload of {local} to {self.location(key)} arrived damaged (OSS holds "
                            f"{got}; the local file is {size} bytes, CRC-64 {crc}). The local file is kept.",
                            fix="Run the upload again.")
        return crc

    def _download(self, key: str, dest: Path, expected: StoredFile | None,
                  progress: ProgressCallback | None) -> StoredFile:
        s, where = self.settings, self.location(key)
        head = self._head(key)
        if head is None:
            raise UserError(f"There is no artifact at {where}.", field="key")
        if expected is None:
            expected = StoredFile(dest.name, head[0], head[1])
        partial = dest.with_name(dest.name + ".partial")
        self._call("downloading", key, oss2.resumable_download, self._bucket, self._full_key(key),
                   str(partial), multiget_threshold=s.multipart_threshold, part_size=s.part_size,
                   num_threads=s.threads, progress_callback=progress, store=self._download_store)
        size, crc = partial.stat().st_size, file_crc64(partial)
        if size != expected.size or (expected.crc64 is not None and crc != expected.crc64):
            partial.unlink()
            raise _damaged(where, expected, size, crc)
        if expected.crc64 is None:
            log.warning("%s has no CRC-64 on OSS; only its size was checked", where)
        os.replace(partial, dest)
        return StoredFile(dest.name, size, crc)

    def _head(self, key: str) -> tuple[int, int | None] | None:
        try:
            head = self._call("checking", key, self._bucket.head_object, self._full_key(key), missing_ok=True)
        except _Missing:
            return None
        return head.content_length, head.server_crc

    def _write_bytes(self, key: str, data: bytes, content_type: str) -> None:
        result = self._call("writing", key, self._bucket.put_object, self._full_key(key), data,
                            headers={"Content-Type": content_type})
        if result.crc is not None and result.crc != bytes_crc64(data):
            raise UserError(f"Writing {self.location(key)} arrived damaged.", fix="Run it again.")

    def _read_bytes(self, key: str) -> bytes | None:
        try:
            result = self._call("reading", key, self._bucket.get_object, self._full_key(key), missing_ok=True)
        except _Missing:
            return None
        data = result.read()
        if result.server_crc is not None and bytes_crc64(data) != result.server_crc:
            raise UserError(f"{self.location(key)} arrived damaged (CRC-64 mismatch).", fix="Fetch it again.")
        return data

    def _delete(self, key: str) -> None:
        self._call("deleting", key, self._bucket.delete_object, self._full_key(key))

    def _sign(self, key: str, lifetime: float) -> str:
        seconds = max(int(lifetime), 1)
        return self._call("signing a link to", key, self._bucket.sign_url, "GET", self._full_key(key),
                          seconds, slash_safe=True)

    def _file_link(self, key: str) -> tuple[str, float | None]:
        now = time.time()
        lifetime = self.settings.link_lifetime(now)
        return self._sign(key, lifetime), now + int(lifetime)

    def _manifest_files(self, key: str, files: list[StoredFile]) -> tuple[list[StoredFile], float | None]:
        now = time.time()
        lifetime = self.settings.link_lifetime(now)
        signed = [StoredFile(f.path, f.size, f.crc64, self._sign(f"{key}/{f.path}", lifetime)) for f in files]
        return signed, now + int(lifetime)

    def _dir_link(self, key: str, manifest: dict) -> tuple[str, float | None]:
        now = time.time()
        wanted_until = now + self.settings.link_lifetime(now)
        links_until = _parse_time(manifest.get("links_expire_at"), "links_expire_at") or 0.0
        if links_until < wanted_until - _LINK_REFRESH_SLACK:
            # The file links inside would die before a new manifest link: sign them afresh.
            files = _manifest_entries(manifest, self.location(key, is_dir=True))
            manifest = self._write_manifest(key, [StoredFile(f.path, f.size, f.crc64) for f in files])
            links_until = _parse_time(manifest["links_expire_at"], "links_expire_at") or wanted_until
        return self._sign(f"{key}/{MANIFEST_NAME}", links_until - now), links_until

    # Every oss2 call goes through here: its errors become words for the user, never a secret.
    def _call(self, doing: str, key: str, fn, *args, missing_ok: bool = False, **kwargs):
        try:
            return fn(*args, **kwargs)
        except oss2.exceptions.NotFound as error:
            if missing_ok and error.code in ("", "NoSuchKey"):
                raise _Missing() from None
            raise self._explain(error, doing, key) from None
        except oss2.exceptions.OssError as error:
            raise self._explain(error, doing, key) from None
        except OSError as error:
            raise UserError(f"Could not read or write a local file while {doing} {self.location(key)}: "
                            f"{error.strerror or error}.") from None

    def _explain(self, error: oss2.exceptions.OssError, doing: str, key: str) -> UserError:
        s, where, bucket = self.settings, self.location(key), self.settings.oss_bucket
        code = error.code or ""
        answer = f"{error.status} {code}".strip()
        resume = " An upload resumes where it stopped when run again." if doing == "uploading" else ""
        if isinstance(error, oss2.exceptions.RequestError):
            found = re.search(r"\[Errno -?\d+\] [^'\")]+|timed out|Connection refused", str(error))
            reason = found.group(0) if found else type(error.exception).__name__
            return self._user_error(f"Could not reach OSS at {s.oss_endpoint} while {doing} {where} "
                                    f"({reason}).{resume}", "TUNEBOT_OSS_ENDPOINT",
                                    "Check TUNEBOT_OSS_ENDPOINT and this host's network.")
        if isinstance(error, oss2.exceptions.InconsistentError):
            return self._user_error(f"{where} arrived damaged while {doing} (CRC-64 mismatch).{resume}", None,
                                    "Run it again.")
        if code == "SignatureDoesNotMatch":
            fix = "Set TUNEBOT_OSS_ACCESS_KEY_SECRET to the secret that belongs to TUNEBOT_OSS_ACCESS_KEY_ID"
            if s.oss_region:
                fix += f", and check TUNEBOT_OSS_REGION={s.oss_region} is the bucket's region"
            return self._user_error(f"OSS refused the credentials ({answer}) for bucket {bucket} while "
                                    f"{doing} {where}: the access key secret does not match the key id.",
                                    "TUNEBOT_OSS_ACCESS_KEY_SECRET", fix + ".")
        if code == "InvalidAccessKeyId":
            return self._user_error(f"OSS refused the credentials ({answer}) for bucket {bucket}: it does "
                                    f"not know the access key id {s.oss_access_key_id}.",
                                    "TUNEBOT_OSS_ACCESS_KEY_ID",
                                    "Set TUNEBOT_OSS_ACCESS_KEY_ID (and its secret) to a key of the account.")
        if code in ("InvalidSecurityToken", "SecurityTokenExpired"):
            return self._user_error(f"OSS refused the STS token ({answer}) for bucket {bucket} while "
                                    f"{doing} {where}.", "TUNEBOT_OSS_SECURITY_TOKEN",
                                    "Get a new STS token with its key id and secret, and restart tunebot.")
        if code == "RequestTimeTooSkewed":
            return self._user_error(f"OSS refused the request ({answer}): this host's clock is off by more "
                                    "than 15 minutes.", None, "Synchronise the clock (NTP) and run it again.")
        if code == "NoSuchBucket":
            return self._user_error(f"OSS has no bucket {bucket} at {s.oss_endpoint} ({answer}).",
                                    "TUNEBOT_OSS_BUCKET",
                                    "Check TUNEBOT_OSS_BUCKET and TUNEBOT_OSS_ENDPOINT (its region).")
        if error.status == 404:
            return self._user_error(f"There is no artifact at {where} ({answer}).", "key", None)
        if error.status == 403:
            return self._user_error(f"OSS denied {doing} {where} ({answer}: {error.message}).", None,
                                    f"Allow this key to read and write {bucket}/{s.oss_prefix}/* (RAM "
                                    "policy: oss:GetObject, oss:PutObject, oss:DeleteObject, oss:ListParts, "
                                    "oss:AbortMultipartUpload).")
        if error.status >= 500:
            return self._user_error(f"OSS failed while {doing} {where} ({answer}).{resume}", None,
                                    "Run it again.")
        return self._user_error(f"OSS answered {answer} while {doing} {where}: "
                                f"{error.message or 'no reason given'}.", None, None)

    def _user_error(self, message: str, field: str | None, fix: str | None) -> UserError:
        return UserError(_SecretFilter.redact(message), field=field, fix=fix)


class _Missing(Exception):
    """A 404 where "nothing there" is an answer, not a failure."""


class _SecretFilter(logging.Filter):
    """Keeps oss2's log records from carrying credentials.

    oss2 logs request headers (the STS token among them) at DEBUG, and error details at INFO
    and ERROR, where OSS's StringToSign for a V1 request holds the token. Records below WARNING
    are dropped; the rest have the secret and the token masked.
    """

    _secrets: set[str] = set()
    _installed = False

    @classmethod
    def guard(cls, settings: StorageSettings) -> None:
        cls._secrets |= {s for s in (settings.oss_access_key_secret, settings.oss_security_token) if s}
        if not cls._installed:
            names = ["oss2"] + [n for n in logging.root.manager.loggerDict if n.startswith("oss2.")]
            for name in names:
                logging.getLogger(name).addFilter(cls())
            cls._installed = True

    @classmethod
    def redact(cls, text: str) -> str:
        for secret in cls._secrets:
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return False
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
        record.msg, record.args, record.exc_info, record.exc_text = self.redact(message), None, None, None
        return True


