"""finescope: what fine-tuning does to the inside of language models, layer by layer."""

__version__ = "0.1.0"
