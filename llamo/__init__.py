"""llamo: the experiment suite for LLaMo, a unified motion-language model on a frozen pretrained Llama."""

__version__ = "0.1.0"
