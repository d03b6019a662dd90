"""An OSS stand-in on 127.0.0.1 for the storage tests and the upload benchmark.

It speaks the part of Alibaba Cloud OSS's HTTP protocol that tunebot uses, path-style
(`http://127.0.0.1:PORT/<bucket>/<key>`, which oss2 picks for IP endpoints), and checks every
request's signature the way OSS does, so a wrong secret gets 403 SignatureDoesNotMatch:

- V1 (`Authorization: OSS <id>:<sig>`, HMAC-SHA1) and V1 signed URLs (OSSAccessKeyId, Expires,
  Signature);
- V4 (`OSS4-HMAC-SHA256`, HMAC-SHA256 over a canonical request) in the header and in URLs;
- an STS security token when one is configured.

Operations: PutObject, GetObject (with Range), HeadObject, DeleteObject, InitiateMultipartUpload,
UploadPart, ListParts (paged), CompleteMultipartUpload, AbortMultipartUpload. Objects are kept on
disk under `root` as lists of segment files, so completing a 1 GiB multipart upload copies nothing.

Knobs for tests: `fail_parts_after` (accept that many parts, then answer 500 to every further part:
an interrupted upload), `corrupt_gets` (flip one byte of each GET body, headers untouched: damage
in transit), `corrupt_uploads` (flip the first byte of each stored PUT body or part, as if damaged
on the way in), `advance_clock(seconds)` (make signed URLs expire without sleeping). `calls` counts
operations; `parts_accepted` counts parts stored.

Run alone (the benchmark does, so server and client do not share a GIL):
    python tests/oss_standin.py --root /tmp/oss --port 0   # prints "READY http://127.0.0.1:PORT"
"""

from __future__ import annotations

import argparse
import base64
import calendar
import functools
import hashlib
import hmac
import itertools
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from email.utils import formatdate, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlsplit
from xml.etree import ElementTree
from xml.sax.saxutils import escape

import crcmod

# CRC-64/ECMA-182 as OSS reports it in x-oss-hash-crc64ecma (the polynomial oss2 uses).
_CRC64_POLY = 0x142F0E1EBA9EA3693
_CRC64_REFLECTED_POLY = 0xC96C5795D7870F42
_new_crc64 = crcmod.Crc(_CRC64_POLY, initCrc=0, rev=True, xorOut=0xFFFFFFFFFFFFFFFF).new

# Query parameters that are part of the V1 string-to-sign (OSS's "sub-resources").
_V1_SUBRESOURCES = frozenset({
    "acl", "uploads", "location", "cors", "logging", "website", "referer", "lifecycle", "delete",
    "append", "tagging", "objectMeta", "uploadId", "partNumber", "security-token", "position",
    "img", "style", "styleName", "replication", "replicationProgress", "replicationLocation",
    "cname", "bucketInfo", "comp", "qos", "live", "status", "vod", "startTime", "endTime", "symlink",
    "x-oss-process", "response-content-type", "response-content-language", "response-expires",
    "response-cache-control", "response-content-disposition", "response-content-encoding",
    "udf", "udfName", "udfImage", "udfId", "udfImageDesc", "udfApplication", "udfApplicationLog",
    "restore", "callback", "callback-var", "policy", "encryption", "versions", "versioning",
    "versionId", "requestPayment", "x-oss-request-payer", "sequential", "inventory", "inventoryId",
    "continuation-token", "asyncFetch", "worm", "wormId", "wormExtend", "x-oss-traffic-limit",
})
_V4_SIGNED_PLAIN_HEADERS = ("content-type", "content-md5")
_MAX_CLOCK_SKEW = 15 * 60
_MIN_PART_SIZE = 100 * 1024
_CHUNK = 1 << 20


def crc64_of(data: bytes) -> int:
    crc = _new_crc64()
    crc.update(data)
    return crc.crcValue


def _gf2_times(matrix: tuple[int, ...] | list[int], vector: int) -> int:
    total, column = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[column]
        vector >>= 1
        column += 1
    return total


def _gf2_compose(a: list[int], b: list[int]) -> list[int]:
    return [_gf2_times(a, column) for column in b]


