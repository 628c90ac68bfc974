"""Run one test in a child interpreter where a installed package is missing.

Tests of the "package not installed" paths (stand-ins for DeepSpeed / Megatron classes) used
to skip themselves wherever the package is installed, i.e. in this project's own dev
environment. `rerun_without` runs the test again in a child where `sys.modules[name] = None`,
which is how Python itself marks a module as unimportable: `import name` raises
ModuleNotFoundError and importlib.util.find_spec(name) returns None."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def hidden(name: str) -> bool:
    """True when `name` cannot be imported here (not installed, or hidden by rerun_without)."""
    return importlib.util.find_spec(name) is None


def rerun_without(name: str, nodeid: str) -> None:
    code = (f"import sys\nsys.modules[{name!r}] = None\nimport pytest\n"
            f"sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', {nodeid!r}]))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    tail = proc.stdout[-3000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    assert "1 passed" in proc.stdout and "skipped" not in proc.stdout, tail
