"""What a digest schedule is: `/tune schedule daily|weekly|cron …` read into a `ScheduleSpec` (a
crontab in a time zone), and the settings of scheduled posts. Pure: no database, no Slack.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from apscheduler.triggers.cron import CronTrigger

from bot.parsing import COMMAND, Command
from runners.errors import UserError
from runners.settings import Setting, parse_duration

# Digests closer together than this would flood a channel.
MIN_DIGEST_INTERVAL_S = 15 * 60

# -- settings -------------------------------------------------------------------------------------

SCHEDULE_SETTINGS_TABLE: list[Setting] = [
    Setting(
        "TUNEBOT_PROGRESS_EVERY",
        "10",
        "minutes",
        "Progress posts in a running job's thread this often (also at 25/50/75%); `90s`, `1h` work too",
    ),
    Setting(
        "TUNEBOT_STALL_AFTER",
        "15",
        "minutes",
        "A running job with no new log line this long is reported as stalled, once",
    ),
    Setting(
        "TUNEBOT_DIGEST_TZ",
        "UTC",
        "time zone",
        "Time zone of `/tune schedule` times that name none, e.g. `Asia/Shanghai`",
    ),
]


def _minutes(raw: str | None, name: str, default_minutes: float) -> float:
    """'10' means minutes (as documented); '90s', '2h' are durations. Returns seconds."""
    if raw is None or not raw.strip():
        return default_minutes * 60.0
    text = raw.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        seconds = float(text) * 60.0
    else:
        seconds = parse_duration(text, name=name)
    if seconds <= 0:
        raise UserError(f"{name} must be more than zero.", field=name, fix=f"{name}={default_minutes:g}")
    return seconds


@dataclass(frozen=True)
class ScheduleSettings:
    progress_every: float = 600.0  # seconds
    stall_after: float = 900.0  # seconds
    digest_tz: str = "UTC"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ScheduleSettings:
        env = dict(os.environ if env is None else env)
        tz_name = (env.get("TUNEBOT_DIGEST_TZ") or "").strip() or "UTC"
        try:
            tz = resolve_timezone(tz_name, field="TUNEBOT_DIGEST_TZ")
        except UserError as err:
            raise UserError(f"TUNEBOT_DIGEST_TZ: {err.message}", field=err.field, fix=err.fix) from None
        return cls(
            progress_every=_minutes(env.get("TUNEBOT_PROGRESS_EVERY"), "TUNEBOT_PROGRESS_EVERY", 10),
            stall_after=_minutes(env.get("TUNEBOT_STALL_AFTER"), "TUNEBOT_STALL_AFTER", 15),
            digest_tz=tz.key,
        )

    @property
    def sweep_every(self) -> float:
        """How often running jobs are looked at: often enough to catch 25/50/75% and stalls in time."""
        return max(0.5, min(30.0, min(self.progress_every, self.stall_after) / 4))


# -- what a schedule is ---------------------------------------------------------------------------

_DAYS = {"mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6, "sun": 0}
_DAY_WORDS = {
    **{name: num for name, num in _DAYS.items()},
    "monday": 1,
    "tues": 2,
    "tuesday": 2,
    "wednesday": 3,
    "thur": 4,
    "thurs": 4,
    "thursday": 4,
    "friday": 5,
    "saturday": 6,
    "sunday": 0,
}
_DAY_LABEL = {
    1: "Monday",
    2: "Tuesday",
    3: "Wednesday",
    4: "Thursday",
    5: "Friday",
    6: "Saturday",
    0: "Sunday",
}
# APScheduler 3 numbers weekdays from Monday=0 (crontab: Sunday=0); names avoid the mismatch.
_APS_DAY = {1: "mon", 2: "tue", 3: "wed", 4: "thu", 5: "fri", 6: "sat", 0: "sun"}
_CRON_MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_TIME = re.compile(r"^(\d{1,2}):(\d{2})$")


@dataclass(frozen=True)
class ScheduleSpec:
    """A digest's timing: a crontab expression (weekdays as names) in a time zone."""

    kind: str  # daily | weekly | cron
    cron: str  # "0 9 * * mon-fri" style, canonical: what duplicates are recognised by
    tz: str
    label: str  # how people read it: "daily at 09:00 (Asia/Shanghai)"

    def trigger(self) -> CronTrigger:
        minute, hour, day, month, dow = self.cron.split()
        return CronTrigger(
            minute=minute, hour=hour, day=day, month=month, day_of_week=dow, timezone=ZoneInfo(self.tz)
        )


