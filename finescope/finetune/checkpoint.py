"""Checkpoints of a fine-tuning job: what they hold, their fingerprint, writing and restoring."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from finescope.errors import FinescopeError
from finescope.finetune.runtime import CHECKPOINT_FORMAT, logger
from finescope.io import atomic_path
from finescope.settings.finetune import FinetuneSettings, _fingerprint_settings


@dataclass
class TrainState:
    """Where training stands; everything here goes into a checkpoint."""

    epoch: int = 0  # epoch in progress (0-based)
    step_in_epoch: int = 0  # optimiser steps done in that epoch
    global_step: int = 0
    curve: list[dict] = field(default_factory=list)
    best_score: float | None = None
    best_epoch: int | None = None  # 1-based
    best_dev: dict | None = None
    best_params: dict[str, torch.Tensor] | None = None
    best_version: int = 0  # bumped whenever best_params change
    train_seconds: float = 0.0
    examples_seen: int = 0
    resumed_from: int | None = None
    rng: dict | None = None


def _rng_state() -> dict:
    _, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "key": torch.from_numpy(key.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": version, "internal": list(internal), "gauss": gauss_next},
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))


def _trainable(model) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {
        name: p.detach().to("cpu", copy=True).contiguous() for name, p in _trainable(model).items()
    }


def _restore(model, tensors: dict[str, torch.Tensor]) -> None:
    params = _trainable(model)
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def _items_digest(items: Sequence[dict]) -> str:
    text = "\n".join(json.dumps(item, sort_keys=True, ensure_ascii=False) for item in items)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def job_fingerprint(
    task: str,
    model_dir: str | Path,
    settings: FinetuneSettings,
    subset_ids: Sequence[str],
    labels: Sequence[str],
    train: Sequence[dict],
    dev: Sequence[dict],
) -> dict:
    """What a checkpoint must match to be resumed.

    Returns
    -------
    dict
        JSON-able: model (config.json hash, weight file sizes), task, labels, the settings that
        change results (all but checkpoint_every, device, threads), hash of the subset ids and
        of the training and dev items.
    """
    model_dir = Path(model_dir)
    weights = sorted(
        (p.name, p.stat().st_size) for p in model_dir.glob("*.safetensors") if p.is_file()
    )
    return {
        "format": CHECKPOINT_FORMAT,
        "task": task,
        "model": {
            "config_sha256": _file_digest(model_dir / "config.json"),
            "weights": [list(w) for w in weights],
        },
        "labels": list(labels),
        "settings": _fingerprint_settings(settings),
        "subset_sha256": hashlib.sha256("\n".join(subset_ids).encode()).hexdigest(),
        "data_sha256": {"train": _items_digest(train), "dev": _items_digest(dev)},
    }


def _discard_unreadable(step_dir: Path, exc: Exception) -> None:
    logger.warning(
        "checkpoint %s is unreadable (%s: %s); ignoring it", step_dir, type(exc).__name__, exc
    )
    shutil.rmtree(step_dir, ignore_errors=True)


class CheckpointStore:
    """Checkpoints of one job in ``folder/step-<global step>/``, each written atomically (temp
    folder + rename); only the newest is kept.

    Files: ``model.safetensors`` (trainable weights), ``best.safetensors`` (best dev weights, if
    any), ``state.pt`` (optimiser, schedule, scaler, RNG states, position, curve, fingerprint;
    readable with ``torch.load(weights_only=True)``), ``fingerprint.json`` (for people).
    """

    def __init__(self, folder: str | Path, fingerprint: dict):
        self.folder = Path(folder)
        self.fingerprint = json.loads(json.dumps(fingerprint))
        self.saved = 0

    def _steps(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(self.folder.glob("step-*"), reverse=True)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def _differences(self, other: dict) -> list[str]:
        diffs = []
        for key in sorted(set(self.fingerprint) | set(other)):
            mine, theirs = self.fingerprint.get(key), other.get(key)
            if key == "settings" and isinstance(theirs, dict):
                diffs += [
                    f"settings.{k}"
                    for k in sorted(set(mine) | set(theirs))
                    if mine.get(k) != theirs.get(k)
                ]
            elif mine != theirs:
                diffs.append(key)
        return diffs

    def load(self, model, optimizer, scheduler, scaler) -> TrainState | None:
        """Restore the newest usable checkpoint into the given objects; None when there is none
        (a checkpoint of another job, or an unreadable one, is reported and removed)."""
        # Leftovers of a write that was killed before its rename.
        for partial in self.folder.glob(".step-*.tmp") if self.folder.is_dir() else []:
            shutil.rmtree(partial, ignore_errors=True)
        for step_dir in self._steps():
            try:
                payload = torch.load(step_dir / "state.pt", map_location="cpu", weights_only=True)
                if payload.get("format") != CHECKPOINT_FORMAT:
                    raise ValueError(f"format {payload.get('format')!r}")
                stored = json.loads(payload["fingerprint"])
            except Exception as exc:  # any unreadable file means: do not use it
                _discard_unreadable(step_dir, exc)
                continue
            if stored != self.fingerprint:
                logger.warning(
                    "checkpoint %s belongs to another job (differs in: %s); it is not used - "
                    "removing it and starting fresh",
                    step_dir,
                    ", ".join(self._differences(stored)),
                )
                self.clear()
                return None
            try:
                weights = load_file(step_dir / "model.safetensors")
                best_path = step_dir / "best.safetensors"
                best = load_file(best_path) if best_path.is_file() else None
                expected = {n: tuple(p.shape) for n, p in _trainable(model).items()}
                for tensors in (weights, best or weights):
                    got = {n: tuple(t.shape) for n, t in tensors.items()}
                    if got != expected:
                        raise ValueError("weights do not match the model's trainable parameters")
            except Exception as exc:
                _discard_unreadable(step_dir, exc)
                continue
            try:
                _restore(model, weights)
                optimizer.load_state_dict(payload["optimizer"])
                scheduler.load_state_dict(payload["scheduler"])
                if scaler is not None and payload["scaler"]:
                    scaler.load_state_dict(payload["scaler"])
            except Exception as exc:
                raise FinescopeError(
                    f"checkpoint {step_dir} matches this job but could not be restored ({exc}). "
                    f"Delete {self.folder} to start this job afresh."
                ) from exc
            state = TrainState(
                epoch=payload["epoch"],
                step_in_epoch=payload["step_in_epoch"],
                global_step=payload["global_step"],
                curve=list(payload["curve"]),
                best_score=payload["best"]["score"],
                best_epoch=payload["best"]["epoch"],
                best_dev=payload["best"]["dev"],
                best_params=best,
                best_version=1 if best is not None else 0,
                train_seconds=payload["train_seconds"],
                examples_seen=payload["examples_seen"],
                resumed_from=payload["global_step"],
                rng=payload["rng"],
            )
            logger.info(
                "resuming from checkpoint %s (epoch %d, step %d)",
                step_dir,
                state.epoch + 1,
                state.global_step,
            )
            return state
        if self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()
        return None

    def save(self, state: TrainState, model, optimizer, scheduler, scaler) -> Path:
        """Write a checkpoint of the current state, then drop older ones."""
        previous = self._steps()
        step_dir = self.folder / f"step-{state.global_step:09d}"
        payload = {
            "format": CHECKPOINT_FORMAT,
            "fingerprint": json.dumps(self.fingerprint, sort_keys=True),
            "epoch": state.epoch,
            "step_in_epoch": state.step_in_epoch,
            "global_step": state.global_step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": _rng_state(),
            "curve": state.curve,
            "best": {"score": state.best_score, "epoch": state.best_epoch, "dev": state.best_dev},
            "train_seconds": state.train_seconds,
            "examples_seen": state.examples_seen,
        }
        with atomic_path(step_dir, is_dir=True) as tmp:
            save_file(_snapshot(model), str(tmp / "model.safetensors"))
            if state.best_params is not None:
                self._write_best(state, previous, tmp / "best.safetensors")
            torch.save(payload, tmp / "state.pt")
            (tmp / "fingerprint.json").write_text(
                json.dumps(self.fingerprint, indent=2, sort_keys=True) + "\n"
            )
        self._best_written = state.best_version
        for old in previous:
            if old != step_dir:
                shutil.rmtree(old, ignore_errors=True)
        self.saved += 1
        return step_dir

    def _write_best(self, state: TrainState, previous: list[Path], target: Path) -> None:
        # The best weights change only at epoch ends: link the previous file when unchanged.
        source = previous[0] / "best.safetensors" if previous else None
        if (
            getattr(self, "_best_written", None) == state.best_version
            and source
            and source.is_file()
        ):
            try:
                os.link(source, target)
                return
            except OSError:
                pass
        save_file(state.best_params, str(target))
