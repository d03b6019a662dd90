"""Digest schedules with real APScheduler triggers, on SQLite and PostgreSQL,
posting to the Slack Web API stand-in."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.cron import CronTrigger
from slack_sdk import WebClient
from sqlalchemy import create_engine, func, select

from bot.app import build_app
from bot.outbox.delivery import Delivery
from bot.parsing import parse_command
from bot.schedules import scheduler as schedules
from bot.schedules.command import handle_schedule_command
from bot.schedules.scheduler import LEASE_NAME, Scheduler, digest_table
from bot.schedules.spec import SCHEDULE_SETTINGS_TABLE, ScheduleSettings, parse_schedule, weekday_field
from bot.serve import EVENTS_PATH, asgi_app
from bot.settings import BotSettings
from bot.state.leases import Lease
from bot.threads import slack_origin
from runners.errors import UserError
from runners.hardware import Hardware
from runners.job import Job
from runners.runtime import Runtime
from tests.slack_signing import (
    CHANNEL_ID,
    HUMAN_USER_ID,
    SIGNING_SECRET,
    post,
    serve_asgi,
    signed_slash_command,
)
from tests.slack_standin import SlackStandin, block_kit_problems

FAKE = Path(__file__).parent / "fakes" / "llamafactory_cli.py"
CPU = Hardware(host="testhost", gpus=(), cpu_count=2)
UTC = timezone.utc


@pytest.fixture
def slack():
    with SlackStandin() as standin:
        yield standin


@pytest.fixture
def client(slack) -> WebClient:
    return WebClient(token=slack.bot_token, base_url=slack.base_url)


@pytest.fixture
def deliveries(client):
    """Outboxes (bot.outbox.delivery) on the stand-in, stopped at the end."""
    made: list[Delivery] = []

    def make(store) -> Delivery:
        made.append(Delivery(client, store).start())
        return made[-1]

    yield make
    for delivery in made:
        delivery.stop()


@pytest.fixture
def make_scheduler(store, deliveries):
    """Schedulers against the test's database, posting through the outbox; all stopped at the end."""
    made: list[Scheduler] = []

    def make(
        settings: ScheduleSettings | None = None, *, lease_ttl: float = 30.0, start: bool = True, runtime=None
    ):
        runtime = runtime or SimpleNamespace(store=store)
        scheduler = Scheduler(
            runtime, deliveries(runtime.store), settings or ScheduleSettings(), lease_ttl=lease_ttl
        )
        made.append(scheduler)
        return scheduler.start() if start else scheduler

    yield make
    for scheduler in made:
        if scheduler.running:
            scheduler.stop()


def run(text: str, scheduler: Scheduler, client, *, channel: str = CHANNEL_ID) -> dict:
    return handle_schedule_command(
        parse_command(text),
        user=HUMAN_USER_ID,
        channel=channel,
        runtime=SimpleNamespace(store=scheduler.store),
        client=client,
        scheduler=scheduler,
    )


def digests_in(slack, channel: str = CHANNEL_ID) -> list[dict]:
    return [m for m in slack.messages(channel) if "Digest" in m.get("text", "") and not m.get("thread_ts")]


def stored_rows(store) -> list[tuple]:
    with store.engine.begin() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                select(digest_table.c.id, digest_table.c.channel, digest_table.c.cron, digest_table.c.tz)
            )
        ]


def fire_soon(scheduler: Scheduler, row_id: int, channel: str = CHANNEL_ID, seconds: float = 1.0) -> None:
    """Bring a digest's next run forward; its real trigger stays for the runs after."""
    scheduler._aps.modify_job(
        schedules.digest_job_id(channel, row_id), next_run_time=datetime.now(UTC) + timedelta(seconds=seconds)
    )


# -- what a schedule is (no database) -------------------------------------------------------------


def spec_of(text: str, tz: str = "UTC"):
    return parse_schedule(parse_command(text), tz)


