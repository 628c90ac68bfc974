"""`convert --weights-only`: export the model weights of a checkpoint directory whose training
state is cut short (the save was killed while writing the optimizer: seed 002), and say what
was left behind.

The weights are the directory's `model.safetensors` (or its shards + index), or
`pytorch_model.bin` (or shards + index), or a PEFT adapter; they must be complete (the
safetensors header and sizes, the index's shards, the torch zip are checked by the converter
as always). Everything else in the directory is training state: each file is listed with its
static scan state (complete, or incomplete and why), and DeepSpeed tag directories with the
number of rank files and whether `latest` names them. Nothing is read from those files beyond
the static scan."""

from __future__ import annotations

from pathlib import Path

from ..codes import Code
from ..model import Finding, ScanState, Severity
from .carry import SIDECAR_FILES
from .common import fail
from .sources import is_safetensors_file

_WEIGHTS = (
    ("model.safetensors.index.json", "safetensors"), ("model.safetensors", "safetensors"),
    ("adapter_model.safetensors", "safetensors"),
    ("pytorch_model.bin.index.json", "torch"), ("pytorch_model.bin", "torch"),
    ("adapter_model.bin", "torch"),
)
_NOT_STATE = set(SIDECAR_FILES) | {"README.md", "latest", ".gitattributes", "zero_to_fp32.py",
                                   "zero_to_torch.py"}


def weights_of(src: Path) -> tuple[Path, str, set[Path]]:
    """(the weight file or index to convert, its kind, every file that belongs to it)."""
    src = Path(src)
    if not src.is_dir():
        raise fail(src, "--weights-only takes a checkpoint directory (the weights inside it "
                        "are exported, the training state is left behind)")
    for name, kind in _WEIGHTS:
        p = src / name
        if not p.is_file():
            continue
        if name.endswith(".index.json"):
            import json

            try:
                shards = set(json.loads(p.read_text("utf-8"))["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                raise fail(p, f"{p}: not a weight index (no weight_map)") from None
            return p, kind, {p, *(src / s for s in shards)}
        if kind == "safetensors" and not is_safetensors_file(p):
            raise fail(p, f"{p}: not a safetensors file (the save did not get past the weights)",
                       hint="use the previous checkpoint")
        return p, kind, {p}
    raise fail(src, f"{src}: no model.safetensors, pytorch_model.bin or adapter weights to "
                    "export",
               hint="--weights-only exports the weights the trainer saved next to its training "
                    "state; a DeepSpeed-only checkpoint needs all its *_optim_states.pt files")


def left_behind(src: Path, taken: set[Path]) -> tuple[list[dict], Finding | None]:
    """Every training-state entry of SRC not exported, with its state; one CK732 finding."""
    from ..formats import detect_file

    src = Path(src)
    latest = (src / "latest").read_text("utf-8", "replace").strip() if (
        src / "latest").is_file() else None
    rows: list[dict] = []
    for p in sorted(src.iterdir()):
        if p in taken or p.name in _NOT_STATE or p.name.startswith(".ckptdoctor-tmp"):
            continue
        if p.is_dir():
            files = [f for f in sorted(p.rglob("*")) if f.is_file()]
            bad = [f for f in files if not _complete(detect_file(f, str(f.relative_to(src))))]
            state = "complete" if not bad and files else "incomplete"
            why = []
            if not files:
                why.append("empty")
            if bad:
                why.append(f"{len(bad)} of {len(files)} files incomplete: "
                           + ", ".join(str(b.relative_to(src)) for b in bad[:3]))
            if any(p.glob("*_optim_states.pt")) and latest != p.name:
                why.append("no `latest` (DeepSpeed writes it last)" if latest is None
                           else f"`latest` names {latest!r}")
                state = "incomplete"
            rows.append({"path": p.name + "/", "files": len(files), "state": state,
                         "why": "; ".join(why)})
            continue
        info = detect_file(p, p.name)
        ok = _complete(info)
        errors = [f.message for f in info.findings if f.severity is Severity.ERROR]
        rows.append({"path": p.name, "bytes": info.size, "state": "complete" if ok
                     else "incomplete", "why": "" if ok else (errors[0] if errors
                                                             else info.scan_state.value)})
    if not rows:
        return rows, None
    incomplete = [r for r in rows if r["state"] != "complete"]
    msg = (f"{len(rows)} training-state entr{'y' if len(rows) == 1 else 'ies'} left behind "
           f"({len(incomplete)} incomplete): " + "; ".join(
               f"{r['path']} {r['state']}" + (f" ({r['why']})" if r["why"] else "")
               for r in rows[:6]) + (" ..." if len(rows) > 6 else ""))
    return rows, Code.CONVERT_LEFT_BEHIND.finding(
        str(src), msg, hint="resuming needs a complete checkpoint; these weights restart "
                            "training from the model only", left_behind=rows)


def _complete(info) -> bool:
    return info.scan_state is ScanState.COMPLETE and not any(
        f.severity is Severity.ERROR for f in info.findings)
