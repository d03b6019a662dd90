import json

import pytest

from runners.errors import UserError
from runners.llamafactory.results import (
    compare_metrics,
    prompt_for_display,
    read_predict_results,
    sample_predictions,
)

# Written by a real LLaMA-Factory 0.9.5 predict run (do_predict + predict_with_generate, tiny model).
PREDICT_RESULTS = """{
    "predict_bleu-4": 2.694316666666667,
    "predict_model_preparation_time": 0.0004,
    "predict_rouge-1": 0.0,
    "predict_rouge-2": 0.0,
    "predict_rouge-l": 0.0,
    "predict_runtime": 1.8741,
    "predict_samples_per_second": 3.201,
    "predict_steps_per_second": 1.067
}"""
# A Llama-3-8B-Instruct-sized run's numbers, shaped the same way.
BETTER_RESULTS = {
    "predict_bleu-4": 21.5837,
    "predict_rouge-1": 45.1203,
    "predict_rouge-2": 24.9917,
    "predict_rouge-l": 36.4466,
    "predict_runtime": 412.33,
    "predict_samples_per_second": 2.425,
    "predict_steps_per_second": 0.303,
}
GENERATED_PREDICTIONS = r"""{"prompt": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nRepeat the word apple<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", "predict": "\u0016tainEtersi�//", "label": "apple apple"}
{"prompt": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nRepeat the word river<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", "predict": "usst", "label": "river river"}
{"prompt": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nRepeat the word stone<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", "predict": "orioo river���", "label": "stone stone"}
{"prompt": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nRepeat the word cloud<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", "predict": "b4�\u0016 school", "label": "cloud cloud"}
"""  # noqa: E501


@pytest.fixture
def output_dir(tmp_path):
    (tmp_path / "predict_results.json").write_text(PREDICT_RESULTS)
    (tmp_path / "generated_predictions.jsonl").write_text(GENERATED_PREDICTIONS, encoding="utf-8")
    return tmp_path


def test_predict_results_are_read_as_percentages(output_dir):
    assert read_predict_results(output_dir) == {
        "rouge-1": 0.0,
        "rouge-2": 0.0,
        "rouge-l": 0.0,
        "bleu-4": 2.694316666666667,
        "runtime_s": 1.8741,
        "samples_per_s": 3.201,
        "steps_per_s": 1.067,
    }


def test_scores_are_not_scaled_again(tmp_path):
    # metric.py already stores round(score * 100, 4): 45.12 means 45.12 %, not 4512 %.
    (tmp_path / "predict_results.json").write_text(json.dumps(BETTER_RESULTS))
    results = read_predict_results(tmp_path)
    assert results["rouge-1"] == 45.1203 and results["bleu-4"] == 21.5837


def test_llamafactory_reports_scores_as_percentages():
    # Guard the assumption above against a future LLaMA-Factory that stores fractions.
    import importlib.util
    from pathlib import Path

    package = Path(importlib.util.find_spec("llamafactory").origin).parent
    source = (package / "train" / "sft" / "metric.py").read_text()
    assert 'round(v["f"] * 100, 4)' in source and "round(bleu_score * 100, 4)" in source


def test_missing_results_file_reads_as_empty(tmp_path):
    assert read_predict_results(tmp_path) == {}


def test_damaged_results_file_is_a_user_error(tmp_path):
    (tmp_path / "predict_results.json").write_text('{"predict_rouge-1": 4')
    with pytest.raises(UserError, match="is not valid JSON"):
        read_predict_results(tmp_path)


def test_results_without_generation_scores_say_why(tmp_path):
    # do_predict without predict_with_generate writes only loss and runtime.
    (tmp_path / "predict_results.json").write_text('{"predict_loss": 2.31, "predict_runtime": 3.2}')
    with pytest.raises(UserError, match="predict_with_generate"):
        read_predict_results(tmp_path)


def test_sample_predictions_strip_the_template(output_dir):
    samples = sample_predictions(output_dir, n=3)
    assert samples == [
        {"prompt": "Repeat the word apple", "predict": "\x16tainEtersi\ufffd//", "label": "apple apple"},
        {"prompt": "Repeat the word river", "predict": "usst", "label": "river river"},
        {
            "prompt": "Repeat the word stone",
            "predict": "orioo river\ufffd\ufffd\ufffd",
            "label": "stone stone",
        },
    ]


def test_sample_predictions_with_fewer_rows_than_asked(output_dir):
    assert len(sample_predictions(output_dir, n=10)) == 4
    assert sample_predictions(output_dir, n=0) == []


def test_sample_predictions_skip_bad_lines_and_tolerate_a_missing_file(tmp_path):
    assert sample_predictions(tmp_path) == []
    river = GENERATED_PREDICTIONS.splitlines()[1]
    (tmp_path / "generated_predictions.jsonl").write_text("not json\n[1]\n" + river + "\n")
    assert [s["label"] for s in sample_predictions(tmp_path)] == ["river river"]


@pytest.mark.parametrize(
    ("prompt", "shown"),
    [
        # llama3, multi-turn with a system prompt: the last user message.
        (
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
            "\n\nHello!<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n把这句话翻译成英文<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
            "把这句话翻译成英文",
        ),
        # qwen (chatml)
        (
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. "
            "You are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nName three primary colours.<|im_end|>\n<|im_start|>assistant\n",
            "Name three primary colours.",
        ),
        # default: "Human: {{content}}<eos>\nAssistant:"
        (
            "<|begin_of_text|>System: Be brief.<|eot_id|>\nHuman: first<|eot_id|>\nAssistant:ok<|eot_id|>\n"
            "Human: second question<|eot_id|>\nAssistant:",
            "second question",
        ),
        ("<s>Human: hello</s>\nAssistant:", "hello"),
        # llama2
        ("<s>[INST] <<SYS>>\nBe nice.\n<</SYS>>\n\nTell me a joke [/INST]", "Tell me a joke"),
        # empty template / unknown: special tokens removed, text kept
        ("<|begin_of_text|>Translate: bonjour", "Translate: bonjour"),
    ],
    ids=["llama3", "qwen", "default", "default-s", "llama2", "unknown"],
)
def test_prompt_for_display(prompt, shown):
    assert prompt_for_display(prompt) == shown


def test_compare_metrics_gives_new_minus_previous(tmp_path):
    (tmp_path / "predict_results.json").write_text(PREDICT_RESULTS)
    old = read_predict_results(tmp_path)
    (tmp_path / "predict_results.json").write_text(json.dumps(BETTER_RESULTS))
    new = read_predict_results(tmp_path)
    deltas = compare_metrics(new, old)
    assert deltas["rouge-1"] == 45.1203
    assert deltas["bleu-4"] == pytest.approx(18.8894, abs=1e-4)
    assert deltas["runtime_s"] == pytest.approx(410.4559)
    assert set(deltas) == set(new)


def test_compare_metrics_only_compares_shared_numbers():
    assert compare_metrics({"rouge-1": 40.0, "bleu-4": 20.0}, {"rouge-1": 42.5, "note": "x"}) == {
        "rouge-1": -2.5
    }
    assert compare_metrics({"rouge-1": 40.0}, {"rouge-1": float("nan")}) == {}
    assert compare_metrics({"rouge-1": 40.0}, None) == {}
    assert compare_metrics({"rouge-1": 40.0}, {}) == {}
