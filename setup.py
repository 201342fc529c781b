"""gen-keras: classic image generative models on Keras 3, TFP, TFDS and TF Serving."""

from setuptools import find_packages, setup

SERVING = ["tensorflow-serving-api==2.21.0"]
# RunInference's TensorFlow handler imports tensorflow_hub; [tfrecord] brings a CRC package.
BEAM = ["apache-beam[tfrecord]==2.77.0", "tensorflow-hub==0.16.1"]
# benchmarks/curves.py draws its PNG with matplotlib (the JSON is the record).
BENCH = ["matplotlib==3.11.2"]

setup(
    name="gen-keras",
    version="0.1.0",
    description="PixelRNN/PixelCNN, (V)AEs and GANs on Keras 3 + TFP, with TF Serving exports",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["gen_keras", "gen_keras.*", "trainers", "trainers.*"]),
    python_requires=">=3.11,<3.12",
    install_requires=[
        "tensorflow==2.21.0",
        "tf-keras==2.21.0",  # tensorflow-probability imports it on first use
        "keras==3.15.1",
        "tensorflow-probability==0.25.0",
        "tensorflow-datasets==4.9.10",
        "importlib_resources>=6",  # imported by TFDS 4.9.10, not declared by it
        "tensorboard==2.21.0",  # tf.summary needs it; TF 2.21 does not depend on it
        "absl-py>=2.1,<3",
        "numpy>=2,<3",
    ],
    extras_require={
        "serving": SERVING,  # the gRPC client and its protos
        "beam": BEAM,  # batch inference on Apache Beam (pulls protobuf 6.x, which TF accepts)
        "bench": BENCH,
        "dev": ["pytest>=8", "pytest-xdist==3.8.0", "ruff==0.17.6", *SERVING, *BEAM, *BENCH],
        "gpu": ["tensorflow[and-cuda]==2.21.0"],
    },
)
