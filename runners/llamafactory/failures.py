"""Why a job failed, in plain words, from its log and exit code.

The patterns are LLaMA-Factory 0.9.5's, transformers 5.6's and torch's own messages (see the
tests for the real output they were taken from). Under torchrun the cause is in a child's
`[rankN]:` traceback and the launcher's ChildFailedError summary comes last, so the final
exception line alone is often not the cause: known causes are searched for first, and wrapper
exceptions are skipped when falling back to "the last exception".
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass

TAIL_LINES = 20
TAIL_LINE_CHARS = 300


@dataclass(frozen=True)
class Failure:
    reason: str  # one sentence a user understands
    advice: str | None  # what to change, when the cause is known
    tail: str  # the last meaningful log lines, ending at the cause
    kind: str = "unknown"  # short id of the cause: cuda_oom, disk_full, dataset, ...


# ---------------------------------------------------------------------------------------------
# Cleaning the log

_RANK_PREFIX = re.compile(r"^\[(?:default)?rank(\d+)\]:\s?")
_PROGRESS_BAR = re.compile(
    r"\d+%\|"  # tqdm:  45%|████▌     |
    r"|\[\d{1,2}:\d{2}(?::\d{2})?<"  # tqdm: [00:01<00:02, ...]
    r"|\d+ (?:examples|it) \[\d{1,2}:\d{2}"  # tqdm without total: 0 examples [00:00, ? examples/s]
)
# Everything up to the last tqdm status bracket "[00:01<00:02, 3.5it/s]": what follows it on the
# same line is a message printed while the bar was drawn.
_PROGRESS_BAR_PREFIX = re.compile(r"^.*\[\d{1,2}:\d{2}(?::\d{2})?[,<][^\]]*\]")
_WARNING_LINE = re.compile(
    r"^\[WARNING\|"  # LLaMA-Factory / transformers logger
    r"|^W\d{4} \d\d:\d\d:\d\d"  # torch's glog-style warnings from torchrun
    r"|^\[W\d{4} \d\d:\d\d:\d\d"  # torch's C++ warnings: [W1128 03:12:05.118 ProcessGroupNCCL.cpp:1575]
    r"|^\S*:\d+: \w*Warning: "  # Python warnings.warn output
    r"|^\s+warnings\.warn\("  # ... and the source line printed after it
    r"|^\s*[\^~][\^~\s]*$"  # traceback position markers: ^^^^^^ or ~~~~^^^^
)
_EXCEPTION_LINE = re.compile(
    r"^((?:[A-Za-z_]\w*\.)*(?:[A-Za-z_]\w*(?:Error|Exception)|StopIteration|KeyboardInterrupt|SystemExit))"
    r"(?::\s*(.*))?$"
)
# LLaMA-Factory prints the first training/eval example (the user's own text, which may well mention
# "CUDA out of memory") before training; it runs until the next log record.
_EXAMPLE_START = re.compile(r"^(?:training|eval) example:$")
_LOG_RECORD = re.compile(
    r"^(?:\[(?:INFO|WARNING|ERROR|DEBUG|CRITICAL)\||Traceback \(most recent call last\)|[IWEF]\d{4} \d\d:"
    r"|\[[IWEF]\d{4} |\{'|(?:training|eval) example:$)"
)
# Exceptions that only wrap the real cause printed above them.
_WRAPPERS = ("ChildFailedError", "DatasetGenerationError", "CalledProcessError")


@dataclass
class _Line:
    text: str  # as printed, rank prefix included
    content: str  # rank prefix removed; what patterns match against


def _meaningful_lines(log_text: str) -> list[_Line]:
    lines: list[_Line] = []
    seen_from_rank: dict[str, str] = {}
    in_example = False
    for raw in log_text.split("\n"):
        # A terminal shows only what follows the last carriage return of a progress-bar line.
        text = raw.rstrip("\r").split("\r")[-1].rstrip()
        if not text.strip():
            continue
        rank_match = _RANK_PREFIX.match(text)
        content = text[rank_match.end() :] if rank_match else text
        if in_example:
            if not (_LOG_RECORD.match(content) or _PROGRESS_BAR.search(content)):
                continue
            in_example = False
        if _EXAMPLE_START.match(content):
            in_example = True
            continue
        if _PROGRESS_BAR.search(content):
            prefix = _PROGRESS_BAR_PREFIX.match(content)
            content = content[prefix.end() :].strip() if prefix else ""
            text = content
            if not content:
                continue
        if _WARNING_LINE.search(content):
            continue
        if rank_match:
            # Every rank prints the same traceback; keep the first rank's copy.
            rank = rank_match.group(1)
            if seen_from_rank.setdefault(content, rank) != rank:
                continue
        lines.append(_Line(text=text[:TAIL_LINE_CHARS], content=content))
    return lines


def _exception(line: _Line) -> tuple[str, str] | None:
    match = _EXCEPTION_LINE.match(line.content)
    if not match:
        return None
    return match.group(1), (match.group(2) or "").strip()


def _tail(lines: list[_Line], end: int | None, max_lines: int) -> str:
    stop = len(lines) if end is None else end + 1
    return "\n".join(line.text for line in lines[max(0, stop - max_lines) : stop])


# ---------------------------------------------------------------------------------------------
# Known causes


@dataclass(frozen=True)
class _Cause:
    kind: str
    pattern: re.Pattern[str]
    # (match, cleaned log, raw log) -> (reason, advice)
    explain: Callable[[re.Match[str], str, str], tuple[str, str | None]]


def _cuda_oom(match: re.Match[str], text: str, raw: str) -> tuple[str, str | None]:
    detail = re.search(
        r"Tried to allocate ([\d.]+ [KMGT]?i?B)\. GPU (\d+) has a total capacity of ([\d.]+ [KMGT]?i?B)", text
    )
    reason = "The GPU ran out of memory"
    if detail:
        needed, gpu, capacity = detail.groups()
        reason += f" (it needed {needed} more on GPU {gpu}, which has {capacity} in all)"
    return reason + ".", (
        "Lower `batch` (and raise `grad_accum` by the same factor to keep the effective batch size), "
        "shorten `cutoff`, or train with `method=qlora` (4-bit) to fit a larger model."
    )


def _disk_full(match: re.Match[str], text: str, raw: str) -> tuple[str, str | None]:
    return "The disk is full (No space left on device).", (
        "Free space on the runner's data disk (old jobs' checkpoints and merged exports are the largest "
        "files), "
        "then run the job again."
    )


def _killed_reason() -> tuple[str, str]:
    return "The job was killed (SIGKILL), possibly because the host ran out of memory (RAM).", (
        "Lower `batch` or `cutoff`, or use a host with more memory; the kernel log (`dmesg`) shows OOM kills."
    )


def _port_in_use(match: re.Match[str], text: str, raw: str) -> tuple[str, str | None]:
    port = (
        re.search(r"port: (\d+)", text)
        or re.search(r"bind on address \([^)]*?, (\d+)\)", text)
        or re.search(r"Cannot find empty port in range: (\d+)", text)
    )
    where = f"Port {port.group(1)} is" if port else "A network port the job needs is"
    return f"{where} already in use by another process.", (
        "Another job or deployment is probably using it: stop that one, or run again so a free port "
        "is chosen."
    )


def _nccl(match: re.Match[str], text: str, raw: str) -> tuple[str, str | None]:
    if "Duplicate GPU detected" in text:
        reason = "Two training processes were given the same GPU, which NCCL refuses."
    elif re.search(r"Watchdog caught collective operation timeout|collective operation timeout", text):
        reason = "The GPUs stopped talking to each other: a multi-GPU (NCCL) operation timed out."
    else:
        line = re.search(r"NCCL error[^\n]*", text)
        reason = "Multi-GPU communication (NCCL) failed" + (f": {line.group(0)[:200]}" if line else ".")
    return reason, (
        "Check the GPUs with `nvidia-smi`, run on fewer GPUs, or retry; if it repeats, set NCCL_DEBUG=INFO "
        "to see which link fails."
    )


def _undefined_dataset(match: re.Match[str], text: str, raw: str) -> tuple[str, str | None]:
    return f"Dataset `{match.group(1)}` is not registered.", (
        "Check the name against the list of datasets, or add the file first."
    )


def _missing_column(match: re.Match[str], text: str, raw: str) -> tuple[str, str | None]:
    return f"The dataset has no `{match.group(1)}` column, which its dataset_info.json entry expects.", (
        "Add the dataset through tunebot, which writes the columns the file really has, "
        "or add the key to every row."
    )


def _no_valid_samples(match: re.Match[str], text: str, raw: str) -> tuple[str, str | None]:
    # These are warnings, which the cleaned log leaves out.
    skipped = raw.count("Skipping this abnormal example.")
    reason = "The dataset has no usable examples: LLaMA-Factory skipped every row"
    if skipped:
        reason += f" ({skipped} malformed)"
    return reason + ".", (
        "Check the format: alpaca rows need `instruction` and `output`; sharegpt conversations must "
        "alternate "
        "user/assistant and end with the assistant. Adding the file through tunebot checks every row."
    )


def _too_few_samples(match: re.Match[str], text: str, raw: str) -> tuple[str, str | None]:
    return (
        "The dataset is too small for this run.",
        "Add more rows, or lower the evaluation split (`val_size`).",
    )


def _bad_json(match: re.Match[str], text: str, raw: str) -> tuple[str, str | None]:
    detail = re.search(r"Failed to load JSON from file '([^']+)' with error <class '[\w.]+'>: ([^\n]+)", text)
    if detail:
        reason = f"The dataset file {detail.group(1)} is not valid JSON ({detail.group(2).strip()})."
    else:
        line = re.search(r"(?:JSONDecodeError|ArrowInvalid): ([^\n]+)", text)
        reason = "The dataset file is not valid JSON" + (f" ({line.group(1).strip()})." if line else ".")
    return (
        reason,
        "Fix the file (JSON array or one JSON object per line) and add it again; "
        "tunebot checks it on upload.",
    )


def _bad_dataset_info(match: re.Match[str], text: str, raw: str) -> tuple[str, str | None]:
    return f"The dataset registry {match.group(1)} could not be read ({match.group(2)}).", (
        "Repair dataset_info.json or add the dataset again."
    )


def _dataset_file_missing(match: re.Match[str], text: str, raw: str) -> tuple[str, str | None]:
    return f"The dataset file {match.group(1)} is missing.", "Add the dataset again."


def _wrong_stage_dataset(match: re.Match[str], text: str, raw: str) -> tuple[str, str | None]:
    return "This dataset is not suitable for this kind of training (e.g. a preference dataset for SFT).", (
        "Pick a dataset made for this training stage."
    )


def _unknown_keys(match: re.Match[str], text: str, raw: str) -> tuple[str, str | None]:
    try:
        keys = [str(key) for key in ast.literal_eval(match.group(1))]
    except (ValueError, SyntaxError):
        keys = [match.group(1).strip("[]")]
    listed = ", ".join(f"`{key}`" for key in keys)
    plural = "s" if len(keys) != 1 else ""
    return f"Unknown setting{plural} for LLaMA-Factory: {listed}.", (
        "Check the spelling of these keys or remove them; LLaMA-Factory rejects keys it does not know."
    )


def _model_missing(match: re.Match[str], text: str, raw: str) -> tuple[str, str | None]:
    path = match.group(1)
    return f"The model `{path}` was not found: it is not a folder on the runner host.", (
        "Give the full path of a model folder on the runner host (with config.json and tokenizer files), "
        "or one of the models tunebot lists."
    )


def _hub_unreachable(match: re.Match[str], text: str, raw: str) -> tuple[str, str | None]:
    return (
        "The model is not a local folder, and the model hub (huggingface.co) cannot be reached "
        "from the runner.",
        ("Download the model onto the runner host and give its folder path."),
    )


def _model_file_missing(match: re.Match[str], text: str, raw: str) -> tuple[str, str | None]:
    return f"The model folder {match.group(1)} is incomplete: it has no {match.group(2)}.", (
        "Copy the whole model (config, weights and tokenizer files) into that folder."
    )


def _tokenizer(match: re.Match[str], text: str, raw: str) -> tuple[str, str | None]:
    return "The tokenizer could not be loaded from the model path.", (
        "Check that the model folder exists and holds tokenizer files "
        "(tokenizer.json, tokenizer_config.json)."
    )


def _template(match: re.Match[str], text: str, raw: str) -> tuple[str, str | None]:
    return f"There is no chat template called `{match.group(1)}`.", (
        "Use the template that matches the model, e.g. `llama3` for Llama-3 models or `qwen` for Qwen."
    )


def _missing_package(match: re.Match[str], text: str, raw: str) -> tuple[str, str | None]:
    return f"The runner host is missing the Python package `{match.group(1)}`.", (
        "Ask whoever runs the runner host to install it (evaluation needs jieba, nltk and rouge-chinese)."
    )


def _package_version(match: re.Match[str], text: str, raw: str) -> tuple[str, str | None]:
    return (
        f"The runner host has the wrong version of a package: {match.group(1)} is needed, "
        f"found {match.group(2)}.",
        ("Ask whoever runs the runner host to install the versions tunebot's README lists."),
    )


def _no_gpu(match: re.Match[str], text: str, raw: str) -> tuple[str, str | None]:
    return "No usable GPU was found on the runner host.", (
        "Check the GPUs and driver (`nvidia-smi`) on the runner host, or run a CPU-sized job."
    )


def _no_bf16(match: re.Match[str], text: str, raw: str) -> tuple[str, str | None]:
    return "This machine cannot train in bf16.", "Turn bf16 off (or use fp16 on an older GPU)."


# Most specific first: a GPU OOM kills sibling ranks, a full disk breaks JSON writes, and so on.
_CAUSES: list[_Cause] = [
    _Cause(
        "cuda_oom", re.compile(r"CUDA out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED"), _cuda_oom
    ),
    _Cause(
        "disk_full",
        re.compile(r"No space left on device|\[Errno 28\]|StorageFull|Disk quota exceeded"),
        _disk_full,
    ),
    _Cause(
        "port_in_use",
        re.compile(r"EADDRINUSE|[Aa]ddress already in use|Cannot find empty port"),
        _port_in_use,
    ),
    _Cause("dataset", re.compile(r"Undefined dataset (\S+) in dataset_info\.json"), _undefined_dataset),
    _Cause(
        "dataset",
        re.compile(r"Cannot open (\S*dataset_info\.json) due to ([^\n]+?)\.?$", re.M),
        _bad_dataset_info,
    ),
    _Cause(
        "dataset",
        re.compile(r"Failed to load JSON from file|JSONDecodeError|ArrowInvalid: JSON parse error"),
        _bad_json,
    ),
    # The converter indexes every configured column; a hand-written entry naming a missing key fails here.
    _Cause(
        "dataset",
        re.compile(
            r"llamafactory/data/converter\.py\", line \d+, in __call__\n(?:.*\n)*?KeyError: '([^']+)'"
        ),
        _missing_column,
    ),
    _Cause("dataset", re.compile(r"Cannot find valid samples"), _no_valid_samples),
    _Cause("dataset", re.compile(r"Cannot find sufficient samples"), _too_few_samples),
    _Cause("dataset", re.compile(r"^ValueError: File (\S+) not found\.$", re.M), _dataset_file_missing),
    _Cause(
        "dataset",
        re.compile(r"The dataset is not applicable in the current training stage"),
        _wrong_stage_dataset,
    ),
    _Cause(
        "unknown_key",
        re.compile(r"Some keys are not used by the HfArgumentParser: (\[[^\n]*\])"),
        _unknown_keys,
    ),
    _Cause(
        "model",
        re.compile(r"Repo id must be in the form 'repo_name' or 'namespace/repo_name': '([^'\n]+)'"),
        _model_missing,
    ),
    _Cause("model", re.compile(r"Incorrect path_or_model_id: '([^'\n]+)'"), _model_missing),
    _Cause(
        "model",
        re.compile(r"(\S+) is not a local folder and is not a valid model identifier"),
        _model_missing,
    ),
    _Cause("model", re.compile(r"We couldn't connect to '[^']+' to load the files"), _hub_unreachable),
    _Cause(
        "model",
        re.compile(r"(\S+) does not appear to have a file named (\S+?)\.(?:\s|$)"),
        _model_file_missing,
    ),
    _Cause("model", re.compile(r"Failed to load tokenizer\."), _tokenizer),
    _Cause("template", re.compile(r"Template (\S+) does not exist\."), _template),
    _Cause(
        "nccl",
        re.compile(
            r"NCCL error|DistBackendError|Watchdog caught collective operation timeout"
            r"|Duplicate GPU detected|ncclInternalError|ncclSystemError|ncclUnhandledCudaError"
        ),
        _nccl,
    ),
    _Cause("missing_package", re.compile(r"No module named '([\w.]+)'"), _missing_package),
    # transformers' require_version, which LLaMA-Factory uses for jieba/nltk/rouge_chinese.
    _Cause(
        "missing_package",
        re.compile(r"The '([\w.-]+)[^']*' distribution was not found and is required by this application"),
        _missing_package,
    ),
    _Cause(
        "missing_package",
        re.compile(r"(\S+) is required for a normal functioning of this module, but found (\S+?)\."),
        _package_version,
    ),
    _Cause(
        "no_gpu",
        re.compile(r"No CUDA GPUs are available|Found no NVIDIA driver|CUDA driver initialization failed"),
        _no_gpu,
    ),
    _Cause("no_bf16", re.compile(r"Your setup doesn't support bf16/gpu"), _no_bf16),
]

# torchrun's summary for a child killed by signal 9, and a shell's bare "Killed".
_SIGKILL_IN_LOG = re.compile(r"Signal 9 \(SIGKILL\) received by PID|exitcode\s*: -9 |^Killed$", re.M)


# torchrun itself receiving SIGTERM (a cancel reaches the launcher first).
_SIGTERM_IN_LOG = re.compile(r"SignalException: Process \d+ got signal: 15")


def _cause_line(lines: list[_Line], pattern: re.Pattern[str]) -> int | None:
    """Index of the last line the cause's pattern matches, so the tail can end there."""
    for index in range(len(lines) - 1, -1, -1):
        if pattern.search(lines[index].content):
            return index
    return None


