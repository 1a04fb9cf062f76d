"""Environment for the processes of a Ray cluster that this project starts."""

import os

WORKER_ENV = {
    # Ray Train patches print() in its workers, which defeats dill's stdout capture and floods the
    # log with disassembly whenever `datasets` fingerprints a function.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    # Worker output reaches the terminal line by line, so a progress bar redrawn ten times a second
    # becomes ten lines a second: redraw every 10 s instead.
    "TQDM_MININTERVAL": "10",
}


def set_worker_env() -> None:
    """Set WORKER_ENV (keeping any value the user set) before a local Ray cluster starts."""
    for name, value in WORKER_ENV.items():
        os.environ.setdefault(name, value)


def forwarded_env() -> dict[str, str]:
    """What a stage's actors need of this process's environment on a cluster it joins, whose processes
    inherit the head's environment and not the stage's: WORKER_ENV (the user's values where set) and the
    project's own RLHF_* variables (fault injection for the recovery tests)."""
    env = {name: os.environ.get(name, value) for name, value in WORKER_ENV.items()}
    env.update({name: value for name, value in os.environ.items() if name.startswith("RLHF_")})
    return env


def is_job_server(address: str) -> bool:
    """Whether `address` names a Ray job server (http://HOST:8265), which takes each stage as a Ray job,
    rather than a cluster (HOST:6379, auto), which a stage process joins."""
    return address.startswith(("http://", "https://"))
