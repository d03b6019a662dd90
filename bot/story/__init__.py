"""A job's story told into Slack: the one reader of the engine's job events.

`notifier` follows the event stream (one saved cursor, one lease) and hands each event to `posts`
(pure: which posts an event calls for) and to `progress` (pure: when a running job gets a
progress post or a stall report); everything goes out through the outbox (bot/outbox/delivery.py).
"""
