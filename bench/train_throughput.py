"""Training throughput of tunebot's recipes, side by side, through tunebot's own engine (issue 9).

On the lent GPU (docs/benchmarks.md has the exact calls and the results): builds the
Llama-3-8B-architecture model (random weights, Llama-3 special tokens) and a synthetic instruction
set with a realistic length spread (median ~300 tokens, p90 ~650, ~2% over 1,024; one row in ten
Chinese), then runs recipes through `Runtime` (queue -> runner -> llamafactory-cli) on the same
data (one epoch, >= 300k tokens), and reports for each: steady tokens/s (non-padding, counted by
tunebot: epoch x the dataset's token count), s/step, peak GPU memory (card; and the training
process's own peak under a memory cap), mean GPU utilisation, MFU against the bf16 matmul rate
measured in the same call, tunebot's estimate beside the actual time, and loss vs tokens.

    python3 bench/train_throughput.py run seed-cli fast       # recipes by name (see RUNS)
    python3 bench/train_throughput.py profile [run]           # a run's job: its syncs, then torch.profiler
    python3 bench/train_throughput.py plot a.json[:run,run=label] ... out.png  # loss vs tokens
    BENCH_SHAPE=tiny BENCH_ROWS=64 python3 bench/train_throughput.py run seed fast   # on a CPU
    BENCH_GPUS=2 python3 bench/train_throughput.py run seed-cli fast      # every run on 2 GPUs (DDP)

Every run appends to $OUT/throughput.json as it finishes, so a call cut short still reports.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpu.smi import GpuWatch, card  # noqa: E402
from runners import datasets  # noqa: E402
from runners.demo.tinymodel import ensure_model  # noqa: E402
from runners.hardware import Gpu, Hardware, detect  # noqa: E402
from runners.job import FINAL_STATES  # noqa: E402
from runners.llamafactory.progress import read_trainer_log  # noqa: E402
from runners.runtime import Runtime  # noqa: E402
from runners.settings import Settings  # noqa: E402
from runners.speed.throughput import param_count  # noqa: E402

OUT = Path(os.environ.get("OUT") or "/tmp/train-throughput-out")
DATA = Path(os.environ.get("TUNEBOT_DATA_DIR") or "/tmp/tb-bench")
SHAPE = os.environ.get("BENCH_SHAPE", "llama3-8b")
ROWS = int(os.environ.get("BENCH_ROWS", "1000"))
RESULTS = OUT / "throughput.json"
GIB = 2**30

# name -> (preset, extra key=value pairs, memory cap in GiB (None: the whole card), max steps)
RUNS: dict[str, tuple[str, dict[str, str], float | None, int | None]] = {
    "seed-cli": ("seed-cli", {}, None, None),
    "seed": ("seed", {}, None, None),
    "fast": ("fast", {}, None, None),
    "fast-80g": ("fast", {}, 80.0, 40),
    "fast-24g": ("fast", {}, 24.0, 30),
    "fast-compile": ("fast", {"torch_compile": "true"}, None, 120),
    "fast-compile-noliger": ("fast", {"torch_compile": "true", "enable_liger_kernel": "false"}, None, 120),
    "fast-noliger": ("fast", {"enable_liger_kernel": "false"}, None, 120),
    "fast-120": ("fast", {}, None, 120),
    "seed-cli-30": ("seed-cli", {}, None, 30),
    "seed-cli-20": ("seed-cli", {}, None, 20),
    # the WebUI's recipe long enough for its steady rate and a loss curve beside the others
    "seed-60": ("seed", {}, None, 60),
    "seed-120": ("seed", {}, None, 120),  # the schedule of `fast-log5`'s 120 steps: loss side by side
    # CUDA graphs over the compiled step (Inductor's cudagraph trees): the host no longer issues
    # each kernel; packs are padded to one length, so the shapes are static.
    "fast-compile-cg": ("fast", {"torch_compile_mode": "reduce-overhead"}, None, 120),
    # the trainer logging every 5 steps as jobs do (the bench logs every step: a sync each step)
    "fast-log5": ("fast", {"logging_steps": "5"}, None, 120),
    # `fast` without CUDA graphs (its plan adds them when a step is one micro-batch on one GPU)
    "fast-log5-nocg": ("fast", {"logging_steps": "5", "torch_compile_mode": "default"}, None, 120),
    # the same with Accelerate's default blocking batch copy (`fast` queues it from pinned memory)
    "fast-log5-blocking": (
        "fast", {"logging_steps": "5", "accelerator_config": {"non_blocking": False}}, None, 120
    ),
    "fast-compile-cg-log5": (
        "fast", {"logging_steps": "5", "torch_compile_mode": "reduce-overhead"}, None, 120
    ),
    "seed-cli-20-log5": ("seed-cli", {"logging_steps": "5"}, None, 20),
    # LLaMA-Factory's per-step token count (a host sync each step) switched back on
    "fast-compile-tok": ("fast", {"include_num_input_tokens_seen": "non_padding"}, None, 120),
    "fast-purebf16": ("fast", {"compute": "pure_bf16"}, None, 120),
    # what `fast` chose before torch.compile joined it (Liger kernels, eager)
    "fast-liger": ("fast", {"torch_compile": "false", "enable_liger_kernel": "true"}, None, None),
}
ARG_KEYS = (
    "cutoff_len", "per_device_train_batch_size", "gradient_accumulation_steps", "packing", "neat_packing",
    "enable_liger_kernel", "optim", "disable_gradient_checkpointing", "flash_attn", "torch_compile",
    "learning_rate", "loraplus_lr_ratio", "bf16", "pure_bf16", "torch_compile_mode",
    "include_num_input_tokens_seen", "logging_nan_inf_filter", "logging_steps", "accelerator_config",
)
CARD_BYTES = {80.0: 81_559 * 2**20, 24.0: 24_564 * 2**20}  # H100 80GB HBM3, RTX 4090 / A10-class

_WORDS = (
    "model data train loss token batch the of and to in is that for it with as on be by this are "
    "learning rate step gradient layer attention weight value query key answer question explain "
    "why how what when where which system user assistant example result number first second "
    "third because therefore however instance method function return list string table file "
    "value memory device compute network language sentence summary translate write code python"
).split()
_HANZI = (
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动"
    "同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自"
    "二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日"
    "那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变"
    "条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总"
    "次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指"
    "几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造百规热领七海口东导器"
    "压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更单风切打白教速花带安"
    "场身车例真务具万每目至达走积示议声报斗完类八离华名确才科张信马节话米整空元况今集"
    "温传土许步群广石记需段研界拉林律叫且究观越织装影算低持音众书布复容儿须际商非验连"
    "断深难近矿千周委素技备半办青省列习响约支般史感劳便团往酸历市克何除消构府称太准精"
    "值号率族维划选标写存候毛亲快效斯院查江型眼王按格养易置派层片始却专状育厂京识适属"
    "圆包火住调满县局照参红细引听该铁价严"
)


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def load_results() -> dict:
    try:
        return json.loads(RESULTS.read_text())
    except (OSError, ValueError):
        return {"runs": {}}


def save_results(results: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1, default=str))


# --- what the call ran on --------------------------------------------------------------------
def environment() -> dict:
    info: dict = {"hardware": detect().describe(), "cpus": os.cpu_count()}
    try:
        import importlib.metadata as md

        import torch

        info["versions"] = {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            **{n: md.version(n) for n in ("transformers", "llamafactory", "peft", "liger-kernel")},
        }
    except Exception as exc:  # the figures still matter without the versions
        info["versions"] = {"error": str(exc)}
    gpu = card()
    if gpu:
        info["nvidia_smi"] = gpu
    try:  # hosts differ by CPU, and eager recipes are bound by it
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        names = [x.partition(":")[2].strip() for x in lines if x.startswith("model name")]
        info["cpu_model"] = names[0] if names else None
    except OSError:
        pass
    return info


def matmul_tflops() -> dict | None:
    """bf16 8192^3 matmul on random data: median and max TFLOP/s of 30 timed products."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    times = []
    for _ in range(30):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del a, b
    torch.cuda.empty_cache()
    flops = 2 * n**3
    return {"median": flops / median(times) / 1e12, "max": flops / min(times) / 1e12}


