"""Engine settings: one typed object read from the environment.

Every variable is listed in the README's table; `describe()` renders that table's rows so the
README and the code cannot drift apart silently (a test compares them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .artifacts.base import StorageSettings
from .env import Setting, parse_duration, parse_flag
from .errors import UserError

__all__ = ["SETTINGS_TABLE", "Setting", "Settings", "parse_duration"]

def _path(env: dict[str, str], name: str) -> Path | None:
    value = _env(env, name)
    return Path(os.path.expanduser(value)) if value else None


def _env(env: dict[str, str], name: str, default: str | None = None) -> str | None:
    value = env.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip()


def _int(env: dict[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = _env(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UserError(
            f"{name}={raw!r} is not a whole number.", field=name, fix=f"{name}={default}"
        ) from None
    if value < minimum:
        raise UserError(f"{name} must be at least {minimum}.", field=name, fix=f"{name}={default}")
    return value


def _duration(env: dict[str, str], name: str, default: str) -> float:
    return parse_duration(_env(env, name, default) or default, name=name, example=default)


def _list(env: dict[str, str], name: str) -> list[str] | None:
    raw = _env(env, name)
    if raw is None:
        return None
    return [item.strip() for item in raw.split(",") if item.strip()]


def _flag(env: dict[str, str], name: str, default: str) -> bool:
    value = parse_flag(_env(env, name, default) or default)
    if value is None:
        raise UserError(f"{name} must be on or off.", field=name, fix=f"{name}={default}")
    return value


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise UserError(
            f"TUNEBOT_LOG_LEVEL={text!r} is not a log level.",
            field="TUNEBOT_LOG_LEVEL",
            fix="TUNEBOT_LOG_LEVEL=INFO (or DEBUG, WARNING, ERROR)",
        )
    return level


def _bounded(value: float, name: str, low: float, high: float) -> float:
    if not low <= value <= high:
        raise UserError(f"{name} must be between {low:g} s and {high:g} s.", field=name, fix=f"{name}=1s")
    return value


def default_data_dir() -> Path:
    return Path(os.path.expanduser("~/.tunebot"))


# name, default as shown, unit, meaning
SETTINGS_TABLE: list[Setting] = [
    Setting(
        "TUNEBOT_DATA_DIR", "~/.tunebot", "path", "Jobs' outputs, logs, datasets, caches, the SQLite database"
    ),
    Setting(
        "TUNEBOT_DATABASE_URL",
        "sqlite:///$TUNEBOT_DATA_DIR/tunebot.db",
        "URL",
        "SQLAlchemy URL; `postgresql+psycopg://user:pw@host/db` for PostgreSQL",
    ),
    Setting("TUNEBOT_GPUS", "all visible", "list", "GPU indices the runner may use, e.g. `0,1,2,3`"),
    Setting("TUNEBOT_CPU_SLOTS", "1", "jobs", "Jobs run at once when the host has no GPU"),
    Setting(
        "TUNEBOT_BACKEND",
        "local",
        "name",
        "Where job processes run: `local` (this host) or `ray` (a Ray cluster)",
    ),
    Setting(
        "TUNEBOT_RAY_ADDRESS", "(none)", "URL", "The Ray cluster's dashboard, e.g. `http://10.0.0.5:8265`"
    ),
    Setting(
        "TUNEBOT_RAY_NAMESPACE",
        "tunebot",
        "name",
        "Start of Ray submission ids (`tunebot-12-a1`): one per database",
    ),
    Setting(
        "TUNEBOT_RAY_SHARED_DIR",
        "$TUNEBOT_DATA_DIR/artifacts",
        "path",
        "With TUNEBOT_STORAGE=local: a folder every Ray node mounts, where Ray jobs keep their artifacts",
    ),
    Setting("TUNEBOT_RAY_CLI", "llamafactory-cli", "command", "The `llamafactory-cli` on the Ray nodes"),
    Setting(
        "TUNEBOT_NODE_DIR", "$TMPDIR/tunebot-node", "path", "On a Ray node: where a job's run folder goes"
    ),
    Setting(
        "TUNEBOT_MAX_JOBS_PER_USER", "2", "jobs", "Running jobs (deployments included) one user may hold"
    ),
    Setting("TUNEBOT_CANCEL_GRACE", "30s", "duration", "Time between SIGTERM and SIGKILL on cancel"),
    Setting("TUNEBOT_DEFAULT_MODEL", "(none)", "path/id", "Model used when a train request names none"),
    Setting(
        "TUNEBOT_MODEL_ROOTS",
        "(none)",
        "paths",
        "Folders outside the data dir that jobs may read models from, e.g. `/models,/mnt/llm`",
    ),
    Setting(
        "TUNEBOT_ALLOW_PUBLISHING",
        "off",
        "on/off",
        "Let jobs push to a model hub or report to SwanLab/W&B/Trackio (`push_to_hub`, `report_to`…)",
    ),
    Setting("TUNEBOT_DEFAULT_DATASET", "(none)", "name", "Dataset used when a train request names none"),
    Setting(
        "TUNEBOT_LLAMAFACTORY_CLI", "llamafactory-cli beside Python", "path", "The `llamafactory-cli` to run"
    ),
    Setting(
        "TUNEBOT_WEBCHAT_CLI",
        "(none)",
        "path",
        "`llamafactory-cli` of a separate environment with gradio, enabling `mode=webchat`",
    ),
    Setting("TUNEBOT_DEPLOY_HOST", "127.0.0.1", "host", "Address deployments' API servers bind to"),
    Setting("TUNEBOT_PUBLIC_URL", "(bind address)", "URL", "Host people reach deployments and chat pages at"),
    Setting(
        "TUNEBOT_DEPLOY_TIMEOUT", "10m", "duration", "How long a deployment may take to answer `/v1/models`"
    ),
    Setting(
        "TUNEBOT_DEPLOY_IDLE", "2h", "duration", "A deployment unused this long is stopped, freeing its slot"
    ),
    Setting("TUNEBOT_DEPLOY_API_KEY", "on", "on/off", "Protect each deployment with its own API key"),
    Setting("TUNEBOT_WEB_HOST", "127.0.0.1", "host", "Address of the chat-page server"),
    Setting(
        "TUNEBOT_WEB_PORT", "7860", "port", "Port of the chat-page server (the seed's web port); 0 = any"
    ),
    Setting(
        "TUNEBOT_ESTIMATE",
        "on",
        "on/off",
        "Count a train job's dataset tokens before it runs: ETA, `fast` batch shape, true tokens/s",
    ),
    Setting("TUNEBOT_POLL_INTERVAL", "1s", "duration", "How often the runner checks its jobs and the queue"),
    Setting("TUNEBOT_LOG_LEVEL", "INFO", "level", "Python log level"),
]


@dataclass
class Settings:
    data_dir: Path = field(default_factory=default_data_dir)
    database_url: str | None = None
    gpus: list[str] | None = None
    cpu_slots: int = 1
    backend: str = "local"  # runners.backends: which one runs the job processes
    ray_address: str | None = None
    ray_namespace: str = "tunebot"
    ray_shared_dir: Path | None = None
    ray_cli: str = "llamafactory-cli"
    max_jobs_per_user: int = 2
    cancel_grace: float = 30.0
    default_model: str | None = None
    default_dataset: str | None = None
    # Where path-valued job arguments may point besides the data dir (runners/llamafactory/safety.py).
    model_roots: list[Path] = field(default_factory=list)
    allow_publishing: bool = False
    llamafactory_cli: str | None = None
    webchat_cli: str | None = None
    deploy_host: str = "127.0.0.1"
    public_url: str | None = None
    deploy_timeout: float = 600.0
    deploy_idle: float = 7200.0
    deploy_api_key: bool = True
    web_host: str = "127.0.0.1"
    web_port: int = 7860
    poll_interval: float = 1.0
    log_level: str = "INFO"
    # Count dataset tokens before a train job runs (ETA, the fast plan, true tokens/s). Off unless
    # asked for when built in code (tests); `from_env` turns it on by default.
    estimate: bool = False
    # Extra environment for job subprocesses (tests use it; never secrets from users).
    job_env: dict[str, str] = field(default_factory=dict)
    # The artifact store (runners/artifacts/base.py reads its own TUNEBOT_STORAGE / TUNEBOT_OSS_* variables).
    # None = the local default (the job folders), without importing oss2.
    storage: Any = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        data_dir = Path(os.path.expanduser(_env(env, "TUNEBOT_DATA_DIR") or str(default_data_dir())))
        return cls(
            data_dir=data_dir,
            database_url=_env(env, "TUNEBOT_DATABASE_URL"),
            gpus=_list(env, "TUNEBOT_GPUS"),
            cpu_slots=_int(env, "TUNEBOT_CPU_SLOTS", 1, minimum=1),
            backend=(_env(env, "TUNEBOT_BACKEND", "local") or "local").strip().lower(),
            ray_address=_env(env, "TUNEBOT_RAY_ADDRESS"),
            ray_namespace=(_env(env, "TUNEBOT_RAY_NAMESPACE", "tunebot") or "tunebot").strip(),
            ray_shared_dir=_path(env, "TUNEBOT_RAY_SHARED_DIR"),
            ray_cli=_env(env, "TUNEBOT_RAY_CLI", "llamafactory-cli") or "llamafactory-cli",
            max_jobs_per_user=_int(env, "TUNEBOT_MAX_JOBS_PER_USER", 2, minimum=1),
            cancel_grace=_duration(env, "TUNEBOT_CANCEL_GRACE", "30s"),
            default_model=_env(env, "TUNEBOT_DEFAULT_MODEL"),
            default_dataset=_env(env, "TUNEBOT_DEFAULT_DATASET"),
            model_roots=[Path(os.path.expanduser(p)) for p in _list(env, "TUNEBOT_MODEL_ROOTS") or []],
            allow_publishing=_flag(env, "TUNEBOT_ALLOW_PUBLISHING", "off"),
            llamafactory_cli=_env(env, "TUNEBOT_LLAMAFACTORY_CLI"),
            webchat_cli=_env(env, "TUNEBOT_WEBCHAT_CLI"),
            deploy_host=_env(env, "TUNEBOT_DEPLOY_HOST", "127.0.0.1") or "127.0.0.1",
            public_url=_env(env, "TUNEBOT_PUBLIC_URL"),
            deploy_timeout=_duration(env, "TUNEBOT_DEPLOY_TIMEOUT", "10m"),
            deploy_idle=_duration(env, "TUNEBOT_DEPLOY_IDLE", "2h"),
            deploy_api_key=_flag(env, "TUNEBOT_DEPLOY_API_KEY", "on"),
            web_host=_env(env, "TUNEBOT_WEB_HOST", "127.0.0.1") or "127.0.0.1",
            web_port=_int(env, "TUNEBOT_WEB_PORT", 7860, minimum=0),
            poll_interval=_bounded(
                _duration(env, "TUNEBOT_POLL_INTERVAL", "1s"), "TUNEBOT_POLL_INTERVAL", 0.05, 10
            ),
            log_level=_log_level(_env(env, "TUNEBOT_LOG_LEVEL", "INFO") or "INFO"),
            estimate=_flag(env, "TUNEBOT_ESTIMATE", "on"),
            storage=_storage_settings(env),
        )

    # Derived locations, all under the data dir.
    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'tunebot.db'}"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def calibration_dir(self) -> Path:
        """Each runner host's table of measured training speeds (runners/speed/estimate.py)."""
        return self.data_dir / "calibration"


def _storage_settings(env: dict[str, str]) -> StorageSettings:
    return StorageSettings.from_env(env)
