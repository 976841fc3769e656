"""The device a job runs on, from a config value such as ``auto``, ``cpu`` or ``cuda:1``; errors
name the config key. torch is imported only when a device is resolved."""

from __future__ import annotations

from finescope.errors import FinescopeError

TYPES = ("cpu", "cuda", "mps")


def resolve_device(
    name: str = "auto", key: str = "finetune.device", types: tuple[str, ...] = TYPES
):
    """The device of a run.

    Parameters
    ----------
    name
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or
        ``"mps"``.
    key
        The config key named in errors (``extract.device`` for extraction).
    types
        The device types the caller can run on.

    Returns
    -------
    torch.device
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    allowed = ", ".join(f'"{t}"' for t in ("auto", *types))
    if "cuda" in types:
        allowed += ', "cuda:N"'
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise FinescopeError(f"config key {key}: {name!r} is not one of {allowed}") from exc
    if device.type not in types:
        raise FinescopeError(f"config key {key}: {name!r} is not one of {allowed}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise FinescopeError(
                f"config key {key}: {name!r} asked for, but no CUDA GPU is visible. "
                'Use "auto" or "cpu".'
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise FinescopeError(
                f"config key {key}: {name!r} asked for, but only {torch.cuda.device_count()} "
                "GPU(s) are visible (a job holding a GPU slot sees its GPU as cuda:0). "
                'Use "auto" or "cuda".'
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise FinescopeError(
            f"config key {key}: 'mps' asked for, but this machine has no Apple GPU (MPS). "
            'Use "auto" or "cpu".'
        )
    return device
