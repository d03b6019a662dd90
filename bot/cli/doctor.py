"""`tunebot doctor`: is this host ready, and if not, what to do — the Slack tokens, the database,
GPUs, LLaMA-Factory, the artifact store, disk space and the data dir, each printed as what is
wrong and how to fix it (exit code 1 when anything is a problem).

Each check returns a `Check` (ok, a warning, or a problem with its fix) instead of raising, so one
run reports everything at once. `FAST_CHECKS` (the data dir, disk space, the database) take
milliseconds and run at every `tunebot serve` start (`preflight`): a data dir it cannot write or a
database it cannot open stops it there with the fix, instead of failing on the first job.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.settings import BotSettings
from runners.errors import UserError
from runners.settings import Settings

OK, WARN, FAIL = "ok", "warn", "fail"
MIN_FREE_BYTES = 1 * 2**30  # below this, a checkpoint or an export fails half-written
LOW_FREE_BYTES = 20 * 2**30  # an 8B model's LoRA run with checkpoints wants this much
LLAMAFACTORY_VERSION = "0.9.5"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str | None = None

    @property
    def failed(self) -> bool:
        return self.status == FAIL


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_data_dir(settings: Settings) -> Check:
    data = settings.data_dir
    try:
        data.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=data, prefix=".doctor-", delete=True) as fh:
            fh.write(b"ok")
            fh.flush()
        mode = data.stat().st_mode
    except OSError as exc:
        return Check("data dir", FAIL, f"{data} is not writable ({exc.strerror or exc}).",
                     f"create it and give the user running tunebot write access: `mkdir -p {data} && "
                     f"chown $(id -un) {data}`, or point TUNEBOT_DATA_DIR elsewhere")
    if mode & stat.S_IWOTH:
        return Check("data dir", WARN, f"{data} is writable by every user of this host: anyone could "
                     "replace a job's config or a model there.", f"chmod o-w {data}")
    return Check("data dir", OK, f"{data} is writable by tunebot only")


def check_disk(settings: Settings) -> Check:
    try:
        usage = shutil.disk_usage(settings.data_dir)
    except OSError as exc:
        return Check("disk space", FAIL, f"cannot measure {settings.data_dir}: {exc.strerror or exc}.",
                     "create the data dir first (see above)")
    where = f"{_gib(usage.free)} free of {_gib(usage.total)} at {settings.data_dir}"
    if usage.free < MIN_FREE_BYTES:
        return Check("disk space", FAIL, f"only {where}: checkpoints and exports would fail half-written.",
                     "free space there, or point TUNEBOT_DATA_DIR at a larger disk")
    if usage.free < LOW_FREE_BYTES:
        return Check("disk space", WARN,
                     f"{where}: enough for small runs, not for an 8B model's checkpoints.",
                     "free space, or point TUNEBOT_DATA_DIR at a larger disk")
    return Check("disk space", OK, where)


def check_database(settings: Settings) -> Check:
    from runners.store import SCHEMA_VERSION, Store

    store = None
    try:
        store = Store(settings.db_url)
        found = store.migrate()
    except UserError as err:
        return Check("database", FAIL, err.message, err.fix)
    except Exception as exc:  # a driver missing, a URL it cannot parse: the words, not the traceback
        return Check("database", FAIL, f"cannot open the database: {type(exc).__name__}: {str(exc)[:200]}",
                     "check TUNEBOT_DATABASE_URL")
    finally:
        if store is not None:
            store.engine.dispose()
    where = store.safe_url
    if found > SCHEMA_VERSION:
        return Check("database", FAIL, f"{where} has schema version {found}, newer than this tunebot's "
                     f"{SCHEMA_VERSION}: a newer tunebot upgraded it.", "upgrade tunebot on this host too")
    return Check("database", OK, f"{where}, schema version {found}")


def check_gpus(settings: Settings) -> Check:
    from runners.hardware import detect, slots_for

    hardware = detect()
    slots = slots_for(hardware, settings.gpus, settings.cpu_slots)
    if not hardware.has_gpu:
        if settings.gpus:
            return Check("GPUs", FAIL, f"TUNEBOT_GPUS={','.join(settings.gpus)} but no GPU is visible "
                         "(nvidia-smi found none).", "install the NVIDIA driver, or unset TUNEBOT_GPUS")
        return Check("GPUs", WARN, f"none visible: jobs run on the CPU ({len(slots)} slot(s)), fp32 only.",
                     "on a GPU host, install the NVIDIA driver so nvidia-smi lists the GPUs")
    known = {g.index for g in hardware.gpus}
    missing = [s for s in slots if s not in known]
    if missing:
        return Check("GPUs", FAIL, f"TUNEBOT_GPUS names {', '.join(missing)}, which this host does not have.",
                     f"TUNEBOT_GPUS={','.join(sorted(known))}")
    names = ", ".join(f"{g.index}: {g.name}" for g in hardware.gpus if g.index in slots)
    return Check("GPUs", OK, names)


def check_llamafactory(settings: Settings) -> Check:
    cli = settings.llamafactory_cli or str(Path(sys.executable).with_name("llamafactory-cli"))
    program = cli.split()[0]
    if not (shutil.which(program) or os.access(program, os.X_OK)):
        return Check("llamafactory", FAIL, f"{program} is not an executable.",
                     "pip install -e '.[runner]' in this environment, or set TUNEBOT_LLAMAFACTORY_CLI")
    try:
        from importlib.metadata import version

        found = version("llamafactory")
    except Exception:
        found = None
    if found is None:
        return Check("llamafactory", WARN, f"{program} exists but this Python cannot import llamafactory: "
                     "requests are checked by the runner only.", "pip install -e '.[runner]'")
    if found != LLAMAFACTORY_VERSION:
        return Check("llamafactory", WARN, f"version {found}; tunebot is tested with {LLAMAFACTORY_VERSION}.",
                     f"pip install llamafactory=={LLAMAFACTORY_VERSION}")
    return Check("llamafactory", OK, f"{found} at {program}")


def check_storage(settings: Settings) -> Check:
    from runners.artifacts import open_storage

    storage_settings = settings.storage
    if storage_settings is None or storage_settings.backend != "oss":
        return Check("artifact storage", OK,
                     f"local folders under {settings.data_dir} (TUNEBOT_STORAGE=local)")
    key = f"doctor/{uuid.uuid4().hex}"
    try:
        storage = open_storage(storage_settings, settings.data_dir)
        storage.probe(key)
    except UserError as err:
        return Check("artifact storage", FAIL, err.message, err.fix)
    where = storage.location("doctor", is_dir=True)
    return Check("artifact storage", OK, f"OSS {where}: put, head and delete work")


# Milliseconds each: `tunebot serve` runs these at every start.
FAST_CHECKS: list[Callable[[Settings], Check]] = [check_data_dir, check_disk, check_database]
ENGINE_CHECKS: list[Callable[[Settings], Check]] = [
    *FAST_CHECKS, check_gpus, check_llamafactory, check_storage,
]


def run_engine_checks(settings: Settings,
                      checks: list[Callable[[Settings], Check]] | None = None) -> list[Check]:
    return [check(settings) for check in (ENGINE_CHECKS if checks is None else checks)]


# --- Slack ---------------------------------------------------------------------------------

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
    checks += run_engine_checks(settings)
    return (1 if any(c.failed for c in checks) else 0), render(checks)


def preflight(settings: Settings) -> list[Check]:
    """The fast engine checks, for `tunebot serve` at start: the problems and warnings only."""
    return [c for c in run_engine_checks(settings, FAST_CHECKS) if c.status != OK]
