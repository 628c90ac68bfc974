"""The training state of a side (step, epoch, lr), optimizer moments per parameter, and
equality of plain (non-tensor) values."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .report import Section, TensorDiff, TrainingState, num
from .sides import Side

_MOMENT = re.compile(r"(?:^|\.)state\.(.+)\.(exp_avg|exp_avg_sq|max_exp_avg_sq|momentum_buffer"
                     r"|step)$")
_STEP_KEYS = ("global_step", "global_steps", "iteration", "step")


def training_state(side: Side) -> TrainingState:
    st = TrainingState(has={s.value: bool(side.keys(s)) for s in Section})
    flat = {**side.values.get(Section.OTHER, {}), **side.values.get(Section.SCHEDULER, {})}
    for want in _STEP_KEYS:
        hit = next((v for k, v in flat.items() if k.rpartition(".")[2] == want
                    and isinstance(v, int) and not isinstance(v, bool)), None)
        if hit is not None:
            st.step = hit
            break
    st.epoch = next((v for k, v in flat.items() if k.rpartition(".")[2] == "epoch"
                     and isinstance(v, (int, float)) and not isinstance(v, bool)), None)
    optim = side.values.get(Section.OPTIMIZER, {})
    for k, v in optim.items():
        if k.rpartition(".")[2] == "param_groups" and isinstance(v, (list, tuple)):
            st.lr = [g.get("lr") for g in v if isinstance(g, Mapping)]
            break
    if st.lr is None:  # DCP flattens param groups: optim.param_groups.0.lr
        lrs = [v for k, v in optim.items() if re.search(r"param_groups\.\d+\.lr$", k)]
        st.lr = lrs or None
    if st.lr is None:
        st.lr = next((list(v) for k, v in side.values.get(Section.SCHEDULER, {}).items()
                      if k.endswith("_last_lr") and isinstance(v, (list, tuple))), None)
    return st


def optimizer_moments(tensors: list[TensorDiff], sa: Side,
                      sb: Side) -> dict[str, dict[str, Any]]:
    """Per optimizer parameter: exp_avg / exp_avg_sq norms on both sides and the step counts."""
    out: dict[str, dict[str, Any]] = {}
    for t in tensors:
        if t.section is not Section.OPTIMIZER:
            continue
        m = _MOMENT.search(t.key)
        if not m:
            continue
        param, what = m.group(1), m.group(2)
        row = out.setdefault(param, {})
        if what == "step":
            row["step"] = [t.scalar_a, t.scalar_b]
        else:
            row[what] = {"norm": [num(t.norm_a), num(t.norm_b)], "equal": t.equal,
                         "norm_ratio": num(t.norm_ratio)}
    for section_values, idx in ((sa.values.get(Section.OPTIMIZER, {}), 0),
                                (sb.values.get(Section.OPTIMIZER, {}), 1)):
        for k, v in section_values.items():  # plain-int steps (older torch, other optimizers)
            m = _MOMENT.search(k)
            if m and m.group(2) == "step" and isinstance(v, (int, float)):
                out.setdefault(m.group(1), {}).setdefault("step", [None, None])[idx] = v
    return out


def values_equal(a: Any, b: Any) -> bool:
    """Equal, or equal as plain data: a numpy array and the list of its values, a tuple and a
    list, a numpy scalar and its Python value restore the same state (repair rewrites numpy
    RNG states that way so plain weights_only loads them; np.random.set_state takes both)."""
    from ..convert.codec import deep_equal

    try:
        if deep_equal(a, b) is None:
            return True
    except Exception:  # exotic objects: compare their reprs
        if repr(a) == repr(b):
            return True
    try:
        return _plain_data(a) == _plain_data(b)
    except _NotPlain:
        return False


class _NotPlain(Exception):
    pass


def _plain_data(v: Any, depth: int = 0) -> Any:
    import numpy as np

    if depth > 50:
        raise _NotPlain
    if isinstance(v, np.ndarray):
        if v.dtype.kind not in "biuf":
            raise _NotPlain
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (list, tuple)):
        items = [_plain_data(x, depth + 1) for x in v]
        return items
    if isinstance(v, Mapping):
        return {k: _plain_data(x, depth + 1) for k, x in v.items()}
    if isinstance(v, (str, bytes, int, float, bool, type(None))):
        return v
    raise _NotPlain


def short_repr(v: Any, n: int = 80) -> str:
    text = repr(v)
    return text if len(text) <= n else text[:n - 3] + "..."
