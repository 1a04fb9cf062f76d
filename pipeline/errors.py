"""The one error type for bad input: configs, data files, model paths, run directories.

Its message is a single line naming the thing (file, line, key) and what was expected; the CLI
and every stage entrypoint print it and exit with status 2.
"""

EXIT_BAD_INPUT = 2


class InputError(Exception):
    """Bad input from the user, reported as one clear line (exit status 2)."""
