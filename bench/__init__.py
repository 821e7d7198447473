"""ascbench: benchmark and evaluation harness for low-complexity, device-robust acoustic scene classification."""

__version__ = "0.1.0"

