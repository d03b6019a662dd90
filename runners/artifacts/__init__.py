"""The artifact store: where a job's outputs are kept beyond its folder (not the job store,
runners/store.py, which holds jobs and events).

`base.py` the settings (TUNEBOT_STORAGE, TUNEBOT_OSS_*), keys, manifests and the `Storage`
interface; `local.py` a directory; `oss.py` Alibaba Cloud OSS; `transfer.py` what the runner copies
up after a job and fetches before one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import (
    MANIFEST_NAME,
    STORAGE_SETTINGS_TABLE,
    Storage,
    StorageSettings,
    StoredFile,
    StoredObject,
    bytes_crc64,
    check_key,
    file_crc64,
    human_size,
    job_key,
)
from .local import LocalStorage
from .transfer import describe, fetch_inputs, missing_inputs, upload_job


def open_storage(settings: StorageSettings, data_dir: Path) -> Storage:
    """The store `TUNEBOT_STORAGE` names: OSS, or a directory under the data dir."""
    data_dir = Path(data_dir)
    if settings.backend == "oss":
        from .oss import OssStorage

        return OssStorage(settings, checkpoint_dir=data_dir / "cache" / "oss-checkpoints")
    return LocalStorage(data_dir / "artifacts")


def __getattr__(name: str) -> Any:
    # oss2 only where OSS is used: a GPU runner with a local store needs neither it nor its deps.
    if name == "OssStorage":
        from .oss import OssStorage

        return OssStorage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MANIFEST_NAME", "STORAGE_SETTINGS_TABLE", "LocalStorage", "OssStorage", "Storage", "StorageSettings",
    "StoredFile", "StoredObject", "bytes_crc64", "check_key", "describe", "fetch_inputs", "file_crc64",
    "human_size", "job_key", "missing_inputs", "open_storage", "upload_job",
]
