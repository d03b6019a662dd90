"""How a job's process is started: the `llamafactory-cli` command line and its environment."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

from .. import deploy
from ..job import Job, JobKind
from ..settings import Settings

# A job may run a model repository's own code (trust_remote_code): none of the bot's secrets.
_SECRET_PREFIXES = ("SLACK_", "TUNEBOT_OSS_", "TUNEBOT_DATABASE_URL")


def llamafactory_cli(settings: Settings) -> list[str]:
    """The command that runs LLaMA-Factory: TUNEBOT_LLAMAFACTORY_CLI (may carry arguments, e.g.
    `python3 -m llamafactory.cli`), else `llamafactory-cli` beside this Python, else on PATH."""
    if settings.llamafactory_cli:
        return shlex.split(settings.llamafactory_cli)
    beside = Path(sys.executable).parent / "llamafactory-cli"
    if beside.exists():
        return [str(beside)]
    return [shutil.which("llamafactory-cli") or "llamafactory-cli"]


def command_argv(job: Job, config: Path, settings: Settings) -> list[str]:
    """`llamafactory-cli train|export|api|webchat config.yaml` for the job's kind."""
    cli = llamafactory_cli(settings)
    if job.kind in (JobKind.TRAIN.value, JobKind.EVAL.value):
        return [*cli, "train", str(config)]
    if job.kind == JobKind.EXPORT.value:
        return [*cli, "export", str(config)]
    if job.mode == "webchat":
        return [*shlex.split(settings.webchat_cli or ""), "webchat", str(config)]
    return [*cli, "api", str(config)]


def is_secret_variable(name: str) -> bool:
    return name.startswith(_SECRET_PREFIXES)


def command_env(job: Job, slots: list[str], settings: Settings, *, has_gpu: bool) -> dict[str, str]:
    """The job process's environment: this one without secrets, its caches, its GPUs."""
    env = {k: v for k, v in os.environ.items() if not is_secret_variable(k)}
    cache = settings.cache_dir
    env.update(
        HF_HOME=str(cache / "huggingface"),
        MPLCONFIGDIR=str(cache / "matplotlib"),
        # Libraries write caches and configs under HOME (~/.cache, ~/.config, ~/.triton…): the
        # data dir's, never the person's who runs tunebot.
        HOME=str(cache / "home"),
        XDG_CACHE_HOME=str(cache / "home" / ".cache"),
        XDG_CONFIG_HOME=str(cache / "home" / ".config"),
        XDG_DATA_HOME=str(cache / "home" / ".local" / "share"),
        # torch.compile's cache (else under /tmp): kept with the runner's data, so the second job
        # of a model compiles in ~20 s instead of ~110 s, and the estimate can know which it is.
        TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor"),
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
        DISABLE_VERSION_CHECK="1",
        # torchrun (multi-GPU) is called bare by LLaMA-Factory's launcher: this venv's bin/ first.
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    model = str(job.args.get("model_name_or_path", ""))
    if Path(model).is_absolute() and Path(model).exists():
        env["HF_HUB_OFFLINE"] = "1"  # a local model: no hub round trips (they cost ~1 min to fail)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(slots) if has_gpu else ""
    if len(slots) > 1 and job.kind in (JobKind.TRAIN.value, JobKind.EVAL.value):
        env.update(
            FORCE_TORCHRUN="1",
            NPROC_PER_NODE=str(len(slots)),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(deploy.free_port()),
        )
    else:
        env.pop("FORCE_TORCHRUN", None)
    for key in ("API_KEY", "API_PORT", "API_HOST"):
        env.pop(key, None)
    env.update(settings.job_env)
    return env
