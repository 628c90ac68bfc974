"""A small AST mutation tester (`make mutate`): does the suite fail when the code is wrong?

For each target module it lists every mutation site (operators flipped, conditions negated,
constants changed, return values dropped, findings not appended), applies one mutation at a
time to a scratch copy of the repository (the work tree is never touched) and runs the tests
mapped to that module. A mutant is *killed* when those tests fail (or time out), *survived*
when they pass. Survivors are listed: each is a test that is missing.

    python tools/mutate.py                       # every site of every target (slow)
    python tools/mutate.py --sample 20 --seed 0  # 20 random sites per module
    python tools/mutate.py --module deep.py      # one module
Results go to stdout and, as JSON, to mutate-report.json.

mutmut would do the same; it was not used because it runs the whole suite (~20 minutes here)
once per mutant, or a traced full run first; this runner maps each module to its own tests."""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# module (relative to ckptdoctor/) -> (the tests that own its behaviour, pytest -k or "")
TARGETS: dict[str, tuple[list[str], str]] = {
    # the static scan (pickles/scan.py and the modules it is split into)
    **{f"pickles/{m}.py": (["tests/test_scan_verdict.py", "tests/test_downgrade.py",
                            "tests/test_torch_allowlist.py", "tests/test_fuzz.py"], "")
       for m in ("machine", "verdict", "opcodes", "values", "limits")},
    "pickles/policy.py": (["tests/test_scan_verdict.py", "tests/test_standins.py",
                           "tests/test_torch_allowlist.py"], ""),
    "pickles/downgrade.py": (["tests/test_downgrade.py"], ""),
    "pickles/torch_allowlist.py": (["tests/test_torch_allowlist.py",
                                    "tests/test_scan_verdict.py"], ""),
    "loaders.py": (["tests/test_loaders.py", "tests/test_regressions.py"],
                   "not regressions or safe_load or trust"),
    "validate.py": (["tests/test_validate.py", "tests/test_cli.py", "tests/test_regressions.py"],
                    "not latest_orders and not repair and not convert"),
    "deep.py": (["tests/test_regressions.py", "tests/test_cli.py", "tests/test_validate.py"],
                "deep"),
}

_FLIP = {ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.GtE, ast.GtE: ast.Lt,
         ast.Gt: ast.LtE, ast.LtE: ast.Gt, ast.In: ast.NotIn, ast.NotIn: ast.In,
         ast.Is: ast.IsNot, ast.IsNot: ast.Is}
_BIN = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.FloorDiv, ast.FloorDiv: ast.Mult}


@dataclass
class Site:
    index: int
    line: int
    kind: str


