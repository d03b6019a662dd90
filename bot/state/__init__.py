"""The bot's own tables: their versioned creation (tables.py), leases that let one process of
several act (leases.py), and the record of Slack deliveries already seen (dedupe.py)."""
