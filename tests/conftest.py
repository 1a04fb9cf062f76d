import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from stages.models.loading import train_char_tokenizer
from tiny_world import TinyWorld


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # `make test`'s two workers share 2 cores with each other and with the stages they start (one thread
        # each): torch's default of a thread a core in every worker has OpenMP threads spin against them all
        # (a retrieval test took 70 s beside the end-to-end runs, 9 s alone)
        torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def ray_temp_dir():
    """Every Ray this session starts (local clusters, heads, their workers) keeps its files in a fresh
    directory (RAY_TMPDIR), which goes with the session. Ray Train's placement-group cleaner finds "its"
    cluster through the temp dir's ray_current_cluster, written by the last `ray start`: one left behind by
    a head that is gone (another module's, another user's) has it wait on a dead GCS, and every
    TorchTrainer.fit then ends 12 s late ("Failed to stop PlacementGroupCleaner gracefully")."""
    path = tempfile.mkdtemp(prefix="rlhf-ray-")  # short: Ray's socket paths under it must fit in 107 bytes
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_TMPDIR", path)
        yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def interpreter_bin_first_on_path():
    """The interpreter's bin directory first on PATH, as in an activated venv (and under `make`), for every
    process the tests start: DeepSpeed builds its shared-memory op with the first `ninja` on PATH, and the
    venv's ninja (pip's 1.13) and a system one (Debian's 1.11) each take the other's build log for stale,
    so every switch between the two rebuilt the op (35-47 s on 2 cores)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        yield


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


@pytest.fixture(scope="module")
def ppo_models(tmp_path_factory, tokenizer):
    """A random GPT-2 actor and a reward model of its shape (reward_bias -0.5), each saved with the tiny
    world's tokenizer (vLLM reads both from one directory), dropout off so that ratios start at 1; head
    size 32, the least vLLM's CPU attention takes."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        GPT2Config,
    )

    root = tmp_path_factory.mktemp("models")
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=2, n_embd=64, n_head=2, n_positions=128, num_labels=1,
                        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(root / "actor")
    reward = AutoModelForSequenceClassification.from_config(config)
    reward.config.reward_bias = -0.5
    reward.save_pretrained(root / "rm")
    for name in ("actor", "rm"):
        tokenizer.save_pretrained(root / name)
    return root
