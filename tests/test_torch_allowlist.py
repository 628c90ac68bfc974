"""The static copy of torch's default weights_only allow-list must equal the installed torch's."""

from torch._weights_only_unpickler import _get_allowed_globals

from ckptdoctor.pickles.torch_allowlist import TORCH_DEFAULT_ALLOWED


def test_table_equals_installed_torch():
    installed = set(_get_allowed_globals())
    assert installed == set(TORCH_DEFAULT_ALLOWED), (
        "regenerate with `python -m ckptdoctor.pickles.torch_allowlist`: "
        f"missing {sorted(installed - TORCH_DEFAULT_ALLOWED)[:5]}, "
        f"extra {sorted(set(TORCH_DEFAULT_ALLOWED) - installed)[:5]}")




def test_regenerating_the_table_reproduces_the_file(tmp_path):
    """`python -m ckptdoctor.pickles.torch_allowlist` (the developer tool that rewrites the
    table) run on a copy gives back the committed file byte for byte with this torch."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import ckptdoctor.pickles.torch_allowlist as mod

    copy = tmp_path / "torch_allowlist.py"
    shutil.copy(mod.__file__, copy)
    subprocess.run([sys.executable, str(copy)], check=True, cwd=tmp_path)
    assert copy.read_text() == Path(mod.__file__).read_text()
