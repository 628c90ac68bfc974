"""Suite-wide settings.

Hypothesis runs derandomized with no example database by default, so a clean clone and CI see
exactly the same examples every run (a red CI must mean a regression, never bad luck). Set
CKPTDOCTOR_HYPOTHESIS=random (or the older CKPTDOCTOR_FUZZ_RANDOM=1) for an exploratory run
with fresh random examples, e.g. nightly; a failure found that way is replayed from the seed
hypothesis prints and then added as an @example.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, database=None, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "random", derandomize=False, database=None, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow])

_RANDOM = (os.environ.get("CKPTDOCTOR_HYPOTHESIS") == "random"
           or bool(os.environ.get("CKPTDOCTOR_FUZZ_RANDOM")))
settings.load_profile("random" if _RANDOM else "ci")