# --- data --------------------------------------------------------------------------------------
def make_dataset(model: Path, rows: int) -> Path:
    """Synthetic instruction rows whose token lengths follow a log-normal (median ~303, p90
    ~647, capped at 1,408): the spread of real instruction sets. One row in ten is Chinese."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model))
    rng = random.Random(9)

    def text_of(n_tokens: int, chinese: bool) -> str:
        if chinese:
            return "".join(rng.choice(_HANZI) for _ in range(n_tokens))
        words = [rng.choice(_WORDS) for _ in range(n_tokens)]
        return " ".join(words)

    # How many tokens a word / a character costs with this tokenizer.
    per_word = len(tokenizer(text_of(2000, False))["input_ids"]) / 2000
    per_char = len(tokenizer(text_of(2000, True))["input_ids"]) / 2000
    data = []
    sigma = math.log(647 / 303) / 1.2816
    for i in range(rows):
        target = min(1408, max(24, int(rng.lognormvariate(math.log(303), sigma))))
        chinese = i % 10 == 0
        per = per_char if chinese else per_word
        body = max(8, int((target - 20) / per))  # ~20 tokens of chat template
        prompt = max(4, body // 6)
        data.append(
            {
                "instruction": text_of(prompt, chinese),
                "input": "",
                "output": text_of(body - prompt, chinese),
            }
        )
    path = DATA / "cache" / f"bench-{rows}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


# --- watching a run: bench/gpu/smi.py's GpuWatch ------------------------------------------------


def _cap_dir() -> Path:
    """A sitecustomize that caps the training process's CUDA memory and records its peak."""
    folder = DATA / "cap"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        "import atexit, os\n"
        "_f = os.environ.get('TUNEBOT_BENCH_MEM_FRACTION')\n"
        "if _f:\n"
        "    import torch\n"
        "    if torch.cuda.is_available():\n"
        "        torch.cuda.set_per_process_memory_fraction(float(_f), 0)\n"
        "        def _peak():\n"
        "            p = os.environ.get('TUNEBOT_BENCH_PEAK_FILE')\n"
        "            if p and torch.cuda.is_initialized() and torch.cuda.max_memory_reserved(0) > 0:\n"
        "                with open(p, 'a') as fh:\n"
        "                    r, a = torch.cuda.max_memory_reserved(0), torch.cuda.max_memory_allocated(0)\n"
        "                    fh.write(f'{r} {a}\\n')\n"
        "        atexit.register(_peak)\n"
    )
    return folder


