"""Other libraries' checkpoints in this library's Transformer.

marian    MarianMT (the opus-mt translators of the Hugging Face hub): load and save
"""

from flax_transformer.interop import marian

__all__ = ["marian"]
