import json
import multiprocessing
import os
import threading
from pathlib import Path

import pytest

from runners.datasets import (
    DATASET_INFO,
    add_dataset,
    dataset_dir,
    get_dataset,
    list_datasets,
)
from runners.errors import UserError
from runners.inputs.dataset_rows import check_dataset

ALPACA_ROWS = [
    {
        "instruction": "把下面的句子翻译成英文",
        "input": "今天天气很好",
        "output": "The weather is nice today.",
    },
    {"instruction": "Name three primary colours.", "input": "", "output": "Red, yellow and blue."},
    {
        "instruction": "Continue.",
        "output": "Sure.",
        "system": "You are terse.",
        "history": [["Hi", "Hello! How can I help?"]],
    },
]
SHAREGPT_ROWS = [
    {
        "conversations": [
            {"from": "human", "value": "What is LoRA?"},
            {"from": "gpt", "value": "A low-rank adapter for fine-tuning."},
        ]
    },
    {
        "conversations": [
            {"from": "system", "value": "Answer briefly."},
            {"from": "human", "value": "2+2?"},
            {"from": "gpt", "value": "4"},
            {"from": "human", "value": "and 3+3?"},
            {"from": "gpt", "value": "6"},
        ],
        "system": "fallback system",
    },
]
OPENAI_ROWS = [
    {
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi there!"},
        ]
    },
]


def jsonl(rows) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()


def json_array(rows) -> bytes:
    return json.dumps(rows, ensure_ascii=False, indent=2).encode()


def error_text(data: bytes) -> str:
    with pytest.raises(UserError) as caught:
        check_dataset(data)
    return str(caught.value)


# --- detection and dataset_info columns ---------------------------------------------------------


def test_alpaca_jsonl_is_detected_with_the_columns_it_uses():
    check = check_dataset(jsonl(ALPACA_ROWS))
    assert (check.format, check.file_type, check.rows) == ("alpaca", "jsonl", 3)
    assert check.columns == {
        "prompt": "instruction",
        "response": "output",
        "query": "input",
        "system": "system",
        "history": "history",
    }
    assert check.tags == {}
    assert check.samples == ALPACA_ROWS[:3]


def test_alpaca_columns_leave_out_keys_no_row_has():
    # LLaMA-Factory would raise KeyError at load time for a listed column the file lacks.
    check = check_dataset(json_array([{"instruction": "a", "output": "b"}]))
    assert check.file_type == "json"
    assert check.columns == {"prompt": "instruction", "response": "output"}
    entry = check.dataset_info_entry("x.json")
    assert entry == {
        "file_name": "x.json",
        "formatting": "alpaca",
        "columns": {"prompt": "instruction", "response": "output"},
    }


def test_sharegpt_is_detected_with_every_tag_written_out():
    check = check_dataset(json_array(SHAREGPT_ROWS))
    assert check.format == "sharegpt"
    assert check.columns == {"messages": "conversations", "system": "system"}
    assert check.tags["role_tag"] == "from" and check.tags["assistant_tag"] == "gpt"
    assert set(check.tags) == {
        "role_tag",
        "content_tag",
        "user_tag",
        "assistant_tag",
        "observation_tag",
        "function_tag",
        "system_tag",
    }


def test_openai_messages_use_sharegpt_formatting_with_role_tags():
    check = check_dataset(jsonl(OPENAI_ROWS))
    assert check.format == "openai"
    entry = check.dataset_info_entry("chat.jsonl")
    assert entry["formatting"] == "sharegpt"
    assert entry["columns"] == {"messages": "messages"}
    assert entry["tags"]["role_tag"] == "role" and entry["tags"]["user_tag"] == "user"


def test_dataset_info_entry_is_understood_by_llamafactory():
    from llamafactory.data.parser import get_dataset_list

    check = check_dataset(jsonl(OPENAI_ROWS))
    (attr,) = get_dataset_list(["chat"], {"chat": check.dataset_info_entry("chat.jsonl")})
    assert (attr.formatting, attr.messages, attr.role_tag, attr.content_tag) == (
        "sharegpt",
        "messages",
        "role",
        "content",
    )
    assert (attr.user_tag, attr.assistant_tag, attr.system_tag) == ("user", "assistant", "system")


def test_utf8_bom_is_accepted():
    assert check_dataset(b"\xef\xbb\xbf" + jsonl(ALPACA_ROWS[:1])).rows == 1


def test_blank_lines_in_jsonl_are_skipped():
    data = jsonl(ALPACA_ROWS[:1]) + b"\n\n" + jsonl(ALPACA_ROWS[1:2])
    assert check_dataset(data).rows == 2


# --- refusals ----------------------------------------------------------------------------------


