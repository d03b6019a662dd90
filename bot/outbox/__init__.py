"""The outbox: every Slack post goes through a table, is retried, and is sent once (delivery.py);
before re-sending a post whose first attempt may have landed, Slack is asked (landed.py)."""
