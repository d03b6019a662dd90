"""manifest.yml is a valid Slack app manifest and asks for what tunebot uses, no more."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

# What the app registers (COMMANDS, BOT_EVENTS, BOT_SCOPES): the manifest must ask for exactly these.
from bot.app import BOT_EVENTS, BOT_SCOPES, COMMANDS
from bot.parsing import SUBCOMMANDS

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = Path(__file__).resolve().parent / "data" / "slack" / "manifest.schema.1.0.0.json"
SHARED_SCHEMA = ROOT.parent / "shared" / "slack" / "manifest.schema.1.0.0.json"

# Slack refuses to subscribe a bot to an event without its scope.
EVENT_SCOPES = {
    "app_mention": "app_mentions:read",
    "message.channels": "channels:history",
    "message.groups": "groups:history",
    "message.im": "im:history",
    "message.mpim": "mpim:history",
}


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "manifest.yml").read_text(encoding="utf-8"))


def test_manifest_validates_against_slacks_schema(manifest: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    validator_class.check_schema(schema)
    errors = sorted(validator_class(schema).iter_errors(manifest), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_the_schema_rejects_a_broken_manifest(manifest: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    broken = {**manifest, "features": {**manifest["features"], "slash_commands": [{"command": "tune"}]}}
    assert list(jsonschema.Draft7Validator(schema).iter_errors(broken))


def test_the_schema_copy_matches_the_shared_one_and_keeps_its_license() -> None:
    assert (SCHEMA.parent / "LICENSE-manifest-schema").read_text().startswith("MIT License")
    if not SHARED_SCHEMA.exists():
        pytest.skip("../shared is not here (a fresh clone): the copy is all there is")
    assert json.loads(SCHEMA.read_text()) == json.loads(SHARED_SCHEMA.read_text())


def test_commands_events_and_scopes_are_what_the_app_uses(manifest: dict[str, Any]) -> None:
    commands = {c["command"] for c in manifest["features"]["slash_commands"]}
    events = set(manifest["settings"]["event_subscriptions"]["bot_events"])
    scopes = manifest["oauth_config"]["scopes"]["bot"]
    assert commands == COMMANDS
    assert events == BOT_EVENTS
    assert len(scopes) == len(set(scopes))
    assert set(scopes) == BOT_SCOPES
    for event in events:
        assert EVENT_SCOPES[event] in scopes, f"{event} needs {EVENT_SCOPES[event]}"


def test_socket_mode_interactivity_and_bot_user(manifest: dict[str, Any]) -> None:
    settings = manifest["settings"]
    assert settings["socket_mode_enabled"] is True
    assert settings["interactivity"]["is_enabled"] is True
    assert settings["org_deploy_enabled"] is False
    # Socket Mode needs no request URLs; leaving one in would be a URL nobody serves.
    assert "request_url" not in settings["interactivity"]
    assert "request_url" not in settings["event_subscriptions"]
    assert manifest["features"]["bot_user"]["display_name"] == "tunebot"
    display = manifest["display_information"]
    assert display["name"] == "tunebot"
    # The schema's colour rule uses a keyword jsonschema ignores ("regex"), so check it here.
    assert re.fullmatch(r"#[0-9a-fA-F]{3}([0-9a-fA-F]{3})?", display["background_color"])


def test_the_usage_hint_names_every_subcommand(manifest: dict[str, Any]) -> None:
    hint = manifest["features"]["slash_commands"][0]["usage_hint"]
    words = set(re.findall(r"[a-z]+", hint))
    for name in SUBCOMMANDS:
        for word in name.split(" "):
            assert word in words, f"usage_hint does not mention {word!r} ({name})"