def test_missing_output_names_the_row():
    rows = [dict(ALPACA_ROWS[0]) for _ in range(7)]
    del rows[6]["output"]
    assert "Row 7: `output` is missing." in error_text(jsonl(rows))


def test_json_array_row_numbers_are_one_based():
    rows = [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": 5}]
    assert "Row 2: `output` must be text, got a number." in error_text(json_array(rows))


def test_two_user_turns_in_a_row_are_refused():
    rows = SHAREGPT_ROWS[:2] + [
        {
            "conversations": [
                {"from": "human", "value": "one"},
                {"from": "human", "value": "two"},
                {"from": "gpt", "value": "three"},
            ]
        }
    ]
    message = error_text(jsonl(rows))
    assert message.startswith(
        "Row 3: conversation must alternate user/assistant (human/gpt), got two user turns"
    )


def test_two_assistant_turns_in_openai_style_are_refused():
    rows = [
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "assistant", "content": "again"},
            ]
        }
    ]
    assert "got two assistant turns (messages 2 and 3)" in error_text(jsonl(rows))


def test_conversation_must_end_with_the_assistant():
    rows = [{"conversations": [{"from": "human", "value": "hi"}]}]
    assert "Row 1: the conversation must end with an assistant turn (gpt)." in error_text(jsonl(rows))


def test_conversation_must_start_with_the_user():
    rows = [{"conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]}]
    assert "Row 1: the conversation must start with a user turn (human), got gpt." in error_text(jsonl(rows))


def test_unknown_role_lists_the_known_ones():
    rows = [{"conversations": [{"from": "user", "value": "x"}, {"from": "gpt", "value": "y"}]}]
    message = error_text(jsonl(rows))
    assert "message 1 has unknown from `user`" in message and "human, observation, gpt" in message


def test_system_message_only_first():
    rows = [
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "system", "content": "late"},
                {"role": "assistant", "content": "x"},
            ]
        }
    ]
    assert "a `system` message may only come first (message 2)" in error_text(jsonl(rows))


def test_invalid_json_line_is_reported_with_its_line_number():
    data = jsonl(ALPACA_ROWS[:2]) + b"\n" + b'{"instruction": "a", "output": }\n'
    message = error_text(data)
    assert message.startswith("Line 4 is not valid JSON: Expecting value")


def test_row_and_line_differ_when_jsonl_has_blank_lines():
    data = jsonl(ALPACA_ROWS[:1]) + b"\n" + b'{"instruction": "x"}\n'
    assert "Row 2 (line 3): `output` is missing." in error_text(data)


def test_empty_file_is_refused():
    assert error_text(b"  \n\n").startswith("The file is empty.")
    assert error_text(b"[]").startswith("The file is empty")


def test_non_utf8_file_is_refused():
    data = '{"instruction": "café", "output": "x"}\n'.encode("latin-1")
    assert "not UTF-8" in error_text(data)


def test_mixed_formats_are_refused():
    data = jsonl(ALPACA_ROWS[:2] + SHAREGPT_ROWS[:1])
    assert "Row 3 is in sharegpt format but row 1 is alpaca" in error_text(data)


def test_unrecognised_rows_name_their_keys():
    message = error_text(jsonl([{"question": "q", "answer": "a"}]))
    assert "cannot tell the format" in message and "`question`, `answer`" in message


def test_row_that_is_not_an_object_is_refused():
    assert "Row 2 is not a JSON object (got a list)." in error_text(json_array([ALPACA_ROWS[0], [1, 2]]))


def test_bad_history_shape_is_refused():
    rows = [{"instruction": "a", "output": "b", "history": ["just a string"]}]
    assert "`history` must be a list of [question, answer] pairs" in error_text(jsonl(rows))


def test_column_with_two_types_is_refused():
    rows = [dict(ALPACA_ROWS[0], id=1), dict(ALPACA_ROWS[1], id="two")]
    assert "Row 2: `id` is a string here but a number in row 1" in error_text(jsonl(rows))


def test_pretty_printed_single_object_gets_a_hint():
    data = json.dumps({"instruction": "a", "output": "b"}, indent=2).encode()
    assert "one JSON object spread over several lines" in error_text(data)


# --- the registry ------------------------------------------------------------------------------


def read_info(data_dir: Path) -> dict:
    return json.loads((dataset_dir(data_dir) / DATASET_INFO).read_text())


