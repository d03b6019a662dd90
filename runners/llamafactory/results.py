"""Evaluation results of a LLaMA-Factory predict run (`do_predict` + `predict_with_generate`).

The run writes `predict_results.json` (metrics) and `generated_predictions.jsonl` (one
{"prompt", "predict", "label"} object per example) into its output_dir. ROUGE and BLEU there are
already percentages: llamafactory/train/sft/metric.py stores `round(score * 100, 4)`.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from ..errors import UserError

PREDICT_RESULTS = "predict_results.json"
GENERATED_PREDICTIONS = "generated_predictions.jsonl"

# Our name -> LLaMA-Factory's key in predict_results.json.
METRIC_KEYS = {
    "rouge-1": "predict_rouge-1",
    "rouge-2": "predict_rouge-2",
    "rouge-l": "predict_rouge-l",
    "bleu-4": "predict_bleu-4",
    "runtime_s": "predict_runtime",
    "samples_per_s": "predict_samples_per_second",
    "steps_per_s": "predict_steps_per_second",
}
SCORE_NAMES = ("rouge-1", "rouge-2", "rouge-l", "bleu-4")

# Chat templates' turn markers: llama3 `<|start_header_id|>user<|end_header_id|>\n\n...<|eot_id|>`,
# qwen/chatml `<|im_start|>user\n...<|im_end|>`, default `Human: ...</s>\nAssistant:`.
_LLAMA3_TURN = re.compile(
    r"<\|start_header_id\|>(\w+)<\|end_header_id\|>\n\n(.*?)(?:<\|eot_id\|>|$)", re.DOTALL
)
_CHATML_TURN = re.compile(r"<\|im_start\|>(\w+)\n(.*?)(?:<\|im_end\|>|$)", re.DOTALL)
_DEFAULT_TURN = re.compile(
    r"Human: (.*?)(?:</s>|<\|endoftext\|>|<\|end_of_text\|>|<\|eot_id\|>)?\nAssistant:\s*$", re.DOTALL
)
_LLAMA2_TURN = re.compile(r"\[INST\](.*?)\[/INST\]\s*$", re.DOTALL)
# Any remaining special token: <|...|>, <s>, </s>, <unk>, <pad>, <<SYS>>, [INST] markers.
_SPECIAL_TOKEN = re.compile(r"<\|[^|<>]{1,40}\|>|</?s>|<unk>|<pad>|<</?SYS>>|\[/?INST\]")


def read_predict_results(output_dir: Path) -> dict[str, float]:
    """Metrics of a finished predict run, keyed rouge-1, rouge-2, rouge-l, bleu-4 (percent, 0-100),
    runtime_s, samples_per_s, steps_per_s; keys LLaMA-Factory did not write are left out.

    {} when predict_results.json does not exist (the run did not get that far); UserError when it
    exists but is damaged or has no ROUGE/BLEU scores.
    """
    path = Path(output_dir) / PREDICT_RESULTS
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}).", field="job") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object of metrics.", field="job")
    results: dict[str, float] = {}
    for name, key in METRIC_KEYS.items():
        value = data.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            results[name] = float(value)
    if not any(name in results for name in SCORE_NAMES):
        raise UserError(
            f"{path} has no ROUGE/BLEU scores; the run did not use `predict_with_generate`.",
            field="job",
        )
    return results


def prompt_for_display(prompt: str) -> str:
    """The last user message of a templated prompt, without the template's special tokens.

    Falls back to the whole prompt with special tokens removed when the template is not recognised.
    """
    for pattern in (_LLAMA3_TURN, _CHATML_TURN):
        user_turns = [content for role, content in pattern.findall(prompt) if role == "user"]
        if user_turns:
            return _SPECIAL_TOKEN.sub("", user_turns[-1]).strip()
    for pattern in (_DEFAULT_TURN, _LLAMA2_TURN):
        turns = pattern.findall(prompt)
        if turns:
            last = turns[-1]
            # llama2 prompts put the system prompt inside the first [INST] block.
            last = re.sub(r"<<SYS>>.*?<</SYS>>", "", last, flags=re.DOTALL)
            last = last.rsplit("Human: ", 1)[-1]
            return _SPECIAL_TOKEN.sub("", last).strip()
    return _SPECIAL_TOKEN.sub("", prompt).strip()


def sample_predictions(output_dir: Path, n: int = 3) -> list[dict[str, str]]:
    """The first `n` examples of generated_predictions.jsonl as {"prompt", "predict", "label"}, the
    prompt cut down to its last user message. [] when the file is missing; bad lines are skipped."""
    path = Path(output_dir) / GENERATED_PREDICTIONS
    samples: list[dict[str, str]] = []
    if n <= 0:
        return samples
    try:
        handle = open(path, encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return samples
    with handle:
        for line in handle:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if not isinstance(row, dict):
                continue
            samples.append(
                {
                    "prompt": prompt_for_display(str(row.get("prompt") or "")),
                    "predict": str(row.get("predict") or "").strip(),
                    "label": str(row.get("label") or "").strip(),
                }
            )
            if len(samples) >= n:
                break
    return samples


def compare_metrics(new: dict[str, float], previous: dict[str, float] | None) -> dict[str, float]:
    """new - previous for every numeric metric both have (positive = the new run scored higher).
    {} when there is nothing to compare with."""
    if not previous:
        return {}
    deltas: dict[str, float] = {}
    for name, value in new.items():
        old = previous.get(name)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (value, old)):
            continue
        if not (math.isfinite(value) and math.isfinite(old)):
            continue
        deltas[name] = round(value - old, 4)
    return deltas
