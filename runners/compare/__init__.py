"""Comparing scores: a fine-tune against its base model (`baseline`), runs against each other on one
eval set (`leaderboard`)."""