def test_add_dataset_copies_the_file_and_writes_the_entry(tmp_path):
    source = tmp_path / "upload.jsonl"
    source.write_bytes(jsonl(ALPACA_ROWS))
    info = add_dataset(tmp_path / "data", "support-v1", source)

    assert info.name == "support-v1" and info.format == "alpaca" and info.rows == 3
    assert info.replaced is False and info.source_filename == "upload.jsonl"
    assert info.file.parent == dataset_dir(tmp_path / "data")
    assert info.file.read_bytes() == source.read_bytes()
    entry = read_info(tmp_path / "data")["support-v1"]
    assert entry["file_name"] == info.file.name and entry["formatting"] == "alpaca"
    assert entry["columns"]["query"] == "input"


def test_readding_a_name_replaces_it_and_says_so(tmp_path):
    first = add_dataset(tmp_path, "chats", jsonl(ALPACA_ROWS), filename="a.jsonl")
    second = add_dataset(tmp_path, "chats", json_array(SHAREGPT_ROWS), filename="b.json")
    assert second.replaced is True and first.replaced is False
    assert second.format == "sharegpt" and second.file.suffix == ".json"
    assert not first.file.exists(), "the replaced file is removed"
    assert [d.name for d in list_datasets(tmp_path)] == ["chats"]
    assert read_info(tmp_path)["chats"]["formatting"] == "sharegpt"


def test_other_entries_survive_an_add(tmp_path):
    folder = dataset_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / "handmade.json").write_text(json.dumps(ALPACA_ROWS))
    (folder / DATASET_INFO).write_text(json.dumps({"handmade": {"file_name": "handmade.json"}}))
    add_dataset(tmp_path, "new", jsonl(OPENAI_ROWS))
    info = read_info(tmp_path)
    assert info["handmade"] == {"file_name": "handmade.json"}
    listed = {d.name: d for d in list_datasets(tmp_path)}
    assert listed["handmade"].rows is None and listed["handmade"].format == "alpaca"
    assert listed["new"].format == "openai" and listed["new"].rows == 1 and listed["new"].added_at


def test_bad_file_leaves_what_was_stored_untouched(tmp_path):
    good = add_dataset(tmp_path, "chats", jsonl(ALPACA_ROWS))
    before = read_info(tmp_path)
    with pytest.raises(UserError):
        add_dataset(tmp_path, "chats", b'{"instruction": "x"}\n')
    assert read_info(tmp_path) == before
    assert good.file.read_bytes() == jsonl(ALPACA_ROWS)
    assert sorted(p.name for p in dataset_dir(tmp_path).iterdir() if not p.name.startswith(".")) == sorted(
        [DATASET_INFO, good.file.name]
    )


def test_failed_registry_write_keeps_the_old_entry_and_file(tmp_path, monkeypatch):
    good = add_dataset(tmp_path, "chats", jsonl(ALPACA_ROWS))
    before = read_info(tmp_path)

    def broken_replace(src, dst):
        if str(dst).endswith(DATASET_INFO):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    real_replace = os.replace
    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        add_dataset(tmp_path, "chats", json_array(SHAREGPT_ROWS))
    monkeypatch.undo()
    assert read_info(tmp_path) == before
    assert good.file.read_bytes() == jsonl(ALPACA_ROWS)
    leftovers = [
        p.name for p in dataset_dir(tmp_path).iterdir() if p.name not in (DATASET_INFO, good.file.name)
    ]
    assert leftovers == [".dataset_info.lock"]


def test_unreadable_source_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="Cannot read .*missing.jsonl: No such file or directory"):
        add_dataset(tmp_path, "x", tmp_path / "missing.jsonl")
    with pytest.raises(UserError, match="Is a directory"):
        add_dataset(tmp_path, "x", tmp_path)


def test_damaged_registry_is_not_overwritten(tmp_path):
    folder = dataset_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / DATASET_INFO).write_text('{"handmade": {"file_name": ')
    with pytest.raises(UserError, match="damaged"):
        add_dataset(tmp_path, "new", jsonl(ALPACA_ROWS))
    assert (folder / DATASET_INFO).read_text() == '{"handmade": {"file_name": '


@pytest.mark.parametrize(
    "name", ["", "a" * 65, "has space", "../escape", "semi;colon", "comma,list", ".hidden"]
)
def test_bad_names_are_refused(tmp_path, name):
    with pytest.raises(UserError, match="not a usable dataset name"):
        add_dataset(tmp_path, name, jsonl(ALPACA_ROWS))
    assert not (dataset_dir(tmp_path) / DATASET_INFO).exists()


@pytest.mark.parametrize("name", ["a", "alpaca_zh_demo", "Support-v1.2", "x" * 64])
def test_good_names_are_accepted(tmp_path, name):
    assert add_dataset(tmp_path, name, jsonl(ALPACA_ROWS)).name == name


