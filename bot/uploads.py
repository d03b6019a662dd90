"""Datasets shared in Slack: download a file with the bot token, check it, register it.

Two ways in: share the file with the message `/tune dataset add NAME` (or `@tunebot dataset add
NAME`), or run `/tune dataset add NAME` and answer the bot's prompt with the file in its thread.
The prompt is remembered in the database (the answer may come to another process, or after a
restart).
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from typing import Any

from slack_sdk import WebClient
from sqlalchemy import delete
from sqlmodel import Field, select

from bot.state.tables import BotModel, BotTables, ensure_tables
from runners import datasets
from runners.errors import UserError
from runners.job import now
from runners.store import Store

log = logging.getLogger(__name__)

MAX_BYTES = 512 * 1024 * 1024
PROMPT_VALID_S = 24 * 3600
DATASET_SUFFIXES = (".json", ".jsonl")


class DatasetPrompt(BotModel, table=True):
    """The bot asked `user` for the file of dataset `name`, in the thread of message `ts`."""

    __tablename__ = "slack_dataset_prompt"

    channel: str = Field(primary_key=True)
    ts: str = Field(primary_key=True)
    user: str = ""
    name: str = ""
    at: float = Field(default_factory=now)


DATASET_PROMPT_TABLES = BotTables("dataset_prompt", (DatasetPrompt.__table__,))


def ensure_table(store: Store) -> None:
    ensure_tables(store.engine, DATASET_PROMPT_TABLES)


def remember_prompt(store: Store, channel: str, ts: str, user: str, name: str) -> None:
    """Remember (or, asked again in the same thread, replace) the prompt of thread `ts`."""
    with store.session() as s:
        s.merge(DatasetPrompt(channel=channel, ts=ts, user=user, name=name, at=now()))
        s.commit()


def prompt_of(store: Store, channel: str, thread_ts: str) -> DatasetPrompt | None:
    with store.session() as s:
        prompt = s.get(DatasetPrompt, (channel, thread_ts))
    if prompt is None or prompt.at < now() - PROMPT_VALID_S:
        return None
    return prompt


def forget_prompt(store: Store, channel: str, ts: str) -> None:
    with store.session() as s:
        s.exec(delete(DatasetPrompt).where(DatasetPrompt.channel == channel, DatasetPrompt.ts == ts))
        s.commit()


def pick_file(files: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON/JSONL file among those shared; a UserError when there is none."""
    for file in files:
        name = str(file.get("name") or file.get("title") or "").lower()
        if name.endswith(DATASET_SUFFIXES) or file.get("filetype") in ("json", "jsonl"):
            return file
    names = ", ".join(str(f.get("name") or f.get("id")) for f in files) or "no file"
    raise UserError(f"I need a .json or .jsonl file for a dataset; this message has {names}.", field="file",
                    fix="share the data as train.jsonl (one JSON object per line) or train.json (one array)")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's signature
        return None


def download(client: WebClient, file: dict[str, Any], *, max_bytes: int = MAX_BYTES) -> bytes:
    """A shared file's bytes, fetched from `url_private` with the bot token."""
    if not (file.get("url_private_download") or file.get("url_private")):
        file = client.files_info(file=file["id"])["file"]
    size = int(file.get("size") or 0)
    if size > max_bytes:
        raise UserError(f"{file.get('name')} is {size / 2**20:,.0f} MiB; datasets added from Slack may be "
                        f"at most {max_bytes / 2**20:,.0f} MiB.", field="file",
                        fix="put it on the GPU host and run `tunebot dataset add NAME FILE` there")
    url = file.get("url_private_download") or file["url_private"]
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {client.token}"})
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=60) as response:  # noqa: S310 - Slack's own file URL
            content_type = response.headers.get("Content-Type", "")
            data = response.read(max_bytes + 1)
    except urllib.error.HTTPError as exc:
        if exc.code in (301, 302, 303, 307, 308):
            raise _sign_in_page() from None
        raise UserError(f"Slack answered HTTP {exc.code} when I fetched {file.get('name')}.", field="file",
                        fix="share the file again") from None
    except (urllib.error.URLError, OSError) as exc:
        raise UserError(f"I could not fetch {file.get('name')} from Slack: {getattr(exc, 'reason', exc)}.",
                        field="file", fix="share the file again in a minute") from None
    if content_type.startswith("text/html"):
        raise _sign_in_page()
    if len(data) > max_bytes:
        raise UserError(f"{file.get('name')} is larger than {max_bytes / 2**20:,.0f} MiB.", field="file")
    return data


def _sign_in_page() -> UserError:
    # Without files:read (or with a token of another workspace) url_private answers a sign-in page.
    return UserError("Slack did not let me read the file: the app needs the files:read scope.", field="file",
                     fix="an admin adds files:read under OAuth & Permissions and reinstalls the app")


def register(client: WebClient, data_dir: Any, name: str, file: dict[str, Any]) -> datasets.DatasetInfo:
    """Download `file` and register it as dataset `name` (every row checked first)."""
    datasets.validate_dataset_name(name)
    data = download(client, file)
    return datasets.add_dataset(data_dir, name, data, filename=str(file.get("name") or "upload.jsonl"))


def prompts(store: Store) -> list[DatasetPrompt]:
    with store.session() as s:
        return list(s.exec(select(DatasetPrompt)).all())
