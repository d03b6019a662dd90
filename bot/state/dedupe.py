"""A redelivered Slack event is handled once.

Slack redelivers an event it thinks was not acknowledged (`X-Slack-Retry-Num` over HTTP,
`retry_attempt` over Socket Mode) with the same `event_id`, and Bolt does not de-duplicate. The
first delivery claims the id with an INSERT guarded by the primary key, atomic on SQLite and
PostgreSQL and across processes; later ones are acknowledged and dropped. Slash commands and
buttons carry a `trigger_id` instead, which the engine uses as the job's `request_key`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from slack_bolt import BoltRequest, BoltResponse
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field

from bot.state.tables import BotModel, BotTables, ensure_tables
from runners.job import now
from runners.store import Store

log = logging.getLogger(__name__)

# Slack gives up redelivering after about an hour; a day of ids is plenty.
KEEP_SECONDS = 24 * 3600


class SeenEvent(BotModel, table=True):
    __tablename__ = "slack_seen_event"

    event_id: str = Field(primary_key=True)
    at: float = Field(default_factory=now, index=True)


SEEN_EVENT_TABLES = BotTables("seen_event", (SeenEvent.__table__,))


def ensure_table(store: Store) -> None:
    ensure_tables(store.engine, SEEN_EVENT_TABLES)


class EventLog:
    """The event ids this bot has handled."""

    def __init__(self, store: Store):
        self.store = store
        self._claims = 0
        ensure_table(store)

    def first_delivery(self, event_id: str) -> bool:
        """True for the first delivery of `event_id` (it is claimed now), False for a redelivery."""
        with self.store.session() as s:
            s.add(SeenEvent(event_id=event_id))
            try:
                s.commit()
            except IntegrityError:
                s.rollback()
                return False
        self._claims += 1
        if self._claims % 500 == 0:
            self.forget_old()
        return True

    def forget_old(self, older_than: float = KEEP_SECONDS) -> None:
        with self.store.session() as s:
            s.exec(delete(SeenEvent).where(SeenEvent.at < now() - older_than))
            s.commit()


def drop_redelivered_events(event_log: EventLog) -> Callable[..., BoltResponse]:
    """A Bolt global middleware: acknowledge a seen event_id without running any listener."""

    def drop_redelivered(req: BoltRequest, resp: BoltResponse, next: Callable[[], None]) -> BoltResponse:
        body = req.body if isinstance(req.body, dict) else {}
        event_id = body.get("event_id") if body.get("type") == "event_callback" else None
        if event_id and not event_log.first_delivery(str(event_id)):
            log.info("dropping a redelivery of %s", event_id)
            return BoltResponse(status=200, body="")
        next()
        return resp

    return drop_redelivered
