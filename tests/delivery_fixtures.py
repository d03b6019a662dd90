"""Fixtures for the Slack delivery and notifier tests: the Web API stand-in and quick clients."""

from __future__ import annotations

import pytest
from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.http_retry.builtin_interval_calculators import FixedValueRetryIntervalCalculator

from .slack_standin import SlackStandin


@pytest.fixture
def slack():
    with SlackStandin() as standin:
        yield standin


def quick_client(slack: SlackStandin, *, retries: int = 1) -> WebClient:
    """A real WebClient on the stand-in whose 5xx retries wait 50 ms, not seconds (429 still
    sleeps what Retry-After says: that is the behaviour under test)."""
    quick = FixedValueRetryIntervalCalculator(0.05)
    return WebClient(
        token=slack.bot_token,
        base_url=slack.base_url,
        retry_handlers=[
            ConnectionErrorRetryHandler(max_retry_count=retries, interval_calculator=quick),
            RateLimitErrorRetryHandler(max_retry_count=retries),
            ServerErrorRetryHandler(max_retry_count=retries, interval_calculator=quick),
        ],
    )