def _zone(name: str) -> ZoneInfo | None:
    if not name or name.startswith(("/", ".")):
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def resolve_timezone(name: str, *, field: str = "timezone") -> ZoneInfo:
    """'Asia/Shanghai', 'asia/shanghai', 'UTC' -> ZoneInfo; a UserError with a guess otherwise."""
    text = name.strip()
    if text.lower() in ("utc", "gmt", "z"):
        return ZoneInfo("UTC")
    zone = _zone(text)
    if zone is None and text:
        by_lower = {key.lower(): key for key in available_timezones()}
        if text.lower() in by_lower:
            zone = _zone(by_lower[text.lower()])
    if zone is not None:
        return zone
    guesses = difflib.get_close_matches(text, sorted(available_timezones()), n=1, cutoff=0.6)
    hint = f" Did you mean `{guesses[0]}`?" if guesses else ""
    raise UserError(
        f"`{name}` is not a time zone I know.{hint}",
        field=field,
        fix="an IANA name such as `Asia/Shanghai`, `Europe/Berlin`, `America/New_York` or `UTC`",
    )


def parse_time_of_day(text: str) -> tuple[int, int]:
    match = _TIME.match(text.strip())
    if match:
        hour, minute = int(match.group(1)), int(match.group(2))
        if hour <= 23 and minute <= 59:
            return hour, minute
    raise UserError(
        f"`{text}` is not a time of day: write it as HH:MM on a 24-hour clock.",
        field="time",
        fix=f"{COMMAND} schedule daily 09:00",
    )


def parse_weekday(text: str) -> int:
    number = _DAY_WORDS.get(text.strip().lower().rstrip("."))
    if number is None:
        raise UserError(
            f"`{text}` is not a day of the week.",
            field="day",
            fix=f"{COMMAND} schedule weekly mon 09:00 (mon, tue, wed, thu, fri, sat or sun)",
        )
    return number


def _cron_error(expr: str, problem: str) -> UserError:
    return UserError(
        f"`{expr}` is not a cron expression I can use: {problem}",
        field="cron",
        fix=f'{COMMAND} schedule cron "0 9 * * 1-5"  (minute hour day-of-month month day-of-week)',
    )


def _day_number(token: str, expr: str) -> int:
    word = token.lower()
    if word in _DAYS:
        return _DAYS[word]
    if word.isdigit() and 0 <= int(word) <= 7:
        return int(word) % 7
    raise _cron_error(expr, f"`{token}` is not a day of the week (0-7 or sun-sat).")


def weekday_field(field: str, expr: str) -> str:
    """A crontab day-of-week field (0 or 7 = Sunday) as APScheduler 3 reads it: names."""
    days: set[int] = set()
    for item in field.split(","):
        base, _, step_text = item.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise _cron_error(expr, f"`{item}` has a bad step.")
            step = int(step_text)
        if base == "*":
            first, last = 0, 6
        elif "-" in base:
            a, _, b = base.partition("-")
            first, last = _day_number(a, expr), _day_number(b, expr)
            if b == "7" or b.lower() == "sun":
                last = 7
            if last < first:
                raise _cron_error(expr, f"`{item}` runs backwards.")
        else:
            first = _day_number(base, expr)
            last = 6 if step_text else first
        days.update(d % 7 for d in range(first, last + 1, step))
    if len(days) == 7:
        return "*"
    return ",".join(_APS_DAY[d] for d in (1, 2, 3, 4, 5, 6, 0) if d in days)


