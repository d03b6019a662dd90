"""A stand-in for `llamafactory-cli` in tests of process handling (queueing, slots, cancel,
kill, re-attach), where a real 8-second start-up per job would only slow the suite down.
The real CLI is exercised by tests/test_engine_llamafactory.py for every job kind.

Behaviour comes from environment variables the test sets through Settings.job_env:
FAKE_STEPS (default 5), FAKE_STEP_SECONDS (0.2), FAKE_EXIT (0), FAKE_ERROR (a last stderr line).
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

import yaml


def main() -> int:
    sub, config = sys.argv[1], Path(sys.argv[2])
    args = yaml.safe_load(config.read_text())
    stopped = []
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(True))
    print(
        f"fake llamafactory-cli {sub} pid={os.getpid()} cuda={os.environ.get('CUDA_VISIBLE_DEVICES')!r}",
        flush=True,
    )
    steps = int(os.environ.get("FAKE_STEPS", "5"))
    pause = float(os.environ.get("FAKE_STEP_SECONDS", "0.2"))
    out = Path(args.get("output_dir") or args.get("export_dir") or config.parent / "output")
    out.mkdir(parents=True, exist_ok=True)
    start = 0
    if args.get("resume_from_checkpoint"):
        start = int(Path(args["resume_from_checkpoint"]).name.split("-")[1])
        print(f"Resuming training from {args['resume_from_checkpoint']}.", flush=True)
    for step in range(start + 1, steps + 1):
        if stopped:
            print("received SIGTERM, stopping", flush=True)
            return 143
        time.sleep(pause)
        if sub == "train" and args.get("do_train"):
            line = {
                "current_steps": step,
                "total_steps": steps,
                "loss": 3.0 / step,
                "lr": 1e-4,
                "epoch": step / steps,
                "percentage": round(100 * step / steps, 2),
                "elapsed_time": f"0:00:{step:02d}",
                "remaining_time": f"0:00:{steps - step:02d}",
            }
            with open(out / "trainer_log.jsonl", "a") as fh:
                fh.write(json.dumps(line) + "\n")
            ckpt = out / f"checkpoint-{step}"
            ckpt.mkdir(exist_ok=True)
            (ckpt / "trainer_state.json").write_text("{}")
    if os.environ.get("FAKE_ERROR"):
        print(os.environ["FAKE_ERROR"], file=sys.stderr, flush=True)
    code = int(os.environ.get("FAKE_EXIT", "0"))
    if code == 0:
        if sub == "train" and args.get("do_train"):
            # As LLaMA-Factory's LogCallback does at the end: the last step again, with no loss
            # (its log entry then is the train summary, whose None values it leaves out).
            closing = {"current_steps": steps, "total_steps": steps, "epoch": 1.0, "percentage": 100.0,
                       "elapsed_time": f"0:00:{steps:02d}", "remaining_time": "0:00:00"}
            with open(out / "trainer_log.jsonl", "a") as fh:
                fh.write(json.dumps(closing) + "\n")
            (out / "adapter_config.json").write_text("{}")
            (out / "train_results.json").write_text(json.dumps({"train_loss": 1.0, "train_runtime": 1.0}))
        elif sub == "train":
            # A model without an adapter (the base model) scores half: the comparison has a gain.
            scale = 1.0 if args.get("adapter_name_or_path") else 0.5
            with open(config.parent / "predict-runs.log", "a") as fh:
                fh.write(f"{args.get('model_name_or_path')} {args.get('adapter_name_or_path')}\n")
            (out / "predict_results.json").write_text(
                json.dumps(
                    {
                        "predict_rouge-1": 10.0 * scale,
                        "predict_rouge-2": 5.0 * scale,
                        "predict_rouge-l": 8.0 * scale,
                        "predict_bleu-4": 4.0 * scale,
                    }
                )
            )
            (out / "generated_predictions.jsonl").write_text(
                json.dumps({"prompt": "p", "predict": "a", "label": "b"}) + "\n"
            )
        elif sub == "export":
            (out / "config.json").write_text("{}")
        elif sub == "api":
            while not stopped:
                time.sleep(0.1)
    return code


if __name__ == "__main__":
    sys.exit(main())
