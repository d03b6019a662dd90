"""The README opens with the two commands and documents every environment variable the code reads."""

from __future__ import annotations

import re
from pathlib import Path

from bot.schedules.spec import SCHEDULE_SETTINGS_TABLE
from bot.settings import BOT_SETTINGS_TABLE
from runners.artifacts import STORAGE_SETTINGS_TABLE
from runners.settings import SETTINGS_TABLE

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
TABLES = [BOT_SETTINGS_TABLE, SETTINGS_TABLE, STORAGE_SETTINGS_TABLE, SCHEDULE_SETTINGS_TABLE]


def test_readme_opens_with_exactly_the_two_setup_commands():
    first_block = re.search(r"```\n(.*?)```", README, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    assert README.index("make demo") < README.index("## ")


def test_every_setting_row_is_in_the_readme_as_the_code_describes_it():
    for table in TABLES:
        for s in table:
            row = f"| `{s.name}` | {s.default} | {s.unit} | {s.meaning} |"
            assert row in README, f"README's environment table lacks or differs for {s.name}:\n{row}"


def test_every_environment_variable_the_code_reads_is_documented():
    documented = {s.name for table in TABLES for s in table}
    read = set()
    for path in [*ROOT.glob("bot/**/*.py"), *ROOT.glob("runners/**/*.py")]:
        # A whole name in quotes (not a prefix such as "SLACK_").
        read |= set(re.findall(r"[\"']((?:TUNEBOT|SLACK)_[A-Z0-9_]*[A-Z0-9])[\"']", path.read_text()))
    assert read - documented == set()