class _Mutator(ast.NodeTransformer):
    """Walks the tree counting mutation sites; rewrites the one numbered `target`."""

    def __init__(self, target: int = -1) -> None:
        self.target = target
        self.sites: list[Site] = []
        self._docstring_ids: set[int] = set()

    def _site(self, node: ast.AST, kind: str) -> bool:
        self.sites.append(Site(len(self.sites), getattr(node, "lineno", 0), kind))
        return len(self.sites) - 1 == self.target

    def visit_Module(self, node):  # skip docstrings (mutating them proves nothing)
        for n in ast.walk(node):
            body = getattr(n, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and \
                    isinstance(body[0].value, ast.Constant) and \
                    isinstance(body[0].value.value, str):
                self._docstring_ids.add(id(body[0].value))
        return self.generic_visit(node)

    def visit_Compare(self, node):
        self.generic_visit(node)
        op = type(node.ops[0])
        if op in _FLIP and self._site(node, f"{op.__name__}->{_FLIP[op].__name__}"):
            node.ops[0] = _FLIP[op]()
        return node

    def visit_BoolOp(self, node):
        self.generic_visit(node)
        other = ast.Or if isinstance(node.op, ast.And) else ast.And
        if self._site(node, f"{type(node.op).__name__}->{other.__name__}"):
            node.op = other()
        return node

    def visit_BinOp(self, node):
        self.generic_visit(node)
        op = type(node.op)
        if op in _BIN and self._site(node, f"{op.__name__}->{_BIN[op].__name__}"):
            node.op = _BIN[op]()
        return node

    def visit_If(self, node):
        self.generic_visit(node)
        if self._site(node, "negate if"):
            node.test = ast.UnaryOp(ast.Not(), node.test)
        return node

    def visit_Constant(self, node):
        if id(node) in self._docstring_ids:
            return node
        if isinstance(node.value, bool):
            if self._site(node, f"{node.value}->{not node.value}"):
                return ast.copy_location(ast.Constant(not node.value), node)
        elif isinstance(node.value, int) and node.value > 1 and \
                self._site(node, f"{node.value}->{node.value + 1}"):
            return ast.copy_location(ast.Constant(node.value + 1), node)
        return node

    def visit_Return(self, node):
        self.generic_visit(node)
        returns_value = node.value is not None and not (
            isinstance(node.value, ast.Constant) and node.value.value is None)
        if returns_value and self._site(node, "return None"):
            node.value = ast.Constant(None)
        return node

    def visit_Expr(self, node):
        self.generic_visit(node)
        call = node.value
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and \
                call.func.attr in ("append", "extend") and \
                self._site(node, f"drop .{call.func.attr}()"):
            return ast.copy_location(ast.Pass(), node)
        return node


def sites(source: str) -> list[Site]:
    m = _Mutator()
    m.visit(ast.parse(source))
    return m.sites


def mutant(source: str, index: int) -> str:
    m = _Mutator(index)
    tree = ast.fix_missing_locations(m.visit(ast.parse(source)))
    return ast.unparse(tree)


def _scratch() -> Path:
    tmp = Path(tempfile.mkdtemp(prefix="ckptdoctor-mutate-"))
    for name in ("ckptdoctor", "tests", "docs"):
        shutil.copytree(ROOT / name, tmp / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "CHANGELOG.md"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, tmp / name)
    return tmp


def run(modules: list[str], sample: int | None, seed: int, timeout: int,
        only: dict[str, set[int]] | None = None) -> dict:
    scratch = _scratch()
    env = {**os.environ, "PYTHONPATH": str(scratch), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("CKPTDOCTOR_DEBUG", None)
    rng = random.Random(seed)
    report: dict = {"seed": seed, "sample": sample, "modules": {}}
    try:
        for mod in modules:
            path = scratch / "ckptdoctor" / mod
            original = path.read_text()
            all_sites = sites(original)
            chosen = all_sites if sample is None or sample >= len(all_sites) else \
                sorted(rng.sample(all_sites, sample), key=lambda s: s.index)
            if only is not None:
                chosen = [s for s in all_sites if s.index in only.get(mod, set())]
            killed, survived = 0, []
            for s in chosen:
                path.write_text(mutant(original, s.index))
                t0 = time.monotonic()
                try:
                    proc = subprocess.run(
                        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                         "-o", "addopts=", *TARGETS[mod][0],
                         *(["-k", TARGETS[mod][1]] if TARGETS[mod][1] else [])],
                        cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout)
                    dead = proc.returncode != 0
                except subprocess.TimeoutExpired:
                    dead = True
                finally:
                    path.write_text(original)
                killed += dead
                if not dead:
                    survived.append(asdict(s))
                print(f"{mod}:{s.line} {s.kind:<22} {'killed' if dead else 'SURVIVED'} "
                      f"({time.monotonic() - t0:.0f}s)", flush=True)
            report["modules"][mod] = {"sites": len(all_sites), "run": len(chosen),
                                      "killed": killed, "survived": survived}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    tot = sum(m["run"] for m in report["modules"].values())
    dead = sum(m["killed"] for m in report["modules"].values())
    report["score"] = f"{dead}/{tot}"
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--module", action="append", choices=sorted(TARGETS),
                    help="only this module (repeatable); default all")
    ap.add_argument("--sample", type=int, help="random sites per module (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=int, default=600, help="seconds per mutant's test run")
    ap.add_argument("--list", action="store_true", help="only count the sites")
    ap.add_argument("--out", default="mutate-report.json")
    ap.add_argument("--survivors-of", metavar="REPORT",
                    help="re-run only the survivors listed in an earlier report")
    args = ap.parse_args()
    modules = args.module or sorted(TARGETS)
    if args.list:
        for mod in modules:
            print(mod, len(sites((ROOT / "ckptdoctor" / mod).read_text())))
        return
    only = None
    if args.survivors_of:
        old = json.loads(Path(args.survivors_of).read_text())["modules"]
        only = {m: {s["index"] for s in r["survived"]} for m, r in old.items()}
        modules = [m for m in modules if only.get(m)]
    report = run(modules, args.sample, args.seed, args.timeout, only)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    for mod, m in report["modules"].items():
        print(f"{mod:<28} killed {m['killed']}/{m['run']} (of {m['sites']} sites)")
    print(f"mutation score {report['score']}")


if __name__ == "__main__":
    main()
