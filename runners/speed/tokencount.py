"""How many tokens a train job's dataset holds, counted with LLaMA-Factory's own pipeline.

The runner counts before launch (the bot has no tokenizer and must ack in 3 s): the dataset is
loaded, formatted and tokenized exactly as the training run will do it (template, cutoff,
max_samples), in a child process so the runner never imports torch. The result is cached per
dataset file, tokenizer, template and cutoff under `<data_dir>/cache/tokens/`.

It feeds the `fast` plan (mean sample length -> tokens per optimizer step), the ETA (tokens x
epochs / expected tokens/s) and the true throughput (epoch x tokens per epoch).

    python -m runners.speed.tokencount < request.json  ->  {"lengths": [...]} on stdout's last line
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError

COUNT_TIMEOUT = 1800.0  # tokenizing a million rows takes minutes; more means something is wrong
_ARG_KEYS = ("model_name_or_path", "template", "dataset", "dataset_dir", "cutoff_len", "max_samples")


@dataclass(frozen=True)
class TokenCount:
    """Per-sample token lengths (sorted) after the cutoff the count was made with."""

    lengths: tuple[int, ...]
    cutoff: int

    @property
    def samples(self) -> int:
        return len(self.lengths)

    @property
    def total(self) -> int:
        return sum(self.lengths)

    @property
    def mean(self) -> float:
        return self.total / len(self.lengths) if self.lengths else 0.0

    @property
    def longest(self) -> int:
        return self.lengths[-1] if self.lengths else 0

    def total_at(self, cutoff: int) -> int:
        """Tokens in one epoch when every sample is cut at `cutoff` tokens."""
        if cutoff >= self.cutoff:
            return self.total
        cut = bisect.bisect_right(self.lengths, cutoff)
        return sum(self.lengths[:cut]) + cutoff * (len(self.lengths) - cut)

    def summary(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "tokens": self.total,
            "mean": round(self.mean, 1),
            "longest": self.longest,
        }


def _dataset_files(dataset_dir: Path, names: str) -> list[dict[str, Any]]:
    """What identifies a dataset's content: each file's path, size and mtime (content-addressed
    names in tunebot's registry make the path alone almost enough)."""
    try:
        info = json.loads((dataset_dir / "dataset_info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = {}
    files = []
    for name in str(names).split(","):
        entry = info.get(name.strip()) if isinstance(info, dict) else None
        file_name = entry.get("file_name") if isinstance(entry, dict) else None
        path = dataset_dir / str(file_name or name.strip())
        try:
            stat = path.stat()
            files.append({"path": str(path), "size": stat.st_size, "mtime": stat.st_mtime})
        except OSError:
            files.append({"path": str(path)})
    return files


def cache_key(args: dict[str, Any]) -> str:
    request = {key: args.get(key) for key in _ARG_KEYS}
    request["files"] = _dataset_files(Path(str(args.get("dataset_dir", "."))), str(args.get("dataset", "")))
    return hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()[:24]


def count_tokens(args: dict[str, Any], cache_dir: Path, env: dict[str, str] | None = None) -> TokenCount:
    """The dataset's per-sample token lengths for a train job's arguments (cached)."""
    cutoff = int(args.get("cutoff_len") or 2048)
    key = cache_key(args)
    cache = Path(cache_dir) / "tokens" / f"{key}.json"
    try:
        data = json.loads(cache.read_text(encoding="utf-8"))
        return TokenCount(tuple(data["lengths"]), int(data["cutoff"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    request = {key: args[key] for key in _ARG_KEYS if args.get(key) is not None}
    request["cutoff_len"] = cutoff
    proc = subprocess.run(
        [sys.executable, "-m", "runners.speed.tokencount"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=COUNT_TIMEOUT,
        env=env,
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    lines = proc.stdout.strip().splitlines()
    try:
        lengths = json.loads(lines[-1])["lengths"]
    except (IndexError, ValueError, KeyError, TypeError):
        reason = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"Could not count the dataset's tokens: {reason[:300]}", field="dataset") from None
    count = TokenCount(tuple(sorted(int(n) for n in lengths)), cutoff)
    cache.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump({"cutoff": cutoff, "lengths": list(count.lengths)}, fh)
    os.replace(tmp, cache)
    return count


def _count_in_this_process(request: dict[str, Any]) -> list[int]:
    """LLaMA-Factory's own load -> format -> tokenize -> cut, without packing (each sample's length
    after the cutoff; packing only regroups them)."""
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    with tempfile.TemporaryDirectory() as out:
        model_args, data_args, training_args, _, _ = get_train_args(
            {
                **request,
                "stage": "sft",
                "do_train": True,
                "finetuning_type": "lora",
                "output_dir": out,
                "report_to": "none",
                "overwrite_output_dir": True,
                "preprocessing_num_workers": min(16, os.cpu_count() or 1),
            }
        )
        tokenizer_module = load_tokenizer(model_args)
        template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
        module = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)
        return [len(ids) for ids in module["train_dataset"]["input_ids"]]


def main() -> int:
    request = json.loads(sys.stdin.read())
    lengths = _count_in_this_process(request)
    print(json.dumps({"lengths": lengths}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
