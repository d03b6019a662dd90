"""The buttons on a job's message, clicked as Slack sends the click (signed block_actions)."""

from __future__ import annotations

from bot.render import (
    ACTION_CANCEL,
    ACTION_DEPLOY,
    ACTION_EVAL,
    ACTION_EXPORT,
    ACTION_RESUME,
    ACTION_UNDEPLOY,
)
from bot.threads import asked_in, channel_of, root_ts, slack_origin
from runners.queue import Requester
from tests.slack_fixtures import (
    ADMIN_ID,
    OTHER_USER_ID,
    OUTSIDER_ID,
    bot,
    bot_settings,
    db_url,
    runtime,
    slack,
    wait_job,
)
from tests.slack_signing import CHANNEL_ID, HUMAN_USER_ID, new_trigger_id

__all__ = ["bot", "bot_settings", "db_url", "runtime", "slack"]  # fixtures


def train(bot, **pairs: str):
    return bot.runtime.queue.submit_train(
        preset="tiny", pairs=pairs, requester=Requester(user=HUMAN_USER_ID, origin=slack_origin(CHANNEL_ID))
    )


def test_cancel_on_a_queued_job_by_its_owner_cancels_it(bot) -> None:
    job = train(bot)
    message = bot.job_message(job)
    assert bot.click(message, ACTION_CANCEL).status == 200
    answer = bot.wait_response()
    assert answer["response_type"] == "ephemeral" and answer["replace_original"] is False
    assert bot.runtime.store.get(job.id).state == "cancelled"
    # The message's buttons follow the state: a cancelled train job offers Resume.
    message = bot.job_message(job)
    assert bot.click(message, ACTION_RESUME).status == 200
    assert "is queued again" in bot.wait_response(2)["text"]
    assert bot.runtime.store.get(job.id).state == "queued"


def test_cancel_by_someone_else_is_refused_unless_an_admin(bot) -> None:
    job = train(bot)
    message = bot.job_message(job)
    bot.click(message, ACTION_CANCEL, user=OTHER_USER_ID)
    assert "or an admin may cancel #" in bot.wait_response()["text"]
    bot.click(message, ACTION_CANCEL, user=OUTSIDER_ID)
    assert "or an admin may cancel #" in bot.wait_response(2)["text"]
    assert bot.runtime.store.get(job.id).state == "queued"
    bot.click(message, ACTION_CANCEL, user=ADMIN_ID)
    bot.wait_response(3)
    assert bot.runtime.store.get(job.id).state == "cancelled"


def test_eval_export_deploy_buttons_of_a_finished_job_queue_into_its_thread_once(bot) -> None:
    job = train(bot)
    bot.post_job_message(job)
    bot.runtime.start(web=False)
    assert wait_job(bot.runtime, job.id).state == "succeeded"
    bot.runtime.worker.stop()  # keep the new jobs queued
    message = bot.job_message(job)
    trigger = new_trigger_id()
    bot.click(message, ACTION_EVAL, trigger_id=trigger)
    bot.click(message, ACTION_EVAL, trigger_id=trigger)  # a repeated click payload
    bot.click(message, ACTION_EXPORT)
    bot.click(message, ACTION_DEPLOY)
    bot.wait_response(4)
    children = [j for j in bot.runtime.store.list_jobs(newest_first=False) if j.parent_id == job.id]
    assert sorted(j.kind for j in children) == ["deploy", "eval", "export"]  # clicks answered concurrently
    root = root_ts(bot.runtime.store, bot.runtime.store.get(job.id))
    assert all((channel_of(c), asked_in(c), c.user) == (CHANNEL_ID, root, HUMAN_USER_ID) for c in children)
    assert sum("It reports in" in r["text"] for r in bot.responses()) == 4


def test_an_outsider_clicking_eval_is_refused_and_nothing_is_queued(bot) -> None:
    job = train(bot)
    bot.post_job_message(job)
    bot.runtime.start(web=False)
    wait_job(bot.runtime, job.id)
    bot.click(bot.job_message(job), ACTION_EVAL, user=OUTSIDER_ID)
    assert "Sorry, you may not start jobs here" in bot.wait_response()["text"]
    assert len(bot.runtime.store.list_jobs()) == 1


def test_undeploy_on_a_serving_deployment_stops_it(bot) -> None:
    job = train(bot)
    bot.post_job_message(job)
    bot.runtime.start(web=False)
    wait_job(bot.runtime, job.id)
    bot.runtime.worker.stop()
    deployment = bot.runtime.queue.submit_deploy(
        job.id, requester=Requester(user=HUMAN_USER_ID, origin=slack_origin(CHANNEL_ID))
    )
    # As if it came up: the button is only on a serving deployment's message.
    bot.runtime.store.update(deployment.id, state="serving", port=1, url="http://127.0.0.1:1/v1")
    message = bot.job_message(deployment)
    bot.click(message, ACTION_UNDEPLOY, user=OTHER_USER_ID)
    assert "or an admin may cancel #" in bot.wait_response()["text"]
    bot.click(message, ACTION_UNDEPLOY)
    assert "is stopping" in bot.wait_response(2)["text"]
    assert bot.runtime.store.get(deployment.id).cancel_requested
