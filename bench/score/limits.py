"""The DCASE 2025 Task 1 complexity limits, per device model and 1-s clip (no torch: plots and the CLI read them)."""

MAX_MACS = 30_000_000
MAX_PARAM_BYTES = 128_000
