"""Who may spend GPU time, who may stop a job, and the audit trail of what people did.

Admins may do anything anywhere. Others may start work (train, eval, export, deploy, resume,
dataset add, chat with a deployment) when they pass both lists that are set: TUNEBOT_ALLOWED_USERS
(or `*`) and TUNEBOT_ALLOWED_CHANNELS (or `*`). With both lists empty nobody but the admins may:
a fresh install spends no GPU time until someone says who may. Reading (help, status, jobs,
datasets) is open to everyone. Cancel and undeploy: the job's owner or an admin (the engine checks
ownership; this module says who is an admin).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runners.errors import UserError
from runners.store import Store

from .settings import BotSettings

EVERYONE = "*"


@dataclass(frozen=True)
class Access:
    admins: frozenset[str] = frozenset()
    allowed_users: frozenset[str] = frozenset()
    allowed_channels: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, settings: BotSettings) -> Access:
        return cls(settings.admins, settings.allowed_users, settings.allowed_channels)

    @property
    def admins_only(self) -> bool:
        return not self.allowed_users and not self.allowed_channels

    def is_admin(self, user: str) -> bool:
        return bool(user) and user in self.admins

    def may_spend(self, user: str, channel: str) -> bool:
        """May `user` start GPU work from `channel`?"""
        if self.is_admin(user):
            return True
        if not user or self.admins_only:
            return False
        user_ok = not self.allowed_users or EVERYONE in self.allowed_users or user in self.allowed_users
        channel_ok = (not self.allowed_channels or EVERYONE in self.allowed_channels
                      or channel in self.allowed_channels)
        return user_ok and channel_ok

    def refusal(self, user: str, channel: str, what: str = "start jobs") -> UserError:
        """The polite no, naming what to ask for."""
        if self.admins_only:
            why = "only tunebot's admins may, until the operator lists who else may (TUNEBOT_ALLOWED_USERS)."
            fix = "ask an admin to run it, or to add you to TUNEBOT_ALLOWED_USERS"
        elif self.allowed_users and EVERYONE not in self.allowed_users and user not in self.allowed_users:
            why = "you are not on tunebot's list of people who may spend GPU time (TUNEBOT_ALLOWED_USERS)."
            fix = "ask an admin to add you, or to run it for you"
        else:
            why = "jobs may not be started from this channel (TUNEBOT_ALLOWED_CHANNELS)."
            fix = "run it in one of the channels tunebot works in, or ask an admin to add this one"
        return UserError(f"Sorry, you may not {what} here: {why}", field="user", fix=fix)

    def require(self, user: str, channel: str, what: str = "start jobs", *,
                store: Store | None = None) -> None:
        """Refuse unless `user` may spend here; a refusal is recorded in the audit table too."""
        if not self.may_spend(user, channel):
            if store is not None:
                audit(store, user, "refused", None, what=what, channel=channel)
            raise self.refusal(user, channel, what)

    def summary(self, user: str | None = None, channel: str | None = None) -> str:
        """Who may spend GPU time, in words for `help` (plain text: no mentions)."""
        if self.admins_only:
            text = (f"Only tunebot's {len(self.admins)} admin(s) may start jobs: TUNEBOT_ALLOWED_USERS and "
                    "TUNEBOT_ALLOWED_CHANNELS are empty.")
        else:
            if not self.allowed_users or EVERYONE in self.allowed_users:
                who = "Everyone"
            else:
                who = f"{len(self.allowed_users)} listed people"
            if not self.allowed_channels or EVERYONE in self.allowed_channels:
                where = "in any channel"
            else:
                where = f"in {len(self.allowed_channels)} listed channel(s)"
            text = f"{who} may start jobs {where}; admins anywhere."
        text += " Only a job's owner or an admin may cancel or undeploy it."
        if user is not None:
            allowed = self.may_spend(user, channel or "")
            text += " You may start jobs here." if allowed else " You may not start jobs here."
        return text


def audit(store: Store, user: str, action: str, job_id: int | None = None, **detail: Any) -> None:
    """Record who did what (the engine records submits, cancels and resumes itself)."""
    store.audit(user or "unknown", action, job_id, **{k: v for k, v in detail.items() if v is not None})
