"""keras-mmoe: Multi-gate Mixture-of-Experts layers for Keras 3 and tf-keras."""

from setuptools import find_packages, setup

setup(
    name="keras-mmoe",
    version="0.1.0",
    description=(
        "Multi-gate Mixture-of-Experts (MMoE) layers for multi-task ranking in Keras 3 and "
        "tf-keras, with expert dropout, gate diagnostics and TensorFlow Serving export."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["keras_mmoe", "keras_mmoe.*"]),
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3",
        "numpy",
    ],
    extras_require={
        # tensorflow-recommenders only runs on tf-keras (TF_USE_LEGACY_KERAS=1).
        "tfrs": ["tf-keras", "tensorflow-recommenders"],
        # PredictRequest / PredictionLog protos for gRPC requests and warmup records.
        "serving": ["tensorflow-serving-api"],
        "plots": ["matplotlib"],
        "dev": [
            "pytest",
            "pytest-timeout",
            "pytest-xdist",
            "matplotlib",
            "nbclient",
            "nbformat",
            "ipykernel",
            "tf-keras",
            "tensorflow-recommenders",
            "tensorflow-serving-api",
        ],
    },
    entry_points={"console_scripts": ["keras-mmoe=keras_mmoe.cli.main:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
