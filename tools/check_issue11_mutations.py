"""Replay the hand-made mutations of issue 11 against the tests written for them.

Each mutation must be CAUGHT (its test fails). The file is restored after each run.
    PYTHONPATH=. python tools/check_issue11_mutations.py [NAME ...]"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REG = "tests/test_regressions.py"
DS = "tests/test_deepspeed_real.py"
# name, file, original text, mutated text, pytest -k expression, test file
M = [
    ("inf", "ckptdoctor/deep.py", "return int((~torch.isfinite(t)).sum())",
     "return int(torch.isnan(t).sum())", "test_deep_reports_inf_without_nan", REG),
    ("nan-torch", "ckptdoctor/deep.py", "out.extend(_nonfinite_tree(obj, f.path, progress))",
     "pass", "test_deep_reports_nan_in_torch_files", REG),
    ("ck502", "ckptdoctor/deep.py", "out.extend(_optimizer_shapes(rel, opt, weights))", "pass",
     "test_deep_optimizer_shape_check and not clean", REG),
    ("gap", "ckptdoctor/formats/safetensors_file.py", "elif begin > cursor:", "elif False:",
     "test_safetensors_gap", REG),
    ("ck203", "ckptdoctor/formats/torch_zip.py", "if rec.file_size < want:", "if False:",
     "test_zip_storage_record", REG),
    ("ck504", "ckptdoctor/validate.py",
     'out.append(Code.MANIFEST_MISSING_FILE.finding(rel, "listed in the manifest, missing"))',
     "pass", "test_manifest_names", REG),
    ("hf-step", "ckptdoctor/layouts/hf_trainer.py",
     "step if isinstance(step, int) else name_step(d)", "name_step(d)", "test_hf_trainer_step",
     REG),
    ("latest-path", "ckptdoctor/latest.py", "key=lambda sp: (sp[0], str(sp[1]))",
     "key=lambda sp: str(sp[1])", "test_latest_orders", REG),
    ("safe_load-trust", "ckptdoctor/loaders.py",
     '              trust: bool = False, map_location: Any = "cpu"',
     '              trust: bool = True, map_location: Any = "cpu"', "test_safe_load_does_not",
     REG),
    ("trust-swap", "ckptdoctor/loaders.py", 'return "file changed since it was scanned"',
     'return ""', "test_trusted_load_refuses_a_file_swapped", REG),
    ("validate-trust", "ckptdoctor/validate.py", "    trust: bool = False\n    load: bool",
     "    trust: bool = True\n    load: bool", "test_validate_library_does_not_trust", REG),
    ("validate-load", "ckptdoctor/validate.py", "    load: bool = False",
     "    load: bool = True", "test_library_validate_defaults_are_static", REG),
    ("validate-deep", "ckptdoctor/validate.py", "    deep: bool = False",
     "    deep: bool = True", "test_library_validate_defaults_are_static", REG),
    ("validate-manifest", "ckptdoctor/validate.py", "    write_manifest: bool = False",
     "    write_manifest: bool = True", "test_library_validate_defaults_are_static", REG),
    ("repair-guard", "ckptdoctor/repair/engine.py", "if not self.unchanged_since_read(prep):",
     "if False:", "test_repair_refuses_when", REG),
    ("dry-run", "ckptdoctor/cli.py", "if dry_run or not plan.has_work:",
     "if not plan.has_work:", "test_cli_repair_dry_run", REG),
    ("overwrite", "ckptdoctor/cli.py", "progress=progress, overwrite=overwrite)",
     "progress=progress, overwrite=True)", "test_cli_convert_refuses", REG),
    ("verify", "ckptdoctor/cli.py", "verify=not no_verify,", "verify=no_verify,",
     "test_cli_convert_verifies", REG),
    ("deep-equal", "ckptdoctor/convert/codec.py",
     'stand-ins: same name, args and state), else where they differ."""\n',
     'stand-ins: same name, args and state), else where they differ."""\n    return None\n',
     "deep_equal_agrees", "tests/test_convert.py"),
    ("ds-frozen-zeros", "ckptdoctor/convert/deepspeed_read.py",
     "load = (lambda frag=frag, shape=shape: frag.reshape(shape))",
     "load = (lambda frag=frag, shape=shape: torch.zeros_like(frag).reshape(shape))",
     "test_convert_two_ranks", DS),
    ("ds-rank-order", "ckptdoctor/convert/deepspeed_read.py",
     "[self.mapped[r][gi]]) for r in range(self.world)]",
     "[self.mapped[r][gi]]) for r in reversed(range(self.world))]",
     "test_convert_two_ranks", DS),
]


def main(only: list[str]) -> int:
    missed = 0
    for name, rel, old, new, k, test_file in M:
        if only and name not in only:
            continue
        path = Path(rel)
        text = path.read_text()
        if old not in text:
            print(f"{name:16} PATTERN GONE (the code changed: update this mutation)")
            continue
        path.write_text(text.replace(old, new))
        try:
            r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                test_file, "-k", k], capture_output=True, text=True)
        finally:
            path.write_text(text)
        if os.environ.get("SHOW"):
            print(r.stdout[-600:], end="")
        last = (r.stdout.strip().splitlines() or [""])[-1]
        missed += r.returncode == 0
        print(f"{name:16} {'CAUGHT' if r.returncode else 'SURVIVED'}  {last}", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
