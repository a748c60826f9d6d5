"""Training, evaluation and translation entry points built on the flax_transformer library."""
