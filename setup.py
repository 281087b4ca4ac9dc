"""vitrt: a deployment compiler for Vision Transformers."""

from pathlib import Path

from setuptools import find_packages, setup

version = {}
exec(Path("vitrt/_version.py").read_text(), version)

setup(
    name="vitrt",
    version=version["__version__"],
    description="Deployment compiler for timm Vision Transformers: prune, sparsify, quantize, merge tokens, build engines",
    long_description=Path("README.md").read_text() if Path("README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["vitrt", "vitrt.*"]),
    package_data={"vitrt.calib": ["reference_weights/*.pt", "reference_weights/*.json"]},
    install_requires=[
        "numpy>=1.24",
        "torch>=2.4",
        "torchvision",  # timm's data transforms
        "timm>=1.0.15",
        "onnx>=1.17",
        "onnxruntime>=1.20",
        "onnx-graphsurgeon>=0.5",
        "scikit-learn>=1.3",  # the digits reference data set
        "scipy>=1.10",
        "matplotlib>=3.7",
        "tqdm>=4.66",
        "filelock>=3.12",
        "polygraphy>=0.49",
        "nvidia-modelopt>=0.27",
        "requests",  # imported by nvidia-modelopt without being declared there
        "ml-dtypes>=0.4",  # int4 / float8 initializers of the Q/DQ pass (issue 7)
    ],
    extras_require={
        "trt": ["tensorrt>=10.0"],
        # vitrt serve / loadtest / export triton: a real Triton server (PyTriton bundles Triton 2.51 with its
        # Python backend) and Triton's client (HTTP, gRPC, the ModelConfig protobuf). PyTriton pins numpy < 2.
        "serve": ["nvidia-pytriton>=0.7", "tritonclient[http,grpc]>=2.50"],
        # mypy type-checks the TensorRT backend against tensorrt-stubs (tests/test_trt_typecheck.py); the stubs are
        # installed with --no-deps by .ci/run and the README (their metadata pins tensorrt, which has no wheel here)
        "dev": ["pytest>=8", "pytest-xdist>=3", "hypothesis>=6.100", "import-linter>=2.1", "mypy>=1.10",
                "nvidia-pytriton>=0.7", "tritonclient[http,grpc]>=2.50"],
    },
    entry_points={"console_scripts": ["vitrt=vitrt.cli:main"]},
)
