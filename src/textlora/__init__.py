"""textlora: LoRA fine-tuning of transformer encoders for text classification under a parameter budget.

The public API (see :mod:`textlora.api`) is loaded lazily, so ``import textlora`` stays light:
``load_config``, ``train``, ``load_run``, ``evaluate``, ``predict``, ``classify``, ``report``.
"""

__version__ = "0.1.0"

__all__ = ["load_config", "train", "load_run", "evaluate", "predict", "classify", "report", "average"]


def __getattr__(name: str):
    if name in __all__:
        from textlora import api

        return getattr(api, name)
    raise AttributeError(f"module 'textlora' has no attribute {name!r}")
