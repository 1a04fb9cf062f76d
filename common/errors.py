"""The one error type for bad input: configs, data files, model paths, run directories.

Its message is a single line naming the thing (file, line, key) and what was expected; the CLI
and every stage entrypoint print it and exit with status 2.
"""

EXIT_BAD_INPUT = 2


class InputError(Exception):
    """Bad input from the user, reported as one clear line (exit status 2)."""


EXIT_AWAITING_LABELS = 3


class AwaitingLabels(Exception):
    """A stage that waits for people has fewer of their labels than it needs (label: rankings; demonstrate:
    demonstrations): the run pauses (state awaiting_labels, exit status 3) until annotators have done
    enough and `rlhf run --resume` goes on."""

    def __init__(self, progress: str, metrics: dict[str, float]):
        super().__init__(progress)
        self.metrics = metrics
