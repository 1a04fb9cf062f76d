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
