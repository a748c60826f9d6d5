"""Training, evaluation and translation entry points built on the flax_transformer library."""

from train import huge_pages as _huge_pages

# `python -m train...` re-executes itself once with glibc's huge-page tunable (see there); a
# no-op for any other process that imports this package.
_huge_pages.reexec_if_wanted()
