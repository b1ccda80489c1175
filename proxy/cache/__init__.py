"""The pull-through cache."""
