"""gen_keras: classic image generative models on Keras 3, TFP, TFDS and TF Serving."""

__version__ = "0.1.0"
