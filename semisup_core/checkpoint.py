"""Checkpoints in the store: safetensors weights + JSON state. Nothing is unpickled.

Layout of a training output directory ``out``::

    out/checkpoints/step-00000200/model.safetensors   weights
    out/checkpoints/step-00000200/optim.safetensors   optimizer tensors (momentum buffers)
    out/checkpoints/step-00000200/state.json          step, model spec, optimizer groups
    out/model.safetensors, out/state.json             the final model (same format)

``state.json`` is written last, so a checkpoint without it (a crash mid-write) is
ignored by ``latest``.
"""

from __future__ import annotations

import logging
import re

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from semisup_core import storage
from semisup_core.errors import DataError, StorageError

log = logging.getLogger(__name__)
_STEP_DIR = re.compile(r"step-(\d{8})/state\.json$")
_STEP_FILE = re.compile(r"step-(\d{8})/[^/]+$")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model under DDP and ``objectives.Features`` wrappers (what checkpoints hold)."""
    while hasattr(model, "module"):
        model = model.module
    return model


def save_weights(model: torch.nn.Module, uri: str) -> None:
    """Write the model's state dict as safetensors (contiguous CPU copies)."""
    sd = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    storage.put_bytes(uri, st_save(sd))


def load_weights(uri: str) -> dict[str, torch.Tensor]:
    try:
        return st_load(storage.get_bytes(uri))
    except StorageError:
        raise
    except Exception as err:  # safetensors raises its own error types
        raise DataError(f"{uri}: not a valid safetensors file ({err})") from None


def _optim_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict, list]:
    sd = optimizer.state_dict()
    tensors = {f"{idx}.{name}": val.detach().cpu().contiguous()
               for idx, st in sd["state"].items() for name, val in st.items()
               if isinstance(val, torch.Tensor)}
    return tensors, sd["param_groups"]


def _optim_from_tensors(tensors: dict, groups: list) -> dict:
    state: dict = {}
    for key, val in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = val
    return {"state": state, "param_groups": groups}


def save_checkpoint(out: str, step: int, model, optimizer, state: dict, keep: int = 2,
                    extra: dict[str, torch.Tensor] | None = None) -> str:
    """Write ``out/checkpoints/step-XXXXXXXX/``; prune all but the ``keep`` newest.

    ``extra``: an objective's own tensors (a memory of negatives, a memory bank), written to
    ``extra.safetensors`` before ``state.json``, which makes the checkpoint visible."""
    ckpt = storage.join(out, "checkpoints", f"step-{step:08d}")
    save_weights(model, storage.join(ckpt, "model.safetensors"))
    tensors, groups = _optim_to_tensors(optimizer)
    storage.put_bytes(storage.join(ckpt, "optim.safetensors"), st_save(tensors))
    if extra:
        storage.put_bytes(storage.join(ckpt, "extra.safetensors"), st_save(
            {k: v.detach().cpu().contiguous() for k, v in extra.items()}))
    storage.write_json(storage.join(ckpt, "state.json"),
                       dict(state, step=step, optim_param_groups=groups))
    _prune(out, keep)
    log.info("checkpoint step %d -> %s", step, ckpt)
    return ckpt


def _rank_file(rank: int, world: int) -> str:
    return f"extra-rank-{rank:05d}-of-{world:05d}.safetensors"


def save_rank_extra(out: str, step: int, rank: int, world: int,
                    tensors: dict[str, torch.Tensor]) -> None:
    """One rank's own tensors (its block of a sharded memory bank) into the checkpoint of
    ``step``, before the main rank's ``save_checkpoint`` makes it visible (a barrier between)."""
    ckpt = storage.join(out, "checkpoints", f"step-{step:08d}")
    storage.put_bytes(storage.join(ckpt, _rank_file(rank, world)),
                      st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))


def rank_extras(ckpt: str) -> list:
    """Loaders of the rank files of a checkpoint, those of the world size its state.json
    records (a checkpoint killed while written by more ranks may hold others); one file read
    per call, so that a rank reassembling its rows holds one block at a time."""
    world = storage.read_json(storage.join(ckpt, "state.json")).get("rank_files")
    if not world:
        return []
    uris = [storage.join(ckpt, _rank_file(r, world)) for r in range(world)]
    return [lambda uri=uri: load_weights(uri) for uri in uris if storage.exists(uri)]


def list_checkpoints(out: str) -> list[tuple[int, str]]:
    """Complete checkpoints under ``out`` as ``(step, dir_uri)``, oldest first."""
    found = []
    for uri in storage.list_uris(storage.join(out, "checkpoints")):
        m = _STEP_DIR.search(uri.replace("\\", "/"))
        if m:
            found.append((int(m.group(1)), storage.parent(uri)))
    return sorted(found)


def latest(out: str) -> tuple[int, str] | None:
    found = list_checkpoints(out)
    return found[-1] if found else None


def _prune(out: str, keep: int) -> None:
    """All but the ``keep`` newest complete checkpoints go, and so do the files of incomplete
    ones (a run killed while writing them) older than the newest: nothing reads those again.
    An incomplete one newer than the newest (a killed run got further than its rerun has) is
    left; the rerun writes that step again."""
    complete = list_checkpoints(out)
    if not complete:
        return
    for _, ckpt in complete[:-keep]:
        # state.json first: a half-pruned checkpoint is then invisible, never half-valid
        storage.delete(storage.join(ckpt, "state.json"))
    kept = {c for _, c in complete[-keep:]}
    newest = complete[-1][0]
    for uri in storage.list_uris(storage.join(out, "checkpoints")):
        m = _STEP_FILE.search(uri.replace("\\", "/"))
        if m and int(m.group(1)) < newest and storage.parent(uri) not in kept:
            storage.delete(uri)  # weights, optimiser, extra, the ranks' own files


def restore(ckpt: str, model, optimizer=None) -> dict:
    """Load weights (and optimizer state) from a checkpoint dir; returns its state.json."""
    state = storage.read_json(storage.join(ckpt, "state.json"))
    unwrap(model).load_state_dict(load_weights(storage.join(ckpt, "model.safetensors")))
    if optimizer is not None:
        tensors = st_load(storage.get_bytes(storage.join(ckpt, "optim.safetensors")))
        optimizer.load_state_dict(_optim_from_tensors(tensors, state["optim_param_groups"]))
    return state


def load_extra(ckpt: str) -> dict[str, torch.Tensor]:
    """The ``extra`` tensors of a checkpoint (empty when it has none)."""
    uri = storage.join(ckpt, "extra.safetensors")
    return load_weights(uri) if storage.exists(uri) else {}


def save_final(out: str, model, state: dict) -> None:
    """The final model of a run: ``out/model.safetensors`` then ``out/state.json``."""
    save_weights(model, storage.join(out, "model.safetensors"))
    storage.write_json(storage.join(out, "state.json"), state)


def load_model(model_dir: str, device: str = "cpu"):
    """Rebuild a trained model from ``model_dir`` (a run's out dir or a checkpoint dir).

    Returns ``(model in eval mode, state dict from state.json)``.
    """
    from semisup_core.models import create_model

    if not storage.exists(storage.join(model_dir, "state.json")):
        raise StorageError(f"no model at {model_dir} (state.json missing)")
    state = storage.read_json(storage.join(model_dir, "state.json"))
    spec = state["model"]
    model = create_model(spec["name"], spec["num_classes"], spec["in_chans"], **spec["kwargs"])
    model.load_state_dict(load_weights(storage.join(model_dir, "model.safetensors")))
    return model.to(device, memory_format=torch.channels_last).eval(), state
