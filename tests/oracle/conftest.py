"""The differential oracle's session machinery.

Tests marked ``oracle`` are deselected unless ``-m`` mentions ``oracle`` or ``ORACLE_ALL=1``
(``make oracle`` sets it; tests/conftest.py owns the marker); the unmarked ones are the CI
subset.  One zygote process per
framework (tests/oracle/jobs.py) serves every save and resume of the session; each
framework's clean reference (its save and the losses of its clean resume) is made once
per session and copied by every damage.  With ``ORACLE_WRITE_DOCS=1`` the rows the session
ran are written into docs/validate.md at the end; with ``ORACLE_DUMP=FILE`` each measured
outcome is appended to FILE as a JSON line (``python -m tests.oracle.matrix FILE`` turns it
into tests/oracle/known.py entries).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.oracle import catalogue, matrix
from tests.oracle.catalogue import Case

MODES = {"static": [], "load": ["--load"], "deep": ["--deep"]}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(catalogue.ROOT)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "WANDB_DISABLED": "true", "TOKENIZERS_PARALLELISM": "false", "DS_BUILD_OPS": "0"})
    env.pop("COLUMNS", None)
    return env


class Zygote:
    """One ``python -m tests.oracle.jobs serve FRAMEWORK`` process."""

    def __init__(self, framework: str, log: Path) -> None:
        self.log = open(log, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.oracle.jobs", "serve",
                                      framework],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, env=_env(), cwd=catalogue.ROOT)
        ready = self.proc.stdout.readline()
        assert ready.strip() == json.dumps({"ready": framework}), (
            f"zygote for {framework} failed: see {log}"
        )

    def ask(self, **req: Any) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"zygote died: see {self.log.name}"
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.log.close()


def healthy(real: dict[str, Any], reference: list[float] | None, compare_loss: bool) -> bool:
    """The oracle's definition: it resumed, its next losses are finite, and (unless the damage
    deliberately swapped in foreign state) they equal the undamaged reference's."""
    if not real.get("resumed"):
        return False
    losses = real["losses"]
    if not losses or any(x is None for x in losses):
        return False
    if not compare_loss:
        return True
    return len(losses) == len(reference) and all(math.isclose(a, b, rel_tol=1e-6, abs_tol=0.0)
                                                  for a, b in zip(losses, reference, strict=True))


class Oracle:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.zygotes: dict[str, Zygote] = {}
        self.saves: dict[tuple[str, str], Path] = {}
        self.references: dict[str, list[float]] = {}
        self.outcomes: dict[str, dict[str, Any]] = {}

    def zygote(self, fw: str) -> Zygote:
        if fw not in self.zygotes:
            self.zygotes[fw] = Zygote(fw, self.base / f"zygote-{fw}.log")
        return self.zygotes[fw]

    def save(self, fw: str, variant: str) -> Path:
        """The work dir of a real save (cached per session)."""
        key = (fw, variant)
        if key not in self.saves:
            work = self.base / fw / f"save-{len(self.saves)}"
            answer = self.zygote(fw).ask(op="save", work=str(work), variant=variant)
            if variant.startswith("kill-rank"):  # one rank killed: the job's save fails
                assert "ckpt" not in answer, (
                    f"{fw} {variant}: the save survived a killed rank: {answer}"
                )
            elif "kill:" in variant:
                assert answer["status"] == -9, f"{fw} {variant}: the save was not killed: {answer}"
            else:
                assert answer.get("ckpt") == str(work / catalogue.LAYOUT[fw][0]), answer
            self.saves[key] = work
        return self.saves[key]

    def resume(self, fw: str, ckpt: Path, work: Path) -> dict[str, Any]:
        return self.zygote(fw).ask(op="resume", ckpt=str(ckpt), work=str(work))

    def reference(self, fw: str) -> list[float]:
        """The losses of the clean resume (asked twice: they must be reproducible)."""
        if fw not in self.references:
            ckpt = self.save(fw, "clean") / catalogue.LAYOUT[fw][0]
            a = self.resume(fw, ckpt, self.base / fw / "ref-resume-1")
            b = self.resume(fw, ckpt, self.base / fw / "ref-resume-2")
            assert a.get("resumed") and b.get("resumed"), (a, b)
            assert a["losses"] == b["losses"] and all(x is not None for x in a["losses"]), (a, b)
            self.references[fw] = a["losses"]
        return self.references[fw]

    def outcome(self, case: Case) -> dict[str, Any]:
        if case.id in self.outcomes:
            return self.outcomes[case.id]
        fw = case.framework
        reference = self.reference(fw)
        src = self.save(fw, case.save_variant)
        work = self.base / fw / f"case-{len(self.outcomes)}"
        shutil.copytree(src, work / "save", symlinks=True)
        ckpt = work / "save" / catalogue.LAYOUT[fw][0]
        catalogue.apply(case, ckpt)
        verdicts = validate_all(ckpt)
        real = self.resume(fw, ckpt, work / "resume")
        out = {"real": real, "healthy": healthy(real, reference, case.compare_loss),
               "reference": reference, "validate": verdicts}
        self.outcomes[case.id] = out
        # appended as measured: a cut-short run still leaves its rows
        if os.environ.get("ORACLE_DUMP"):
            with open(os.environ["ORACLE_DUMP"], "a", encoding="utf-8") as f:
                f.write(json.dumps({case.id: out}, sort_keys=True) + "\n")
        return out

    def close(self) -> None:
        for z in self.zygotes.values():
            z.close()


def validate_all(ckpt: Path) -> dict[str, dict[str, Any]]:
    """``ckptdoctor validate [--load|--deep] --format json CKPT`` through the real CLI app, in
    process (the exit code is the one ``python -m ckptdoctor`` exits with; a subprocess per call
    would cost a torch import each) -> per mode the exit code and the error codes it reported."""
    from typer.testing import CliRunner

    from ckptdoctor.cli import app

    out = {}
    for mode, flags in MODES.items():
        r = CliRunner().invoke(app, ["validate", *flags, "--format", "json", str(ckpt)])
        try:
            doc = json.loads(r.stdout)
            codes = sorted({f["code"] for f in doc.get("findings", [])
                            if f.get("severity") == "error"})
        except (json.JSONDecodeError, AttributeError, ValueError):
            codes = [repr(r.exception)[:120]] \
                if r.exception and not isinstance(r.exception, SystemExit) else []
        out[mode] = {"exit": r.exit_code, "errors": codes}
    return out


@pytest.fixture(scope="session")
def oracle(tmp_path_factory: pytest.TempPathFactory):
    o = Oracle(tmp_path_factory.mktemp("oracle"))
    yield o
    o.close()
    if os.environ.get("ORACLE_WRITE_DOCS") == "1" and o.outcomes:
        matrix.write_docs({cid: matrix.row(cid, out) for cid, out in o.outcomes.items()})
