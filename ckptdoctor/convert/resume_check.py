"""Convert's last verification step: the staged output must be resume-equivalent to the source
(`ckptdoctor diff SRC OUTPUT --resume-equivalent`, ckptdoctor/equivalence.py), else CK706 and
nothing is written at DST.

It runs on conversions that promise to keep the data as it is: --verify on, no --dtype, no key
renaming (--strip-prefix / --add-prefix / --nest), no --drop-non-tensors / --weights-only, and
a source the diff reads (not a ckptdoctor safe directory) that is not a DeepSpeed ZeRO
checkpoint (consolidating ZeRO partitions drops the optimizer by design; the converter compares
every consolidated weight bit for bit instead). Entries the converter reported leaving out
(`ConvertResult.skipped`, CK709) may be missing from the output; nothing else may differ."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from ..atomic import tmp_path_for
from ..codes import Code
from .common import ConvertError, ConvertResult, Options
from .staging import Staging

NOT_CHECKED_KINDS = ("safe", "deepspeed")


def applies(kind: str, to: str, opts: Options) -> bool:
    return (opts.verify and opts.dtype == "keep" and not opts.strip_prefix
            and not opts.add_prefix and not opts.nest and not opts.drop_non_tensors
            and not opts.weights_only and kind not in NOT_CHECKED_KINDS and to != "safe")


def hook(src: Path, opts: Options, result: ConvertResult):
    """The Staging.commit hook for one conversion."""

    def before_commit(staging: Staging) -> None:
        from ..equivalence import check

        with _staged_view(staging) as out:
            eq = check(src, out, allow=opts.allow, trust=opts.trust, left_out=result.skipped)
        result.equivalence = eq
        if not eq.ok:
            raise ConvertError(Code.CONVERT_VERIFY.finding(
                str(staging.dst), f"verification failed: the output is {eq.summary()}",
                hint="nothing was written at DST; report this with the diff's output",
                reasons=eq.reasons))

    return before_commit


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


__all__ = ["applies", "hook"]
