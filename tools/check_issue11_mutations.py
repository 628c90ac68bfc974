"""Re-run the hand-made mutations of issue 11 against tests/test_regressions.py: each must be
CAUGHT. Usage: PYTHONPATH=. python tools/check_issue11_mutations.py [NAME ...]. Restores every file."""
import subprocess, sys, os
M = [
 ("inf", "ckptdoctor/deep.py", "return int((~torch.isfinite(t)).sum())", "return int(torch.isnan(t).sum())", "test_deep_reports_inf_without_nan"),
 ("nan-torch", "ckptdoctor/deep.py", "out.extend(_nonfinite_tree(obj, f.path, progress))", "pass", "test_deep_reports_nan_in_torch_files"),
 ("ck502", "ckptdoctor/deep.py", "out.extend(_optimizer_shapes(rel, opt, weights))", "pass", "test_deep_optimizer_shape_check and not clean"),
 ("gap", "ckptdoctor/formats/safetensors_file.py", "elif begin > cursor:", "elif False:", "test_safetensors_gap"),
 ("ck203", "ckptdoctor/formats/torch_zip.py", "if rec.file_size < want:", "if False:", "test_zip_storage_record"),
 ("ck504", "ckptdoctor/validate.py", "out.append(Code.MANIFEST_MISSING_FILE.finding(rel, \"listed in the manifest, missing\"))", "pass", "test_manifest_names"),
 ("hf-step", "ckptdoctor/layouts/hf_trainer.py", "step if isinstance(step, int) else name_step(d)", "name_step(d)", "test_hf_trainer_step"),
 ("latest-path", "ckptdoctor/latest.py", "key=lambda sp: (sp[0], str(sp[1]))", "key=lambda sp: str(sp[1])", "test_latest_orders"),
 ("safe_load-trust", "ckptdoctor/loaders.py", "              trust: bool = False, map_location: Any = \"cpu\", mmap: bool = True) -> Any:", "              trust: bool = True, map_location: Any = \"cpu\", mmap: bool = True) -> Any:", "test_safe_load_does_not"),
 ("repair-guard", "ckptdoctor/repair/engine.py", "if not self.unchanged_since_read(prep):", "if False:", "test_repair_refuses_when"),
 ("dry-run", "ckptdoctor/cli.py", "if dry_run or not plan.has_work:", "if not plan.has_work:", "test_cli_repair_dry_run"),
 ("overwrite", "ckptdoctor/cli.py", "progress=progress, overwrite=overwrite)", "progress=progress, overwrite=True)", "test_cli_convert_refuses"),
 ("verify", "ckptdoctor/cli.py", "verify=not no_verify,", "verify=no_verify,", "test_cli_convert_verifies"),
 ("ds-frozen-zeros", "ckptdoctor/convert/deepspeed_read.py", "load = (lambda frag=frag, shape=shape: frag.reshape(shape))", "load = (lambda frag=frag, shape=shape: torch.zeros_like(frag).reshape(shape))", "test_convert_two_ranks", "tests/test_deepspeed_real.py"),
 ("ds-rank-order", "ckptdoctor/convert/deepspeed_read.py", "ranks = [_Flat([self.flat[r][gi]], [self.mapped[r][gi]]) for r in range(self.world)]", "ranks = [_Flat([self.flat[r][gi]], [self.mapped[r][gi]]) for r in reversed(range(self.world))]", "test_convert_two_ranks", "tests/test_deepspeed_real.py"),
]
only = sys.argv[1:]
for name, f, old, new, k, *rest in M:
    test_file = rest[0] if rest else "tests/test_regressions.py"
    if only and name not in only: continue
    s = open(f).read()
    assert s.count(old) >= 1, (name, "pattern missing")
    open(f, "w").write(s.replace(old, new))
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file, "-k", k], capture_output=True, text=True)
        last = r.stdout.strip().splitlines()[-1]
        print(r.stdout[-600:] if os.environ.get("SHOW") else "", end="")
        print(f"{name:16} {'CAUGHT' if r.returncode else 'SURVIVED'}  {last}", flush=True)
    finally:
        open(f, "w").write(s)
