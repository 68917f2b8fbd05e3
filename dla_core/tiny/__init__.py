"""Tiny random models built offline, for tests, the CLI self-test and integration checks.

Nothing here downloads anything: configs, weights, tokenizers and processors are made in
code and written as ordinary Hugging Face-format folders.
"""
from .mllm import TINY_BUILDERS, build_tiny_internvl, build_tiny_mllm, build_tiny_qwen25vl, build_tiny_qwen3vl

__all__ = ["TINY_BUILDERS", "build_tiny_internvl", "build_tiny_mllm", "build_tiny_qwen25vl", "build_tiny_qwen3vl"]
