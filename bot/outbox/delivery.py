"""Delivery of tunebot's Slack messages: posts, edits, uploads and ephemerals that survive Slack's limits.

Every message goes through an outbox table in the tunebot database before it is sent, so a post
Slack refuses for now (rate limits beyond what the WebClient's retry handlers absorb, 5xx, the
network gone, tunebot restarted) is kept and sent later, never dropped. Messages travel in *lanes*,
one per thread (and one per channel for top-level posts): a lane sends its messages strictly in
order, so a later post of a thread waits for an earlier one that failed. Edits of one message
have a lane of their own and are throttled to one `chat.update` per `edit_every` seconds, the
latest content winning.

A message may be given a `key` (e.g. `job:12:root`): later posts can then go into its thread
(`thread_key=`) and edits can target it (`update(..., key=)`) before Slack has given it a ts; they
wait for it. Sending a key twice (a post, an upload, an ephemeral) sends it once.

One row is sent by one sender at a time: a sender claims it with a conditional UPDATE (atomic on
SQLite and PostgreSQL), so a second Delivery on the same database never sends it twice; a claim
left by a crashed process expires after `CLAIM_SECONDS`.

Logs name the method, channel, Slack's error code and the outbox id, never a message's content
or the token. A message that shows a secret (a deployment's API key) is not stored at all: the
outbox keeps a reference (`render=`) that a renderer registered with `add_renderer` turns into the
message when it is sent; and an ephemeral's content is cleared once it is sent or failed for good.
"""

from __future__ import annotations

import base64
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slack_sdk import WebClient
from sqlalchemy import JSON, BigInteger, Column, Integer, Text, delete, or_, update
from sqlmodel import Field, Session, select

from bot.state.tables import BotModel, BotTables, ensure_tables
from runners.recovery.outage import Outage, is_database_error
from runners.store import Store

from . import landed
from .slack import CONTENT_ERRORS, UNCERTAIN_ERRORS, Failure, classify, ensure_retry_handlers

log = logging.getLogger(__name__)



# Makes a message from the reference it was queued with (`Delivery.ephemeral(render=...)`).
Renderer = Callable[[dict[str, Any]], "dict[str, Any] | None"]

PENDING, SENT, FAILED = "pending", "sent", "failed"
POST, UPDATE, UPLOAD, EPHEMERAL = "post", "update", "upload", "ephemeral"

CLAIM_SECONDS = 120.0  # a claim older than this belongs to a sender that died
FALLBACK_TEXT_MAX = 3000
UPLOAD_INLINE_MAX = 16 * 1024 * 1024  # files up to this are copied into the outbox when queued

MAYBE_SENT = "_maybe_sent"  # in a post's payload: an attempt may have landed; look before sending


class OutboxItem(BotModel, table=True):
    """One Slack call waiting to be made (or, for keyed posts, made: its ts is kept)."""

    __tablename__ = "slack_outbox"

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    )
    action: str  # post | update | upload | ephemeral
    channel: str = Field(index=True)
    lane: str = Field(index=True)  # rows of one lane are sent in id order
    thread_ts: str | None = None  # where it goes; None: top level, or its thread's root is not sent yet
    ref_key: str | None = Field(default=None, index=True)  # the keyed message it waits for
    key: str | None = Field(default=None, sa_column=Column(Text, unique=True, nullable=True))
    target_ts: str | None = None  # update: the message edited
    ts: str | None = Field(default=None, index=True)  # what Slack answered (keyed posts)
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    state: str = Field(default=PENDING, index=True)
    attempts: int = 0
    next_at: float = 0.0
    claimed_by: str | None = None
    claimed_until: float | None = None
    error: str | None = None
    created_at: float = Field(default_factory=time.time)
    sent_at: float | None = None


OUTBOX_TABLES = BotTables("outbox", (OutboxItem.__table__,))


def _edit_lane(channel: str, ts: str | None, key: str | None) -> str:
    return f"e:k:{key}" if key else f"e:t:{channel}:{ts}"