def _check_cadence(spec: ScheduleSpec, expr: str) -> None:
    trigger = spec.trigger()
    now = datetime.now(timezone.utc)
    if trigger.get_next_fire_time(None, now) is None:
        raise _cron_error(expr, "it never fires.")
    period = period_of(trigger, now, firings=6)
    if period < MIN_DIGEST_INTERVAL_S:
        raise UserError(
            f"`{expr}` would post a digest every {period / 60:.0f} min; "
            f"digests go out at most every {MIN_DIGEST_INTERVAL_S // 60} minutes.",
            field="cron",
            fix=f'{COMMAND} schedule cron "0 * * * *"  (hourly)',
        )


def parse_schedule(command: Command, default_tz: str) -> ScheduleSpec:
    """`schedule daily|weekly|cron …` -> ScheduleSpec; a UserError says what is wrong."""
    args = list(command.args)
    if command.name == "schedule daily":
        hour, minute = parse_time_of_day(args[0])
        tz = resolve_timezone(args[1] if len(args) > 1 else default_tz)
        spec = ScheduleSpec(
            "daily", f"{minute} {hour} * * *", tz.key, f"daily at {hour:02d}:{minute:02d} ({tz.key})"
        )
    elif command.name == "schedule weekly":
        day = parse_weekday(args[0])
        hour, minute = parse_time_of_day(args[1])
        tz = resolve_timezone(args[2] if len(args) > 2 else default_tz)
        spec = ScheduleSpec(
            "weekly",
            f"{minute} {hour} * * {_APS_DAY[day]}",
            tz.key,
            f"weekly on {_DAY_LABEL[day]} at {hour:02d}:{minute:02d} ({tz.key})",
        )
    elif command.name == "schedule cron":
        if len(args) > 2:  # typed without quotes: the fields as words, then perhaps a time zone
            if len(args) not in (5, 6):
                raise _cron_error(
                    " ".join(args),
                    f"it has {len(args)} fields, not 5 (minute hour day-of-month month day-of-week).",
                )
            args = [" ".join(args[:5]), *args[5:]]
        raw = args[0].strip()
        tz_arg = args[1] if len(args) > 1 else None
        expr = _CRON_MACROS.get(raw.lower(), raw)
        fields = expr.split()
        if len(fields) != 5:
            raise _cron_error(
                raw,
                f"it has {len(fields)} field{'s' if len(fields) != 1 else ''}, "
                "not 5 (minute hour day-of-month month day-of-week).",
            )
        minute, hour, day, month, dow = fields
        if day not in ("*", "?") and dow not in ("*", "?"):
            raise _cron_error(
                raw,
                "it limits both the day of the month and the day of the week, which "
                "cron reads as either-or; make two schedules instead.",
            )
        day = "*" if day == "?" else day
        dow = weekday_field("*" if dow == "?" else dow, raw)
        tz = resolve_timezone(tz_arg or default_tz)
        spec = ScheduleSpec(
            "cron", f"{minute} {hour} {day} {month} {dow}", tz.key, f'cron "{raw}" ({tz.key})'
        )
        try:
            spec.trigger()
        except ValueError as exc:
            raise _cron_error(raw, f"{exc}.") from None
    else:
        raise UserError(f"`{command.name}` does not make a schedule.", field="command")
    _check_cadence(spec, args[0])
    return spec


def period_of(trigger: CronTrigger, at: datetime, *, firings: int = 4) -> float:
    """The shortest time between two of the trigger's next `firings` firings, in seconds (a day
    when it fires once or never)."""
    fires = []
    cursor = at
    for _ in range(firings):
        nxt = trigger.get_next_fire_time(None, cursor)
        if nxt is None:
            break
        fires.append(nxt)
        cursor = nxt + timedelta(seconds=1)
    gaps = [(b - a).total_seconds() for a, b in zip(fires, fires[1:], strict=False)]
    return min(gaps) if gaps else 86400.0