def run_one(name: str, model: Path, dataset: str, matmul: dict | None, params: int) -> dict:
    preset, extra, cap_gib, max_steps = RUNS[name]
    job_env: dict[str, str] = {}
    hardware = detect()
    peak_file = DATA / f"peak-{name}.txt"
    peak_file.unlink(missing_ok=True)
    if cap_gib is not None and hardware.gpus:
        total = hardware.gpus[0].memory_mib * 2**20
        card = CARD_BYTES.get(cap_gib, int(cap_gib * GIB))
        job_env = {
            "PYTHONPATH": f"{_cap_dir()}:{os.environ.get('PYTHONPATH', '')}",
            "TUNEBOT_BENCH_MEM_FRACTION": f"{card / total:.4f}",
            "TUNEBOT_BENCH_PEAK_FILE": str(peak_file),
        }
        # The runner plans for the card it believes it has.
        g = hardware.gpus[0]
        capped = Gpu(g.index, g.name, card // 2**20, g.compute_capability)
        hardware = Hardware(hardware.host, (capped,), hardware.cpu_count)
    settings = Settings(data_dir=DATA, poll_interval=0.5, web_port=0, estimate=True, job_env=job_env)
    runtime = Runtime(settings, hardware=hardware)
    runtime.start(web=False)
    pairs = {
        "model": str(model),
        "dataset": dataset,
        "epochs": "1",
        "logging_steps": "1",
        "save_steps": "100000",
        "compute": "bf16" if hardware.supports_bf16 else "fp32",
        **extra,
    }
    if max_steps:
        pairs["steps"] = str(max_steps)
    if int(os.environ.get("BENCH_GPUS", "1")) > 1:  # data parallel over N GPUs (issue 13)
        pairs["gpus"] = os.environ["BENCH_GPUS"]
    if not hardware.has_gpu:
        pairs.pop("compute")
        pairs["compute"] = "fp32"
    row: dict = {"preset": preset, "pairs": extra, "cap_gib": cap_gib}
    try:
        log(f"{name}: submitting ({preset} {extra})")
        started = time.time()
        step_seen: dict[int, float] = {}
        with GpuWatch() as gpu:
            job = runtime.queue.submit_train(preset=preset, pairs=pairs)
            trainer_log = Path(job.work_dir) / "output" / "trainer_log.jsonl"
            while True:
                job = runtime.store.get(job.id)
                for point in read_trainer_log(trainer_log):
                    step_seen.setdefault(point.step, time.time())
                if job.state in FINAL_STATES:
                    break
                late = time.time() - started > float(os.environ.get("BENCH_RUN_LIMIT", "560"))
                if late and not job.cancel_requested:
                    runtime.queue.cancel(job.id, by="bench time limit")
                time.sleep(0.05)  # a step takes ~0.13 s on an H200: see each logged one soon
        wall = time.time() - started
        metrics = job.metrics
        points = read_trainer_log(trainer_log)
        per_epoch = metrics.get("tokens_per_epoch")
        row.update(
            job=job.id,
            state=job.state,
            error=job.error,
            wall_s=round(wall, 1),
            args={k: job.args.get(k) for k in ARG_KEYS},
            plan=metrics.get("plan"),
            dataset_tokens=metrics.get("dataset_tokens"),
            tokens_per_epoch=per_epoch,
            tokens_per_step=metrics.get("tokens_per_step"),
            estimate=metrics.get("estimate"),
            actual_s=metrics.get("actual_s"),
            train_runtime=metrics.get("train_runtime"),
            tunebot_tokens_per_s=metrics.get("tokens_per_s"),
            tunebot_mfu=metrics.get("mfu"),
            steps=max(step_seen) if step_seen else 0,
            loss=[
                (round(p.epoch * per_epoch), p.loss)
                for p in points
                if p.loss is not None and p.epoch is not None and per_epoch
            ],
        )
        compiled = str(job.args.get("torch_compile", "")).lower() in ("true", "1") or "compile" in name
        steady_from = 20 if compiled else 5  # compiling and graph capture happen in the first steps
        steps = sorted(s for s in step_seen if s >= steady_from)
        if len(steps) >= 3 and per_epoch:
            by_step = {p.step: p for p in points if p.loss is not None}
            first, last = steps[0], steps[-1]
            span = step_seen[last] - step_seen[first]
            if span > 0 and first in by_step and last in by_step:
                tokens = (by_step[last].epoch - by_step[first].epoch) * per_epoch
                row["s_per_step"] = round(span / (last - first), 3)
                row["tokens_per_s"] = round(tokens / span, 1)
                if matmul:
                    gpus = int(os.environ.get("BENCH_GPUS", "1"))  # per GPU: over N x one card's rate
                    peak = gpus * matmul["median"] * 1e12
                    row["mfu_measured"] = round(4 * params * tokens / span / peak, 4)
                # mean utilisation over the steady window
                util = [u for t, u, _ in gpu.samples if step_seen[first] <= t <= step_seen[last]]
                row["gpu_util"] = round(sum(util) / len(util), 1) if util else None
        row["gpu_peak_mib"] = max((m for _, _, m in gpu.samples), default=None)
        row["cpus_allowed"] = len(os.sched_getaffinity(0))
        if peak_file.exists():
            reserved, allocated = (int(x) for x in peak_file.read_text().split()[:2])
            row["process_peak_mib"] = reserved // 2**20
            row["process_peak_alloc_mib"] = allocated // 2**20
            row["cap_mib"] = CARD_BYTES.get(cap_gib, int(cap_gib * GIB)) // 2**20
        try:  # what Inductor said about CUDA graphs (captured, or skipped and why)
            said = Path(job.log_path).read_text(errors="replace").splitlines()
            row["cudagraph_lines"] = [x[:300] for x in said if "cudagraph" in x.lower()][:20]
        except OSError:
            pass
        if job.state != "succeeded":
            tail = Path(job.log_path).read_text(errors="replace")[-4000:]
            row["log_tail"] = tail
            shutil.copy(job.log_path, OUT / f"{name}.log")
        shown = ("tokens_per_s", "tunebot_tokens_per_s", "s_per_step", "gpu_util", "mfu_measured",
                 "gpu_peak_mib", "process_peak_mib", "estimate", "actual_s")
        log(f"{name}: {job.state} in {wall:.0f}s  " + json.dumps({k: row.get(k) for k in shown}, default=str))
        return row
    finally:
        runtime.stop()


def cmd_run(names: list[str]) -> int:
    results = load_results()
    results.setdefault("env", environment())
    save_results(results)
    t = time.time()
    model = ensure_model(DATA / "models", shape=SHAPE)
    log(f"model {SHAPE} ready in {time.time() - t:.0f}s")
    config = json.loads((model / "config.json").read_text())
    params = param_count(config) or 0
    results["params"] = params
    if "matmul" not in results:
        results["matmul_tflops"] = matmul_tflops()
        log(f"bf16 matmul: {results['matmul_tflops']}")
    name = f"bench{ROWS}"
    if name not in {d.name for d in datasets.list_datasets(DATA)}:
        datasets.add_dataset(DATA, name, make_dataset(model, ROWS))
    save_results(results)
    for run in names:
        results["runs"][run] = run_one(run, model, name, results.get("matmul_tflops"), params)
        save_results(results)
    summary(results)
    return 0


def summary(results: dict) -> None:
    base = next((r.get("tokens_per_s") for n, r in results["runs"].items() if n.startswith("seed-cli")), None)
    print("\n| run | state | tokens/s | × seed-cli | s/step | util % | MFU | card peak MiB "
          "| process peak / cap MiB | estimate s | actual s |")
    for name, r in results["runs"].items():
        ratio = f"{r['tokens_per_s'] / base:.2f}" if base and r.get("tokens_per_s") else "-"
        est = (r.get("estimate") or {}).get("seconds")
        print(
            f"| {name} | {r.get('state')} | {r.get('tokens_per_s')} | {ratio} | {r.get('s_per_step')} | "
            f"{r.get('gpu_util')} | {r.get('mfu_measured')} | {r.get('gpu_peak_mib')} | "
            f"{r.get('process_peak_mib', '-')} / {r.get('cap_mib', '-')} | {round(est) if est else '-'} | "
            f"{r.get('actual_s')} |"
        )


# --- profiling ---------------------------------------------------------------------------------
def cmd_profile(run: str = "fast-log5") -> int:
    """Two looks at steps of a `fast` job as the runner planned it, in LLaMA-Factory's own trainer:
    every host-GPU sync in steps 6-9 (`torch.cuda.set_sync_debug_mode`, with where each came from),
    then torch.profiler over steps 11-14 (GPU busy %, top kernels). `run`: the bench run whose job's
    config.yaml is used (from $OUT/throughput.json; the latest uncompiled-by-hand `fast` job if absent)."""
    import yaml

    from runners.store import Store

    store = Store(Settings(data_dir=DATA).db_url)
    job_id = load_results().get("runs", {}).get(run, {}).get("job")
    if job_id:
        job = store.get(job_id)
    else:
        job = next(j for j in store.list_jobs() if j.preset == "fast" and j.state == "succeeded"
                   and not j.spec.get("pairs", {}).get("torch_compile"))
    log(f"profile: job {job.id} ({run if job_id else 'latest fast'})")
    args = yaml.safe_load((Path(job.work_dir) / "config.yaml").read_text())
    args.update(
        output_dir=str(DATA / "profile-out"), max_steps=15, save_steps=100000, plot_loss=False,
        overwrite_output_dir=True, logging_steps=5,
    )
    spec = DATA / "profile.yaml"
    spec.write_text(yaml.safe_dump(args))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0"}
    proc = subprocess.run(
        [sys.executable, __file__, "profile-child", str(spec)],
        env=env, text=True, capture_output=True, timeout=500,
    )
    (OUT / "profile.txt").write_text(proc.stdout[-200000:] + "\n--- stderr ---\n" + proc.stderr[-20000:])
    print("\n".join(x for x in proc.stdout.splitlines() if x.startswith(("SYNC", "PROFILE")))[-8000:])
    print(proc.stdout[-6000:])
    return proc.returncode


def cmd_profile_child(spec: str) -> int:
    import traceback
    import warnings
    from collections import Counter

    import torch
    import yaml
    from llamafactory.train.tuner import run_exp
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    syncs: Counter = Counter()

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchronizing" not in str(message):
            return
        frames = [f for f in traceback.extract_stack()[:-1] if "/warnings.py" not in f.filename]
        where = " < ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames[-5:]))
        syncs[where] += 1

    class Look(TrainerCallback):
        def __init__(self) -> None:
            self.prof = None
            self.t0 = 0.0
            self.shown = None

        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 5:  # steps 6-9: every sync, and from where
                torch.cuda.synchronize()
                self.shown = warnings.showwarning
                warnings.simplefilter("always")
                warnings.showwarning = record
                torch.cuda.set_sync_debug_mode("warn")
            if state.global_step == 10 and self.prof is None:  # steps 11-14: the profiler
                torch.cuda.synchronize()
                self.prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
                self.prof.__enter__()
                self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 9 and self.shown is not None:
                torch.cuda.set_sync_debug_mode(0)
                warnings.showwarning = self.shown
                total = sum(syncs.values())
                print(f"SYNC steps 6-9: {total} host-GPU syncs ({total / 4:.1f} a step)")
                for where, n in syncs.most_common(12):
                    print(f"SYNC {n:4d}x {where}")
            if state.global_step == 14 and self.prof is not None:
                torch.cuda.synchronize()
                wall = time.perf_counter() - self.t0
                self.prof.__exit__(None, None, None)
                events = self.prof.key_averages()
                # the kernels themselves (an op's row counts its kernels' time again)
                on_gpu = [e for e in events if e.device_type == DeviceType.CUDA]
                busy = sum(e.self_device_time_total for e in on_gpu) / 1e6
                kernels = sum(e.count for e in on_gpu)
                print(f"PROFILE steps 11-14: wall {wall:.3f}s (stretched by the profiler), GPU kernel "
                      f"time {busy:.3f}s ({100 * busy / wall:.0f}% of it), {kernels} kernels")
                print(events.table(sort_by="self_device_time_total", row_limit=25, max_name_column_width=60))
                print(events.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))
                self.prof = None

    if not torch.cuda.is_available():
        print("PROFILE needs a CUDA GPU; this machine has none")
        return 0
    run_exp(yaml.safe_load(Path(spec).read_text()), callbacks=[Look()])
    return 0


