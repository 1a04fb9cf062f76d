import pytest

from stages.models.loading import train_char_tokenizer
from tiny_world import TinyWorld


@pytest.fixture(scope="module")
def tokenizer():
    """The tiny world's char-level tokenizer; one per test module, since tests change its padding."""
    world = TinyWorld()
    return train_char_tokenizer([world.alphabet(), *world.corpus(20)])