@functools.lru_cache(maxsize=64)
def _zero_bytes_operator(length: int) -> tuple[int, ...]:
    """The GF(2) matrix that runs a CRC-64 register over `length` zero bytes (zlib's combine trick).

    Cached per length: every part but the last has the same size, so completing an upload
    costs one matrix-vector product per part instead of rebuilding the operator each time.
    """
    step = [_CRC64_REFLECTED_POLY] + [1 << n for n in range(63)]  # one zero bit
    for _ in range(3):
        step = _gf2_compose(step, step)  # 2, 4, 8 zero bits: one zero byte
    result: list[int] | None = None
    while length:
        if length & 1:
            result = step if result is None else _gf2_compose(step, result)
        length >>= 1
        if length:
            step = _gf2_compose(step, step)
    return tuple(result or [1 << n for n in range(64)])


def _combine_crc64(crc1: int, crc2: int, len2: int) -> int:
    """CRC-64 of A+B from CRC(A), CRC(B) and len(B): what OSS reports for a multipart object."""
    return _gf2_times(_zero_bytes_operator(len2), crc1) ^ crc2 if len2 else crc1


@dataclass
class _Blob:
    """Bytes on disk: one PutObject body or one part."""

    path: Path
    size: int
    md5: str
    crc: int
    mtime: float


@dataclass
class _Object:
    segments: list[_Blob]
    size: int
    etag: str
    crc: int
    content_type: str
    mtime: float
    object_type: str


@dataclass
class _Upload:
    key: str
    content_type: str
    initiated: float
    parts: dict[int, _Blob] = field(default_factory=dict)


class _Refusal(Exception):
    """An OSS error answer: status, Code, Message, extra XML fields."""

    def __init__(self, status: int, code: str, message: str, **extra: str):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.extra = status, code, message, extra


