"""Where `validate` and the real resume disagree today, per (framework, damage, mode).

Each entry becomes ``xfail(strict=True)``: once validate is fixed the test XPASSes, which
fails the run, and the entry must be deleted.  The reasons were measured by the oracle
(validate's error codes vs. what the framework's own resume did)."""

KNOWN: dict[tuple[str, str, str], str] = {}
