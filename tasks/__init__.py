"""Task runners: wire data, models and training loops; home of the `rlts` command."""