def test_get_dataset_suggests_the_closest_name(tmp_path):
    add_dataset(tmp_path, "support_chats", jsonl(ALPACA_ROWS))
    add_dataset(tmp_path, "translations", jsonl(ALPACA_ROWS))
    assert get_dataset(tmp_path, "support_chats").rows == 3
    with pytest.raises(UserError) as caught:
        get_dataset(tmp_path, "suport_chats")
    message = str(caught.value)
    assert "Unknown dataset `suport_chats`" in message
    assert "Known datasets: support_chats, translations." in message
    assert "Did you mean `support_chats`?" in message
    assert caught.value.field == "dataset"


def test_get_dataset_with_an_empty_registry(tmp_path):
    with pytest.raises(UserError, match="no datasets have been added yet"):
        get_dataset(tmp_path, "anything")
    assert list_datasets(tmp_path) == []


def test_concurrent_adds_from_threads_lose_no_entry(tmp_path):
    errors = []

    def add(index: int) -> None:
        try:
            add_dataset(tmp_path, f"set{index}", jsonl(ALPACA_ROWS[: 1 + index % 3]))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(read_info(tmp_path)) == sorted(f"set{i}" for i in range(16))


def _add_in_child(data_dir: str, prefix: str, count: int) -> None:
    for index in range(count):
        add_dataset(Path(data_dir), f"{prefix}{index}", jsonl(ALPACA_ROWS))


def test_concurrent_adds_from_processes_lose_no_entry(tmp_path):
    context = multiprocessing.get_context("fork")
    children = [context.Process(target=_add_in_child, args=(str(tmp_path), prefix, 10)) for prefix in "abcd"]
    for child in children:
        child.start()
    for child in children:
        child.join(30)
        assert child.exitcode == 0
    assert len(read_info(tmp_path)) == 40
    stored = [p for p in dataset_dir(tmp_path).iterdir() if p.suffix == ".jsonl"]
    assert len(stored) == 40


# --- what LLaMA-Factory makes of a registered file ----------------------------------------------


def load_with_llamafactory(data_dir: Path, name: str) -> list[dict]:
    """Run LLaMA-Factory 0.9.5's own registry parser, file loader and format converter."""
    from types import SimpleNamespace

    from llamafactory.data.loader import _load_single_dataset
    from llamafactory.data.parser import get_dataset_list

    (attr,) = get_dataset_list([name], str(dataset_dir(data_dir)))
    model_args = SimpleNamespace(cache_dir=str(data_dir / "hf-cache"), hf_hub_token=None)
    data_args = SimpleNamespace(
        dataset_dir=str(dataset_dir(data_dir)),
        preprocessing_num_workers=None,
        streaming=False,
        overwrite_cache=True,
        max_samples=None,
        media_dir=str(dataset_dir(data_dir)),
    )
    training_args = SimpleNamespace(local_process_index=0, dataloader_num_workers=0)
    return list(_load_single_dataset(attr, model_args, data_args, training_args))


@pytest.mark.parametrize(
    ("rows", "encode"),
    [
        (ALPACA_ROWS, jsonl),
        ([{"instruction": "a", "output": "b"}], json_array),
        (SHAREGPT_ROWS, json_array),
        (OPENAI_ROWS, jsonl),
    ],
    ids=["alpaca-jsonl", "alpaca-minimal-json", "sharegpt-json", "openai-jsonl"],
)
def test_registered_dataset_converts_cleanly_in_llamafactory(tmp_path, rows, encode):
    add_dataset(tmp_path, "ds", encode(rows))
    examples = load_with_llamafactory(tmp_path, "ds")
    assert len(examples) == len(rows)
    for example in examples:
        # The converter turns a malformed row into empty prompt/response instead of failing.
        assert example["_prompt"] and example["_prompt"][-1]["role"] == "user"
        assert example["_response"] and example["_response"][0]["role"] == "assistant"


def test_llamafactory_sees_system_prompts_and_history(tmp_path):
    add_dataset(tmp_path, "alp", jsonl(ALPACA_ROWS))
    add_dataset(tmp_path, "oai", jsonl(OPENAI_ROWS))
    alpaca = load_with_llamafactory(tmp_path, "alp")
    assert alpaca[0]["_prompt"][-1]["content"] == "把下面的句子翻译成英文\n今天天气很好"
    assert alpaca[2]["_system"] == "You are terse."
    assert [turn["content"] for turn in alpaca[2]["_prompt"]] == ["Hi", "Hello! How can I help?", "Continue."]
    (openai,) = load_with_llamafactory(tmp_path, "oai")
    # Through the sharegpt converter the system prompt stays exactly as written.
    assert openai["_system"] == "You are a helpful assistant."
    assert openai["_response"][0]["content"] == "Hi there!"


def test_json_nested_too_deeply_is_a_plain_error(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UserError, match="nests JSON too deeply"):
        check_dataset(deep)
