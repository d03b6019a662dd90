"""A stand-in for `llamafactory-cli train` in the Ray backend tests: writes trainer_log.jsonl lines
at a set pace (with a progress bar that never ends its line), then the result files.

python fake_train.py STEPS PAUSE [EXIT_CODE]
"""

import json
import os
import sys
import time

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 3
pause = float(sys.argv[2]) if len(sys.argv) > 2 else 0.3
exit_code = int(sys.argv[3]) if len(sys.argv) > 3 else 0
os.makedirs("output", exist_ok=True)
print("fake trainer starting", flush=True)
for i in range(1, steps + 1):
    line = {"current_steps": i, "total_steps": steps, "loss": 2.0 / i, "percentage": 100.0 * i / steps}
    with open("output/trainer_log.jsonl", "a") as fh:
        fh.write(json.dumps(line) + "\n")
    print(f"{i}/{steps} |{'#' * i}\r", end="", flush=True)
    time.sleep(pause)
if exit_code:
    print("\nValueError: the fake trainer was told to fail", flush=True)
    sys.exit(exit_code)
with open("output/train_results.json", "w") as fh:
    json.dump({"train_loss": 1.23, "epoch": 1.0}, fh)
with open("output/adapter_config.json", "w") as fh:
    json.dump({"r": 8}, fh)
print("\nfake trainer done", flush=True)
