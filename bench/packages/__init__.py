"""Official DCASE 2025 Task 1 inference packages: score them isolated and unchanged, and export ours as one.

A package runs only in a child process (:mod:`bench.packages.worker`) started by :mod:`bench.packages.runner`; the
harness process never imports package code, so a crash, hang or exception becomes a failed result, not a dead
harness. :mod:`bench.packages.export` writes one of our saved submissions in the official layout.
"""
