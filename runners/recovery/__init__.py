"""When tunebot itself is in trouble: a database outage (`outage`), and jobs no runner follows
any more (`unattended`). See docs/reliability.md."""
