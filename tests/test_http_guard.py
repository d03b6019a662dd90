"""Forged, malformed and oversized requests to `/slack/events` get 400/401/413, never 500, and
cost a bounded amount of work: the size and the signature are checked before the body is parsed."""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import logging
import time
from urllib.parse import urlencode, urlparse

import pytest
from slack_bolt import App
from slack_bolt.authorization import AuthorizeResult

from bot import http_guard
from bot.serve import EVENTS_PATH, asgi_app
from tests.slack_signing import (
    SIGNING_SECRET,
    SignedRequest,
    post,
    serve_asgi,
    sign,
    signature,
    signed_slash_command,
    slash_command_payload,
    stale_timestamp,
)

FORM = "application/x-www-form-urlencoded"


@pytest.fixture(scope="module")
def url():
    # A fixed authorization: no Web API call (auth.test) on the first request.
    result = AuthorizeResult(enterprise_id=None, team_id="T0TUNEBOT", bot_token="xoxb-test",
                             bot_id="B0TEST", bot_user_id="U0TEST")
    app = App(signing_secret=SIGNING_SECRET, authorize=lambda **_: result)

    @app.command("/tune")
    def tune(ack):
        ack("ok")

    with serve_asgi(asgi_app(app)) as base:
        yield base + EVENTS_PATH


def _with_headers(request: SignedRequest, **changes: str | None) -> SignedRequest:
    headers = dict(request.headers)
    for name, value in changes.items():
        header = name.replace("_", "-")
        headers.pop(header, None)
        if value is not None:
            headers[header] = value
    return SignedRequest(request.body, headers)


