"""colm_core: the CoLM model, checkpoint I/O, surgery, training, evaluation and generation.

The public API (`load`, `save`, `ColmConfig`, ...) is imported lazily so that importing a light
submodule such as colm_core.errors does not pull in torch.
"""

__version__ = "0.1.0"

_API = {
    "load": "colm_core.api",
    "save": "colm_core.api",
    "ColmConfig": "colm_core.config",
    "CoLM": "colm_core.model",
    "generate": "colm_core.generation",
    "GenerateOptions": "colm_core.options",
    "evaluate_tasks": "colm_core.lm_eval_adapter",  # needs lm-eval: pip install 'colm[eval]'
}


def __getattr__(name):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'colm_core' has no attribute {name!r}")


__all__ = [*_API, "__version__"]
