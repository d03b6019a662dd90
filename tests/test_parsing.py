"""bot.parsing: `/tune` text, thread replies and pasted YAML, as people really type them."""

from __future__ import annotations

import pytest

from bot.parsing import (
    SUBCOMMANDS,
    Command,
    ThreadCommand,
    extract_yaml,
    parse_command,
    parse_job_ref,
    parse_pasted_yaml,
    parse_thread_reply,
    unescape_slack,
)
from runners.errors import UserError

BOT = "U0TUNEBOT"


def error_of(text: str) -> UserError:
    with pytest.raises(UserError) as caught:
        parse_command(text)
    return caught.value


# -- subcommands ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train", Command("train")),
        (
            "train seed model=/models/llama3 dataset=train",
            Command("train", ["seed"], {"model": "/models/llama3", "dataset": "train"}),
        ),
        ("eval 12 dataset=eval", Command("eval", ["12"], {"dataset": "eval"})),
        (
            "eval model=/models/base dataset=eval",
            Command("eval", [], {"model": "/models/base", "dataset": "eval"}),
        ),
        ("export #12", Command("export", ["12"])),
        ("deploy 12 mode=webchat", Command("deploy", ["12"], {"mode": "webchat"})),
        ("undeploy job-15", Command("undeploy", ["15"])),
        ("status", Command("status")),
        ("status 7", Command("status", ["7"])),
        ("jobs", Command("jobs")),
        ("jobs all", Command("jobs", ["all"])),
        ("cancel 3", Command("cancel", ["3"])),
        ("resume 3", Command("resume", ["3"])),
        ("datasets", Command("datasets")),
        ("dataset list", Command("datasets")),
        ("dataset add support_tickets", Command("dataset add", ["support_tickets"])),
        ("schedule daily 09:00 Asia/Shanghai", Command("schedule daily", ["09:00", "Asia/Shanghai"])),
        ("schedule weekly mon 09:00", Command("schedule weekly", ["mon", "09:00"])),
        ('schedule cron "0 9 * * 1-5"', Command("schedule cron", ["0 9 * * 1-5"])),
        ("schedule list", Command("schedule list")),
        ("schedule off", Command("schedule off")),
        ("schedule off 4", Command("schedule off", ["4"])),
        ("help", Command("help")),
        ("help train", Command("help", ["train"])),
        ("", Command("help")),
        ("   ", Command("help")),
        ("TRAIN seed", Command("train", ["seed"])),
    ],
)
def test_every_subcommand_parses(text: str, expected: Command) -> None:
    assert parse_command(text) == expected


def test_every_subcommands_own_example_parses_to_itself() -> None:
    for name, spec in SUBCOMMANDS.items():
        assert parse_command(spec.example).name == name, spec.example


def test_job_property_names_the_job_only_for_job_commands() -> None:
    assert parse_command("cancel #9").job == "9"
    assert parse_command("status").job is None
    assert parse_command("train seed").job is None
    assert parse_command("dataset add x").job is None


# -- quoting and key=value --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "pairs"),
    [
        ('train dataset="alpaca zh"', {"dataset": "alpaca zh"}),
        ("train dataset='alpaca zh'", {"dataset": "alpaca zh"}),
        ("train dataset=“alpaca zh”", {"dataset": "alpaca zh"}),  # the composer's smart quotes
        ("train dataset=‘alpaca zh’", {"dataset": "alpaca zh"}),
        ("train dataset=`alpaca zh`", {"dataset": "alpaca zh"}),
        ('train "dataset=alpaca zh"', {"dataset": "alpaca zh"}),
        ("train lr = 1e-4", {"lr": "1e-4"}),
        ("train lr= 1e-4 epochs =3", {"lr": "1e-4", "epochs": "3"}),
        ("train lr＝1e-4\u3000epochs=3", {"lr": "1e-4", "epochs": "3"}),  # a Chinese IME's ＝ and space
        ("train note=don't", {"note": "don't"}),
        ('train template=""', {"template": ""}),
        ("train model=a=b", {"model": "a=b"}),
        ("train lora+=16", {"lora+": "16"}),
        ("train\u00a0lr=1", {"lr": "1"}),
    ],
)
def test_quoting_and_settings_as_people_type_them(text: str, pairs: dict[str, str]) -> None:
    assert parse_command(text).pairs == pairs


