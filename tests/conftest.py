"""Shared fixtures: a real PostgreSQL server, a database per test on either engine, settings."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from runners.settings import Settings
from runners.store import Store
from tests.ray_head import ray_head  # noqa: F401 (session fixture: one real Ray head for the Ray tests)

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _as_postgres(argv: list[str]) -> list[str]:
    # initdb and pg_ctl refuse to run as root.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    """URL of a PostgreSQL server: TUNEBOT_TEST_POSTGRES_URL, or one started here for the session."""
    url = os.environ.get("TUNEBOT_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.fail(
            "PostgreSQL is not installed (initdb/pg_ctl); `.ci/run` installs it, or set "
            "TUNEBOT_TEST_POSTGRES_URL to a server"
        )
    base = Path(f"/tmp/tunebot-pg-{uuid.uuid4().hex[:8]}")
    base.mkdir(mode=0o777)
    data = base / "data"
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
    port = _free_port()
    subprocess.run(
        _as_postgres([initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8"]),
        check=True,
        capture_output=True,
    )
    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    subprocess.run(
        _as_postgres([pg_ctl, "-D", str(data), "-o", opts, "-l", str(base / "log"), "-w", "start"]),
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            _as_postgres([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]), capture_output=True
        )
        shutil.rmtree(base, ignore_errors=True)


def _new_pg_database(server_url: str) -> str:
    import psycopg

    name = f"tb_{uuid.uuid4().hex[:12]}"
    plain = server_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """A fresh, empty database on each engine."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tunebot.db'}"
    return _new_pg_database(request.getfixturevalue("pg_server"))


@pytest.fixture
def store(db_url) -> Store:
    s = Store(db_url)
    s.migrate()
    yield s
    s.engine.dispose()


@pytest.fixture(scope="session")
def shared_models(tmp_path_factory) -> Path:
    """The tiny model is built once per test session and shared (read-only) by every data dir."""
    from runners.demo.tinymodel import ensure_tiny_model

    models = tmp_path_factory.mktemp("models")
    ensure_tiny_model(models)
    return models


@pytest.fixture
def settings(tmp_path, db_url, shared_models) -> Settings:
    data = tmp_path / "data"
    data.mkdir()
    # Every data dir sees the session's tiny model under models/.
    (data / "models").symlink_to(shared_models, target_is_directory=True)
    return Settings(
        data_dir=data,
        database_url=db_url,
        poll_interval=0.2,
        cancel_grace=5.0,
        web_port=0,
        deploy_timeout=120.0,
    )


def wait_until(predicate, timeout: float = 60.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
