"""The Slack front's settings: one typed object read from the environment.

Tokens are secrets: they are kept out of `repr()` and never logged; `describe()` shows which are
set, not what they are. `BOT_SETTINGS_TABLE` is the README's rows for these variables.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from runners.errors import UserError
from runners.settings import Setting, parse_duration

SLACK_API_URL = "https://slack.com/api/"
DEFAULT_STATUS_EDIT_EVERY = 3.0

BOT_SETTINGS_TABLE: list[Setting] = [
    Setting("SLACK_BOT_TOKEN", "(required)", "xoxb-…",
            "Bot User OAuth Token (Install App page): every Web API call"),
    Setting("SLACK_APP_TOKEN", "(required for Socket Mode)", "xapp-…",
            "App-level token with `connections:write`: the Socket Mode connection"),
    Setting("SLACK_SIGNING_SECRET", "(required for --http)", "secret",
            "Basic Information → Signing Secret: checks that HTTP requests come from Slack"),
    Setting("SLACK_API_URL", SLACK_API_URL, "URL", "Web API base URL (a proxy or a test stand-in)"),
    Setting("TUNEBOT_ADMINS", "(none)", "user ids",
            "May start jobs anywhere and cancel/undeploy anyone's, e.g. `U012AB3CD,U045EF6GH`"),
    Setting("TUNEBOT_ALLOWED_USERS", "(none)", "user ids",
            "May start jobs (train, eval, export, deploy, resume, dataset add, chat); `*` = everyone. "
            "Empty with TUNEBOT_ALLOWED_CHANNELS empty too: admins only"),
    Setting("TUNEBOT_ALLOWED_CHANNELS", "(none)", "channel ids",
            "Jobs may be started only in these channels; `*` = any. Set alone: anyone in them may"),
    Setting("TUNEBOT_STATUS_EDIT_EVERY", f"{DEFAULT_STATUS_EDIT_EVERY:g}s", "duration",
            "Least time between two edits of a job's message (Slack allows about one a second)"),
]


def _ids(env: dict[str, str], name: str) -> frozenset[str]:
    raw = (env.get(name) or "").strip()
    items = {item.strip() for item in raw.replace(";", ",").replace(" ", ",").split(",")}
    return frozenset(item for item in items if item)


def _value(env: dict[str, str], name: str) -> str:
    return (env.get(name) or "").strip()


@dataclass(frozen=True)
class BotSettings:
    bot_token: str = field(default="", repr=False)
    signing_secret: str = field(default="", repr=False)
    app_token: str = field(default="", repr=False)
    api_url: str = SLACK_API_URL
    allowed_users: frozenset[str] = frozenset()
    allowed_channels: frozenset[str] = frozenset()
    admins: frozenset[str] = frozenset()
    status_edit_every: float = DEFAULT_STATUS_EDIT_EVERY

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> BotSettings:
        env = dict(os.environ if env is None else env)
        api_url = _value(env, "SLACK_API_URL") or SLACK_API_URL
        if not api_url.startswith(("http://", "https://")):
            raise UserError(f"SLACK_API_URL={api_url!r} is not an http(s) URL.", field="SLACK_API_URL",
                            fix=f"SLACK_API_URL={SLACK_API_URL}")
        every = parse_duration(_value(env, "TUNEBOT_STATUS_EDIT_EVERY") or f"{DEFAULT_STATUS_EDIT_EVERY:g}s",
                               name="TUNEBOT_STATUS_EDIT_EVERY")
        return cls(
            bot_token=_value(env, "SLACK_BOT_TOKEN"),
            signing_secret=_value(env, "SLACK_SIGNING_SECRET"),
            app_token=_value(env, "SLACK_APP_TOKEN"),
            api_url=api_url if api_url.endswith("/") else api_url + "/",
            allowed_users=_ids(env, "TUNEBOT_ALLOWED_USERS"),
            allowed_channels=_ids(env, "TUNEBOT_ALLOWED_CHANNELS"),
            admins=_ids(env, "TUNEBOT_ADMINS"),
            status_edit_every=every,
        )

    def check(self, *, http: bool) -> None:
        """Refuse to start without the tokens the transport needs; the message says where to get them."""
        if not self.bot_token:
            raise UserError("SLACK_BOT_TOKEN is not set.", field="SLACK_BOT_TOKEN",
                            fix="copy the Bot User OAuth Token (xoxb-…) from your app's Install App page")
        if not self.bot_token.startswith("xoxb-"):
            raise UserError("SLACK_BOT_TOKEN is not a bot token (it starts with xoxb-).",
                            field="SLACK_BOT_TOKEN",
                            fix="copy the Bot User OAuth Token from your app's Install App page")
        if http and not self.signing_secret:
            raise UserError("SLACK_SIGNING_SECRET is not set; `--http` needs it to check that requests "
                            "come from Slack.",
                            field="SLACK_SIGNING_SECRET",
                            fix="copy the Signing Secret from your app's Basic Information page")
        if not http and not self.app_token:
            raise UserError("SLACK_APP_TOKEN is not set; Socket Mode needs it.", field="SLACK_APP_TOKEN",
                            fix="Basic Information → App-Level Tokens → generate one with connections:write "
                                "(or run `tunebot serve --http`)")
        if not http and not self.app_token.startswith("xapp-"):
            raise UserError("SLACK_APP_TOKEN is not an app-level token (it starts with xapp-).",
                            field="SLACK_APP_TOKEN",
                            fix="Basic Information → App-Level Tokens → generate one with connections:write")

    def describe(self) -> str:
        """One line for the log: which secrets are set (never their values) and who may do what."""
        def flag(value: str) -> str:
            return "set" if value else "missing"

        return (f"bot token {flag(self.bot_token)}, app token {flag(self.app_token)}, signing secret "
                f"{flag(self.signing_secret)}, API {self.api_url}, {len(self.admins)} admin(s), "
                f"{len(self.allowed_users)} allowed user(s), {len(self.allowed_channels)} allowed channel(s)")