def test_slack_escapes_and_links_are_undone() -> None:
    command = parse_command(
        "train model=<https://huggingface.co/meta-llama/x|huggingface.co/meta-llama/x> "
        "dataset=a&amp;b template=&lt;t&gt;"
    )
    assert command.pairs == {
        "model": "https://huggingface.co/meta-llama/x",
        "dataset": "a&b",
        "template": "<t>",
    }
    assert unescape_slack("<mailto:a@b.c|a@b.c>") == "a@b.c"
    assert unescape_slack("<@U123> hi") == "<@U123> hi"


def test_a_leading_command_name_or_bot_mention_is_ignored() -> None:
    assert parse_command("/tune dataset add demo") == Command("dataset add", ["demo"])
    assert parse_command(f"<@{BOT}> jobs") == Command("jobs")
    assert parse_command(f"<@{BOT}|tunebot>: cancel 4") == Command("cancel", ["4"])


def test_a_yaml_block_in_a_train_command_is_kept_for_the_engine() -> None:
    text = "train seed\n```yaml\nlearning_rate: 1.0e-4\ndataset: alpaca_zh\n```"
    command = parse_command(text)
    assert command == Command("train", ["seed"], {}, "learning_rate: 1.0e-4\ndataset: alpaca_zh")
    assert parse_command("```\nlr: 1\n```") == Command("train", [], {}, "lr: 1")


# -- mistakes ---------------------------------------------------------------------------------------


def test_an_unknown_subcommand_is_named_with_the_closest_suggestion() -> None:
    error = error_of("trian seed")
    assert "`trian`" in error.message and "Did you mean `train`?" in error.message
    assert error.fix.startswith("/tune train")
    assert "Did you mean `deploy`" in error_of("depoly 3").message
    assert "Did you mean" not in error_of("xyzzy").message
    assert "/tune help" in error_of("xyzzy").fix


def test_a_group_needs_its_second_word() -> None:
    assert "Did you mean `dataset add`?" in error_of("dataset ad x").message
    error = error_of("schedule")
    assert "needs one more word" in error.message and "`schedule daily`" in error.message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("cancel", "needs more"),
        ("undeploy", "needs more"),
        ("resume", "needs more"),
        ("eval", "needs a job id (or model=PATH"),
        ("deploy mode=api", "needs a job id"),
        ("cancel abc", "`abc` is not a job id"),
        ("status 3 4", "does not take `4`"),
        ("train seed extra", "does not take `extra`"),
        ("cancel 3 force=1", "takes no key=value settings"),
        ("datasets x", "does not take"),
        ("schedule weekly mon", "needs more"),
        ("train lr=1 lr=2", "`lr` is given twice"),
        ('train dataset="alpaca zh', "A quote is not closed"),
        ("train lr=", "`lr=` has no value"),
        ("train = 3", "no key before the ="),
        ("train 1x=2", "is not a setting"),
        ("lr=1e-4", "Start with what to do"),
        ("status\n```\na: 1\n```", "A pasted YAML goes with `train`"),
    ],
)
def test_mistakes_are_user_errors_with_a_corrected_example(text: str, words: str) -> None:
    error = error_of(text)
    assert words in error.message
    assert error.fix, "every mistake shows a corrected example"


def test_job_refs() -> None:
    assert [parse_job_ref(t) for t in ("12", "#12", "job12", "Job-12", "007")] == [
        "12",
        "12",
        "12",
        "12",
        "7",
    ]
    for bad in ("", "x", "#", "1.5", "-3"):
        with pytest.raises(UserError):
            parse_job_ref(bad)


