"""LLaMA-Factory's Ray trainer (`USE_RAY=1`, `ray_num_workers`), with its placement group sized to
the workers asked for.

`python -m runners.backends.ray.train config.yaml` on a Ray node, inside the Ray job of a `workers=N` run.
LLaMA-Factory 0.9.5 (train/tuner.py) builds its placement group with one bundle per device of the
whole cluster (`get_placement_group(total_devices)`), not per worker: on a GPU cluster a 2-worker
run holds every GPU, and on CPUs (each bundle 10 CPUs, "devices" = all CPUs) the group can never
be placed and the run waits forever. Everything else — the workers, their env, PACK placement,
rank order by node address — is LLaMA-Factory's own.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: python -m runners.backends.ray.train config.yaml", file=sys.stderr)
        return 2
    config = yaml.safe_load(Path(argv[0]).read_text(encoding="utf-8")) or {}
    workers = int(config.get("ray_num_workers") or 1)

    from llamafactory.train import tuner

    whole_cluster = tuner.get_placement_group
    tuner.get_placement_group = lambda total_devices: whole_cluster(min(total_devices, workers))
    tuner.run_exp(args=config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