class Delivery:
    """Posts, edits, uploads and ephemerals through one WebClient and the outbox table.

    Public methods may be called from any thread; they try to send at once (when the lane is
    free) and return what Slack answered, or None when the message waits in the outbox.
    """

    def __init__(self, client: WebClient, store: Store, *, edit_every: float = 3.0,
                 retry_base: float = 2.0, retry_max: float = 300.0):
        self.client = ensure_retry_handlers(client)
        self.store = store
        self.engine = store.engine
        self.edit_every = edit_every
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.sender_id = uuid.uuid4().hex[:12]
        ensure_tables(store.engine, OUTBOX_TABLES)
        self._lock = threading.Lock()
        self._edit_lock = threading.Lock()  # one update() deciding where its content goes at a time
        self._last_edit: dict[str, float] = {}  # edit lane -> when its last chat.update went out
        self._listeners: list[Callable[[str, str, str], None]] = []
        self._renderers: dict[str, Renderer] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outage = Outage(log, "Slack outbox")

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> Delivery:
        """Drain the outbox in a background thread (what an earlier run left there too)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="tunebot-delivery", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def on_sent(self, callback: Callable[[str, str, str], None]) -> None:
        """Call `callback(key, channel, ts)` when a keyed post is sent (also one sent later)."""
        self._listeners.append(callback)

    def add_renderer(self, name: str, renderer: Renderer) -> None:
        """Messages queued with `render={"name": name, ...}` are made by `renderer(ref)` when sent
        (None: there is nothing to send any more)."""
        self._renderers[name] = renderer

    # --- what callers send --------------------------------------------------------------
    def post(self, channel: str, *, text: str, blocks: list[dict[str, Any]] | None = None,
             thread_ts: str | None = None, metadata: dict[str, Any] | None = None,
             key: str | None = None, thread_key: str | None = None) -> str | None:
        """chat.postMessage, in order with the thread's other posts. Returns the ts if sent now."""
        if key:
            known = self.find(key)
            if known is not None:
                return known.ts
        payload = {"text": text, "blocks": blocks, "metadata": metadata}
        row = self._enqueue(POST, channel, payload, thread_ts=thread_ts, thread_key=thread_key, key=key)
        if row is None:
            found = self.find(key) if key else None
            return found.ts if found else None
        sent = self._after_enqueue(row)
        return sent.ts if sent is not None else None

    def ephemeral(self, channel: str, user: str, *, text: str = "",
                  blocks: list[dict[str, Any]] | None = None, thread_ts: str | None = None,
                  thread_key: str | None = None, key: str | None = None,
                  render: dict[str, Any] | None = None) -> str | None:
        """chat.postEphemeral to `user`, in order with the thread's posts; its message_ts if sent now.
        Given a `key`, it is shown once however often it is asked for. Given `render` (a reference
        such as `{"name": "deploy_key", "job_id": 7}`), text and blocks are made when it is sent."""
        if key:
            known = self.find(key)
            if known is not None:
                return known.ts
        payload: dict[str, Any] = {"user": user, "text": text, "blocks": blocks}
        if render is not None:
            if render.get("name") not in self._renderers:
                raise ValueError(f"no renderer named {render.get('name')!r}")
            payload = {"user": user, "render": render}
        row = self._enqueue(EPHEMERAL, channel, payload, thread_ts=thread_ts, thread_key=thread_key, key=key)
        sent = self._after_enqueue(row) if row is not None else None
        return sent.ts if sent is not None else None

    def upload(self, channel: str, thread_ts: str | None = None, *, path: str | Path | None = None,
               content: str | bytes | None = None, filename: str, title: str,
               thread_key: str | None = None, key: str | None = None) -> str | None:
        """files_upload_v2 into the thread, in order with its posts. Returns the file id if sent now.

        A file given by path is copied into the outbox when queued (up to 16 MiB), so what is
        uploaded is what the file held now; FileNotFoundError if there is no such file. Given a
        `key`, it is uploaded once however often it is asked for.
        """
        if (path is None) == (content is None):
            raise ValueError("upload takes a path or content, not both or neither")
        if key:
            known = self.find(key)
            if known is not None:
                return known.ts
        payload: dict[str, Any] = {"filename": filename, "title": title}
        if path is not None:
            file = Path(path)
            size = file.stat().st_size  # FileNotFoundError for the caller
            if size <= UPLOAD_INLINE_MAX:
                payload["content_b64"] = base64.b64encode(file.read_bytes()).decode("ascii")
            else:
                payload["path"] = str(file)
        elif isinstance(content, bytes):
            payload["content_b64"] = base64.b64encode(content).decode("ascii")
        else:
            payload["content"] = content
        row = self._enqueue(UPLOAD, channel, payload, thread_ts=thread_ts, thread_key=thread_key, key=key)
        sent = self._after_enqueue(row) if row is not None else None
        return sent.ts if sent is not None else None

    def update(self, channel: str, ts: str | None = None, *, text: str,
               blocks: list[dict[str, Any]] | None = None, key: str | None = None,
               metadata: dict[str, Any] | None = None) -> bool:
        """chat.update of a message (by ts, or by the key it was posted with), coalesced: at most
        one call per message every `edit_every` seconds, the latest content winning. True if
        the edit went out now."""
        if not ts and not key:
            raise ValueError("update needs the message's ts or key")
        payload = {"text": text, "blocks": blocks, "metadata": metadata}
        now = time.time()
        with self._edit_lock, self._session() as s:
            if not key and ts:
                keyed = _keyed_at(s, channel, ts)
                key = keyed.key if keyed is not None else None
            lane = _edit_lane(channel, ts, key)
            waiting = s.exec(select(OutboxItem.id).where(
                OutboxItem.lane == lane, OutboxItem.state == PENDING).order_by(OutboxItem.id.desc())).first()
            if waiting is not None:
                # The newest edit waiting (and not being sent this moment) takes the new content.
                merged = s.exec(update(OutboxItem).values(payload=payload).where(
                    OutboxItem.id == waiting, OutboxItem.state == PENDING, _unclaimed(now)))
                s.commit()
                if merged.rowcount == 1:
                    self._wake.set()
                    return False
            elif key:
                # The message itself still waits: it goes out with this content, no edit needed. (Not
                # while an edit waits for it: that edit, older than this content, would land last.)
                merged = s.exec(update(OutboxItem).where(
                    OutboxItem.key == key, OutboxItem.state == PENDING, OutboxItem.action == POST,
                    _unclaimed(now)).values(payload=payload))
                s.commit()
                if merged.rowcount == 1:
                    self._wake.set()
                    return False
            with self._lock:
                due = max(now, self._last_edit.get(lane, -math.inf) + self.edit_every)
            row = OutboxItem(action=UPDATE, channel=channel, lane=lane, ref_key=key, target_ts=ts,
                             payload=payload, next_at=due)
            s.add(row)
            s.commit()
            s.refresh(row)
        if due > now:
            self._wake.set()
            return False
        sent = self._run_lane(lane, until=row.id)
        return sent is not None and sent.id == row.id

    # --- reading the outbox -------------------------------------------------------------
    def find(self, key: str) -> OutboxItem | None:
        """The keyed message (pending, sent or failed), or None if it was never posted."""
        with self._session() as s:
            return s.exec(select(OutboxItem).where(OutboxItem.key == key)).first()

    def sent_ts(self, key: str) -> str | None:
        row = self.find(key)
        return row.ts if row is not None and row.state == SENT else None

    def pending(self, channel: str | None = None) -> list[OutboxItem]:
        """What waits to be sent, oldest first."""
        query = select(OutboxItem).where(OutboxItem.state == PENDING)
        if channel:
            query = query.where(OutboxItem.channel == channel)
        with self._session() as s:
            return list(s.exec(query.order_by(OutboxItem.id)).all())

    def failed(self) -> list[OutboxItem]:
        """Messages Slack refused for good (their content was wrong, or their target is gone)."""
        with self._session() as s:
            query = select(OutboxItem).where(OutboxItem.state == FAILED).order_by(OutboxItem.id)
            return list(s.exec(query).all())

    def flush(self, timeout: float = 10.0) -> bool:
        """Send what is due, waiting up to `timeout` for rows in back-off; True when nothing is left."""
        deadline = time.monotonic() + timeout
        while True:
            wait = self.drain()
            if not self.pending():
                return True
            if time.monotonic() + min(wait, 0.05) >= deadline:
                return False
            time.sleep(min(max(wait, 0.02), max(0.0, deadline - time.monotonic())))

    # --- the outbox machinery -----------------------------------------------------------
    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def _enqueue(self, action: str, channel: str, payload: dict[str, Any], *, thread_ts: str | None,
                 thread_key: str | None, key: str | None = None) -> OutboxItem | None:
        """Store the message in its lane; None if a message with this key already exists."""
        from sqlalchemy.exc import IntegrityError

        thread_ts = thread_ts or None
        with self._session() as s:
            if thread_key:
                ref = s.exec(select(OutboxItem).where(OutboxItem.key == thread_key)).first()
                if ref is None:
                    raise ValueError(f"no message was posted with key {thread_key!r}")
                lane = ref.lane
                thread_ts = ref.thread_ts or (ref.ts if ref.state == SENT else None)
            elif thread_ts:
                # A thread whose root (or a reply in it) was posted with a key: the key's lane.
                ref = _keyed_at(s, channel, thread_ts)
                lane = ref.lane if ref is not None else f"t:{channel}:{thread_ts}"
                if ref is not None and ref.thread_ts:
                    thread_ts = ref.thread_ts  # a reply's ts: its thread is the root's
            else:
                lane = f"k:{key}" if key else f"c:{channel}"
            row = OutboxItem(action=action, channel=channel, lane=lane, thread_ts=thread_ts,
                             ref_key=thread_key if not thread_ts else None, key=key, payload=payload,
                             next_at=time.time())
            s.add(row)
            try:
                s.commit()
            except IntegrityError:  # the same key posted at the same moment elsewhere
                s.rollback()
                if key:
                    return None
                raise
            s.refresh(row)
        return row

    def _after_enqueue(self, row: OutboxItem) -> OutboxItem | None:
        sent = self._run_lane(row.lane, until=row.id)
        if sent is not None and sent.id == row.id:
            return sent
        self._wake.set()
        return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                wait = self.drain()
                self._outage.ok()
            except Exception as exc:  # keep delivering; the database may be back next round
                if is_database_error(exc):  # one line per outage, not a traceback a second
                    wait = self._outage.failed(exc)
                else:
                    log.exception("draining the Slack outbox failed")
                    wait = 1.0
            self._wake.wait(wait)

    def drain(self) -> float:
        """One pass: send every lane's due messages in order. Returns seconds until the next is due."""
        now = time.time()
        with self._session() as s:
            rows = s.exec(select(OutboxItem.id, OutboxItem.lane, OutboxItem.next_at, OutboxItem.claimed_until)
                          .where(OutboxItem.state == PENDING).order_by(OutboxItem.id)).all()
        heads: dict[str, tuple[float, float | None]] = {}
        for _id, lane, next_at, claimed_until in rows:
            heads.setdefault(lane, (next_at, claimed_until))
        wait = 1.0  # rows other processes add are noticed within this
        for lane, (next_at, claimed_until) in heads.items():
            if claimed_until and claimed_until > now:
                wait = min(wait, claimed_until - now)
                continue
            if next_at > now:
                wait = min(wait, next_at - now)
                continue
            self._run_lane(lane)
            head = self._head(lane)
            if head is not None:
                due_in = head.next_at - time.time()
                # Due yet not sent: it waits for its thread's root (a send wakes us), or another sender.
                wait = min(wait, due_in if due_in > 0 else 0.25)
        return max(0.02, wait)

    def _head(self, lane: str) -> OutboxItem | None:
        with self._session() as s:
            return s.exec(select(OutboxItem).where(OutboxItem.lane == lane, OutboxItem.state == PENDING)
                          .order_by(OutboxItem.id)).first()

    def _run_lane(self, lane: str, until: int | None = None) -> OutboxItem | None:
        """Send the lane's messages in order while they are due; stop after row `until` (if given).
        Returns the last row sent (None if none was)."""
        last_sent: OutboxItem | None = None
        while True:
            head = self._head(lane)
            now = time.time()
            if head is None or head.next_at > now or (head.claimed_until and head.claimed_until > now):
                return last_sent
            if until is not None and head.id > until:
                return last_sent
            if head.action == UPDATE:
                with self._lock:
                    due = self._last_edit.get(lane, -math.inf) + self.edit_every
                if due > now:
                    self._set(head.id, next_at=due)
                    return last_sent
            if not self._resolve(head):
                return last_sent
            # A claim that ran out unreleased (its sender died or hung mid-call), or an answer lost
            # on the way back: Slack may have this post already.
            uncertain = (head.claimed_by is not None or (head.error or "") in UNCERTAIN_ERRORS
                         or bool(head.payload.get(MAYBE_SENT)))
            row = self._claim(head.id)
            if row is None:
                return last_sent
            if self._send(row, uncertain=uncertain):
                last_sent = row
                continue
            head = self._head(lane)
            if head is not None and head.id == row.id and head.next_at > time.time():
                return last_sent  # in back-off: the lane waits for it

    def _resolve(self, row: OutboxItem) -> bool:
        """Fill in the thread (or edited message) a row waits for; False if it is not known yet."""
        known = row.target_ts if row.action == UPDATE else row.thread_ts
        if not row.ref_key or known:
            return True
        with self._session() as s:
            ref = s.exec(select(OutboxItem).where(OutboxItem.key == row.ref_key)).first()
        if ref is not None and ref.state == PENDING:
            return False
        if ref is None or ref.state == FAILED:
            if row.action == UPDATE:
                self._set(row.id, state=FAILED, error="the message it edits was never posted")
                return True  # the lane moves on
            # The thread's root could not be posted: the message goes to the channel instead.
            log.warning("outbox #%s: thread root %s was never posted; posting at top level",
                        row.id, row.ref_key)
            self._set(row.id, ref_key=None)
            return True
        if row.action == UPDATE:
            self._set(row.id, target_ts=ref.ts)
            row.target_ts = ref.ts
        else:
            self._set(row.id, thread_ts=ref.thread_ts or ref.ts)
            row.thread_ts = ref.thread_ts or ref.ts
        return True

    def _claim(self, row_id: int) -> OutboxItem | None:
        now = time.time()
        with self._session() as s:
            result = s.exec(update(OutboxItem).where(OutboxItem.id == row_id, OutboxItem.state == PENDING,
                                                     _unclaimed(now))
                            .values(claimed_by=self.sender_id, claimed_until=now + CLAIM_SECONDS))
            s.commit()
            if result.rowcount != 1:
                return None
            return s.get(OutboxItem, row_id)

    def _set(self, row_id: int, **values: Any) -> None:
        with self._session() as s:
            s.exec(update(OutboxItem).where(OutboxItem.id == row_id).values(**values))
            s.commit()

    def _release(self, row_id: int, **values: Any) -> None:
        """Record a failed attempt and give the claim up, if this sender still holds it."""
        with self._session() as s:
            s.exec(update(OutboxItem).where(OutboxItem.id == row_id, OutboxItem.claimed_by == self.sender_id)
                   .values(claimed_by=None, claimed_until=None, **values))
            s.commit()

    def _send(self, row: OutboxItem, *, uncertain: bool = False) -> bool:
        """Make the row's call; record the outcome. True if Slack took it."""
        if row.state != PENDING or row.claimed_by != self.sender_id:
            return False
        try:
            with self._claim_kept(row.id):
                answer = None
                if uncertain and row.action == POST and row.key:
                    answer = landed.find_landed(self.client, row.channel, row.thread_ts, row.key,
                                                oldest=row.created_at)
                    if answer:
                        log.info("Slack post to %s had landed already; not sent again (outbox #%s)",
                                 row.channel, row.id)
                if not answer:
                    answer = self._call(row)
        except Exception as exc:  # every failure is recorded; none escapes to the caller
            failure = classify(exc)
            if row.action == POST and row.key and (uncertain or failure.code in UNCERTAIN_ERRORS):
                # Kept until it is known: a later failure of another kind must not make it certain.
                row.payload = {**row.payload, MAYBE_SENT: True}
            return self._failed(row, failure)
        return self._record_sent(row, answer)

    def _claim_kept(self, row_id: int):
        """While a call runs, renew the row's claim (a slow call must not let another sender in)."""
        return _ClaimKeeper(self, row_id)

    def _renew_claim(self, row_id: int) -> bool:
        with self._session() as s:
            result = s.exec(update(OutboxItem).where(
                OutboxItem.id == row_id, OutboxItem.claimed_by == self.sender_id,
                OutboxItem.state == PENDING).values(claimed_until=time.time() + CLAIM_SECONDS))
            s.commit()
            return result.rowcount == 1

    def _record_sent(self, row: OutboxItem, answer: str | None) -> bool:
        now = time.time()
        if row.action == UPDATE:
            with self._lock:
                self._last_edit[row.lane] = now
        mine = (OutboxItem.id == row.id, OutboxItem.claimed_by == self.sender_id)
        with self._session() as s:
            if row.key:
                result = s.exec(update(OutboxItem).where(*mine).values(
                    state=SENT, ts=answer, sent_at=now, payload={}, claimed_by=None, claimed_until=None,
                    error=None))
            else:
                result = s.exec(delete(OutboxItem).where(*mine))
            s.commit()
        if result.rowcount != 1:
            # Only the claim holder records a row: this sender lost it (its claim ran out), and
            # whoever holds it now decides, after looking in Slack, what was sent.
            log.warning("Slack %s to %s went out after this sender lost its claim (outbox #%s)",
                        row.action, row.channel, row.id)
            return False
        row.state, row.ts, row.sent_at = SENT, answer, now
        if row.key:
            self._wake.set()  # rows waiting for this one to have a ts may go now
        if row.attempts:
            log.info("Slack %s to %s went out after %d failed attempt(s) (outbox #%s)",
                     row.action, row.channel, row.attempts, row.id)
        if row.key and answer:
            for callback in list(self._listeners):
                try:
                    callback(row.key, row.channel, answer)
                except Exception:
                    log.exception("on_sent callback for %s failed", row.key)
        return True

    def _failed(self, row: OutboxItem, failure: Failure) -> bool:
        attempts = row.attempts + 1
        if failure.permanent:
            payload = row.payload
            if row.action == POST and not payload.get("_plain") and failure.code in CONTENT_ERRORS:
                # Try once more as plain text: the words get through even if the layout cannot.
                plain = {"text": (payload.get("text") or " ")[:FALLBACK_TEXT_MAX], "blocks": None,
                         "metadata": None, "_plain": True, MAYBE_SENT: payload.get(MAYBE_SENT, False)}
                log.warning("Slack refused a post to %s (%s); retrying it as plain text (outbox #%s)",
                            row.channel, failure.code, row.id)
                self._release(row.id, payload=plain, attempts=attempts, error=failure.code)
                return False
            log.warning("Slack refused %s to %s for good (%s); kept as failed (outbox #%s)",
                        row.action, row.channel, failure.code, row.id)
            # An ephemeral is one person's: what it said is not kept (it may have been a secret).
            kept = {"user": payload.get("user")} if row.action == EPHEMERAL else payload
            self._release(row.id, state=FAILED, attempts=attempts, error=failure.code, payload=kept)
            return False
        backoff = min(self.retry_max, self.retry_base * 2 ** (attempts - 1))
        delay = max(0.5, failure.retry_after if failure.retry_after is not None else backoff)
        log.warning("Slack %s to %s failed (%s); retrying in %.1f s (outbox #%s, attempt %d)",
                    row.action, row.channel, failure.code, delay, row.id, attempts)
        self._release(row.id, attempts=attempts, error=failure.code, next_at=time.time() + delay,
                      payload=row.payload)
        return False

    def _call(self, row: OutboxItem) -> str | None:
        p = row.payload
        if row.action == POST:
            kwargs: dict[str, Any] = {"channel": row.channel, "text": p.get("text") or " "}
            if p.get("blocks"):
                kwargs["blocks"] = p["blocks"]
            if p.get("metadata"):
                kwargs["metadata"] = p["metadata"]
            if row.key:  # so a sender unsure whether it landed can find it (bot/outbox/landed.py)
                kwargs["metadata"] = landed.with_key(kwargs.get("metadata"), row.key)
            if row.thread_ts:
                kwargs["thread_ts"] = row.thread_ts
            return self.client.chat_postMessage(**kwargs)["ts"]
        if row.action == UPDATE:
            kwargs = {"channel": row.channel, "ts": row.target_ts, "text": p.get("text") or " "}
            if p.get("blocks") is not None:
                kwargs["blocks"] = p["blocks"]
            if p.get("metadata"):
                kwargs["metadata"] = p["metadata"]
            self.client.chat_update(**kwargs)
            return row.target_ts
        if row.action == EPHEMERAL:
            if p.get("render"):
                renderer = self._renderers.get(p["render"].get("name"))
                if renderer is None:
                    raise Failure("no_renderer", permanent=True)
                made = renderer(p["render"])
                if made is None:
                    return None  # nothing to show any more (the deployment stopped)
                p = {**p, **made}
            kwargs = {"channel": row.channel, "user": p["user"], "text": p.get("text") or " "}
            if p.get("blocks"):
                kwargs["blocks"] = p["blocks"]
            if row.thread_ts:
                kwargs["thread_ts"] = row.thread_ts
            return self.client.chat_postEphemeral(**kwargs).get("message_ts")
        if row.action == UPLOAD:
            if "content_b64" in p:
                content: str | bytes = base64.b64decode(p["content_b64"])
            elif "path" in p:
                content = Path(p["path"]).read_bytes()
            else:
                content = p.get("content") or ""
            kwargs = {"channel": row.channel, "content": content, "filename": p["filename"],
                      "title": p.get("title") or p["filename"]}
            if row.thread_ts:
                kwargs["thread_ts"] = row.thread_ts
            answer = self.client.files_upload_v2(**kwargs)
            files = answer.get("files") or []
            return files[0].get("id") if files else None
        raise Failure(f"unknown action {row.action}", permanent=True)


class _ClaimKeeper:
    """Renews a claim every third of CLAIM_SECONDS until the call it guards returns."""

    def __init__(self, delivery: Delivery, row_id: int):
        self.delivery = delivery
        self.row_id = row_id
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._done.wait(CLAIM_SECONDS / 3):
            try:
                if not self.delivery._renew_claim(self.row_id):
                    return
            except Exception:  # the database is away: the claim may run out; the holder check decides
                log.warning("could not renew the claim of outbox #%s", self.row_id)

    def __enter__(self) -> _ClaimKeeper:
        self._thread = threading.Thread(target=self._run, name="tunebot-claim", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()


def _keyed_at(s: Session, channel: str, ts: str) -> OutboxItem | None:
    """The keyed message Slack gave this ts, if tunebot posted it with a key."""
    return s.exec(select(OutboxItem).where(
        OutboxItem.channel == channel, OutboxItem.ts == ts, OutboxItem.key.is_not(None))).first()


def _unclaimed(now: float):
    return or_(OutboxItem.claimed_until.is_(None), OutboxItem.claimed_until < now)
