"""The Slack front's settings and its rules for who may spend GPU time (pure, no server)."""

from __future__ import annotations

from dataclasses import fields

import pytest

from bot.auth import Access
from bot.settings import BOT_SETTINGS_TABLE, SLACK_API_URL, BotSettings
from runners.errors import UserError

TOKENS = {
    "SLACK_BOT_TOKEN": "xoxb-1-secret",
    "SLACK_APP_TOKEN": "xapp-1-secret",
    "SLACK_SIGNING_SECRET": "s3cr3t",
}


def test_settings_read_from_the_environment_with_defaults() -> None:
    settings = BotSettings.from_env(
        {
            **TOKENS,
            "TUNEBOT_ADMINS": "U1, U2",
            "TUNEBOT_ALLOWED_USERS": "U3;U4",
            "TUNEBOT_ALLOWED_CHANNELS": "C1",
            "TUNEBOT_STATUS_EDIT_EVERY": "5s",
            "SLACK_API_URL": "http://127.0.0.1:9/api",
        }
    )
    assert settings.admins == {"U1", "U2"} and settings.allowed_users == {"U3", "U4"}
    assert settings.allowed_channels == {"C1"} and settings.status_edit_every == 5.0
    assert settings.api_url == "http://127.0.0.1:9/api/"
    plain = BotSettings.from_env({})
    assert (plain.api_url, plain.status_edit_every, plain.admins) == (SLACK_API_URL, 3.0, frozenset())
    with pytest.raises(UserError, match="TUNEBOT_STATUS_EDIT_EVERY"):
        BotSettings.from_env({"TUNEBOT_STATUS_EDIT_EVERY": "often"})
    with pytest.raises(UserError, match="SLACK_API_URL"):
        BotSettings.from_env({"SLACK_API_URL": "slack.com"})


def test_tokens_never_show_in_repr_or_describe() -> None:
    settings = BotSettings.from_env(TOKENS)
    for shown in (repr(settings), str(settings), settings.describe()):
        assert not any(secret in shown for secret in TOKENS.values())
    assert "bot token set" in settings.describe()


def test_each_transport_asks_for_its_own_tokens() -> None:
    BotSettings.from_env(TOKENS).check(http=True)
    BotSettings.from_env(TOKENS).check(http=False)
    BotSettings.from_env({**TOKENS, "SLACK_APP_TOKEN": ""}).check(http=True)
    BotSettings.from_env({**TOKENS, "SLACK_SIGNING_SECRET": ""}).check(http=False)
    with pytest.raises(UserError, match="SLACK_SIGNING_SECRET is not set"):
        BotSettings.from_env({**TOKENS, "SLACK_SIGNING_SECRET": ""}).check(http=True)
    with pytest.raises(UserError, match="not a bot token"):
        BotSettings.from_env({**TOKENS, "SLACK_BOT_TOKEN": "xapp-1"}).check(http=True)


def test_the_readme_table_lists_every_variable_read() -> None:
    import inspect

    source = inspect.getsource(BotSettings.from_env)
    read = {
        name
        for name in (
            "SLACK_BOT_TOKEN",
            "SLACK_APP_TOKEN",
            "SLACK_SIGNING_SECRET",
            "SLACK_API_URL",
            "TUNEBOT_ADMINS",
            "TUNEBOT_ALLOWED_USERS",
            "TUNEBOT_ALLOWED_CHANNELS",
            "TUNEBOT_STATUS_EDIT_EVERY",
        )
        if name in source
    }
    assert {row.name for row in BOT_SETTINGS_TABLE} == read and len(read) == 8
    assert len(fields(BotSettings)) == 8


def test_with_no_allowed_lists_only_admins_may_spend_and_help_says_so() -> None:
    access = Access(admins=frozenset({"UADMIN"}))
    assert access.may_spend("UADMIN", "C1") and not access.may_spend("U1", "C1")
    assert "Only tunebot's 1 admin(s) may start jobs" in access.summary()
    assert access.summary("U1", "C1").endswith("You may not start jobs here.")
    assert "until the operator lists who else may" in access.refusal("U1", "C1").text()
    assert not Access().may_spend("U1", "C1") and not Access().may_spend("", "C1")


def test_allowed_users_and_channels_both_apply_and_admins_pass_both() -> None:
    users = Access(allowed_users=frozenset({"U1"}))
    assert users.may_spend("U1", "Cany") and not users.may_spend("U2", "Cany")
    channels = Access(allowed_channels=frozenset({"C1"}))
    assert channels.may_spend("U2", "C1") and not channels.may_spend("U2", "C2")
    both = Access(
        admins=frozenset({"UA"}), allowed_users=frozenset({"U1"}), allowed_channels=frozenset({"C1"})
    )
    assert both.may_spend("U1", "C1") and not both.may_spend("U1", "C2") and not both.may_spend("U2", "C1")
    assert both.may_spend("UA", "C9") and both.is_admin("UA") and not both.is_admin("U1")
    assert "from this channel" in both.refusal("U1", "C2").text()
    assert "not on tunebot's list" in both.refusal("U2", "C1").text()
    everyone = Access(allowed_users=frozenset({"*"}))
    assert everyone.may_spend("U9", "C9") and "Everyone may start jobs in any channel" in everyone.summary()
