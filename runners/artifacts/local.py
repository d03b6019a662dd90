"""Artifacts as plain files under one directory (the default artifact store)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError
from .base import ProgressCallback, Storage, StoredFile, _copy_with_crc, _damaged, file_crc64


class LocalStorage(Storage):
    """Artifacts as plain files under one directory (by default `$TUNEBOT_DATA_DIR/artifacts`)."""

    def __init__(self, root: Path):
        self.root = Path(root).expanduser().resolve()

    def _path(self, key: str) -> Path:
        return self.root / key

    def location(self, key: str, *, is_dir: bool = False) -> str:
        return str(self._path(key)) + ("/" if is_dir else "")

    def _upload(self, local: Path, key: str, progress: ProgressCallback | None) -> int:
        dest = self._path(key)
        if dest.exists() and os.path.samefile(local, dest):
            return file_crc64(local, progress)
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(dest.name + ".partial")
        try:
            crc = _copy_with_crc(local, partial, progress)
            os.replace(partial, dest)
        except OSError as error:
            partial.unlink(missing_ok=True)
            raise UserError(f"Could not store {local} at {dest}: {error.strerror or error}.") from None
        return crc

    def _download(self, key: str, dest: Path, expected: StoredFile | None,
                  progress: ProgressCallback | None) -> StoredFile:
        src = self._path(key)
        if not src.is_file():
            raise UserError(f"There is no artifact at {src}.", field="key")
        partial = dest.with_name(dest.name + ".partial")
        crc = _copy_with_crc(src, partial, progress)
        size = partial.stat().st_size
        if expected is not None and (size != expected.size or crc != expected.crc64):
            partial.unlink()
            raise _damaged(str(src), expected, size, crc)
        os.replace(partial, dest)
        return StoredFile(dest.name, size, crc)

    def _head(self, key: str) -> tuple[int, int | None] | None:
        path = self._path(key)
        return (path.stat().st_size, None) if path.is_file() else None

    def _write_bytes(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(data)
        os.replace(partial, path)

    def _read_bytes(self, key: str) -> bytes | None:
        path = self._path(key)
        return path.read_bytes() if path.is_file() else None

    def _delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def _file_link(self, key: str) -> tuple[str, float | None]:
        return self._path(key).as_uri(), None


