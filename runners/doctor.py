"""`tunebot doctor`'s engine half: is this host ready to run jobs, and if not, what to do.

Each check returns a `Check` (ok, a warning, or a problem with its fix) instead of raising, so one
run reports everything that is wrong at once. `FAST_CHECKS` (the data dir, the database, disk
space) take milliseconds and run at every `tunebot serve` start; the rest (GPUs, LLaMA-Factory,
a round trip to OSS) run on demand.
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

from .errors import UserError
from .settings import Settings

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
    from .store import SCHEMA_VERSION, Store

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
    from .hardware import detect, slots_for

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
    from .storage import open_storage

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


FAST_CHECKS: list[Callable[[Settings], Check]] = [check_data_dir, check_disk, check_database]
ALL_CHECKS: list[Callable[[Settings], Check]] = [
    *FAST_CHECKS, check_gpus, check_llamafactory, check_storage,
]


def run_checks(settings: Settings, checks: list[Callable[[Settings], Check]] | None = None) -> list[Check]:
    return [check(settings) for check in (ALL_CHECKS if checks is None else checks)]