def test_daily_weekly_and_cron_become_cron_triggers_in_their_time_zone():
    daily = spec_of("schedule daily 09:00 Asia/Shanghai")
    assert (daily.cron, daily.tz) == ("0 9 * * *", "Asia/Shanghai")
    assert daily.label == "daily at 09:00 (Asia/Shanghai)"
    after = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)
    assert daily.trigger().get_next_fire_time(None, after) == datetime(2026, 11, 29, 1, 0, tzinfo=UTC)

    weekly = spec_of("schedule weekly Monday 9:30", "Europe/Berlin")
    assert (weekly.cron, weekly.tz) == ("30 9 * * mon", "Europe/Berlin")
    fire = weekly.trigger().get_next_fire_time(None, after)  # Saturday 2026-11-28
    assert fire.astimezone(ZoneInfo("Europe/Berlin")).strftime("%a %H:%M") == "Mon 09:30"

    cron = spec_of('schedule cron "0 9 * * 1-5"')
    assert cron.cron == "0 9 * * mon,tue,wed,thu,fri"
    fires, at = [], after
    for _ in range(7):
        at = cron.trigger().get_next_fire_time(None, at + timedelta(seconds=1))
        fires.append(at.strftime("%a"))
    # crontab's 1-5 is Monday to Friday (APScheduler 3 alone would read Tuesday to Saturday)
    assert fires == ["Mon", "Tue", "Wed", "Thu", "Fri", "Mon", "Tue"]
    assert spec_of("schedule cron @daily").cron == "0 0 * * *"
    unquoted = spec_of("schedule cron 0 9 * * 1-5 Asia/Shanghai")
    assert (unquoted.cron, unquoted.tz) == (cron.cron, "Asia/Shanghai")
    assert spec_of("schedule cron 30 7 * * sun").cron == "30 7 * * sun"
    assert spec_of('schedule cron "0 9 * * *"').cron == spec_of("schedule daily 09:00").cron


@pytest.mark.parametrize(
    ("field", "names"),
    [
        ("1-5", "mon,tue,wed,thu,fri"),
        ("0", "sun"),
        ("7", "sun"),
        ("5-7", "fri,sat,sun"),
        ("*/2", "tue,thu,sat,sun"),
        ("sat,sun", "sat,sun"),
        ("MON-WED", "mon,tue,wed"),
        ("*", "*"),
        ("0-6", "*"),
    ],
)
def test_crontab_weekdays_are_translated_to_names(field, names):
    assert weekday_field(field, field) == names


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("schedule daily 25:00", "`25:00` is not a time of day"),
        ("schedule daily 9am", "`9am` is not a time of day"),
        ("schedule daily 09:00 Asia/Shangai", "Did you mean `Asia/Shanghai`?"),
        ("schedule daily 09:00 Mars/Olympus", "`Mars/Olympus` is not a time zone"),
        ("schedule daily 09:00 ../../etc/passwd", "is not a time zone"),
        ("schedule weekly someday 09:00", "`someday` is not a day of the week"),
        ('schedule cron "0 9 * *"', "it has 4 fields, not 5"),
        ("schedule cron 0 9 * *", "it has 4 fields, not 5"),
        ('schedule cron "61 9 * * *"', "is not a cron expression I can use"),
        ('schedule cron "0 9 * * 8"', "`8` is not a day of the week"),
        ('schedule cron "0 9 1 * 1"', "limits both the day of the month and the day of the week"),
        ('schedule cron "*/5 * * * *"', "every 5 min"),
        ('schedule cron "0 0 30 2 *"', "it never fires"),
    ],
)
def test_bad_schedules_are_refused_with_a_clear_message(text, words):
    with pytest.raises(UserError) as caught:
        spec_of(text)
    assert words in caught.value.text()


def test_settings_read_minutes_or_durations_and_a_known_time_zone():
    assert ScheduleSettings.from_env({}) == ScheduleSettings(600.0, 900.0, "UTC")
    s = ScheduleSettings.from_env(
        {"TUNEBOT_PROGRESS_EVERY": "5", "TUNEBOT_STALL_AFTER": "90s", "TUNEBOT_DIGEST_TZ": "asia/shanghai"}
    )
    assert (s.progress_every, s.stall_after, s.digest_tz) == (300.0, 90.0, "Asia/Shanghai")
    assert s.sweep_every == 22.5
    with pytest.raises(UserError, match="TUNEBOT_DIGEST_TZ"):
        ScheduleSettings.from_env({"TUNEBOT_DIGEST_TZ": "Nowhere/Town"})
    with pytest.raises(UserError, match="TUNEBOT_PROGRESS_EVERY"):
        ScheduleSettings.from_env({"TUNEBOT_PROGRESS_EVERY": "soon"})
    assert [row.name for row in SCHEDULE_SETTINGS_TABLE] == [
        "TUNEBOT_PROGRESS_EVERY",
        "TUNEBOT_STALL_AFTER",
        "TUNEBOT_DIGEST_TZ",
    ]


# -- the lease ------------------------------------------------------------------------------------


