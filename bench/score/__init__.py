"""Scoring: accuracy metrics, DCASE complexity counting, INT8 quantization and energy per clip."""
