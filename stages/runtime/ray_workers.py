"""The stages' one contact with Ray: run a training loop on `ray.num_workers` Ray Train workers, or
shards of work that needs no gradients (sampling) as plain Ray tasks.

Inside a Ray job (RAY_ADDRESS set by the job server) the stage joins that cluster; otherwise it
starts a local Ray for itself. A failed worker group restarts up to `ray.max_failures` times, and the
loop resumes from the stage's latest complete checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from common.config import RaySection
from common.errors import InputError
from common.ray_env import cluster_address, forwarded_env, is_job_server, set_worker_env


def stage_cluster(ray_config: RaySection) -> str | None:
    """The cluster a stage process joins (RAY_ADDRESS, else ray.address; None: a local Ray). A job
    server's address is refused: it takes stages as jobs, it is no cluster to join."""
    source, address = cluster_address(ray_config.address)
    if address and is_job_server(address):
        raise InputError(f"{source}: {address} is a Ray job server, which takes stages as jobs (rlhf run, rlhf submit); "
                         "a stage started by hand joins a cluster by its GCS address (HOST:6379)")
    return address


def ensure_ray(ray_config: RaySection, extra_cpus: float = 0.0) -> None:
    """Join the stage's cluster (stage_cluster), or start a local Ray with room for the workers and
    `extra_cpus` (engines)."""
    import ray

    set_worker_env()
    if ray.is_initialized():
        return
    if address := stage_cluster(ray_config):
        # The job's actors get the address too: a Ray process that asks for it with none falls back to the
        # temp dir's ray_current_cluster, and one left by a cluster gone before ours has it wait on a dead
        # GCS (Ray Train's placement-group cleaner did, before StageTrainer dropped it: every stage ended
        # 12 s late).
        # Under a Ray job, whose runtime env sets some of the same variables (to the same values: this
        # process has them from it), Ray refuses the overlap unless told to combine the two.
        os.environ["RAY_OVERRIDE_JOB_RUNTIME_ENV"] = "1"
        ray.init(address=address, runtime_env={"env_vars": {**forwarded_env(), "RAY_ADDRESS": address}})
        return
    cpus_needed = ray_config.num_workers * ray_config.resources_per_worker.get("CPU", 1.0) + extra_cpus
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(cpus_needed + 0.999)), log_to_driver=True)


def _worker_entry(loop_config: dict[str, Any]) -> None:
    """What every worker does before the stage's loop: its thread count, its GPU as the current CUDA device
    (before any engine or NCCL communicator is built: DeepSpeed and NCCL take the current device), and
    quiet about torch.distributed's deprecations (one line per rank and step otherwise)."""
    import warnings

    import torch

    torch.set_num_threads(loop_config["torch_threads"])
    if torch.cuda.is_available():
        from ray.train.torch import get_device

        torch.cuda.set_device(get_device())
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    loop_config["loop"](loop_config["spec"], world_rank())


def run_on_workers(ray_config: RaySection, torch_threads: int, loop: Callable[[Any, int], None], spec: Any, name: str,
                   storage: Path) -> None:
    """Run `loop(spec, rank)` on every worker of a data-parallel group, and wait for it. `spec` is
    everything the workers need (pickled to them); `loop` a module-level function."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig

    ensure_ray(ray_config)
    trainer = _stage_trainer_class()(
        _worker_entry,
        train_loop_config={"loop": loop, "spec": spec, "torch_threads": torch_threads},
        scaling_config=ScalingConfig(
            num_workers=ray_config.num_workers,
            use_gpu=ray_config.use_gpu,
            resources_per_worker=ray_config.resources_per_worker,
        ),
        torch_config=TorchConfig(backend="nccl" if ray_config.use_gpu else "gloo", timeout_s=ray_config.collective_timeout_s),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage.resolve()),
            failure_config=FailureConfig(max_failures=ray_config.max_failures),
        ),
    )
    trainer.fit()


# Ray Train's default controller callbacks that start an actor process each and do nothing for a stage: the
# dataset manager shards Ray Datasets (a stage passes none), and the placement-group cleaner removes the
# worker group's placement group should the controller die before the driver; the driver of a stage is its
# process, and Ray removes a job's placement groups when its driver ends. Each process is 2-4 CPU-seconds
# of starting on 2 cores, and the cleaner asks the dashboard about the controller every second. Matched by
# name: Ray Train keeps them internal, and a Ray without them (or without the hook) runs them unchanged.
UNNEEDED_CALLBACKS = {"DatasetsCallback", "PlacementGroupCleanerCallback"}


def _stage_trainer_class():
    from ray.train.torch import TorchTrainer

    class StageTrainer(TorchTrainer):
        def _create_default_callbacks(self):
            return [callback for callback in super()._create_default_callbacks()
                    if type(callback).__name__ not in UNNEEDED_CALLBACKS]

    return StageTrainer


def map_on_workers(ray_config: RaySection, fn: Callable[..., Any], shards: list[Any], **kwargs: Any) -> list[Any]:
    """`[fn(shard, **kwargs) for shard in shards]`, one Ray task per shard, each reserving a worker's
    resources; results in shard order."""
    import ray

    ensure_ray(ray_config)
    resources = dict(ray_config.resources_per_worker)
    task = ray.remote(
        num_cpus=resources.pop("CPU", 1.0), num_gpus=1 if ray_config.use_gpu else 0, resources=resources or None,
        max_retries=max(ray_config.max_failures, 0),
    )(fn)
    return ray.get([task.remote(shard, **kwargs) for shard in shards])


def world_rank() -> int:
    from ray import train

    return train.get_context().get_world_rank()