def test_the_lease_has_one_holder_until_it_lapses_or_is_released(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'lease.db'}")
    schedules.create_tables(engine)
    clock = [1000.0]
    table = schedules.lease_table
    a = Lease(engine, table=table, name=LEASE_NAME, holder="a", ttl=30, clock=lambda: clock[0])
    b = Lease(engine, table=table, name=LEASE_NAME, holder="b", ttl=30, clock=lambda: clock[0])
    assert a.acquire() and not b.acquire()
    clock[0] += 20
    assert a.acquire() and not b.acquire()  # renewed: good for 30 s from now
    clock[0] += 29
    assert not b.acquire() and a.confirm()
    clock[0] += 31  # a fell silent
    assert not a.confirm()  # a lapsed holder may not post
    assert b.acquire() and not a.acquire() and b.current()[0] == "b"
    b.release()
    assert a.acquire() and not b.confirm()


# -- commands -------------------------------------------------------------------------------------


def test_schedule_commands_add_list_refuse_duplicates_and_stop(make_scheduler, client, store, slack):
    scheduler = make_scheduler()
    created = run("schedule daily 09:00 Asia/Shanghai", scheduler, client)
    assert block_kit_problems(created["blocks"]) == []
    assert created["text"] == "Digest #1 scheduled: daily at 09:00 (Asia/Shanghai)."
    assert "<!date^" in created["blocks"][0]["text"]["text"]  # when the first one comes
    assert slack.calls("conversations.info")[-1].params["channel"] == CHANNEL_ID
    run('schedule cron "0 9 * * 1-5"', scheduler, client)
    run("schedule weekly fri 17:30", scheduler, client, channel="C0OTHER01")

    again = run("schedule cron '0 9 * * *' asia/shanghai", scheduler, client)
    assert again["text"] == "Already scheduled here as digest #1 (daily at 09:00 (Asia/Shanghai))."
    listed = run("schedule list", scheduler, client)
    text = listed["blocks"][0]["text"]["text"]
    assert "*#1* daily at 09:00 (Asia/Shanghai)" in text and "*#2* cron `0 9 * * 1-5` (UTC)" in text
    assert "#3" not in text  # another channel's
    assert f"set by <@{HUMAN_USER_ID}>" in text
    assert len(stored_rows(store)) == 3
    assert {j.id for j in scheduler._aps.get_jobs()} == {
        f"digest:{CHANNEL_ID}:1",
        f"digest:{CHANNEL_ID}:2",
        "digest:C0OTHER01:3",
    }

    stopped = run("schedule off #2", scheduler, client)
    assert stopped["text"] == 'Stopped digest #2 (cron "0 9 * * 1-5" (UTC)).'
    assert scheduler._aps.get_job(f"digest:{CHANNEL_ID}:2") is None
    everything = run("schedule off", scheduler, client)
    assert everything["text"] == "Stopped 1 digest: #1"
    assert [r[1] for r in stored_rows(store)] == ["C0OTHER01"]  # the other channel's is left alone
    assert "No digests are scheduled" in run("schedule list", scheduler, client)["text"]


def test_bad_input_is_answered_and_loses_or_duplicates_nothing(make_scheduler, client, store, slack):
    scheduler = make_scheduler()
    run("schedule daily 09:00", scheduler, client)
    before_rows = stored_rows(store)
    before_jobs = sorted((j.id, j.next_run_time) for j in scheduler._aps.get_jobs())
    slack.add_channel("C0NOTIN01", "private-ish", is_member=False)
    answers = {
        "schedule daily 24:61": "is not a time of day",
        "schedule daily 09:00 Atlantis/Capital": "is not a time zone I know",
        'schedule cron "bad cron here now"': "is not a cron expression I can use",
        "schedule off 42": "There is no digest #42 in this channel. Its digests: #1.",
        "schedule off tomorrow": "`tomorrow` is not a digest number",
    }
    for text, words in answers.items():
        answer = run(text, scheduler, client)
        assert words in answer["text"], (text, answer["text"])
        assert block_kit_problems(answer["blocks"]) == []
    not_member = run("schedule daily 10:00", scheduler, client, channel="C0NOTIN01")
    assert "I am not in this channel" in not_member["text"] and "/invite @tunebot" in not_member["text"]
    slack.fail_next("conversations.info", 200, error="channel_not_found")
    gone = run("schedule daily 10:00", scheduler, client, channel="C0GONE001")
    assert "I am not in this channel" in gone["text"]
    assert "nothing to stop" in run("schedule off", scheduler, client, channel="C0EMPTY01")["text"]
    assert stored_rows(store) == before_rows
    assert sorted((j.id, j.next_run_time) for j in scheduler._aps.get_jobs()) == before_jobs