def cmd_plot(files: list[str], dest: str) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for file in files:
        file, _, wanted = file.partition(":")  # results.json[:run,run=label]
        labels = dict(item.partition("=")[::2] for item in wanted.split(",")) if wanted else {}
        for name, run in json.loads(Path(file).read_text())["runs"].items():
            if (labels and name not in labels) or not run.get("loss"):
                continue
            xs = [t / 1000 for t, _ in run["loss"]]
            ys = [loss for _, loss in run["loss"]]
            shown = labels.get(name) or name
            label = f"{shown} ({run.get('steps')} steps, {run.get('tokens_per_s') or '?':,} tokens/s)"
            ax.plot(xs, ys, label=label, linewidth=1)
    ax.set_xlabel("training tokens (thousands, non-padding)")
    ax.set_ylabel("training loss")
    ax.set_title("Loss vs tokens: random Llama-3-8B, LoRA r8, one H200")
    ax.legend()
    fig.tight_layout()
    fig.savefig(dest, dpi=110)
    return 0


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "run"
    if command == "run":
        sys.exit(cmd_run(sys.argv[2:] or ["seed-cli", "seed", "fast"]))
    if command == "profile":
        sys.exit(cmd_profile(*sys.argv[2:3]))
    if command == "profile-child":
        sys.exit(cmd_profile_child(sys.argv[2]))
    if command == "plot":
        sys.exit(cmd_plot(sys.argv[2:-1], sys.argv[-1]))
    sys.exit(f"unknown command {command}")
