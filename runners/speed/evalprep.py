"""What the runner does to an eval job that got a GPU, before `llamafactory-cli` starts: the eval
set's rows sorted by length (each batch then holds similar lengths, so little of it is padding and
no short answer waits long for a long one) and the batch from the GPU's memory (`evalplan`).

The sorted copy lives in the job's own folder (`eval-data/`, with its own `dataset_info.json`), so
the registry is untouched; `eval_order.json` maps each sorted row back to its place in the
original file, and `restore_order` puts the predictions back in that order when the run ends:
the predictions file and the sample predictions read as if nothing was sorted. The scores
(ROUGE/BLEU are means over rows) do not depend on the order.

On a CPU runner nothing changes.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from ..env import is_set
from ..hardware import Hardware
from ..llamafactory.recipes import EVAL_KEYS
from .evalplan import WEIGHT_BYTES, eval_shape_of, plan_eval
from .throughput import param_count
from .trainprep import model_config, user_keys

log = logging.getLogger(__name__)

SORTED_DIR = "eval-data"
ORDER_FILE = "eval_order.json"
PREDICTIONS = "generated_predictions.jsonl"
SORTED_PREDICTIONS = "generated_predictions.sorted.jsonl"  # the run's own, in the order it ran
MAX_SORT_BYTES = 64 * 2**20  # sorting runs on the runner's loop at launch: larger sets run unsorted
BATCH_KEY = "per_device_eval_batch_size"
DEFAULT_CUTOFF = 1024  # LLaMA-Factory's own default cutoff_len
DEFAULT_NEW_TOKENS = 1024  # and max_new_tokens


def _read_rows(path: Path) -> list[Any]:
    text = path.read_text(encoding="utf-8-sig")
    stripped = text.lstrip()
    if stripped.startswith("["):
        rows = json.loads(text)
        if not isinstance(rows, list):
            raise ValueError("not a JSON array")
        return rows
    return [json.loads(line) for line in text.split("\n") if line.strip()]  # not splitlines: U+2028


def row_length(row: Any) -> int:
    """A row's length in characters of its JSON text: prompt and reference answer together, the
    same measure whatever the dataset's format (alpaca, sharegpt)."""
    return len(json.dumps(row, ensure_ascii=False))


