"""What the reshard modules share: the optimizer-state key, the error constructor, rank file
numbers and the comparable form of a value (reshard.py, reshard_zero3.py, reshard_verify.py)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .codes import Code
from .convert.common import ConvertError

OSD = "optimizer_state_dict"


def err(path: Any, message: str, hint: str = "") -> ConvertError:
    return ConvertError(Code.RESHARD_FAILED.finding(str(path), message, hint))


def rank_of(p: Path) -> int:
    try:
        return int(p.name.split("_pp_rank_")[1].split("_")[0])
    except (IndexError, ValueError):
        return -1


def canon(v: Any, depth: int = 0) -> Any:
    """A comparable form of a value (stand-ins by name, args and state; tensors by bytes)."""
    import torch

    from .standins import StandIn

    if depth > 50:
        return repr(v)
    if isinstance(v, torch.Tensor):
        return ("tensor", str(v.dtype), tuple(v.shape), v.detach().cpu().contiguous()
                .view(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    if isinstance(v, StandIn):
        return (v.standin_name, canon(v.args, depth + 1), canon(v.state, depth + 1))
    if isinstance(v, Mapping):
        return tuple((repr(k), canon(x, depth + 1)) for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return tuple(canon(x, depth + 1) for x in v)
    return repr(v)
