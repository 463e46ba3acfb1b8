"""EMQ: evolve training-free proxies for mixed-precision quantization."""

__version__ = "0.1.0"
