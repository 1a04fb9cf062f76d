"""The training stages, each runnable as `python -m stages.<name> --config FILE --run-dir DIR`, and the
small modules they share."""