def test_a_channel_has_at_most_ten_digests(make_scheduler, client, store):
    scheduler = make_scheduler()
    for hour in range(10):
        assert "scheduled" in run(f"schedule daily {hour:02d}:00", scheduler, client)["text"]
    refused = run("schedule daily 23:00", scheduler, client)
    assert "has 10 digests already" in refused["text"]
    assert len(stored_rows(store)) == 10
    assert "Already scheduled" in run("schedule daily 05:00", scheduler, client)["text"]


def test_without_a_running_scheduler_the_command_says_digests_are_off(store, client):
    answer = handle_schedule_command(
        parse_command("schedule list"),
        user=HUMAN_USER_ID,
        channel=CHANNEL_ID,
        runtime=SimpleNamespace(store=store),
        client=client,
    )
    assert "Digests are off" in answer["text"]


# -- firing ---------------------------------------------------------------------------------------


def test_a_schedule_fires_and_posts_the_channels_digest(make_scheduler, client, store, slack):
    now = time.time()
    store.add_job(
        Job(
            kind="eval",
            state="succeeded",
            model="/models/tiny",
            user=HUMAN_USER_ID,
            origin=slack_origin(CHANNEL_ID),
            started_at=now - 600,
            finished_at=now - 60,
            slots=["cpu0"],
            metrics={"rouge-1": 41.5, "rouge-2": 20.25, "rouge-l": 33.0, "bleu-4": 17.75},
        )
    )
    scheduler = make_scheduler()
    assert scheduler.is_leader
    run("schedule daily 09:00", scheduler, client)
    fire_soon(scheduler, 1)
    slack.wait_for(lambda: digests_in(slack), timeout=10, what="the digest")
    time.sleep(0.5)
    [digest] = digests_in(slack)
    assert digest["text"].startswith("Digest · daily at 09:00 (UTC): 1 finished")
    assert "ROUGE-1 41.50" in str(digest["blocks"]) and "CPU slot" in str(digest["blocks"])
    # the real trigger is back for the next run: tomorrow (or today) at 09:00 UTC
    nxt = scheduler._aps.get_job(f"digest:{CHANNEL_ID}:1").next_run_time
    assert (nxt.hour, nxt.minute) == (9, 0) and nxt > datetime.now(UTC)
    assert scheduler.digest(1).last_digest_at is not None


def test_a_schedule_made_by_a_signed_slash_command_fires_and_posts(settings, slack, client, make_scheduler):
    runtime = Runtime(settings)  # the app's engine (its runner is not started: no jobs here)
    scheduler = make_scheduler(runtime=runtime)
    bot_settings = BotSettings(
        bot_token=slack.bot_token,
        signing_secret=SIGNING_SECRET,
        api_url=slack.base_url,
        allowed_users=frozenset({"*"}),
    )
    app = build_app(bot_settings, runtime, client=client, delivery=scheduler.delivery, verify_token=False)
    with serve_asgi(asgi_app(app)) as base:
        request = signed_slash_command(
            "schedule daily 09:00 Asia/Shanghai", response_url=slack.new_response_url()
        )
        result = post(base + EVENTS_PATH, request)
        assert result.status == 200
        answer = slack.wait_for(lambda: slack.responses(), timeout=10, what="the ephemeral answer")[-1]
        assert answer["response_type"] == "ephemeral"
        assert answer["text"] == "Digest #1 scheduled: daily at 09:00 (Asia/Shanghai)."
        listed = post(
            base + EVENTS_PATH, signed_slash_command("schedule list", response_url=slack.new_response_url())
        )
        assert listed.status == 200
        slack.wait_for(lambda: len(slack.responses()) == 2, timeout=10, what="the list")
        assert "daily at 09:00 (Asia/Shanghai)" in slack.responses()[-1]["text"]

    nxt = scheduler._aps.get_job(f"digest:{CHANNEL_ID}:1").next_run_time
    assert nxt.astimezone(ZoneInfo("Asia/Shanghai")).strftime("%H:%M") == "09:00"
    fire_soon(scheduler, 1)
    slack.wait_for(lambda: digests_in(slack), timeout=10, what="the digest")
    [digest] = digests_in(slack)
    assert digest["text"].startswith("Digest · daily at 09:00 (Asia/Shanghai)")
    assert block_kit_problems(digest["blocks"]) == []


