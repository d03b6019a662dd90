"""Where job processes run, chosen by configuration (TUNEBOT_BACKEND): `local` (this host) by
default; another backend (a cluster) registers itself under its name."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import UserError
from ..hardware import Hardware
from .base import Backend, Handle, LaunchSpec
from .local import LocalBackend

# name -> factory(settings, hardware) -> Backend
BackendFactory = Callable[..., Backend]
_REGISTRY: dict[str, BackendFactory] = {}


def register(name: str, factory: BackendFactory) -> None:
    _REGISTRY[name] = factory


def names() -> list[str]:
    return sorted(_REGISTRY)


def open_backend(name: str, settings, hardware: Hardware) -> Backend:
    """The backend configured by name, built for these settings and this runner's hardware."""
    factory = _REGISTRY.get(name)
    if factory is None:
        raise UserError(
            f"TUNEBOT_BACKEND={name!r} is not a backend tunebot knows.",
            field="TUNEBOT_BACKEND",
            fix=f"one of: {', '.join(names())}",
        )
    return factory(settings, hardware)


def _local(settings, hardware: Hardware) -> Backend:
    from ..hardware import slots_for

    return LocalBackend(slots_for(hardware, settings.gpus, settings.cpu_slots))


def _ray(settings, hardware: Hardware) -> Backend:
    from .ray import RayBackend  # imports Ray's client only when configured

    return RayBackend(settings, hardware)


register(LocalBackend.name, _local)
register("ray", _ray)

__all__ = ["Backend", "Handle", "LaunchSpec", "LocalBackend", "names", "open_backend", "register"]