def _last_cause_exception(lines: list[_Line]) -> tuple[int, str, str] | None:
    fallback = None
    for index in range(len(lines) - 1, -1, -1):
        found = _exception(lines[index])
        if not found:
            continue
        name, message = found
        if name.rsplit(".", 1)[-1] in _WRAPPERS:
            fallback = fallback or (index, name, message)
            continue
        return index, name, message
    return fallback


def explain_failure(log_text: str, exit_code: int | None, *, max_lines: int = TAIL_LINES) -> Failure:
    """The reason a job failed, advice when the cause is known, and the log lines that show it."""
    lines = _meaningful_lines(log_text or "")
    text = "\n".join(line.content for line in lines)

    for cause in _CAUSES:
        match = cause.pattern.search(text)
        if match:
            reason, advice = cause.explain(match, text, log_text or "")
            return Failure(
                reason, advice, _tail(lines, _cause_line(lines, cause.pattern), max_lines), cause.kind
            )

    if exit_code in (-9, 137) or _SIGKILL_IN_LOG.search(text):
        reason, advice = _killed_reason()
        return Failure(reason, advice, _tail(lines, None, max_lines), "killed")
    if exit_code in (-15, 143) or _SIGTERM_IN_LOG.search(text):
        return Failure(
            "The job was stopped (SIGTERM): it was cancelled, or the host is shutting down.",
            None,
            _tail(lines, None, max_lines),
            "terminated",
        )

    found = _last_cause_exception(lines)
    if found:
        index, name, message = found
        short_name = name.rsplit(".", 1)[-1]
        reason = f"{message}" if message else f"The job failed with {short_name}."
        if message and not message.endswith((".", "!", "?")):
            reason += "."
        if message and short_name not in ("ValueError", "RuntimeError"):
            reason = f"{short_name}: {reason}"
        return Failure(reason, None, _tail(lines, index, max_lines), "error")

    if exit_code is None:
        reason = "The job stopped without an error message."
    elif exit_code < 0:
        reason = f"The job was killed by signal {-exit_code}."
    elif exit_code == 0:
        reason = "The job ended without an error message, but did not produce its results."
    else:
        reason = f"The job exited with code {exit_code} without an error message."
    return Failure(reason, None, _tail(lines, None, max_lines), "unknown")
