"""Upload benchmark: tunebot's resumable, parallel multipart upload against one plain put_object.

Both send the same file (1 GiB by default, random bytes, in a temporary directory) to the same
OSS stand-in (tests/oss_standin.py, started here as its own process so that client and server do
not share a GIL; it checks every request's V1 signature and hashes every byte it stores, as OSS
does). Rounds alternate the methods; the table shows the median of each.

- plain put_object: `oss2.Bucket.put_object(key, open(file))` with oss2's defaults (CRC-64 on).
- tunebot: `OssStorage.put_file`, i.e. `oss2.resumable_upload` with a checkpoint, parallel parts,
  the local CRC-64 computed beside the upload, and the HEAD comparison at the end.
- resume: the same upload broken off after half of its parts (a connection error injected in the
  client), then run again: the time and the parts of the second run only.

    python bench/upload_bench.py [--size-mib 1024] [--rounds 3] [--configs 16x4,8x8,32x2]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import oss2  # noqa: E402

from runners.artifacts import OssStorage, StorageSettings  # noqa: E402
from runners.errors import UserError  # noqa: E402

MIB = 1 << 20
# The stand-in's defaults; nothing real.
BUCKET, KEY_ID, SECRET = "tunebot-test", "LTAItunebottest", "standin-secret-do-not-use"


def start_standin(root: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "oss_standin.py"), "--root", str(root)],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if not line.startswith("READY "):
        proc.kill()
        raise SystemExit(f"the stand-in did not start: {line!r}")
    return proc, line.split(" ", 1)[1]


def make_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(64 * MIB, left))
            f.write(chunk)
            left -= len(chunk)


def settings_for(endpoint: str, part_mib: int, threads: int) -> StorageSettings:
    return StorageSettings(backend="oss", oss_endpoint=endpoint, oss_bucket=BUCKET, oss_prefix="bench",
                           oss_access_key_id=KEY_ID, oss_access_key_secret=SECRET, part_size=part_mib * MIB,
                           multipart_threshold=2 * part_mib * MIB, threads=threads)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    wall: float
    client_cpu: float
    server_cpu: float


def measure(upload, server_pid: int) -> Run:
    """Wall time and the CPU time each side spent: on a shared machine the CPU time is the steadier figure."""
    client0, server0 = cpu_seconds(os.getpid()), cpu_seconds(server_pid)
    started = time.perf_counter()
    upload()
    wall = time.perf_counter() - started
    return Run(wall, cpu_seconds(os.getpid()) - client0, cpu_seconds(server_pid) - server0)


def plain_put(bucket: oss2.Bucket, path: Path, key: str) -> None:
    with open(path, "rb") as f:
        bucket.put_object(key, f)


def time_resume(store: OssStorage, path: Path, key: str, part_mib: int) -> tuple[float, float, int, int]:
    """(seconds broken run, seconds resumed run, parts sent before, parts sent on resume)."""
    parts_total = -(-path.stat().st_size // (part_mib * MIB))
    real_upload_part = store._bucket.upload_part
    sent = {"n": 0, "limit": parts_total // 2}
    lock = threading.Lock()

    def upload_part(*args, **kwargs):
        with lock:  # count a part when it starts, so that exactly `limit` parts go out
            if sent["limit"] is not None and sent["n"] >= sent["limit"]:
                raise oss2.exceptions.RequestError(ConnectionResetError("injected: connection reset"))
            sent["n"] += 1
        return real_upload_part(*args, **kwargs)

    store._bucket.upload_part = upload_part
    started = time.perf_counter()
    try:
        store.put_file(path, key)
        raise SystemExit("the injected interruption did not happen")
    except UserError:
        broken = time.perf_counter() - started
    before = sent["n"]
    sent["limit"] = None
    started = time.perf_counter()
    store.put_file(path, key)
    resumed = time.perf_counter() - started
    store._bucket.upload_part = real_upload_part
    store._bucket.delete_object(f"bench/{key}")
    return broken, resumed, before, sent["n"] - before


def machine_facts() -> list[str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    crc_ext = sys.modules["crcmod.crcmod"]._usingExtension
    return [
        f"CPU: {model}, {os.cpu_count()} cores visible",
        f"Python {platform.python_version()} on {platform.system()} {platform.release()}",
        f"oss2 {oss2.__version__}, crcmod C extension: {'yes' if crc_ext else 'no'}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--configs", default="16x4,8x8,32x2,16x1",
                        help="part size in MiB x threads, comma-separated; the first is tunebot's default")
    args = parser.parse_args(argv)
    # The injected interruption makes oss2 log a traceback; the table is what this prints.
    logging.getLogger("oss2").setLevel(logging.CRITICAL)
    configs = [tuple(int(n) for n in c.split("x")) for c in args.configs.split(",")]

    with tempfile.TemporaryDirectory(prefix="upload-bench-") as tmp:
        tmp_path = Path(tmp)
        source = tmp_path / "model.bin"
        make_file(source, args.size_mib * MIB)
        proc, endpoint = start_standin(tmp_path / "server")
        try:
            plain = oss2.Bucket(oss2.Auth(KEY_ID, SECRET), endpoint, BUCKET)
            stores = {c: OssStorage(settings_for(endpoint, *c), tmp_path / f"checkpoints-{c[0]}x{c[1]}")
                      for c in configs}
            runs: dict[str, list[Run]] = {"plain": [], **{f"{p}x{t}": [] for p, t in configs}}
            load_before = os.getloadavg()[0]
            for round_no in range(args.rounds):
                runs["plain"].append(measure(lambda: plain_put(plain, source, "bench/plain.bin"), proc.pid))
                plain.delete_object("bench/plain.bin")
                for (p, t), store in stores.items():
                    upload = lambda s=store: s.put_file(source, "tunebot.bin")  # noqa: E731
                    runs[f"{p}x{t}"].append(measure(upload, proc.pid))
                    plain.delete_object("bench/tunebot.bin")
                walls = ", ".join(f"{name} {done[-1].wall:.2f}s" for name, done in runs.items())
                print(f"round {round_no + 1}: {walls}", flush=True)
            load_after = os.getloadavg()[0]
            part_mib, threads = configs[0]
            broken, resumed, before, after = time_resume(stores[configs[0]], source, "resume.bin", part_mib)
        finally:
            proc.terminate()
            proc.wait()

    size_mib = args.size_mib
    print()
    print(f"Upload of {size_mib} MiB to the OSS stand-in on 127.0.0.1, median of {args.rounds} rounds")
    print()
    print("| method | part size | threads | median wall s | MiB/s | client CPU s | server CPU s "
          "| all walls (s) |")
    print("|---|---|---|---|---|---|---|---|")
    rows = [("plain `put_object`", "-", "1", runs["plain"])]
    rows += [(f"tunebot `put_file`{' (default)' if i == 0 else ''}", f"{p} MiB", str(t), runs[f"{p}x{t}"])
             for i, (p, t) in enumerate(configs)]
    for name, part, threads_text, done in rows:
        wall = statistics.median(r.wall for r in done)
        client = statistics.median(r.client_cpu for r in done)
        server = statistics.median(r.server_cpu for r in done)
        print(f"| {name} | {part} | {threads_text} | {wall:.2f} | {size_mib / wall:.0f} | {client:.2f} | "
              f"{server:.2f} | {', '.join(f'{r.wall:.2f}' for r in done)} |")
    print()
    print(f"Resume ({part_mib} MiB parts, {threads} threads): broken off after {before} parts in "
          f"{broken:.2f} s; the second run sent {after} parts in {resumed:.2f} s.")
    print()
    for fact in machine_facts():
        print(f"- {fact}")
    print(f"- load average (1 min) {load_before:.2f} before the rounds, {load_after:.2f} after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