# -- thread replies ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("status", ThreadCommand("status")),
        ("Status?", ThreadCommand("status")),
        ("cancel", ThreadCommand("cancel")),
        ("cancel!", ThreadCommand("cancel")),
        ("eval", ThreadCommand("eval")),
        ("eval dataset=eval_zh", ThreadCommand("eval", {"dataset": "eval_zh"})),
        ('eval dataset="my eval"', ThreadCommand("eval", {"dataset": "my eval"})),
        ("export", ThreadCommand("export")),
        ("deploy mode=api", ThreadCommand("deploy", {"mode": "api"})),
        ("undeploy", ThreadCommand("undeploy")),
        ("resume", ThreadCommand("resume")),
        (f"<@{BOT}> status", ThreadCommand("status", mentioned=True)),
        (f"<@{BOT}> help", ThreadCommand("help", mentioned=True)),
        (f"<@{BOT}|tunebot>: cancel", ThreadCommand("cancel", mentioned=True)),
    ],
)
def test_thread_replies_that_are_commands(text: str, expected: ThreadCommand) -> None:
    assert parse_thread_reply(text, BOT) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello, what is LoRA?",
        "status of the other run?",  # a sentence that starts with a command word
        "cancel the run please",
        "export the table as csv",
        "help",  # chat with a deployed model unless the bot is @-mentioned
        "<@U0SOMEONE> status",  # addressed to someone else
        '"status"',
        "eval dataset=",
        'the quote " is open',
        "状态",
    ],
)
def test_other_thread_replies_are_chat_text(text: str) -> None:
    assert parse_thread_reply(text, BOT) is None


def test_a_mention_of_anyone_counts_when_the_bot_id_is_not_known() -> None:
    assert parse_thread_reply("<@U0WHOEVER> status") == ThreadCommand("status", mentioned=True)


# -- pasted YAML ------------------------------------------------------------------------------------


def test_extract_yaml_strips_fences_and_slack_escapes() -> None:
    pasted = "here it is:\n```yaml\nmodel_name_or_path: /models/a&amp;b\nlearning_rate: 1.0e-4\n```\nthanks"
    assert extract_yaml(pasted) == "model_name_or_path: /models/a&b\nlearning_rate: 1.0e-4"
    assert extract_yaml("```learning_rate: 1```") == "learning_rate: 1"
    assert extract_yaml("learning_rate: 1") == "learning_rate: 1"


def test_parse_pasted_yaml_reads_a_llamafactory_config() -> None:
    pasted = (
        "```\n### model\nmodel_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct\n"
        "stage: sft\ndo_train: true\nfinetuning_type: lora\nlora_target: all\n"
        "dataset: identity,alpaca_en_demo\nlearning_rate: 1.0e-4\nnum_train_epochs: 3.0\nbf16: true\n```"
    )
    config = parse_pasted_yaml(pasted)
    assert config["model_name_or_path"] == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert config["learning_rate"] == 1.0e-4 and config["bf16"] is True
    assert config["dataset"] == "identity,alpaca_en_demo"


@pytest.mark.parametrize("pasted", ["```\n```", "```\n- a\n- b\n```", "```\nkey: [unclosed\n```"])
def test_parse_pasted_yaml_refuses_what_is_not_a_config(pasted: str) -> None:
    with pytest.raises(UserError) as caught:
        parse_pasted_yaml(pasted)
    assert caught.value.field == "yaml"


def test_command_line_words_are_split_by_the_same_key_value_rules() -> None:
    from bot.parsing import split_words

    assert split_words(["tiny", "epochs=1", "dataset=alpaca zh", "=x"]) == (
        ["tiny", "=x"],
        {"epochs": "1", "dataset": "alpaca zh"},
    )
    with pytest.raises(UserError, match="given twice"):
        split_words(["lr=1", "lr=2"])
    with pytest.raises(UserError, match="not a setting"):
        split_words(["1bad=2"])
