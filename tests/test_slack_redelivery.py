"""A redelivered event is handled once, on SQLite and on PostgreSQL, even when deliveries race."""

from __future__ import annotations

import concurrent.futures

from bot.state.dedupe import EventLog
from bot.threads import slack_origin
from runners.queue import Requester
from tests.slack_fixtures import bot, bot_settings, runtime, slack, wait_job
from tests.slack_signing import CHANNEL_ID, HUMAN_USER_ID, message_event

__all__ = ["bot", "bot_settings", "runtime", "slack"]  # fixtures (db_url: both engines, from conftest)


def test_racing_claims_of_one_event_id_let_exactly_one_through(store) -> None:
    logs = [EventLog(store) for _ in range(4)]  # as if four processes shared the database
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        wins = list(pool.map(lambda i: logs[i % 4].first_delivery("Ev0RACE0001"), range(16)))
    assert wins.count(True) == 1
    assert logs[0].first_delivery("Ev0RACE0002") is True
    logs[0].forget_old(older_than=-1)  # everything is old now
    assert logs[1].first_delivery("Ev0RACE0001") is True


def test_a_thread_reply_redelivered_over_http_queues_one_eval(bot) -> None:
    job = bot.runtime.queue.submit_train(
        preset="tiny", requester=Requester(user=HUMAN_USER_ID, origin=slack_origin(CHANNEL_ID))
    )
    ts = bot.post_job_message(job)
    bot.runtime.start(web=False)
    wait_job(bot.runtime, job.id)
    bot.runtime.worker.stop()
    reply = bot.slack.add_message(CHANNEL_ID, "eval", thread_ts=ts)
    event = message_event("eval", ts=reply["ts"], thread_ts=ts)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        results = list(
            pool.map(lambda n: bot.event(event, event_id="Ev0REDELIV1", retry_num=n or None), range(3))
        )
    assert [r.status for r in results] == [200, 200, 200]
    bot.wait_ephemeral()
    bot.reply(ts, "status")
    bot.wait_ephemeral(count=2)
    assert [j.kind for j in bot.runtime.store.list_jobs(newest_first=False)] == ["train", "eval"]
