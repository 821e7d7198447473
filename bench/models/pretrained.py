"""Loading pre-trained weights into a model whose classification head differs (a new label space), key by key."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from bench.models.base import ASCModel

# every registry network names its classifier ``head``; PaSST has a second one on its distillation token
HEAD_PREFIXES = ("net.head.", "net.head_dist.")


def load_pretrained(model: ASCModel, state: Mapping[str, torch.Tensor],
                    head: Sequence[str] = HEAD_PREFIXES) -> list[str]:
    """Load ``state`` into ``model`` except the keys under ``head`` (left as initialised, e.g. a 10-class head
    after a pre-training head over other classes). Every other key must be present with the same shape; a
    ValueError names the first that is not. Returns the keys left out, in the model's order."""
    own = model.state_dict()
    dropped = [k for k in own if k.startswith(tuple(head))]
    for key, value in own.items():
        if key in dropped:
            continue
        if key not in state:
            raise ValueError(f"pre-trained weights are missing {key}")
        if state[key].shape != value.shape:
            raise ValueError(f"{key}: shape {tuple(state[key].shape)} in the pre-trained weights, "
                             f"{tuple(value.shape)} in the model")
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise ValueError(f"pre-trained weights hold keys the model does not have, e.g. {unexpected[0]}")
    model.load_state_dict({**{k: state[k] for k in own if k not in dropped}, **{k: own[k] for k in dropped}})
    return dropped


def local_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a local checkpoint file: a bare state dict, or a stage artifact holding it under
    ``weights`` (a ``pretrain`` stage's). Never downloaded: a missing file is a FileNotFoundError saying so."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint {file} not found (the harness never downloads weights; put the file "
                                "there)")
    state = torch.load(file, map_location="cpu", weights_only=True)
    return state.get("weights", state) if isinstance(state, dict) else state


def checked_weights(model: ASCModel, path: str | Path) -> dict[str, torch.Tensor]:
    """The pre-trained weights in a local checkpoint, checked key by key against ``model``'s architecture (its
    head may differ) and loaded into it; a ValueError names the file and the first mismatch."""
    state = local_state(path)
    try:
        load_pretrained(model, state)
    except ValueError as exc:
        raise ValueError(f"{Path(path).expanduser()}: {exc} (expected the state dict of {model.arch_name})") from None
    return state
