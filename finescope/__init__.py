"""finescope: what fine-tuning does to the inside of language models, layer by layer."""

__version__ = "0.1.0"

__all__ = ["Run", "load_run"]


def __getattr__(name: str):
    # Imported on first use: ``import finescope`` stays light for the workflow's own jobs.
    if name in __all__:
        from finescope import run

        return getattr(run, name)
    raise AttributeError(f"module 'finescope' has no attribute {name!r}")