def malformed_requests() -> list[tuple[str, SignedRequest, set[int]]]:
    """(what, request, acceptable statuses): a generated corpus of forged and broken deliveries."""
    good_body = urlencode(slash_command_payload("jobs")).encode()
    now = int(time.time())
    cases: list[tuple[str, SignedRequest, set[int]]] = []
    timestamps = ["abc", "1e9", "0x10", "", " ", "-1", "１２３", "9" * 30, str(now) + ".5", "NaN",
                  str(stale_timestamp()), str(now + 3600), "0", "\u00a0" + str(now)]
    for ts in timestamps:
        for ctype in (FORM, "application/json"):
            req = SignedRequest(good_body, {"Content-Type": ctype, "X-Slack-Request-Timestamp": ts,
                                            "X-Slack-Signature": signature(good_body, SIGNING_SECRET, now)})
            cases.append((f"timestamp {ts!r}", req, {400, 401}))
    signatures = [None, "", "v0=", "v1=" + "0" * 64, "v0=" + "0" * 64, "v0=" + "A" * 64, "v0=xyz",
                  "v0=" + "0" * 63, "v0=" + "0" * 65, "sha256=abc", "v0=" + "ü" * 64]
    for sig in signatures:
        for ts in (str(now), None):
            changes = {"X_Slack_Signature": sig}
            if ts is None:
                changes["X_Slack_Request_Timestamp"] = None
            cases.append((f"signature {sig!r}", _with_headers(sign(good_body, FORM), **changes), {400, 401}))
    for secret in ("wrong", "", SIGNING_SECRET + "x", SIGNING_SECRET.upper()):
        cases.append((f"secret {secret!r}", signed_slash_command("jobs", secret=secret or "-"), {401}))
    # Tampered after signing: flipped, truncated, extended bodies.
    signed = sign(good_body, FORM)
    for i in range(0, len(good_body), max(1, len(good_body) // 60)):
        flipped = bytearray(good_body)
        flipped[i] ^= 0x01
        cases.append((f"byte {i} flipped", SignedRequest(bytes(flipped), signed.headers), {400, 401}))
        cases.append((f"truncated at {i}", SignedRequest(good_body[:i], signed.headers), {400, 401}))
    for extra in (b"&x=1", b"\x00", b"\xff\xfe", b"%", b"&payload=" + b"[" * 5000):
        cases.append((f"extended {extra[:8]!r}", SignedRequest(good_body + extra, signed.headers), {401}))
    # Wrong content types, even when signed.
    for ctype in (None, "text/plain", "multipart/form-data; boundary=x", "application/xml", "", "json",
                  "application/x-www-form-urlencoded-evil"):
        cases.append((f"content type {ctype!r}", _with_headers(sign(good_body, FORM), Content_Type=ctype),
                      {400}))
    # Signed, but not something Bolt can read: deep JSON, broken JSON, bytes that are not text.
    deep = b"[" * 100_000 + b"]" * 100_000
    bodies = [deep, b"{" * 5000, b'{"type": ', b"\xff\xfe\xfd", b"[]", b"null", b"1e999", b'"x"',
              b'{"type":"event_callback","event":' + b"[" * 50_000 + b"]" * 50_000 + b"}"]
    for body in bodies:
        cases.append((f"signed JSON {body[:10]!r}", sign(body, "application/json"), {400, 404}))
    for payload in ("[" * 50_000, "{", "not json", "\x00", "[]", "null", '{"type": 1}'):
        body = urlencode({"payload": payload}).encode()
        cases.append((f"signed payload {payload[:10]!r}", sign(body, FORM), {400, 404}))
    # Unsigned bodies of every size up to the cap and past it.
    for size in (0, 1, 1024, http_guard.MAX_BODY_BYTES, http_guard.MAX_BODY_BYTES + 1, 16 * 2**20):
        expected = {413} if size > http_guard.MAX_BODY_BYTES else {401}
        cases.append((f"unsigned {size} bytes", SignedRequest(b"a" * size, {"Content-Type": FORM}), expected))
    # Replays of a valid request with one header duplicated in spirit: a signature for another timestamp.
    for delta in itertools.chain(range(-5, 6), (-301, 301, 10**6)):
        request = sign(good_body, FORM, timestamp=now + delta)
        headers = dict(request.headers, **{"X-Slack-Request-Timestamp": str(now + delta + 1)})
        cases.append((f"timestamp moved by {delta}", SignedRequest(good_body, headers), {401}))
    # Header values go on the wire as raw UTF-8 bytes (http.client sends latin-1 only).
    return [(what, SignedRequest(r.body, {k: v.encode().decode("latin-1") for k, v in r.headers.items()}), ok)
            for what, r, ok in cases]


def _send(url: str, request: SignedRequest) -> int:
    """POST and return the status, also when the server answers before the whole body is sent."""
    target = urlparse(url)
    conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
    try:
        conn.putrequest("POST", target.path)
        for name, value in request.headers.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(request.body)))
        conn.endheaders()
        try:
            conn.send(request.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused from its announced length: the answer is already there
        return conn.getresponse().status
    finally:
        conn.close()


def test_the_corpus_is_large_enough():
    assert len(malformed_requests()) >= 200


def test_forged_and_malformed_requests_get_4xx_never_500_and_one_log_line_each(url, caplog):
    caplog.set_level(logging.WARNING, logger="bot.serve")
    corpus = malformed_requests()
    wrong = []
    for what, request, expected in corpus:
        status = _send(url, request)
        if status not in expected:
            wrong.append((what, status))
    assert wrong == []
    refusals = [r for r in caplog.records if r.name == "bot.serve" and "refused a request" in r.getMessage()]
    assert len(refusals) >= len(corpus) - 30  # Bolt's own 404s for signed-but-empty payloads log nothing
    for record in refusals:
        text = record.getMessage()
        assert "\n" not in text and len(text) < 200  # one line, never the body
        assert "payload" not in text and "jobs" not in text


def test_a_valid_signed_request_still_goes_through(url):
    result = post(url, signed_slash_command("jobs"))
    assert result.status == 200


def test_a_huge_body_is_refused_from_its_announced_length_without_being_read(url):
    target = urlparse(url)
    conn = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
    # Announce 16 MiB and send only the headers: the answer must come before any body byte.
    conn.putrequest("POST", target.path)
    conn.putheader("Content-Type", FORM)
    conn.putheader("Content-Length", str(16 * 2**20))
    conn.endheaders()
    assert conn.getresponse().status == 413
    conn.close()


def test_a_chunked_body_past_the_cap_stops_being_read_there():
    consumed = []

    async def endless():
        for i in itertools.count():
            consumed.append(i)
            yield b"x" * 4096

    with pytest.raises(http_guard.BodyTooLarge):
        asyncio.run(http_guard.read_capped(endless()))
    # Bounded work: no more chunks read than the cap allows, plus the one that crossed it.
    assert len(consumed) == http_guard.MAX_BODY_BYTES // 4096 + 1


def test_the_head_checks_name_each_problem():
    now = 1_700_000_000
    good = {"content-type": FORM, "x-slack-request-timestamp": str(now),
            "x-slack-signature": "v0=" + "0" * 64}
    assert http_guard.check_head(good, now=now) is None
    assert http_guard.check_head({**good, "x-slack-request-timestamp": "1e9"}, now=now).status == 400
    assert http_guard.check_head({**good, "x-slack-request-timestamp": str(now - 301)}, now=now).status == 401
    assert http_guard.check_head({**good, "content-length": "99999999"}, now=now).status == 413
    assert http_guard.check_head({**good, "content-type": "text/plain"}, now=now).status == 400
    assert json.dumps(http_guard.STATUS_TEXT)  # every status has its short text


def test_a_sender_leaving_mid_body_is_one_log_line_not_an_exception(url, caplog):
    import socket

    caplog.set_level(logging.WARNING)
    target = urlparse(url)
    head = (f"POST {target.path} HTTP/1.1\r\nHost: x\r\nContent-Type: {FORM}\r\nContent-Length: 5000\r\n"
            f"X-Slack-Request-Timestamp: {int(time.time())}\r\nX-Slack-Signature: v0={'0' * 64}\r\n\r\n")
    with socket.create_connection((target.hostname, target.port), timeout=5) as sock:
        sock.sendall(head.encode() + b"token=abc")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any("client left" in r.getMessage() for r in caplog.records):
        time.sleep(0.05)
    assert any("client left" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
