"""prime-rl traces (being written)."""
