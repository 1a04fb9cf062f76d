import socket

import pytest

from stages.models.loading import train_char_tokenizer
from tiny_world import TinyWorld


@pytest.fixture(scope="module")
def tokenizer():
    """The tiny world's char-level tokenizer; one per test module, since tests change its padding."""
    world = TinyWorld()
    return train_char_tokenizer([world.alphabet(), *world.corpus(20)])


@pytest.fixture(scope="module")
def process_group():
    """A gloo group of one, what Ray Train gives a worker, for DeepSpeed engines in the test's process. Torn
    down through DeepSpeed, which caches the groups it saw: a later module's group would meet stale ones."""
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LOCAL_RANK", "0")  # what a launcher (here Ray Train) sets for DeepSpeed
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
        yield
        import deepspeed.comm.comm as deepspeed_comm

        if deepspeed_comm.cdb is not None:
            deepspeed_comm.destroy_process_group()
        else:
            dist.destroy_process_group()