def sorted_copy(dataset_dir: Path, name: str, max_samples: int | None, dest: Path) -> list[int]:
    """Writes `dest/<name>.jsonl` (the first `max_samples` rows of the registered dataset `name`,
    longest first) and `dest/dataset_info.json` naming it; returns the original row of each
    sorted row. Raises ValueError when the dataset is not a local JSON file that can be sorted."""
    try:
        info = json.loads((dataset_dir / "dataset_info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"the dataset registry could not be read ({exc})") from None
    entry = info.get(name) if isinstance(info, dict) else None
    if not isinstance(entry, dict) or not entry.get("file_name"):
        raise ValueError(f"{name} is not a local file in the registry")
    if any(entry.get(k) for k in ("hf_hub_url", "ms_hub_url", "script_url", "om_hub_url", "cloud_file_name")):
        raise ValueError(f"{name} is read from a hub")
    source = (dataset_dir / str(entry["file_name"])).resolve()
    if not source.is_file() or source.suffix.lower() not in (".json", ".jsonl"):
        raise ValueError(f"{name} is not one JSON file")
    if source.stat().st_size > MAX_SORT_BYTES:
        raise ValueError(f"{name} is larger than {MAX_SORT_BYTES // 2**20} MiB")
    rows = _read_rows(source)
    if max_samples is not None and max_samples > 0:
        rows = rows[:max_samples]  # LLaMA-Factory's max_samples takes the first rows: sort those
    # Longest first: a batch that runs out of memory does so at once, not after an hour; ties
    # keep their original order.
    order = sorted(range(len(rows)), key=lambda i: -row_length(rows[i]))
    dest.mkdir(parents=True, exist_ok=True)
    file_name = f"{name}.jsonl"
    with open(dest / file_name, "w", encoding="utf-8") as fh:
        for i in order:
            fh.write(json.dumps(rows[i], ensure_ascii=False) + "\n")
    (dest / "dataset_info.json").write_text(
        json.dumps({name: {**entry, "file_name": file_name}}, ensure_ascii=False, indent=1), encoding="utf-8"
    )
    return order


def restore_order(output_dir: Path, order: list[int]) -> bool:
    """Puts `generated_predictions.jsonl` back in the eval set's original row order; False (file
    untouched) when its rows do not match the order file. Repeatable: the run's own (sorted) file is
    kept beside it as `generated_predictions.sorted.jsonl` and every call restores from that, so a
    finish retried after a database error or a runner restart gives the same order, not a second
    shuffle."""
    path = output_dir / PREDICTIONS
    kept = output_dir / SORTED_PREDICTIONS
    try:
        source = kept if kept.is_file() else path
        text = source.read_text(encoding="utf-8")
    except OSError:
        return False
    # "\n" only: a prediction may hold U+2028 or \x85 raw, which str.splitlines() would split on.
    lines = [line for line in text.split("\n") if line.strip()]
    if len(lines) != len(order) or sorted(order) != list(range(len(order))):
        return False
    if source is path:
        _write_atomically(kept, text)
    restored = [""] * len(order)
    for position, original in enumerate(order):
        restored[original] = lines[position]
    _write_atomically(path, "\n".join(restored) + "\n")
    return True


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_order(work_dir: Path) -> list[int] | None:
    try:
        data = json.loads((work_dir / ORDER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    order = data.get("order") if isinstance(data, dict) else None
    return order if isinstance(order, list) and all(isinstance(i, int) for i in order) else None


def _int(value: Any, default: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return default
    return number if number > 0 else default


def _gpu_memory(hardware: Hardware, slots: list[str]) -> tuple[int, str] | None:
    gpus = [g for g in hardware.gpus if g.index in slots] or list(hardware.gpus)
    if not gpus:
        return None
    smallest = min(gpus, key=lambda g: g.memory_mib)
    return smallest.memory_mib * 2**20, smallest.name


def compute_of(args: dict[str, Any]) -> str:
    for key in ("pure_bf16", "bf16", "fp16"):
        if is_set(args.get(key)):
            return key
    return "fp32"


def prepare_eval(
    args: dict[str, Any], spec: dict[str, Any], work_dir: Path, hardware: Hardware, slots: list[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The eval job's arguments for the GPU it got, and what was decided (for its metrics).
    Never raises: anything that cannot be planned leaves the job as the user asked for it."""
    memory = _gpu_memory(hardware, slots)
    if memory is None:
        return args, {}
    args = dict(args)
    info: dict[str, Any] = {}
    names = [n.strip() for n in str(args.get("eval_dataset") or "").split(",") if n.strip()]
    max_samples = _int(args.get("max_samples"), 0) or None
    samples = max_samples or 0
    if len(names) == 1 and args.get("dataset_dir"):
        try:
            order = sorted_copy(Path(str(args["dataset_dir"])), names[0], max_samples, work_dir / SORTED_DIR)
        except (OSError, ValueError) as exc:
            info["eval_sorted"] = f"not sorted: {exc}"
        else:
            (work_dir / ORDER_FILE).write_text(
                json.dumps({"dataset": names[0], "order": order}), encoding="utf-8"
            )
            # LLaMA-Factory looks for a dataset's images/audio under media_dir, which defaults to
            # dataset_dir: they stay in the registry's folder, not in the sorted copy's.
            args.setdefault("media_dir", str(args["dataset_dir"]))
            args["dataset_dir"] = str(work_dir / SORTED_DIR)
            info["eval_sorted"] = True
            samples = len(order)
    else:
        info["eval_sorted"] = "not sorted: only one eval dataset is sorted"
    memory_bytes, gpu_name = memory
    plan_info: dict[str, Any] = {"gpu": gpu_name, "memory_mib": memory_bytes // 2**20}
    per_device = math.ceil(samples / max(1, len(slots))) if samples else 0
    config = model_config(str(args.get("model_name_or_path", "")))
    params = param_count(config) if config else None
    compute = compute_of(args)
    if BATCH_KEY in user_keys(spec, EVAL_KEYS):
        plan_info["note"] = "batch kept: you set it"
    elif params is None:
        plan_info["note"] = "batch kept: the model's size is unknown"
    elif args.get("quantization_bit"):
        plan_info["note"] = "batch kept: the memory plan is made for 16-bit weights"
    elif not per_device:
        plan_info["note"] = "batch kept: the number of eval samples is unknown"
    else:
        try:
            plan = plan_eval(
                memory_bytes,
                eval_shape_of(config, params),
                prompt_tokens=_int(args.get("cutoff_len"), DEFAULT_CUTOFF),
                new_tokens=_int(args.get("max_new_tokens"), DEFAULT_NEW_TOKENS),
                samples=per_device,
                weight_bytes=WEIGHT_BYTES.get(compute, 2),
            )
        except ValueError as exc:
            plan_info["note"] = f"batch kept: {exc}"
        else:
            args[BATCH_KEY] = plan.batch
            plan_info.update(plan.to_dict())
    plan_info["samples"] = samples or None
    info["eval_plan"] = plan_info
    return args, info
