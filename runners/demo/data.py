"""A small Chinese + English instruction dataset for demos and tests (alpaca format).

The rows come from a few fixed templates — sums, a glossary, capitals — with short, patterned
answers, so a tiny model trained for a few dozen steps on a CPU learns something visible. No
randomness: the same rows every time, so tokenizers trained on them are reproducible too.
"""

from __future__ import annotations

import json
from pathlib import Path

TRAIN_FILE = "demo_train.json"
EVAL_FILE = "demo_eval.json"

# english, chinese
_GLOSSARY: list[tuple[str, str]] = [
    ("apple", "苹果"), ("water", "水"), ("book", "书"), ("cat", "猫"), ("dog", "狗"),
    ("teacher", "老师"), ("friend", "朋友"), ("school", "学校"), ("rice", "米饭"), ("tea", "茶"),
    ("moon", "月亮"), ("sun", "太阳"), ("river", "河"), ("mountain", "山"), ("flower", "花"),
    ("computer", "电脑"),
]

# country (en), capital (en), country (zh), capital (zh)
_CAPITALS: list[tuple[str, str, str, str]] = [
    ("France", "Paris", "法国", "巴黎"), ("Japan", "Tokyo", "日本", "东京"),
    ("China", "Beijing", "中国", "北京"), ("Germany", "Berlin", "德国", "柏林"),
    ("Italy", "Rome", "意大利", "罗马"), ("Spain", "Madrid", "西班牙", "马德里"),
    ("Russia", "Moscow", "俄罗斯", "莫斯科"), ("Egypt", "Cairo", "埃及", "开罗"),
]

# a, b — small sums, some held out for eval
_SUMS: list[tuple[int, int]] = [
    (1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7), (7, 8), (8, 9),
    (2, 2), (3, 3), (4, 4), (5, 5), (1, 8), (2, 7), (3, 6), (4, 9),
]


def _row(instruction: str, output: str, input_text: str = "") -> dict[str, str]:
    return {"instruction": instruction, "input": input_text, "output": output}


def _glossary_rows(pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
    rows = []
    for en, zh in pairs:
        rows.append(_row("Translate into Chinese.", zh, en))
        rows.append(_row("把下面的词翻译成英文。", en, zh))
    return rows


def _capital_rows(items: list[tuple[str, str, str, str]]) -> list[dict[str, str]]:
    rows = []
    for country, capital, country_zh, capital_zh in items:
        rows.append(_row(f"What is the capital of {country}?", f"The capital of {country} is {capital}."))
        rows.append(_row(f"{country_zh}的首都是哪里？", f"{country_zh}的首都是{capital_zh}。"))
    return rows


def _sum_rows(sums: list[tuple[int, int]]) -> list[dict[str, str]]:
    rows = []
    for a, b in sums:
        rows.append(_row(f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."))
        rows.append(_row(f"{a}加{b}等于多少？", f"{a}加{b}等于{a + b}。"))
    return rows


def demo_rows(split: str = "train") -> list[dict[str, str]]:
    """The rows of one split: `train` (64 rows) or `eval` (16 rows, held-out items)."""
    if split == "train":
        return _glossary_rows(_GLOSSARY[:12]) + _capital_rows(_CAPITALS[:6]) + _sum_rows(_SUMS[:14])
    if split == "eval":
        return _glossary_rows(_GLOSSARY[12:]) + _capital_rows(_CAPITALS[6:]) + _sum_rows(_SUMS[14:])
    raise ValueError(f"unknown split {split!r}: train or eval")


def demo_text() -> str:
    """Every string of both splits, one per line: the corpus the demo tokenizer is trained on."""
    lines = []
    for split in ("train", "eval"):
        for row in demo_rows(split):
            lines.extend(text for text in (row["instruction"], row["input"], row["output"]) if text)
    return "\n".join(lines) + "\n"


def write_demo_datasets(dest_dir: Path) -> dict[str, Path]:
    """Write the train and eval splits as alpaca JSON files; returns {"train": path, "eval": path}."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, name in (("train", TRAIN_FILE), ("eval", EVAL_FILE)):
        path = dest_dir / name
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(demo_rows(split), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        tmp.replace(path)
        paths[split] = path
    return paths
