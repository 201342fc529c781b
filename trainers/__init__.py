"""Command-line entry points: `python -m trainers.<family>`."""

import os

# Quiet TensorFlow's C++ info/warning logs unless the user asked for them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gen_keras  # noqa: E402,F401  (before any TensorFlow import: sets its oneDNN default)
