"""TRL GRPOTrainer `completions/completions_*.parquet` (placeholder: being written)."""
