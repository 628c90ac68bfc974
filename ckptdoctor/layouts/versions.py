"""The consumer environment a verdict assumes: the versions of torch and the training
frameworks that will resume the checkpoint.

Read from installed package metadata (`importlib.metadata`, nothing is imported), or given
with `--framework-version NAME=VERSION` to judge for another environment. Layout modules ask
`env.at_least(name, ...)` where a framework's loading changed between releases, so the
version boundaries live next to the framework they describe (see layouts/deepspeed.py,
layouts/lightning.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import metadata

FRAMEWORKS = ("torch", "transformers", "accelerate", "deepspeed", "lightning", "peft")
# distribution names per framework, first installed wins (Lightning ships as both)
DISTRIBUTIONS = {"lightning": ("lightning", "pytorch-lightning")}
# torch.load's default flipped to weights_only=True in torch 2.6.0 (pytorch PR #137602)
TORCH_WEIGHTS_ONLY_DEFAULT = (2, 6)


def parse_version(text: str | None) -> tuple[int, ...] | None:
    """(major, minor, patch) from '0.15.4', '2.13.0+cpu', '4.47.0.dev0'; None if unparsable."""
    m = re.match(r"\s*v?(\d+)(?:\.(\d+))?(?:\.(\d+))?", text or "")
    return tuple(int(g or 0) for g in m.groups()) if m else None


def installed_version(name: str) -> str | None:
    for dist in DISTRIBUTIONS.get(name, (name,)):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        except Exception:  # a broken dist-info must not break the gate
            continue
    return None


def parse_override(text: str) -> tuple[str, str]:
    """'deepspeed=0.15.4' -> ('deepspeed', '0.15.4'); ValueError with a one-line reason."""
    name, sep, version = text.partition("=")
    name = name.strip().lower()
    if name == "pytorch-lightning":
        name = "lightning"
    if not sep or name not in FRAMEWORKS or parse_version(version) is None:
        raise ValueError(f"--framework-version takes NAME=VERSION with NAME one of "
                         f"{', '.join(FRAMEWORKS)} (e.g. deepspeed=0.15.4), not {text!r}")
    return name, version.strip()


@dataclass
class Env:
    """Versions the verdict assumes. `given` names those set with --framework-version."""

    versions: dict[str, str | None] = field(default_factory=dict)
    given: frozenset[str] = frozenset()

    @classmethod
    def detect(cls, overrides: dict[str, str] | None = None) -> Env:
        overrides = overrides or {}
        versions = {n: overrides.get(n) or installed_version(n) for n in FRAMEWORKS}
        return cls(versions, frozenset(overrides))

    def version(self, name: str) -> str | None:
        return self.versions.get(name)

    def at_least(self, name: str, minimum: tuple[int, ...], unknown: bool = True) -> bool:
        """Is `name` >= minimum? `unknown` answers when the framework is not installed and was
        not given (then the verdict assumes its current behaviour)."""
        v = parse_version(self.versions.get(name))
        return unknown if v is None else v >= minimum

    def torch_default_weights_only(self) -> bool:
        """What torch.load does without a weights_only argument in this environment."""
        return self.at_least("torch", TORCH_WEIGHTS_ONLY_DEFAULT)

    def describe(self, name: str) -> str:
        v = self.versions.get(name)
        return f"{name} {v}" if v else f"{name} (not installed: current release assumed)"

    def to_json(self) -> dict[str, str | None]:
        return dict(self.versions)


_DEFAULT: Env | None = None


def default_env() -> Env:
    """The installed environment, read once per process."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Env.detect()
    return _DEFAULT
