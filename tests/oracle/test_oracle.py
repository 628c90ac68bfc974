"""The differential oracle: `validate`'s exit code must be 0 exactly when the framework's
REAL resume of the (damaged) checkpoint is healthy.  See tests/oracle/catalogue.py for the
damages, jobs.py for the real saves and resumes, conftest.py for the session machinery."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.oracle import catalogue, matrix
from tests.oracle.known import KNOWN

CASES = catalogue.cases()
# run order: the damages that say most first, truncation triplets last (docs keep catalogue order)
_PRIORITY = ["none", "delete", "nan", "newer", "kill", "numpy1", "tmpdir", "truncate"]
RUN_ORDER = sorted(
    CASES, key=lambda c: (_PRIORITY.index(c.kind), {"half": 0, "0": 1, "-1": 2}.get(c.offset, 0))
)
FAST_FRAMEWORKS = sorted({c.framework for c in CASES if c.fast})


def _marks(case: catalogue.Case, mode: str | None = None) -> list[pytest.MarkDecorator]:
    marks = [] if case.fast else [pytest.mark.oracle]
    if mode is not None and mode not in case.visible_to:
        marks.append(pytest.mark.skip(reason=f"{case.damage}: value damage, which validate "
                                      f"{mode} cannot see by design (it reads no tensor values)"))
    if mode is not None and (case.framework, case.damage, mode) in KNOWN:
        marks.append(
            pytest.mark.xfail(strict=True, reason=KNOWN[(case.framework, case.damage, mode)])
        )
    return marks


@pytest.mark.parametrize("framework", [
    pytest.param(fw, marks=[] if fw in FAST_FRAMEWORKS else [pytest.mark.oracle])
    for fw in catalogue.LAYOUT])
def test_reference_layout(oracle, framework):
    """The clean reference holds exactly the files the catalogue damages, and resuming it twice
    gives the same finite losses (so "same next loss" is a sound criterion)."""
    rel, files = catalogue.LAYOUT[framework]
    ckpt = oracle.save(framework, "clean") / rel
    found = sorted(p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file()) \
        if ckpt.is_dir() else ([""] if ckpt.is_file() else [])
    assert found == sorted(files)
    ranks = 2 if framework in catalogue.MULTI_RANK else 1
    assert len(oracle.reference(framework)) == 2 * ranks  # STEPS_AFTER losses per rank


@pytest.mark.parametrize("case,mode", [
    pytest.param(c, m, id=f"{c.id}-{m}", marks=_marks(c, m))
    for c in RUN_ORDER for m in matrix.MODES])
def test_verdict_matches_real_resume(oracle, case, mode):
    out = oracle.outcome(case)
    v = out["validate"][mode]
    assert matrix.agrees(out, mode), (
        f"validate ({mode}) exit {v['exit']} {v['errors']} vs real resume: {matrix.real_text(out)} "
        f"{out['real']} (reference losses {out['reference']})")


@pytest.mark.skipif(
    os.environ.get("ORACLE_WRITE_DOCS") == "1", reason="rewriting docs/validate.md this run"
)
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=_marks(c)) for c in RUN_ORDER])
def test_docs_show_the_measured_row(oracle, case):
    """docs/validate.md's generated matrix equals what this run measured, row by row."""
    out = oracle.outcome(case)
    expected = matrix.row(case.id, out)
    assert matrix.doc_rows().get((case.framework, case.damage)) == expected, (
        "docs/validate.md is stale: regenerate with ORACLE_WRITE_DOCS=1 make oracle")


def test_catalogue_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert all(Path(catalogue.NUMPY1 / f).is_file()
               for m in catalogue.NUMPY1_FILES.values() for f in m.values())


def test_healthy_means_resumed_with_the_same_finite_losses():
    from tests.oracle.conftest import healthy

    ref = [1.0, 2.0]
    assert healthy({"resumed": True, "losses": [1.0, 2.0]}, ref, True)
    # resumed from other state
    assert not healthy({"resumed": True, "losses": [1.0, 2.5]}, ref, True)
    assert not healthy({"resumed": True, "losses": [None, None]}, ref, True)  # NaN loss
    assert not healthy({"resumed": False, "error": "ValueError: x"}, ref, True)
    # foreign state swapped in on purpose
    assert healthy({"resumed": True, "losses": [1.0, 2.5]}, ref, False)
    assert not healthy({"resumed": True, "losses": [1.0, None]}, ref, False)


def test_matrix_rows_round_trip_through_the_docs_section():
    out = {"real": {"resumed": True, "losses": [1.0, 2.0]}, "healthy": True,
           "reference": [1.0, 2.0],
           "validate": {"static": {"exit": 0, "errors": []},
                        "load": {"exit": 1, "errors": ["CK601"]},
                        "deep": {"exit": 0, "errors": []}}}
    line = matrix.row("hf_trainer/delete training_args.bin", out)
    assert line == "| hf_trainer | delete training_args.bin | healthy | 0 ✓ | 1 ✗ | 0 ✓ |"
    text = (
        "intro\n" + matrix.render({("hf_trainer", "delete training_args.bin"): line}) + "\nafter\n"
    )
    assert matrix.doc_rows(text) == {("hf_trainer", "delete training_args.bin"): line}
    assert matrix.disagreements({"hf_trainer/delete training_args.bin": out}) == {
        ("hf_trainer", "delete training_args.bin", "load"):
            "disagrees: validate --load exit 1 (CK601) vs real resume healthy"}


def test_value_damage_is_judged_by_deep_only():
    """A NaN weight is visible to --deep alone: the matrix says n/a for the metadata modes
    and never counts them as agreeing or disagreeing."""
    nan = next(c for c in CASES if c.kind == "nan")
    assert nan.visible_to == {"deep"}
    assert all(c.visible_to == set(matrix.MODES) for c in CASES if c.kind != "nan")
    out = {"real": {"resumed": True, "losses": [None, None]}, "healthy": False,
           "reference": [1.0, 2.0],
           "validate": {"static": {"exit": 0, "errors": []}, "load": {"exit": 0, "errors": []},
                        "deep": {"exit": 1, "errors": ["CK501"]}}}
    assert matrix.row(nan.id, out) == (
        f"| {nan.framework} | NaN weight | resumes, NaN loss | "
        "n/a (static reads no values) | n/a (--load reads no values) | 1 ✓ |")
    assert matrix.disagreements({nan.id: out}) == {}
    out["validate"]["deep"] = {"exit": 0, "errors": []}
    assert list(matrix.disagreements({nan.id: out})) == [(nan.framework, "NaN weight", "deep")]
