"""Jobs and the artifact store: uploads after each kind, inputs fetched from OSS, failed uploads."""

from __future__ import annotations

import shutil
import sys
from dataclasses import replace
from pathlib import Path

from runners.artifacts import StorageSettings
from runners.hardware import Hardware
from runners.queue import JobQueue
from runners.worker import Worker, wait_for
from tests.oss_standin import OssStandin

from .conftest import wait_until

FAKE = Path(__file__).parent / "fakes" / "llamafactory_cli.py"
FINAL = ("succeeded", "failed", "cancelled", "interrupted", "stopped")
CPU = Hardware(host="testhost", gpus=(), cpu_count=2)


def oss_settings(settings, server: OssStandin, **changes):
    storage = StorageSettings(
        backend="oss",
        oss_endpoint=server.endpoint,
        oss_bucket=server.bucket,
        oss_prefix="team",
        oss_access_key_id=server.access_key_id,
        oss_access_key_secret=server.access_key_secret,
        multipart_threshold=400 * 1024,
        part_size=100 * 1024,
        threads=2,
    )
    storage = replace(storage, **changes)
    return replace(
        settings,
        storage=storage,
        llamafactory_cli=f"{sys.executable} {FAKE}",
        job_env={"FAKE_STEPS": "3", "FAKE_STEP_SECONDS": "0.05"},
    )


def upload_events(store, job_id):
    return [e.data for e in store.events_since(0, job_id=job_id) if e.type == "upload"]


def test_train_uploads_adapter_with_manifest_and_eval_fetches_it_from_oss(settings, store, tmp_path):
    with OssStandin(tmp_path / "oss") as server:
        s = oss_settings(settings, server)
        queue = JobQueue(s, store, hardware=CPU)
        worker = Worker(s, store, hardware=CPU)
        worker.start()
        try:
            train = wait_for(store, queue.submit_train(preset="tiny").id, FINAL, timeout=60)
            assert train.state == "succeeded"
            wait_until(lambda: len(upload_events(store, train.id)) >= 3, 30, what="uploads")
            uploads = {e["name"]: e for e in upload_events(store, train.id)}
            assert set(uploads) == {"adapter", "plot", "config"}
            assert uploads["adapter"]["location"] == f"oss://{server.bucket}/team/{train.id}/train/adapter/"
            assert "Signature=" in uploads["adapter"]["link"]  # a signed link to the manifest
            remote = store.get(train.id).artifacts["remote"]
            stored = worker.storage.stat(remote["adapter"]["key"])
            names = {f.path for f in stored.files}
            assert "adapter_config.json" in names
            assert not any(n.startswith("checkpoint-") for n in names)  # checkpoints stay local

            # The runner host loses the adapter (say, another host did the training): eval fetches it.
            shutil.rmtree(train.artifacts["adapter"])
            evaluation = queue.submit_eval(train.id)
            done = wait_for(store, evaluation.id, FINAL, timeout=60)
            assert done.state == "succeeded", done.error
            fetched = Path(done.args["adapter_name_or_path"])
            assert fetched.is_relative_to(s.cache_dir / "fetched")
            assert (fetched / "adapter_config.json").read_text() == "{}"
            assert any(e.type == "fetching" for e in store.events_since(0, job_id=done.id))
        finally:
            worker.stop()


def test_wrong_credentials_keep_the_job_succeeded_its_files_local_and_say_why(settings, store, tmp_path):
    with OssStandin(tmp_path / "oss") as server:
        s = oss_settings(settings, server, oss_access_key_secret="not-the-secret")
        queue = JobQueue(s, store, hardware=CPU)
        worker = Worker(s, store, hardware=CPU)
        worker.start()
        try:
            train = wait_for(store, queue.submit_train(preset="tiny").id, FINAL, timeout=60)
            wait_until(lambda: upload_events(store, train.id), 30, what="the upload outcome")
        finally:
            worker.stop()
        assert train.state == "succeeded"
        events = upload_events(store, train.id)
        assert all("error" in e for e in events)
        assert "403" in events[0]["error"] and "credentials" in events[0]["error"]
        assert "not-the-secret" not in str(events)
        assert Path(train.artifacts["adapter"], "adapter_config.json").exists()
        assert store.get(train.id).artifacts["remote_errors"]


def test_a_half_uploaded_adapter_is_not_taken_for_a_whole_one(settings, store, tmp_path):
    with OssStandin(tmp_path / "oss") as server:
        s = oss_settings(settings, server)
        queue = JobQueue(s, store, hardware=CPU)
        worker = Worker(s, store, hardware=CPU)
        worker.start()
        try:
            train = wait_for(store, queue.submit_train(preset="tiny").id, FINAL, timeout=60)
            wait_until(lambda: len(upload_events(store, train.id)) >= 3, 30, what="uploads")
            key = store.get(train.id).artifacts["remote"]["adapter"]["key"]
            worker.storage._delete(f"{key}/tunebot-manifest.json")  # as if the upload had died before it
            shutil.rmtree(train.artifacts["adapter"])
            evaluation = queue.submit_eval(train.id)
            done = wait_for(store, evaluation.id, FINAL, timeout=60)
        finally:
            worker.stop()
        assert done.state == "failed"
        assert "upload never finished" in done.error
        assert store.leased_slots(CPU.host) == {}
