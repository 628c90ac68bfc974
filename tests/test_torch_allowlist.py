"""The static copy of torch's default weights_only allow-list must equal the installed torch's."""

from torch._weights_only_unpickler import _get_allowed_globals

from ckptdoctor.pickles.torch_allowlist import TORCH_DEFAULT_ALLOWED


def test_table_equals_installed_torch():
    installed = set(_get_allowed_globals())
    assert installed == set(TORCH_DEFAULT_ALLOWED), (
        "regenerate with `python -m ckptdoctor.pickles.torch_allowlist`: "
        f"missing {sorted(installed - TORCH_DEFAULT_ALLOWED)[:5]}, "
        f"extra {sorted(set(TORCH_DEFAULT_ALLOWED) - installed)[:5]}")
