"""Artifact storage: the local store, and OSS against the signature-checking stand-in."""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import oss2
import pytest

from runners.artifacts import (
    MANIFEST_NAME,
    LocalStorage,
    OssStorage,
    StorageSettings,
    bytes_crc64,
    check_key,
    file_crc64,
    job_key,
    open_storage,
)
from runners.errors import UserError
from tests.oss_standin import OssStandin

PART = 100 * 1024  # OSS's smallest part: multipart tests stay fast


@contextmanager
def oss_store(tmp_path: Path, *, secret: str | None = None, key_id: str | None = None,
              region: str | None = None, token: str | None = None, server_token: str | None = None,
              token_expires_at: float | None = None):
    """A stand-in server and an OssStorage pointed at it (small parts, three threads)."""
    with OssStandin(tmp_path / "server", security_token=server_token) as server:
        settings = StorageSettings(
            backend="oss",
            oss_endpoint=server.endpoint,
            oss_bucket=server.bucket,
            oss_prefix="team/tunebot",
            oss_access_key_id=key_id or server.access_key_id,
            oss_access_key_secret=secret or server.access_key_secret,
            oss_security_token=token,
            oss_token_expires_at=token_expires_at,
            oss_region=region,
            multipart_threshold=4 * PART,
            part_size=PART,
            threads=3,
        )
        yield server, OssStorage(settings, tmp_path / "checkpoints")


