"""Benchmarks: `python -m benchmarks.<name>`; figures and commands in results.md."""

import gen_keras  # noqa: F401  (before any TensorFlow import: sets its oneDNN default)
