from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def number_words_params():
    """The parameters of tests/number_words_model.py's model, trained once per session."""
    from tests.number_words_model import train_params

    return train_params()
