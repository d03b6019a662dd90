"""`tunebot doctor` against the Slack Web API stand-in and the OSS stand-in: each problem is named with
its fix and makes the exit code non-zero; `tunebot serve` stops at start on the fast ones."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import namedtuple
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import text

from bot.cli import doctor, main
from bot.settings import BotSettings
from runners.artifacts.base import StorageSettings
from runners.settings import Settings
from runners.store import SCHEMA_VERSION, Store
from tests.oss_standin import OssStandin
from tests.slack_fixtures import slack
from tests.slack_signing import free_port

__all__ = ["slack"]  # fixtures
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def settings(tmp_path) -> Settings:
    data = tmp_path / "data"
    data.mkdir(mode=0o750)
    return Settings(data_dir=data)


def _by_name(checks):
    return {c.name: c for c in checks}


def test_good_slack_tokens_pass_and_refused_ones_are_named_with_their_fix(slack):
    slack.socket_url = "wss://socket.invalid/link"  # what apps.connections.open hands out
    good = BotSettings(bot_token=slack.bot_token, app_token=slack.app_token, signing_secret="s",
                       api_url=slack.base_url, allowed_users=frozenset({"U1"}))
    checks = _by_name(doctor.slack_checks(good))
    assert all(c.status == "ok" for c in checks.values()), checks
    assert slack.calls("auth.test") and slack.calls("apps.connections.open")

    bad = replace(good, bot_token="xoxb-revoked", app_token="xapp-revoked")
    checks = _by_name(doctor.slack_checks(bad))
    assert checks["Slack bot token"].failed and "invalid_auth" in checks["Slack bot token"].detail
    assert "Install App page" in checks["Slack bot token"].fix
    assert checks["Slack app token"].failed and "connections:write" in checks["Slack app token"].fix
    assert "xoxb-revoked" not in doctor.render(list(checks.values()))  # a token is never printed


def test_slack_out_of_reach_and_malformed_tokens_are_problems():
    closed = f"http://127.0.0.1:{free_port()}/api/"
    checks = _by_name(doctor.slack_checks(BotSettings(bot_token="xoxb-1", app_token="nope", api_url=closed)))
    assert checks["Slack bot token"].failed and "cannot reach Slack" in checks["Slack bot token"].detail
    assert checks["Slack app token"].failed and "xapp-" in checks["Slack app token"].detail
    assert checks["who may use it"].status == "warn"  # admins only until someone is allowed


def test_oss_credentials_are_checked_with_a_tiny_put_head_delete(settings, tmp_path):
    with OssStandin(tmp_path / "oss") as server:
        storage = StorageSettings(backend="oss", oss_endpoint=server.endpoint, oss_bucket=server.bucket,
                                  oss_prefix="tunebot", oss_access_key_id=server.access_key_id,
                                  oss_access_key_secret=server.access_key_secret)
        ok = doctor.check_storage(replace(settings, storage=storage))
        assert ok.status == "ok", ok
        assert [server.calls[c] for c in ("PutObject", "HeadObject", "DeleteObject")] == [1, 1, 1]
        assert server.keys() == []  # nothing left behind
        wrong = doctor.check_storage(replace(settings, storage=replace(storage, oss_access_key_secret="x")))
        assert wrong.failed and "TUNEBOT_OSS_ACCESS_KEY_SECRET" in (wrong.fix or "")
        assert "x" * 3 not in wrong.detail and server.access_key_secret not in wrong.detail


def test_the_database_must_be_reachable_and_not_newer_than_this_tunebot(settings):
    ok = doctor.check_database(settings)
    assert ok.status == "ok" and f"schema version {SCHEMA_VERSION}" in ok.detail
    closed = f"postgresql+psycopg://u:pw@127.0.0.1:{free_port()}/x"
    down = doctor.check_database(replace(settings, database_url=closed))
    assert down.failed and "pw" not in down.detail
    store = Store(settings.db_url)
    with store.engine.begin() as conn:
        conn.execute(text("INSERT INTO schema_version (version, applied_at) VALUES (:v, 0)"),
                     {"v": SCHEMA_VERSION + 1})
    newer = doctor.check_database(settings)
    assert newer.failed and "upgrade tunebot" in newer.fix


def test_data_dir_permissions_and_disk_space(settings, tmp_path, monkeypatch):
    assert doctor.check_data_dir(settings).status == "ok"
    os.chmod(settings.data_dir, 0o777)
    shared = doctor.check_data_dir(settings)
    assert shared.status == "warn" and "chmod o-w" in shared.fix
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    unusable = doctor.check_data_dir(replace(settings, data_dir=blocker / "data"))
    assert unusable.failed and "TUNEBOT_DATA_DIR" in unusable.fix
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda _p: usage(100 * 2**30, 99.5 * 2**30, 2**29))
    assert doctor.check_disk(settings).failed
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda _p: usage(100 * 2**30, 90 * 2**30, 10 * 2**30))
    assert doctor.check_disk(settings).status == "warn"


def test_llamafactory_and_gpus(settings):
    assert doctor.check_llamafactory(settings).status == "ok"
    missing = doctor.check_llamafactory(replace(settings, llamafactory_cli="/nonexistent/llamafactory-cli"))
    assert missing.failed and "TUNEBOT_LLAMAFACTORY_CLI" in missing.fix
    gpus = doctor.check_gpus(settings)
    assert gpus.status in ("ok", "warn")  # CI has no GPU: a warning, not a problem
    assert doctor.check_gpus(replace(settings, gpus=["7"])).failed or gpus.status == "ok"


def test_the_doctor_command_prints_each_problem_with_its_fix_and_exits_non_zero(
    slack, settings, monkeypatch, capsys
):
    slack.socket_url = "wss://socket.invalid/link"
    monkeypatch.setenv("TUNEBOT_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("SLACK_API_URL", slack.base_url)
    monkeypatch.setenv("SLACK_BOT_TOKEN", slack.bot_token)
    monkeypatch.setenv("SLACK_APP_TOKEN", slack.app_token)
    monkeypatch.setenv("SLACK_SIGNING_SECRET", "secret")
    monkeypatch.setenv("TUNEBOT_ALLOWED_USERS", "*")
    monkeypatch.delenv("TUNEBOT_DATABASE_URL", raising=False)
    monkeypatch.delenv("TUNEBOT_STORAGE", raising=False)
    code = main(["doctor"])
    out = capsys.readouterr().out
    assert "ok    Slack bot token" in out and "ok    database" in out
    assert code == 0, out
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-wrong")
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  Slack bot token: Slack refused SLACK_BOT_TOKEN (invalid_auth)." in out
    assert "      fix: copy it again" in out and "xoxb-wrong" not in out
    slack.socket_url = None  # Socket Mode switched off in the app's settings
    monkeypatch.setenv("SLACK_BOT_TOKEN", slack.bot_token)
    assert main(["doctor"]) == 1
    assert "Socket Mode → Enable" in capsys.readouterr().out


def test_serve_stops_at_start_when_the_data_dir_is_unusable(slack, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TUNEBOT_DATA_DIR": str(blocker / "data"),
           "SLACK_API_URL": slack.base_url, "SLACK_BOT_TOKEN": slack.bot_token,
           "SLACK_APP_TOKEN": slack.app_token}
    env.pop("TUNEBOT_DATABASE_URL", None)
    done = subprocess.run([sys.executable, "-m", "bot.cli", "serve"], env=env, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 2
    assert "data dir" in done.stderr and "not writable" in done.stderr and "Traceback" not in done.stderr
