"""`tunebot serve` as people run it: a fresh process, real signals, over HTTP and Socket Mode."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from runners.store import Store
from tests.slack_fixtures import db_url, slack
from tests.slack_signing import HUMAN_USER_ID, SIGNING_SECRET, free_port, post, signed_slash_command
from tests.socket_standin import SocketModeStandin

__all__ = ["db_url", "slack"]  # fixtures

ROOT = Path(__file__).resolve().parents[1]


class Served:
    """A `tunebot serve` child process and its output, line by line."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "serve", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if text in line:
                return line
        raise AssertionError(f"no {text!r} in the output:\n{''.join(self.output)}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)


@pytest.fixture
def env(tmp_path, slack, shared_models) -> dict[str, str]:
    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(shared_models, target_is_directory=True)
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "TUNEBOT_"))},
        "TUNEBOT_DATA_DIR": str(data),
        "TUNEBOT_WEB_PORT": "0",
        "TUNEBOT_LOG_LEVEL": "WARNING",
        "SLACK_BOT_TOKEN": slack.bot_token,
        "SLACK_APP_TOKEN": slack.app_token,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": slack.base_url,
        "TUNEBOT_ALLOWED_USERS": HUMAN_USER_ID,
        "HF_HUB_OFFLINE": "1",
    }


@pytest.fixture
def served() -> Iterator[list[Served]]:
    started: list[Served] = []
    yield started
    for child in started:
        if child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait(10)


def test_http_serve_acks_within_3s_while_the_first_check_loads_llamafactory_and_stops_on_sigterm(
    env, slack, served
) -> None:
    port = free_port()
    child = Served(["--http", "--host", "127.0.0.1", "--port", str(port), "--no-runner"], env)
    served.append(child)
    child.wait_for("serving Slack requests on")
    url = f"http://127.0.0.1:{port}/slack/events"
    result = post(url, signed_slash_command("train tiny", response_url=slack.new_response_url()))
    assert result.status == 200 and "Checking" in result.text
    assert result.elapsed_s < 3.0  # this process has not imported LLaMA-Factory's parser yet
    answer = slack.wait_for(lambda: slack.responses(), timeout=120, what="the queued answer")[0]
    assert "Train #1" in answer["text"], answer["text"]
    assert post(url, signed_slash_command("jobs", secret="wrong")).status == 401
    db = Store(f"sqlite:///{Path(env['TUNEBOT_DATA_DIR']) / 'tunebot.db'}")
    with db.engine.connect() as conn:  # the schedules' lease: this serve runs the one scheduler
        holders = conn.execute(text("SELECT holder FROM tunebot_scheduler_lease")).scalars().all()
    db.engine.dispose()
    assert len(holders) == 1 and holders[0]
    assert child.stop(signal.SIGTERM) == 0
    assert "tunebot: stopping" in "".join(child.output)
    store = Store(f"sqlite:///{Path(env['TUNEBOT_DATA_DIR']) / 'tunebot.db'}")
    [job] = store.list_jobs()
    assert (job.state, job.user) == ("queued", HUMAN_USER_ID)  # --no-runner: a worker would run it
    store.engine.dispose()


def test_socket_mode_serve_connects_answers_and_stops_on_sigint(env, slack, served) -> None:
    with SocketModeStandin(slack) as sock:
        child = Served(["--no-runner"], env)
        served.append(child)
        child.wait_for("connected to Slack (Socket Mode)")
        sock.wait_connected(timeout=10)
        ack = sock.wait_for_ack(sock.push_slash_command("help"), timeout=10)
        assert "tunebot help" in ack.payload["text"]
        assert child.stop(signal.SIGINT) == 0


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"SLACK_BOT_TOKEN": ""}, "SLACK_BOT_TOKEN is not set"),
        ({"SLACK_BOT_TOKEN": "xoxb-revoked"}, "Slack refused SLACK_BOT_TOKEN (invalid_auth)"),
        ({"SLACK_APP_TOKEN": ""}, "SLACK_APP_TOKEN is not set; Socket Mode needs it"),
        ({"SLACK_APP_TOKEN": "xoxb-wrong-kind"}, "SLACK_APP_TOKEN is not an app-level token"),
        ({"SLACK_API_URL": "http://127.0.0.1:9/api/"}, "Cannot reach Slack at http://127.0.0.1:9/api/"),
    ],
)
def test_a_missing_or_refused_token_is_a_plain_message_and_exit_code_2(env, change, said) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bot.cli", "serve", "--no-runner"],
        cwd=ROOT,
        env={**env, **change},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert said in done.stderr and "Traceback" not in done.stderr
    assert "xoxb-revoked" not in done.stderr + done.stdout  # tokens are never printed
