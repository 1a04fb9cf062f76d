"""The weight sync's bound: an engine that stops answering makes push_weights fail with a TimeoutError
naming the setting, instead of hanging the trainer (a real Ray actor stands in for a stuck engine)."""

import time

import pytest
import torch

from stages.scoring.vllm_engines import push_weights


class StuckEngine:
    def stage_weights(self, named_tensors):
        time.sleep(60)

    def commit_weights(self, version, expected):
        return version


class ListeningEngine:
    def __init__(self):
        self.staged = []

    def stage_weights(self, named_tensors):
        self.staged.extend(named_tensors)
        return len(self.staged)

    def commit_weights(self, version, expected):
        assert len(self.staged) == expected
        return version

    def received(self):
        return [(name, tensor.dtype, tuple(tensor.shape)) for name, tensor in self.staged]


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_a_stuck_engine_fails_the_sync_within_its_timeout(ray_local):
    engine = ray_local.remote(StuckEngine).remote()
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="rollout.sync_timeout_s"):
        push_weights([engine], [("w", torch.ones(4))], version=1, dtype=torch.float32, bucket_mb=1, timeout_s=2)
    assert time.monotonic() - started < 20
    ray_local.kill(engine)


def test_weights_go_in_buckets_in_the_engines_dtype(ray_local):
    engines = [ray_local.remote(ListeningEngine).remote() for _ in range(2)]
    weights = [(f"layer{i}.weight", torch.randn(256, 256)) for i in range(5)]  # 256 KiB each
    mib = push_weights(engines, iter(weights), version=3, dtype=torch.bfloat16, bucket_mb=0.25, timeout_s=30)
    assert mib == pytest.approx(5 * 256 * 256 * 2 / 2**20)
    for engine in engines:
        assert ray_local.get(engine.received.remote()) == [(name, torch.bfloat16, (256, 256)) for name, _ in weights]
