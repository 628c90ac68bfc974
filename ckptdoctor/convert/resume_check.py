"""Convert's last verification step: the staged output must be resume-equivalent to the source
(`ckptdoctor diff SRC OUTPUT --resume-equivalent`, ckptdoctor/equivalence.py), else CK706 and
nothing is written at DST.

It runs on conversions that promise to keep the data as it is: --verify on, no --dtype, no key
renaming (--strip-prefix / --add-prefix / --nest), no --drop-non-tensors / --weights-only, and
a source the diff reads (not a ckptdoctor safe directory) that is not a DeepSpeed ZeRO
checkpoint (consolidating ZeRO partitions drops the optimizer by design; the converter compares
every consolidated weight bit for bit instead). Entries the converter reported leaving out
(`ConvertResult.skipped`, CK709) may be missing from the output; nothing else may differ. Of a
checkpoint directory only the weights are compared: the training files beside them are not what
convert converts."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

from ..atomic import tmp_path_for
from ..codes import Code
from .common import ConvertError, ConvertResult, Options
from .staging import Staging

NOT_CHECKED_KINDS = ("safe", "deepspeed")


def applies(kind: str, to: str, opts: Options) -> bool:
    return (opts.verify and opts.dtype == "keep" and not opts.strip_prefix
            and not opts.add_prefix and not opts.nest and not opts.drop_non_tensors
            and not opts.weights_only and kind not in NOT_CHECKED_KINDS and to != "safe")


def hook(src: Path, kind: str, opts: Options, result: ConvertResult):
    """The Staging.commit hook for one conversion."""
    scope = _scope(src, kind)

    def before_commit(staging: Staging) -> None:
        from ..equivalence import check

        with _staged_view(staging) as out:
            eq = check(scope, out, allow=opts.allow, trust=opts.trust, left_out=result.skipped)
        result.equivalence = eq
        require(eq, staging.dst, "verification failed")

    return before_commit


def require(eq: Any, dst: Path, what: str) -> None:
    """A failed resume-equivalence check as CK706 (nothing is committed at DST)."""
    if not eq.ok:
        raise ConvertError(Code.CONVERT_VERIFY.finding(
            str(dst), f"{what}: the output is {eq.summary()}",
            hint="nothing was written at DST; report this with the diff's output",
            reasons=eq.reasons))


def _scope(src: Path, kind: str) -> Path:
    """What the conversion reads: of a checkpoint directory, its weights (the file, or the
    index of the shards), not the training files beside them (optimizer.pt, rng_state.pth,
    trainer_state.json), which convert neither reads nor writes."""
    from .sources import safetensors_files, torch_files

    if not src.is_dir() or kind not in ("torch", "safetensors"):
        return src
    files = torch_files(src) if kind == "torch" else safetensors_files(src)
    if len(files) == 1:
        return files[0]
    suffix = ".bin.index.json" if kind == "torch" else ".safetensors.index.json"
    indexes = sorted(src.glob("*" + suffix))
    return indexes[0] if len(indexes) == 1 else src


@contextlib.contextmanager
def _staged_view(staging: Staging):
    """The staged output as the diff should see it: the staged directory, or (file mode) hard
    links of the staged files under their final names in a temp directory beside DST."""
    if staging.dir is not None:
        yield staging.dir
        return
    view = tmp_path_for(staging.dst)
    view.mkdir()
    try:
        for final, tmp in staging.files.items():
            if tmp.exists():
                try:
                    os.link(tmp, view / final.name)
                except OSError:
                    (view / final.name).symlink_to(tmp)
        yield view / staging.dst.name
    finally:
        shutil.rmtree(view, ignore_errors=True)


__all__ = ["applies", "hook", "require"]
