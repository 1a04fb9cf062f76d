"""The training stages, each runnable as `python -m stages.<name> --config FILE --run-dir DIR`, and the
small modules they share."""

import importlib.abc
import importlib.util
import sys

_TRANSFORMERS_IMPORT_UTILS = "transformers.utils.import_utils"


class _SkipSklearnInTransformers(importlib.abc.MetaPathFinder):
    """transformers imports scikit-learn, and with it scipy and pandas (about 1 s and 100 MiB a process), as
    soon as a model class loads, whenever scikit-learn is installed: for the confidence threshold of assisted
    generation, which no stage uses. Every process that runs a stage (a driver, a Ray worker unpickling its
    function) imports this package before any stage module; this finder then has transformers' availability
    check say no, once transformers loads it. It imports nothing itself, so the orchestration stays free of
    torch; a library that needs scikit-learn imports it directly and is unaffected."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _TRANSFORMERS_IMPORT_UTILS:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or not hasattr(spec.loader, "exec_module"):
            return spec  # not a transformers this finder knows: leave it as it is
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            module.is_sklearn_available = lambda: False

        spec.loader.exec_module = exec_module
        return spec


if importlib.util.find_spec("sklearn") is not None and _TRANSFORMERS_IMPORT_UTILS not in sys.modules:
    sys.meta_path.insert(0, _SkipSklearnInTransformers())
