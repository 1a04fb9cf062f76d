"""Environment for the processes of a Ray cluster that this project starts."""

import os

WORKER_ENV = {
    # Ray Train patches print() in its workers, which defeats dill's stdout capture and floods the
    # log with disassembly whenever `datasets` fingerprints a function.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    # Worker output reaches the terminal line by line, so a progress bar redrawn ten times a second
    # becomes ten lines a second: redraw every 10 s instead.
    "TQDM_MININTERVAL": "10",
    # Ray Train's controller polls its workers every 2 s by default, so a finished loop (or a dead worker)
    # was noticed up to 2 s late at every stage; a poll is a no-op task of about a millisecond.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    # The preemption watcher follows node drains on autoscaled clusters, from one more actor process per
    # stage (2 CPU-seconds of starting it on 2 cores); a stage that loses its node resumes from its latest
    # checkpoint all the same (ray.max_failures).
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}


def set_worker_env() -> None:
    """Set WORKER_ENV (keeping any value the user set) before a local Ray cluster starts."""
    for name, value in WORKER_ENV.items():
        os.environ.setdefault(name, value)


def forwarded_env() -> dict[str, str]:
    """What a stage's processes on a cluster this process did not start (a Ray job, its actors) need of
    this process's environment, since they inherit the head's: WORKER_ENV (the user's values where set)
    and the project's own RLHF_* variables (the run lock, fault injection for the recovery tests)."""
    env = {name: os.environ.get(name, value) for name, value in WORKER_ENV.items()}
    env.update({name: value for name, value in os.environ.items() if name.startswith("RLHF_")})
    return env


def is_job_server(address: str) -> bool:
    """Whether `address` names a Ray job server (http://HOST:8265), which takes each stage as a Ray job,
    rather than a cluster (HOST:6379, auto), which a stage process joins."""
    return address.startswith(("http://", "https://"))


def cluster_address(config_address: str | None) -> tuple[str, str | None]:
    """(where it was given, address) of the Ray cluster to join: RAY_ADDRESS (a Ray job's, or the one
    `rlhf run` hands its stages) over ray.address; (..., None): none given."""
    from_env = os.environ.get("RAY_ADDRESS")
    return ("RAY_ADDRESS", from_env) if from_env else ("ray.address", config_address)