def write_random(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def make_adapter(root: Path) -> dict[str, bytes]:
    files = {
        "adapter_config.json": b'{"r": 8}',
        "adapter_model.safetensors": os.urandom(7 * PART + 123),  # multipart
        "tokenizer/tokenizer.json": os.urandom(5000),
        "empty.txt": b"",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


# --- keys and settings -------------------------------------------------------------------------

def test_job_key_lays_artifacts_out_per_job_and_kind():
    assert job_key(17, "adapter") == "17/adapter"
    assert job_key(17, "export", "merged") == "17/export/merged"
    assert job_key(3, "plot", "training_loss.png") == "3/plot/training_loss.png"


@pytest.mark.parametrize("bad", ["", "/abs", "a//b", "a/../b", "a/./b", "a\\b", "a/b/", "ünï"])
def test_keys_that_could_escape_or_confuse_the_layout_are_refused(bad):
    with pytest.raises(UserError):
        check_key(bad)


def test_job_key_refuses_a_kind_that_is_not_a_word():
    with pytest.raises(UserError, match="kind"):
        job_key(1, "../x")


def test_settings_default_to_local_storage_under_the_data_dir(tmp_path):
    settings = StorageSettings.from_env({})
    assert settings.backend == "local"
    assert settings.url_expires == 7 * 86400
    store = open_storage(settings, tmp_path)
    assert isinstance(store, LocalStorage) and store.root == (tmp_path / "artifacts").resolve()


def test_oss_settings_name_every_missing_variable():
    with pytest.raises(UserError) as caught:
        StorageSettings.from_env({"TUNEBOT_STORAGE": "oss", "TUNEBOT_OSS_BUCKET": "b"})
    text = str(caught.value)
    for name in ("TUNEBOT_OSS_ENDPOINT", "TUNEBOT_OSS_ACCESS_KEY_ID", "TUNEBOT_OSS_ACCESS_KEY_SECRET"):
        assert name in text
    assert "TUNEBOT_OSS_BUCKET" not in text


def test_oss_settings_parse_and_keep_secrets_out_of_repr():
    settings = StorageSettings.from_env({
        "TUNEBOT_STORAGE": "OSS", "TUNEBOT_OSS_ENDPOINT": "oss-cn-hangzhou.aliyuncs.com",
        "TUNEBOT_OSS_BUCKET": "models", "TUNEBOT_OSS_PREFIX": "/ml/tunebot/",
        "TUNEBOT_OSS_ACCESS_KEY_ID": "LTAIid", "TUNEBOT_OSS_ACCESS_KEY_SECRET": "s3cr3t-value",
        "TUNEBOT_OSS_SECURITY_TOKEN": "sts-token-value",
        "TUNEBOT_OSS_SECURITY_TOKEN_EXPIRES": "2030-01-01T00:00:00Z",
        "TUNEBOT_OSS_REGION": "cn-hangzhou", "TUNEBOT_OSS_URL_EXPIRES": "2d",
    })
    assert (settings.backend, settings.oss_prefix) == ("oss", "ml/tunebot")
    assert settings.oss_region == "cn-hangzhou"
    assert settings.url_expires == 2 * 86400
    assert settings.oss_token_expires_at == 1893456000.0
    assert "s3cr3t-value" not in repr(settings) and "sts-token-value" not in repr(settings)


@pytest.mark.parametrize("value", ["8d", "0", "soon"])
def test_url_expiry_beyond_seven_days_or_unparsable_is_refused(value):
    with pytest.raises(UserError, match="TUNEBOT_OSS_URL_EXPIRES"):
        StorageSettings.from_env({"TUNEBOT_OSS_URL_EXPIRES": value})


def test_unknown_store_is_refused():
    with pytest.raises(UserError, match="TUNEBOT_STORAGE"):
        StorageSettings.from_env({"TUNEBOT_STORAGE": "s3"})


def test_links_never_outlive_the_sts_token():
    now = 1_000_000.0
    plain = StorageSettings(url_expires=7 * 86400)
    assert plain.link_lifetime(now) == 7 * 86400
    assert replace(plain, oss_security_token="t").link_lifetime(now) == 3600  # expiry unknown: STS default
    assert replace(plain, oss_security_token="t", oss_token_expires_at=now + 600).link_lifetime(now) == 600
    with pytest.raises(UserError, match="expired"):
        replace(plain, oss_security_token="t", oss_token_expires_at=now - 1).link_lifetime(now)


# --- local store -------------------------------------------------------------------------------

def test_local_file_round_trips_and_links_to_a_file_uri(tmp_path):
    store = LocalStorage(tmp_path / "artifacts")
    data = write_random(tmp_path / "job" / "predict_results.json", 3000)
    obj = store.put_file(tmp_path / "job" / "predict_results.json",
                         job_key(4, "eval", "predict_results.json"))
    assert obj.location == str((tmp_path / "artifacts" / "4/eval/predict_results.json").resolve())
    assert obj.link.startswith("file://") and not obj.is_dir and obj.size == 3000
    out = store.get_file(obj.key, tmp_path / "out" / "r.json")
    assert out.read_bytes() == data
    assert (tmp_path / "job" / "predict_results.json").exists()


def test_local_directory_round_trips_with_a_manifest(tmp_path):
    store = LocalStorage(tmp_path / "artifacts")
    files = make_adapter(tmp_path / "adapter")
    obj = store.put_dir(tmp_path / "adapter", job_key(5, "adapter"))
    manifest = json.loads((tmp_path / "artifacts" / "5/adapter" / MANIFEST_NAME).read_text())
    assert sorted(f["path"] for f in manifest["files"]) == sorted(files)
    assert obj.is_dir and obj.location.endswith("/5/adapter/") and obj.manifest_url.endswith(MANIFEST_NAME)
    out = store.get_dir(obj.key, tmp_path / "fetched")
    for name, data in files.items():
        assert (out / name).read_bytes() == data
    assert store.describe(obj)["files"] == len(files)


def test_local_directory_without_manifest_is_not_trusted(tmp_path):
    store = LocalStorage(tmp_path / "artifacts")
    write_random(tmp_path / "artifacts" / "6/export/model.safetensors", 100)  # a half-copied export
    with pytest.raises(UserError, match="never finished"):
        store.get_dir("6/export", tmp_path / "out")
    assert not store.exists("6/export")


def test_local_directory_with_a_changed_file_is_refused(tmp_path):
    store = LocalStorage(tmp_path / "artifacts")
    make_adapter(tmp_path / "adapter")
    store.put_dir(tmp_path / "adapter", "7/adapter")
    stored = tmp_path / "artifacts" / "7/adapter/tokenizer/tokenizer.json"
    stored.write_bytes(b"x" + stored.read_bytes()[1:])
    with pytest.raises(UserError, match="arrived damaged"):
        store.get_dir("7/adapter", tmp_path / "out")
    assert not (tmp_path / "out" / "tokenizer" / "tokenizer.json").exists()


def test_a_directory_holding_the_manifest_name_is_refused(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / MANIFEST_NAME).write_text("{}")
    with pytest.raises(UserError, match=MANIFEST_NAME):
        LocalStorage(tmp_path / "a").put_dir(tmp_path / "d", "1/adapter")


def test_progress_reports_every_byte_of_a_directory(tmp_path):
    store = LocalStorage(tmp_path / "artifacts")
    files = make_adapter(tmp_path / "adapter")
    seen: list[tuple[int, int]] = []
    store.put_dir(tmp_path / "adapter", "8/adapter", progress=lambda done, total: seen.append((done, total)))
    total = sum(len(d) for d in files.values())
    assert seen[-1] == (total, total)
    assert all(t == total for _, t in seen) and [d for d, _ in seen] == sorted(d for d, _ in seen)


# --- OSS: round trips ----------------------------------------------------------------------------

def test_small_file_round_trips_byte_exact_through_one_put(tmp_path):
    with oss_store(tmp_path) as (server, store):
        data = write_random(tmp_path / "train" / "training_loss.png", 20_000)
        key = job_key(9, "plot", "training_loss.png")
        obj = store.put_file(tmp_path / "train" / "training_loss.png", key)
        assert server.calls["PutObject"] == 1 and server.calls["UploadPart"] == 0
        assert server.object_bytes("team/tunebot/9/plot/training_loss.png") == data
        assert obj.location == "oss://tunebot-test/team/tunebot/9/plot/training_loss.png"
        assert obj.crc64 == file_crc64(tmp_path / "train" / "training_loss.png")
        out = store.get_file(obj.key, tmp_path / "fetched.png")
        assert out.read_bytes() == data


def test_large_file_goes_up_in_parallel_parts_and_round_trips_byte_exact(tmp_path):
    with oss_store(tmp_path) as (server, store):
        data = write_random(tmp_path / "big.bin", 25 * PART + 777)
        progress: list[tuple[int, int]] = []
        store.put_file(tmp_path / "big.bin", "10/export/big.bin",
                       progress=lambda done, total: progress.append((done, total)))
        assert server.calls["InitiateMultipartUpload"] == 1
        assert server.calls["UploadPart"] == 26 and server.calls["CompleteMultipartUpload"] == 1
        assert server.object_bytes("team/tunebot/10/export/big.bin") == data
        assert progress[-1] == (len(data), len(data))
        # Larger than the threshold, so the download takes ranged, parallel GETs.
        out = store.get_file("10/export/big.bin", tmp_path / "out" / "big.bin")
        assert out.read_bytes() == data
        assert not list((tmp_path / "out").glob("*.partial*"))


def test_directory_round_trips_and_its_manifest_is_written_last(tmp_path):
    with oss_store(tmp_path) as (server, store):
        files = make_adapter(tmp_path / "lora")
        obj = store.put_dir(tmp_path / "lora", job_key(11, "adapter", "lora"))
        assert f"team/tunebot/11/adapter/lora/{MANIFEST_NAME}" in server.keys()
        assert obj.location == "oss://tunebot-test/team/tunebot/11/adapter/lora/"
        assert obj.size == sum(len(d) for d in files.values()) and len(obj.files) == len(files)
        out = store.get_dir(obj.key, tmp_path / "fetched")
        assert {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} == set(files)
        for name, data in files.items():
            assert (out / name).read_bytes() == data


def test_manifest_object_is_the_last_write_of_a_directory(tmp_path):
    with oss_store(tmp_path) as (server, store):
        make_adapter(tmp_path / "lora")
        writes: list[str] = []
        real_put, real_complete = store._bucket.put_object, store._bucket.complete_multipart_upload
        store._bucket.put_object = lambda key, *a, **k: (writes.append(key), real_put(key, *a, **k))[1]
        store._bucket.complete_multipart_upload = (
            lambda key, *a, **k: (writes.append(key), real_complete(key, *a, **k))[1])
        store.put_dir(tmp_path / "lora", "12/adapter")
        assert writes[-1] == f"team/tunebot/12/adapter/{MANIFEST_NAME}"
        assert len(writes) == 5  # four files, then the manifest


def test_second_fetch_of_a_directory_downloads_nothing(tmp_path):
    with oss_store(tmp_path) as (server, store):
        make_adapter(tmp_path / "lora")
        store.put_dir(tmp_path / "lora", "13/adapter")
        store.get_dir("13/adapter", tmp_path / "fetched")
        gets = server.calls["GetObject"]
        store.get_dir("13/adapter", tmp_path / "fetched")
        assert server.calls["GetObject"] == gets + 1  # the manifest only


# --- OSS: interrupted uploads ------------------------------------------------------------------

def test_interrupted_upload_resumes_and_sends_only_the_missing_parts(tmp_path):
    with oss_store(tmp_path) as (server, store):
        data = write_random(tmp_path / "model.safetensors", 30 * PART)
        server.fail_parts_after = 12
        with pytest.raises(UserError) as caught:
            store.put_file(tmp_path / "model.safetensors", "14/export/model.safetensors")
        assert "500 InternalError" in str(caught.value) and "resumes" in str(caught.value)
        assert server.parts_accepted == 12
        assert (tmp_path / "model.safetensors").read_bytes() == data  # local file untouched
        assert list((tmp_path / "checkpoints" / "upload").iterdir())  # the checkpoint is on disk
        assert not store.exists("14/export/model.safetensors")

        server.fail_parts_after = None
        store.put_file(tmp_path / "model.safetensors", "14/export/model.safetensors")
        assert server.parts_accepted == 30  # 12 before, only the missing 18 now
        assert server.calls["InitiateMultipartUpload"] == 1 and server.calls["ListParts"] >= 1
        assert server.object_bytes("team/tunebot/14/export/model.safetensors") == data
        assert not list((tmp_path / "checkpoints" / "upload").iterdir())


def test_a_directory_whose_upload_broke_off_has_no_manifest_and_is_refused(tmp_path):
    with oss_store(tmp_path) as (server, store):
        make_adapter(tmp_path / "lora")
        server.fail_parts_after = 3
        with pytest.raises(UserError):
            store.put_dir(tmp_path / "lora", "15/adapter")
        assert server.keys() == ["team/tunebot/15/adapter/adapter_config.json"]
        with pytest.raises(UserError, match="never finished"):
            store.get_dir("15/adapter", tmp_path / "out")
        assert not store.exists("15/adapter")


def test_reuploading_a_directory_withdraws_its_old_manifest_first(tmp_path):
    with oss_store(tmp_path) as (server, store):
        make_adapter(tmp_path / "lora")
        store.put_dir(tmp_path / "lora", "16/adapter")
        (tmp_path / "lora" / "adapter_model.safetensors").write_bytes(os.urandom(9 * PART))
        server.fail_parts_after = server.parts_accepted + 2
        with pytest.raises(UserError):
            store.put_dir(tmp_path / "lora", "16/adapter")
        assert not store.exists("16/adapter")  # old manifest gone, new one never written


# --- OSS: credentials and secrets ------------------------------------------------------------------

def test_wrong_secret_is_refused_with_a_clear_error_and_local_files_stay(tmp_path):
    with oss_store(tmp_path, secret="not-the-secret") as (server, store):
        data = write_random(tmp_path / "adapter" / "adapter_model.safetensors", 2000)
        with pytest.raises(UserError) as caught:
            store.put_dir(tmp_path / "adapter", "17/adapter")
        error = caught.value
        assert "OSS refused the credentials (403 SignatureDoesNotMatch) for bucket tunebot-test" in str(error)
        assert error.field == "TUNEBOT_OSS_ACCESS_KEY_SECRET"
        assert "not-the-secret" not in str(error) and error.__cause__ is None and error.__suppress_context__
        assert (tmp_path / "adapter" / "adapter_model.safetensors").read_bytes() == data
        assert server.keys() == [] and server.calls["Refused"] >= 1


def test_unknown_key_id_is_named_in_the_error(tmp_path):
    with oss_store(tmp_path, key_id="LTAIsomeoneelse") as (_, store):
        write_random(tmp_path / "f.json", 10)
        with pytest.raises(UserError, match="InvalidAccessKeyId.*LTAIsomeoneelse") as caught:
            store.put_file(tmp_path / "f.json", "18/config/f.json")
        assert caught.value.field == "TUNEBOT_OSS_ACCESS_KEY_ID"


def test_standin_checks_signatures_of_plain_oss2_calls_too(tmp_path):
    with OssStandin(tmp_path / "server") as server:
        good_auth = oss2.Auth(server.access_key_id, server.access_key_secret)
        good = oss2.Bucket(good_auth, server.endpoint, server.bucket)
        good.put_object("k", b"v")
        bad = oss2.Bucket(oss2.Auth(server.access_key_id, "wrong"), server.endpoint, server.bucket)
        with pytest.raises(oss2.exceptions.ServerError) as caught:
            bad.get_object("k")
        assert (caught.value.status, caught.value.code) == (403, "SignatureDoesNotMatch")


def test_v4_signing_is_used_when_a_region_is_set(tmp_path):
    with oss_store(tmp_path, region="cn-hangzhou") as (server, store):
        assert store._bucket.auth.auth_version() == "v4"
        data = write_random(tmp_path / "big.bin", 6 * PART)
        obj = store.put_file(tmp_path / "big.bin", "19/export/big.bin")
        assert server.object_bytes("team/tunebot/19/export/big.bin") == data
        assert "x-oss-signature-version=OSS4-HMAC-SHA256" in obj.link
        assert fetch(obj.link) == data
    with oss_store(tmp_path / "again", region="cn-hangzhou", secret="wrong") as (_, store):
        with pytest.raises(UserError, match="403 SignatureDoesNotMatch"):
            store.put_file(tmp_path / "big.bin", "19/export/big.bin")


def test_sts_token_is_sent_and_a_wrong_token_is_refused(tmp_path):
    token = "CAISsts-token-value"
    with oss_store(tmp_path, token=token, server_token=token) as (server, store):
        write_random(tmp_path / "f.bin", 6 * PART)
        obj = store.put_file(tmp_path / "f.bin", "20/export/f.bin")
        assert server.keys() == ["team/tunebot/20/export/f.bin"]
        expires = int(parse_qs(urlsplit(obj.link).query)["Expires"][0])
        assert expires <= time.time() + 3600 + 5  # no known token expiry: one hour at most
    with oss_store(tmp_path / "b", token="CAISstale-token", server_token=token) as (_, store):
        with pytest.raises(UserError, match="STS token") as caught:
            store.put_file(tmp_path / "f.bin", "20/export/f.bin")
        assert caught.value.field == "TUNEBOT_OSS_SECURITY_TOKEN"


def test_secrets_stay_out_of_errors_and_logs(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    token = "CAISvery-secret-token"
    with oss_store(tmp_path, secret="very-secret-key", token=token, server_token=token) as (_, store):
        write_random(tmp_path / "big.bin", 8 * PART)  # multipart: oss2 logs a traceback on failure
        with pytest.raises(UserError) as caught:
            store.put_file(tmp_path / "big.bin", "21/export/big.bin")
    assert "SignatureDoesNotMatch" in str(caught.value)
    for secret in ("very-secret-key", token):
        assert secret not in str(caught.value)
        assert secret not in caplog.text


# --- OSS: integrity of downloads ---------------------------------------------------------------------

@pytest.mark.parametrize("size", [3000, 12 * PART], ids=["single-get", "ranged-gets"])
def test_a_download_damaged_in_transit_is_detected_and_not_kept(tmp_path, size):
    with oss_store(tmp_path) as (server, store):
        write_random(tmp_path / "f.bin", size)
        store.put_file(tmp_path / "f.bin", "22/eval/f.bin")
        server.corrupt_gets = True
        with pytest.raises(UserError, match="arrived damaged"):
            store.get_file("22/eval/f.bin", tmp_path / "out" / "f.bin")
        assert not (tmp_path / "out" / "f.bin").exists()
        assert not list((tmp_path / "out").glob("*.partial*"))


@pytest.mark.parametrize("size", [3000, 12 * PART], ids=["single-put", "multipart"])
def test_an_upload_damaged_on_the_way_in_is_detected_and_removed(tmp_path, size):
    with oss_store(tmp_path) as (server, store):
        data = write_random(tmp_path / "f.bin", size)
        server.corrupt_uploads = True
        with pytest.raises(UserError, match="arrived damaged.*The local file is kept"):
            store.put_file(tmp_path / "f.bin", "30/export/f.bin")
        assert server.keys() == []  # the bad copy is not left for a reader
        assert (tmp_path / "f.bin").read_bytes() == data


def test_a_file_replaced_after_its_manifest_was_written_is_detected(tmp_path):
    with oss_store(tmp_path) as (server, store):
        make_adapter(tmp_path / "lora")
        store.put_dir(tmp_path / "lora", "23/adapter")
        store._bucket.put_object("team/tunebot/23/adapter/adapter_config.json", b'{"r": 16}')
        with pytest.raises(UserError, match="adapter_config.json arrived damaged"):
            store.get_dir("23/adapter", tmp_path / "out")


def test_fetching_what_is_not_there_says_so(tmp_path):
    with oss_store(tmp_path) as (_, store):
        with pytest.raises(UserError, match="no artifact at oss://tunebot-test/team/tunebot/24/export/x"):
            store.get_file("24/export/x", tmp_path / "x")
        assert store.stat("24/export/x") is None


def test_unreachable_endpoint_is_reported_in_plain_words(tmp_path):
    with oss_store(tmp_path) as (server, store):
        pass  # stopped: nothing listens there any more
    write_random(tmp_path / "f.bin", 10)
    store.settings = replace(store.settings, connect_timeout=2)
    with pytest.raises(UserError, match="Could not reach OSS at http://127.0.0.1"):
        store.put_file(tmp_path / "f.bin", "25/config/f.bin")


# --- OSS: links --------------------------------------------------------------------------------------

def test_signed_url_opens_the_file_and_stops_working_when_it_expires(tmp_path):
    with oss_store(tmp_path) as (server, store):
        data = write_random(tmp_path / "generated_predictions.jsonl", 4000)
        obj = store.put_file(tmp_path / "generated_predictions.jsonl", "26/eval/generated_predictions.jsonl")
        assert fetch(obj.link) == data
        assert obj.link_expires_at == pytest.approx(time.time() + 7 * 86400, abs=5)
        assert fetch(store.link(obj.key)) == data

        server.advance_clock(7 * 86400 + 60)
        with pytest.raises(urllib.error.HTTPError) as caught:
            fetch(obj.link)
        assert caught.value.code == 403 and b"Request has expired" in caught.value.read()


def test_a_tampered_signed_url_is_refused(tmp_path):
    with oss_store(tmp_path) as (_, store):
        write_random(tmp_path / "a.bin", 100)
        obj = store.put_file(tmp_path / "a.bin", "27/eval/a.bin")
        with pytest.raises(urllib.error.HTTPError) as caught:
            fetch(obj.link.replace("27/eval/a.bin", "27/eval/b.bin"))
        assert caught.value.code == 403


def test_directory_link_is_a_manifest_that_lists_working_links_of_its_files(tmp_path):
    with oss_store(tmp_path) as (server, store):
        files = make_adapter(tmp_path / "merged")
        obj = store.put_dir(tmp_path / "merged", job_key(28, "export", "merged"))
        shown = store.describe(obj)
        assert shown["location"] == "oss://tunebot-test/team/tunebot/28/export/merged/"
        assert shown["kind"] == "directory" and shown["files"] == 4 and shown["size"] == obj.size
        manifest = json.loads(fetch(shown["link"]))
        assert {f["path"] for f in manifest["files"]} == set(files)
        for entry in manifest["files"]:
            assert fetch(entry["url"]) == files[entry["path"]]
            assert int(entry["crc64ecma"]) == bytes_crc64(files[entry["path"]])
            assert entry["size"] == len(files[entry["path"]])


def test_directory_links_are_signed_afresh_when_the_old_ones_would_die_first(tmp_path):
    with oss_store(tmp_path) as (server, store):
        make_adapter(tmp_path / "merged")
        store.settings = replace(store.settings, url_expires=3600)
        obj = store.put_dir(tmp_path / "merged", "29/export")
        assert obj.link_expires_at == pytest.approx(time.time() + 3600, abs=5)

        store.settings = replace(store.settings, url_expires=7 * 86400)
        puts = server.calls["PutObject"]
        link = store.link("29/export")
        assert server.calls["PutObject"] == puts + 1  # the manifest, re-signed
        manifest = json.loads(fetch(link))
        six_days_on = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 6 * 86400))
        assert manifest["links_expire_at"] > six_days_on
        store.describe(obj)
        assert server.calls["PutObject"] == puts + 1  # still fresh: not rewritten again

        server.advance_clock(2 * 3600)  # the first links are dead by now; the new ones are not
        for entry in manifest["files"]:
            assert fetch(entry["url"]) == (tmp_path / "merged" / entry["path"]).read_bytes()
