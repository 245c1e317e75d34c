"""verl rollout dumps (being written)."""
