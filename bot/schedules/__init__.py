"""Channel digests on a clock: `spec` (what a schedule is), `scheduler` (APScheduler, the digests'
table and the lease), `command` (`/tune schedule …`), `digest` (what a digest says)."""

# APScheduler's job store names a job's function by its path: databases made before this package
# existed hold `bot.schedules:fire_digest` and `bot.schedules:sweep_progress`; they must still load.
from .scheduler import fire_digest, sweep_progress

__all__ = ["fire_digest", "sweep_progress"]
