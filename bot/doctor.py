"""`tunebot doctor`: the Slack tokens, then the engine's checks (runners/doctor.py), printed as
what is wrong and how to fix it. Exit code 1 when anything is a problem.

`tunebot serve` runs the fast engine checks at start (`preflight`): a data dir it cannot write or
a database it cannot open stops it there with the fix, instead of failing on the first job.
"""

from __future__ import annotations

from collections.abc import Callable

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from runners import doctor as engine
from runners.doctor import FAIL, OK, WARN, Check
from runners.errors import UserError
from runners.settings import Settings

from .settings import BotSettings

_MARK = {OK: "ok  ", WARN: "warn", FAIL: "FAIL"}
_TOKEN_PAGE = "the app's Install App page (Bot User OAuth Token, xoxb-…)"


def _slack_error(error: Exception) -> str:
    if isinstance(error, SlackApiError) and error.response is not None:
        return str(error.response.get("error"))
    return str(getattr(error, "reason", None) or error)[:200]


def check_bot_token(settings: BotSettings, client_factory: Callable[..., WebClient] = WebClient) -> Check:
    if not settings.bot_token:
        return Check("Slack bot token", WARN, "SLACK_BOT_TOKEN is not set: `tunebot serve` needs it "
                     "(a host that only runs `tunebot worker` does not).", f"copy it from {_TOKEN_PAGE}")
    if not settings.bot_token.startswith("xoxb-"):
        return Check("Slack bot token", FAIL, "SLACK_BOT_TOKEN is not a bot token (those start with xoxb-).",
                     f"copy it from {_TOKEN_PAGE}")
    client = client_factory(token=settings.bot_token, base_url=settings.api_url, timeout=10)
    try:
        identity = client.auth_test()
    except SlackApiError as error:
        return Check("Slack bot token", FAIL, f"Slack refused SLACK_BOT_TOKEN ({_slack_error(error)}).",
                     f"copy it again from {_TOKEN_PAGE}, and check the app is installed in the workspace")
    except OSError as error:
        return Check("Slack bot token", FAIL,
                     f"cannot reach Slack at {settings.api_url} ({_slack_error(error)}).",
                     "check this host can open HTTPS connections to slack.com (proxy, firewall), or "
                     "SLACK_API_URL")
    return Check("Slack bot token", OK, f"bot {identity.get('user')} ({identity.get('user_id')}) in "
                 f"{identity.get('team')}")


def check_app_token(settings: BotSettings, client_factory: Callable[..., WebClient] = WebClient) -> Check:
    fix = "Basic Information → App-Level Tokens → a token with connections:write (xapp-…)"
    if not settings.app_token:
        return Check("Slack app token", WARN, "SLACK_APP_TOKEN is not set: Socket Mode needs it "
                     "(`tunebot serve --http` does not).", fix)
    if not settings.app_token.startswith("xapp-"):
        return Check("Slack app token", FAIL, "SLACK_APP_TOKEN is not an app-level token (xapp-…).", fix)
    client = client_factory(token=settings.app_token, base_url=settings.api_url, timeout=10)
    try:
        client.apps_connections_open(app_token=settings.app_token)  # a URL, not a connection
    except SlackApiError as error:
        reason = _slack_error(error)
        if reason == "socket_mode_not_enabled":
            fix = "the app's Settings → Socket Mode → Enable (or serve over HTTP: `tunebot serve --http`)"
        return Check("Slack app token", FAIL, f"Slack refused SLACK_APP_TOKEN ({reason}).", fix)
    except OSError as error:
        return Check("Slack app token", FAIL, f"cannot reach Slack ({_slack_error(error)}).",
                     "check this host's network, or SLACK_API_URL")
    return Check("Slack app token", OK, "Socket Mode connections may be opened")


def check_signing_secret(settings: BotSettings) -> Check:
    if not settings.signing_secret:
        return Check("Slack signing secret", WARN, "SLACK_SIGNING_SECRET is not set: `tunebot serve --http` "
                     "needs it (Socket Mode does not).",
                     "Basic Information → App Credentials → Signing Secret")
    return Check("Slack signing secret", OK, "set")


def check_access(settings: BotSettings) -> Check:
    if not settings.allowed_users and not settings.allowed_channels:
        return Check("who may use it", WARN, f"only the {len(settings.admins)} admin(s) may start jobs.",
                     "set TUNEBOT_ALLOWED_USERS and/or TUNEBOT_ALLOWED_CHANNELS (README: Who may use it)")
    return Check("who may use it", OK, f"{len(settings.admins)} admin(s); allowed users and channels set")


def slack_checks(settings: BotSettings, client_factory: Callable[..., WebClient] = WebClient) -> list[Check]:
    return [check_bot_token(settings, client_factory), check_app_token(settings, client_factory),
            check_signing_secret(settings), check_access(settings)]


def render(checks: list[Check]) -> str:
    lines = []
    for check in checks:
        lines.append(f"{_MARK[check.status]}  {check.name}: {check.detail}")
        if check.fix and check.status != OK:
            lines.append(f"      fix: {check.fix}")
    problems = sum(c.failed for c in checks)
    warnings = sum(c.status == WARN for c in checks)
    lines.append("all good" if not problems and not warnings else
                 f"{problems} problem(s), {warnings} warning(s)")
    return "\n".join(lines)


def run_doctor(settings: Settings, *, client_factory: Callable[..., WebClient] = WebClient,
               env: dict[str, str] | None = None) -> tuple[int, str]:
    """(exit code, report): 1 when any check failed."""
    try:
        bot_settings = BotSettings.from_env(env)
        checks = slack_checks(bot_settings, client_factory)
    except UserError as err:
        checks = [Check("Slack settings", FAIL, err.message, err.fix)]
    checks += engine.run_checks(settings)
    return (1 if any(c.failed for c in checks) else 0), render(checks)


def preflight(settings: Settings) -> list[Check]:
    """The fast engine checks, for `tunebot serve` at start: the problems and warnings only."""
    return [c for c in engine.run_checks(settings, engine.FAST_CHECKS) if c.status != OK]