def test_schedules_survive_a_restart_and_a_new_scheduler_fires_them(make_scheduler, client, store, slack):
    first = make_scheduler()
    run("schedule weekly wed 08:15 Europe/Berlin", first, client)
    stored_next = first._aps.get_job(f"digest:{CHANNEL_ID}:1").next_run_time
    first.stop()

    second = make_scheduler()  # a new process against the same database
    assert second.is_leader
    job = second._aps.get_job(f"digest:{CHANNEL_ID}:1")
    assert job.next_run_time == stored_next and str(job.trigger.timezone) == "Europe/Berlin"
    assert "weekly on Wednesday at 08:15" in run("schedule list", second, client)["text"]
    fire_soon(second, 1)
    slack.wait_for(lambda: digests_in(slack), timeout=10, what="the digest after the restart")
    assert digests_in(slack)[0]["text"].startswith("Digest · weekly on Wednesday at 08:15 (Europe/Berlin)")


def test_a_bot_that_was_down_posts_one_late_digest_not_a_burst(make_scheduler, client, store, slack):
    first = make_scheduler()
    run("schedule daily 09:00", first, client)
    # every second, from 1.5 s to 3.5 s from now: three runs fall while the bot is down
    start = datetime.now(UTC) + timedelta(seconds=1.5)
    first._aps.reschedule_job(
        f"digest:{CHANNEL_ID}:1",
        trigger=CronTrigger(
            second="*", start_date=start, end_date=start + timedelta(seconds=2), timezone=UTC
        ),
    )
    first.stop()
    time.sleep(4.5)
    assert digests_in(slack) == []

    second = make_scheduler(start=False)
    runs = []
    original = second.run_digest
    second.run_digest = lambda schedule_id: runs.append(schedule_id) or original(schedule_id)
    second.start()
    slack.wait_for(lambda: digests_in(slack), timeout=10, what="the late digest")
    time.sleep(1.5)
    assert len(digests_in(slack)) == 1
    assert runs == [1]  # coalesced by APScheduler: one run, not three


def test_a_second_scheduler_on_the_same_database_does_not_double_post(make_scheduler, client, store, slack):
    a = make_scheduler(lease_ttl=1.5)
    b = make_scheduler(lease_ttl=1.5)
    assert a.is_leader and not b.is_leader
    fired = {"a": 0, "b": 0}
    for name, scheduler in (("a", a), ("b", b)):
        original = scheduler.run_digest
        scheduler.run_digest = (
            lambda n, o: lambda schedule_id: fired.__setitem__(n, fired[n] + 1) or o(schedule_id)
        )(name, original)
    # b (standing by) takes the command: the schedule lands in the shared store; a runs it
    run("schedule daily 09:00", b, client)
    fire_soon(b, 1)
    slack.wait_for(lambda: digests_in(slack), timeout=10, what="the digest")
    time.sleep(1.5)
    assert len(digests_in(slack)) == 1 and fired == {"a": 1, "b": 0}

    a.stop()  # a goes away: b takes over within a renewal period and posts the next one, once
    slack.wait_for(lambda: b.is_leader, timeout=5, what="b to take over")
    fire_soon(b, 1, seconds=0.5)
    # the next digest of a daily schedule within half a day is refused as a duplicate ...
    time.sleep(1.5)
    assert len(digests_in(slack)) == 1 and fired["b"] == 1
    # ... so make it due as a real later run would be
    with store.engine.begin() as conn:
        conn.execute(digest_table.update().values(last_digest_at=time.time() - 86400))
    fire_soon(b, 1, seconds=0.5)
    slack.wait_for(lambda: len(digests_in(slack)) == 2, timeout=10, what="b's digest")
    time.sleep(1.0)
    assert len(digests_in(slack)) == 2 and fired == {"a": 1, "b": 2}


def test_a_lapsed_holder_does_not_post(make_scheduler, client, store, slack):
    scheduler = make_scheduler()
    run("schedule daily 09:00", scheduler, client)
    # another process took the lease (this one's renewals stalled past the TTL)
    with store.engine.begin() as conn:
        conn.execute(
            schedules.lease_table.update().values(holder="elsewhere:1:x", expires_at=time.time() + 60)
        )
    assert scheduler.run_digest(1) is False
    assert digests_in(slack) == []
    with store.engine.begin() as conn:
        assert (
            conn.execute(
                select(func.count())
                .select_from(digest_table)
                .where(digest_table.c.last_digest_at.is_not(None))
            ).scalar()
            == 0
        )


def test_jobs_stored_by_an_older_tunebot_still_name_functions_that_load() -> None:
    """APScheduler keeps `module:function` in tunebot_schedules; the module moved into a package."""
    from apscheduler.util import ref_to_obj

    assert ref_to_obj("bot.schedules:fire_digest") is schedules.fire_digest
    assert ref_to_obj("bot.schedules:sweep_progress") is schedules.sweep_progress
