"""gen_keras: classic image generative models on Keras 3, TFP, TFDS and TF Serving."""

import os

# TensorFlow reads TF_ENABLE_ONEDNN_OPTS once, when it loads, and on x86 CPUs without VNNI,
# BF16 or AMX (AVX2-only hosts, such as the 2-core VMs our figures come from) it leaves its
# oneDNN kernels off. They train our convolutional models 1.09-1.25x faster there
# (benchmarks/results.md, "oneDNN"; small batches serve slower with them, "Serving"), so
# gen_keras asks for them unless the variable is already set (TF_ENABLE_ONEDNN_OPTS=0 opts
# out). It takes effect only when gen_keras is imported before TensorFlow, as the trainers,
# benchmarks and tests do.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"