class OssStandin:
    """One bucket, one key pair (optionally an STS token), served on 127.0.0.1 in a thread."""

    def __init__(
        self,
        root: Path | None = None,
        *,
        bucket: str = "tunebot-test",
        access_key_id: str = "LTAItunebottest",
        access_key_secret: str = "standin-secret-do-not-use",
        security_token: str | None = None,
        port: int = 0,
    ):
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="oss-standin-")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.bucket = bucket
        self.access_key_id = access_key_id
        self.access_key_secret = access_key_secret
        self.security_token = security_token
        self.port = port
        self.fail_parts_after: int | None = None
        self.corrupt_gets = False
        self.corrupt_uploads = False
        self.calls: Counter[str] = Counter()
        self.parts_accepted = 0
        self._clock_offset = 0.0
        self._objects: dict[str, _Object] = {}
        self._uploads: dict[str, _Upload] = {}
        self._lock = threading.Lock()
        self._blob_ids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- life cycle -------------------------------------------------------------------------
    def start(self) -> OssStandin:
        standin = self

        class Handler(_Handler):
            server_state = standin

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="oss-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> OssStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- test knobs and views ---------------------------------------------------------------
    def now(self) -> float:
        return time.time() + self._clock_offset

    def advance_clock(self, seconds: float) -> None:
        self._clock_offset += seconds

    def object_bytes(self, key: str) -> bytes:
        with self._lock:
            obj = self._objects[key]
        return b"".join(seg.path.read_bytes() for seg in obj.segments)

    def keys(self) -> list[str]:
        with self._lock:
            return sorted(self._objects)

    def open_uploads(self) -> list[str]:
        with self._lock:
            return [up.key for up in self._uploads.values()]

    # --- storage ----------------------------------------------------------------------------
    def check_part_allowed(self) -> None:
        if self.fail_parts_after is not None and self.parts_accepted >= self.fail_parts_after:
            raise _Refusal(500, "InternalError", "The stand-in was told to fail this part (an interruption).")

    def replace_object(self, key: str, obj: _Object | None) -> None:
        """Store, overwrite or (None) delete an object; its old bytes leave the disk. Hold the lock."""
        old = self._objects.pop(key, None)
        if obj is not None:
            self._objects[key] = obj
        if old is not None:
            self.forget(old.segments)

    def forget(self, blobs) -> None:
        for blob in blobs:
            blob.path.unlink(missing_ok=True)

    def _new_blob_path(self) -> Path:
        return self.root / f"blob-{next(self._blob_ids):08d}"

    def store_body(self, reader, length: int | None, chunked: bool) -> _Blob:
        """Stream a request body to disk, hashing as it goes."""
        path = self._new_blob_path()
        md5, crc, size = hashlib.md5(), _new_crc64(), 0
        corrupt = self.corrupt_uploads
        with open(path, "wb") as out:
            for chunk in _body_chunks(reader, length, chunked):
                if corrupt and chunk:
                    chunk, corrupt = bytes([chunk[0] ^ 0xFF]) + chunk[1:], False
                out.write(chunk)
                md5.update(chunk)
                crc.update(chunk)
                size += len(chunk)
        return _Blob(path, size, md5.hexdigest().upper(), crc.crcValue, self.now())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "AliyunOSS"  # what real OSS answers with
    server_state: OssStandin

    def log_message(self, format: str, *args: object) -> None:  # quiet: tests read pytest output
        pass

    # Every method goes through one dispatcher.
    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    # --- plumbing ---------------------------------------------------------------------------
    def _serve(self) -> None:
        state = self.server_state
        self._request_id = uuid.uuid4().hex[:24].upper()
        self._body_consumed = False
        split = urlsplit(self.path)
        self._raw_path = split.path
        self._query = dict(parse_qsl(split.query, keep_blank_values=True))
        try:
            bucket, _, key = unquote(split.path).lstrip("/").partition("/")
            self._key = key
            self._verify_signature(bucket, key)
            if bucket != state.bucket:
                raise _Refusal(404, "NoSuchBucket", "The specified bucket does not exist.", BucketName=bucket)
            self._dispatch(key)
        except _Refusal as refusal:
            state.calls["Refused"] += 1
            self._drain_body()
            self._send_error(refusal)

    def _dispatch(self, key: str) -> None:
        method, query = self.command, self._query
        if not key:
            raise _Refusal(501, "NotImplemented", "Bucket-level operations are not part of this stand-in.")
        if method == "PUT" and "uploadId" in query and "partNumber" in query:
            self._upload_part(key)
        elif method == "PUT":
            self._put_object(key)
        elif method == "POST" and "uploads" in query:
            self._initiate(key)
        elif method == "POST" and "uploadId" in query:
            self._complete(key)
        elif method == "GET" and "uploadId" in query:
            self._list_parts(key)
        elif method == "DELETE" and "uploadId" in query:
            self._abort(key)
        elif method in ("GET", "HEAD"):
            self._get_object(key, head=method == "HEAD")
        elif method == "DELETE":
            self._delete_object(key)
        else:
            raise _Refusal(405, "MethodNotAllowed", "The method is not allowed against this resource.")

    def _header(self, name: str) -> str:
        return self.headers.get(name, "") or ""

    def _body_length(self) -> tuple[int | None, bool]:
        chunked = "chunked" in self._header("Transfer-Encoding").lower()
        length = self._header("Content-Length")
        return (int(length) if length else (None if chunked else 0)), chunked

    def _read_body(self) -> bytes:
        length, chunked = self._body_length()
        self._body_consumed = True
        return b"".join(_body_chunks(self.rfile, length, chunked))

    def _drain_body(self) -> None:
        if self._body_consumed:
            return
        self._body_consumed = True
        length, chunked = self._body_length()
        for _ in _body_chunks(self.rfile, length, chunked):
            pass

    def _store_body(self) -> _Blob:
        length, chunked = self._body_length()
        self._body_consumed = True
        blob = self.server_state.store_body(self.rfile, length, chunked)
        if length is not None and blob.size != length:
            blob.path.unlink(missing_ok=True)
            raise _Refusal(400, "IncompleteBody", "The request body is shorter than its Content-Length.")
        return blob

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("x-oss-request-id", self._request_id)
        self.send_header("Date", formatdate(usegmt=True))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _send_xml(self, status: int, xml: str, headers: dict[str, str] | None = None) -> None:
        body = ('<?xml version="1.0" encoding="UTF-8"?>\n' + xml).encode()
        self._send(status, body, {"Content-Type": "application/xml", **(headers or {})})

    def _send_error(self, refusal: _Refusal) -> None:
        fields = {"Code": refusal.code, "Message": refusal.message, "RequestId": self._request_id,
                  "HostId": "127.0.0.1", **refusal.extra}
        xml = "<Error>" + "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in fields.items()) + "</Error>"
        body = ('<?xml version="1.0" encoding="UTF-8"?>\n' + xml).encode()
        headers = {"Content-Type": "application/xml"}
        if self.command == "HEAD":
            # A HEAD answer has no body; OSS carries the error document in x-oss-err instead.
            headers["x-oss-err"] = base64.b64encode(body).decode()
        self._send(refusal.status, body, headers)

    # --- signatures -------------------------------------------------------------------------
    def _verify_signature(self, bucket: str, key: str) -> None:
        query, auth = self._query, self._header("Authorization")
        if "Signature" in query and "OSSAccessKeyId" in query:
            self._verify_v1_url(bucket, key)
        elif "x-oss-signature" in query:
            self._verify_v4(bucket, key, from_url=True)
        elif auth.startswith("OSS4-HMAC-SHA256 "):
            self._verify_v4(bucket, key, from_url=False)
        elif auth.startswith("OSS "):
            self._verify_v1_header(bucket, key)
        else:
            raise _Refusal(403, "AccessDenied", "Anonymous access is forbidden for this operation.")

    def _check_key_and_token(self, access_key_id: str, token: str | None) -> None:
        state = self.server_state
        if access_key_id != state.access_key_id:
            raise _Refusal(403, "InvalidAccessKeyId", "The OSS Access Key Id you provided does not exist in "
                           "our records.", OSSAccessKeyId=access_key_id)
        if state.security_token is not None and token != state.security_token:
            raise _Refusal(403, "InvalidSecurityToken", "The security token you provided is invalid.")

    def _check_signature(self, expected: str, provided: str, string_to_sign: str, access_key_id: str) -> None:
        if not hmac.compare_digest(expected, provided):
            raise _Refusal(403, "SignatureDoesNotMatch", "The request signature we calculated does not match "
                           "the signature you provided. Check your key and signing method.",
                           OSSAccessKeyId=access_key_id, SignatureProvided=provided,
                           StringToSign=string_to_sign)

    def _check_clock(self, when: float) -> None:
        if abs(self.server_state.now() - when) > _MAX_CLOCK_SKEW:
            raise _Refusal(403, "RequestTimeTooSkewed", "The difference between the request time and the "
                           "current time is too large.")

    def _v1_string_to_sign(self, bucket: str, key: str, date: str) -> str:
        oss_headers = sorted((name.lower(), value) for name, value in self.headers.items()
                             if name.lower().startswith("x-oss-"))
        canonical_headers = "".join(f"{name}:{value}\n" for name, value in oss_headers)
        subresources = sorted((k, v) for k, v in self._query.items() if k in _V1_SUBRESOURCES)
        resource = f"/{bucket}/{key}"
        if subresources:
            resource += "?" + "&".join(f"{k}={v}" if v else k for k, v in subresources)
        return "\n".join([self.command, self._header("Content-MD5"), self._header("Content-Type"), date,
                          canonical_headers + resource])

    def _v1_signature(self, string_to_sign: str) -> str:
        secret = self.server_state.access_key_secret.encode()
        return base64.b64encode(hmac.new(secret, string_to_sign.encode(), hashlib.sha1).digest()).decode()

    def _verify_v1_header(self, bucket: str, key: str) -> None:
        access_key_id, _, provided = self._header("Authorization")[len("OSS "):].partition(":")
        self._check_key_and_token(access_key_id, self._header("x-oss-security-token") or None)
        date = self._header("x-oss-date") or self._header("Date")
        try:
            self._check_clock(parsedate_to_datetime(date).timestamp())
        except (TypeError, ValueError):
            raise _Refusal(403, "AccessDenied", "The request has no valid Date header.") from None
        string_to_sign = self._v1_string_to_sign(bucket, key, date)
        self._check_signature(self._v1_signature(string_to_sign), provided, string_to_sign, access_key_id)

    def _verify_v1_url(self, bucket: str, key: str) -> None:
        query = self._query
        access_key_id = query["OSSAccessKeyId"]
        self._check_key_and_token(access_key_id, query.get("security-token"))
        try:
            expires = int(query.get("Expires", ""))
        except ValueError:
            raise _Refusal(403, "AccessDenied", "Expires is not a number.") from None
        string_to_sign = self._v1_string_to_sign(bucket, key, str(expires))
        expected = self._v1_signature(string_to_sign)
        self._check_signature(expected, query["Signature"], string_to_sign, access_key_id)
        if self.server_state.now() > expires:
            raise _Refusal(403, "AccessDenied", "Request has expired.", Expires=str(expires))

    def _verify_v4(self, bucket: str, key: str, *, from_url: bool) -> None:
        query = self._query
        if from_url:
            credential = query.get("x-oss-credential", "")
            provided = query.get("x-oss-signature", "")
            additional = query.get("x-oss-additional-headers", "")
            date_time = query.get("x-oss-date", "")
            token = query.get("x-oss-security-token")
            canonical_params = {k: v for k, v in query.items() if k != "x-oss-signature"}
        else:
            parts = dict(item.strip().split("=", 1) for item in
                         self._header("Authorization")[len("OSS4-HMAC-SHA256 "):].split(",") if "=" in item)
            credential, provided = parts.get("Credential", ""), parts.get("Signature", "")
            additional = parts.get("AdditionalHeaders", "")
            date_time = self._header("x-oss-date")
            token = self._header("x-oss-security-token") or None
            canonical_params = query
        access_key_id, _, scope = credential.partition("/")
        self._check_key_and_token(access_key_id, token)
        try:
            signed_at = calendar.timegm(time.strptime(date_time, "%Y%m%dT%H%M%SZ"))
        except ValueError:
            raise _Refusal(403, "AccessDenied", "x-oss-date is missing or malformed.") from None
        scope_date, _, rest = scope.partition("/")
        region, _, product = rest.partition("/")
        product = product.removesuffix("/aliyun_v4_request")
        if scope_date != date_time[:8] or not scope.endswith("/aliyun_v4_request"):
            raise _Refusal(403, "SignatureDoesNotMatch", "The credential scope is malformed.")

        additional_names = [name for name in additional.split(";") if name]
        signed_headers = sorted(
            (name.lower(), value) for name, value in self.headers.items()
            if name.lower().startswith("x-oss-") or name.lower() in _V4_SIGNED_PLAIN_HEADERS
            or name.lower() in additional_names
        )
        encoded_params = sorted((_v4_encode(k), _v4_encode(v)) for k, v in canonical_params.items())
        canonical_request = "\n".join([
            self.command,
            _v4_encode(f"/{bucket}/{key}", keep_slash=True),
            "&".join(f"{k}={v}" if v else k for k, v in encoded_params),
            "".join(f"{name}:{value}\n" for name, value in signed_headers),
            ";".join(additional_names),
            self._header("x-oss-content-sha256") or "UNSIGNED-PAYLOAD",
        ])
        string_to_sign = "\n".join([
            "OSS4-HMAC-SHA256", date_time, scope, hashlib.sha256(canonical_request.encode()).hexdigest(),
        ])
        signing_key = ("aliyun_v4" + self.server_state.access_key_secret).encode()
        for step in (scope_date, region, product, "aliyun_v4_request"):
            signing_key = hmac.new(signing_key, step.encode(), hashlib.sha256).digest()
        expected = hmac.new(signing_key, string_to_sign.encode(), hashlib.sha256).hexdigest()
        self._check_signature(expected, provided, string_to_sign, access_key_id)
        if from_url:
            if self.server_state.now() > signed_at + int(query.get("x-oss-expires", "0") or 0):
                raise _Refusal(403, "AccessDenied", "Request has expired.")
        else:
            self._check_clock(signed_at)

    # --- operations -------------------------------------------------------------------------
    def _put_object(self, key: str) -> None:
        state = self.server_state
        blob = self._store_body()
        obj = _Object([blob], blob.size, f'"{blob.md5}"', blob.crc,
                      self._header("Content-Type") or "application/octet-stream", blob.mtime, "Normal")
        with state._lock:
            state.replace_object(key, obj)
            state.calls["PutObject"] += 1
        self._send(200, headers={"ETag": obj.etag, "x-oss-hash-crc64ecma": str(obj.crc)})

    def _get_object(self, key: str, *, head: bool) -> None:
        state = self.server_state
        with state._lock:
            obj = state._objects.get(key)
            state.calls["HeadObject" if head else "GetObject"] += 1
        if obj is None:
            raise _Refusal(404, "NoSuchKey", "The specified key does not exist.", Key=key)
        start, end, status = 0, obj.size - 1, 200
        range_header = self._header("Range")
        if range_header.startswith("bytes="):
            first, _, last = range_header[len("bytes="):].partition("-")
            if first:
                start, end = int(first), min(int(last) if last else obj.size - 1, obj.size - 1)
            elif last:
                start = max(obj.size - int(last), 0)
            if start >= obj.size or start > end:
                raise _Refusal(416, "InvalidRange", "The requested range cannot be satisfied.")
            status = 206
        headers = {
            "Content-Type": obj.content_type,
            "Content-Length": str(end - start + 1 if obj.size else 0),
            "ETag": obj.etag,
            "Last-Modified": formatdate(obj.mtime, usegmt=True),
            "x-oss-object-type": obj.object_type,
            "x-oss-hash-crc64ecma": str(obj.crc),
            "Accept-Ranges": "bytes",
        }
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{obj.size}"
        self._drain_body()
        self._send(status, headers=headers)
        if head or obj.size == 0:
            return
        self._stream(obj, start, end + 1, corrupt=state.corrupt_gets)

    def _stream(self, obj: _Object, start: int, stop: int, *, corrupt: bool) -> None:
        offset = 0
        for seg in obj.segments:
            seg_start, seg_stop = max(start - offset, 0), min(stop - offset, seg.size)
            offset += seg.size
            if seg_start >= seg_stop:
                continue
            with open(seg.path, "rb") as f:
                f.seek(seg_start)
                left = seg_stop - seg_start
                while left:
                    chunk = f.read(min(_CHUNK, left))
                    left -= len(chunk)
                    if corrupt:
                        chunk, corrupt = bytes([chunk[0] ^ 0xFF]) + chunk[1:], False
                    self.wfile.write(chunk)

    def _delete_object(self, key: str) -> None:
        state = self.server_state
        with state._lock:
            state.replace_object(key, None)
            state.calls["DeleteObject"] += 1
        self._send(204)

    def _initiate(self, key: str) -> None:
        state = self.server_state
        upload_id = uuid.uuid4().hex.upper()
        self._drain_body()
        with state._lock:
            content_type = self._header("Content-Type") or "application/octet-stream"
            state._uploads[upload_id] = _Upload(key, content_type, state.now())
            state.calls["InitiateMultipartUpload"] += 1
        self._send_xml(200, f"<InitiateMultipartUploadResult><Bucket>{state.bucket}</Bucket>"
                            f"<Key>{escape(key)}</Key><UploadId>{upload_id}</UploadId>"
                            "</InitiateMultipartUploadResult>")

    def _upload_for(self, key: str) -> _Upload:
        upload = self.server_state._uploads.get(self._query["uploadId"])
        if upload is None or upload.key != key:
            raise _Refusal(404, "NoSuchUpload", "The specified upload does not exist.",
                           UploadId=self._query["uploadId"])
        return upload

    def _upload_part(self, key: str) -> None:
        state = self.server_state
        try:
            number = int(self._query["partNumber"])
        except ValueError:
            raise _Refusal(400, "InvalidArgument", "partNumber is not a number.") from None
        if not 1 <= number <= 10000:
            raise _Refusal(400, "InvalidArgument", "Part number must be an integer between 1 and 10000.")
        with state._lock:
            self._upload_for(key)
            state.check_part_allowed()
        blob = self._store_body()
        with state._lock:
            try:
                upload = self._upload_for(key)
                state.check_part_allowed()  # another thread may have reached the limit meanwhile
            except _Refusal:
                state.forget([blob])
                raise
            if number in upload.parts:
                state.forget([upload.parts[number]])
            upload.parts[number] = blob
            state.parts_accepted += 1
            state.calls["UploadPart"] += 1
        self._send(200, headers={"ETag": f'"{blob.md5}"', "x-oss-hash-crc64ecma": str(blob.crc)})

    def _list_parts(self, key: str) -> None:
        state = self.server_state
        marker = int(self._query.get("part-number-marker") or 0)
        max_parts = int(self._query.get("max-parts") or 1000)
        self._drain_body()
        with state._lock:
            upload = self._upload_for(key)
            numbers = sorted(n for n in upload.parts if n > marker)
            page, truncated = numbers[:max_parts], len(numbers) > max_parts
            parts = [(n, upload.parts[n]) for n in page]
            state.calls["ListParts"] += 1
        xml = [f"<ListPartsResult><Bucket>{state.bucket}</Bucket><Key>{escape(key)}</Key>",
               f"<UploadId>{self._query['uploadId']}</UploadId><PartNumberMarker>{marker}</PartNumberMarker>",
               f"<NextPartNumberMarker>{page[-1] if page else marker}</NextPartNumberMarker>",
               f"<MaxParts>{max_parts}</MaxParts><IsTruncated>{str(truncated).lower()}</IsTruncated>"]
        for number, blob in parts:
            xml.append(f"<Part><PartNumber>{number}</PartNumber><LastModified>{_iso8601(blob.mtime)}</LastModified>"
                       f'<ETag>"{blob.md5}"</ETag><HashCrc64ecma>{blob.crc}</HashCrc64ecma>'
                       f"<Size>{blob.size}</Size></Part>")
        xml.append("</ListPartsResult>")
        self._send_xml(200, "".join(xml))

    def _complete(self, key: str) -> None:
        state = self.server_state
        body = self._read_body()
        try:
            listed = [(int(p.findtext("PartNumber", "")), (p.findtext("ETag") or "").strip('"').upper())
                      for p in ElementTree.fromstring(body).findall("Part")]
        except (ElementTree.ParseError, ValueError):
            raise _Refusal(400, "MalformedXML", "The XML you provided was not well-formed.") from None
        with state._lock:
            upload = self._upload_for(key)
            if not listed or [n for n, _ in listed] != sorted({n for n, _ in listed}):
                raise _Refusal(400, "InvalidPartOrder", "The list of parts was not in ascending order.")
            segments = []
            for number, etag in listed:
                blob = upload.parts.get(number)
                if blob is None or blob.md5 != etag:
                    raise _Refusal(400, "InvalidPart", "One or more of the specified parts could not be "
                                   "found.", PartNumber=str(number))
                segments.append(blob)
            if any(seg.size < _MIN_PART_SIZE for seg in segments[:-1]):
                raise _Refusal(400, "EntityTooSmall", "A part other than the last is below 100 KiB.")
            crc, size = 0, 0
            for seg in segments:
                crc, size = _combine_crc64(crc, seg.crc, seg.size), size + seg.size
            etag_md5 = hashlib.md5(b"".join(bytes.fromhex(seg.md5) for seg in segments)).hexdigest().upper()
            obj = _Object(segments, size, f'"{etag_md5}-{len(segments)}"', crc, upload.content_type,
                          state.now(), "Multipart")
            state.replace_object(key, obj)
            unused = [blob for number, blob in upload.parts.items() if number not in {n for n, _ in listed}]
            state.forget(unused)
            del state._uploads[self._query["uploadId"]]
            state.calls["CompleteMultipartUpload"] += 1
        self._send_xml(200, f"<CompleteMultipartUploadResult><Location>{state.endpoint}/{state.bucket}/"
                            f"{escape(quote(key))}</Location><Bucket>{state.bucket}</Bucket><Key>{escape(key)}</Key>"
                            f"<ETag>{obj.etag}</ETag></CompleteMultipartUploadResult>",
                       {"ETag": obj.etag, "x-oss-hash-crc64ecma": str(obj.crc)})

    def _abort(self, key: str) -> None:
        state = self.server_state
        self._drain_body()
        with state._lock:
            state.forget(self._upload_for(key).parts.values())
            del state._uploads[self._query["uploadId"]]
            state.calls["AbortMultipartUpload"] += 1
        self._send(204)


def _body_chunks(reader, length: int | None, chunked: bool):
    if chunked:
        while True:
            size = int(reader.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while reader.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return
            left = size
            while left:
                chunk = reader.read(min(_CHUNK, left))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk
            reader.readline()
    else:
        left = length or 0
        while left:
            chunk = reader.read(min(_CHUNK, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk


def _v4_encode(text: str, keep_slash: bool = False) -> str:
    return quote(text, safe="-_.~" + ("/" if keep_slash else ""))


def _iso8601(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(when))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve an OSS stand-in on 127.0.0.1 until killed.")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--bucket", default="tunebot-test")
    parser.add_argument("--access-key-id", default="LTAItunebottest")
    parser.add_argument("--access-key-secret", default="standin-secret-do-not-use")
    args = parser.parse_args(argv)
    standin = OssStandin(args.root, bucket=args.bucket, access_key_id=args.access_key_id,
                         access_key_secret=args.access_key_secret, port=args.port).start()
    print(f"READY {standin.endpoint}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        standin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
