"""What torch's weights-only unpickler would decide about the globals and BUILD targets the
machine meets (allow-list needed, or blocked outright), and the structures only an attack
writes (dynamic globals, the CVE-2026-24747 SETITEM pattern, BUILD on a class): each becomes a
dangerous GlobalRef and a finding."""

from __future__ import annotations

from ..codes import Code
from ..model import GlobalClass, GlobalRef
from .policy import TORCH_BLOCKED_MODULES, classify, torch_name
from .result import PickleScan
from .tables import BUILDABLE_BY_DEFAULT, CVE_WEIGHTS_ONLY
from .torch_allowlist import TORCH_DEFAULT_ALLOWED
from .values import Glob


class Verdict:
    """The weights-only bookkeeping of one scan; the machine (machine._Scanner) sets the state."""

    path: str
    res: PickleScan
    seen_globals: dict[tuple[str, str], GlobalRef]
    need_allow: dict[str, None]  # ordered set, torch spelling
    blockers: dict[str, None]

    # -- weights-only bookkeeping --
    def block(self, reason: str) -> None:
        self.blockers.setdefault(reason, None)

    def add_global(self, file_name: str, match: str, opcode: str) -> GlobalRef:
        key = (file_name, opcode if opcode == "BUILD" else "")
        ref = self.seen_globals.get(key)
        if ref is None:
            ref = GlobalRef(file_name, classify(file_name), opcode, match)
            self.seen_globals[key] = ref
            self.res.globals.append(ref)
        return ref

    def on_global(self, module: str, name: str, opcode: str) -> Glob:
        file_name = f"{module}.{name}"
        tmod, tname = torch_name(module, name)
        match = f"{tmod}.{tname}"
        self.add_global(file_name, match, opcode)
        if opcode != "GLOBAL":
            self.block(f"opcode {opcode} is not supported by the weights-only unpickler")
        if tmod in TORCH_BLOCKED_MODULES:
            self.block(f"module {tmod} is blocked by torch even when allow-listed ({match})")
        elif match not in TORCH_DEFAULT_ALLOWED:
            self.need_allow.setdefault(match, None)
        return Glob(file_name, match)

    def _dynamic(self, label: str, opcode: str, message: str) -> None:
        """A global whose name cannot be known without running the load: dangerous, CK107."""
        if (label, "") in self.seen_globals:
            return
        self.res.findings.append(Code.DYNAMIC_GLOBAL.finding(
            self.path, message,
            hint="the name is decided at load time, not in the file; treat the file as hostile"))
        ref = GlobalRef(label, GlobalClass.DANGEROUS, opcode, label)
        self.seen_globals[(label, "")] = ref
        self.res.globals.append(ref)

    def _cve_pattern(self, what: str) -> None:
        """A structure only a memory-corruption exploit of torch's weights-only unpickler
        writes (CVE-2026-24747, fixed in torch 2.10): dangerous, whatever the globals."""
        label = f"<{CVE_WEIGHTS_ONLY}: {what}>"
        if (label, "") in self.seen_globals:
            return
        self.res.findings.append(Code.CVE_PATTERN.finding(
            self.path, f"{what}: pickle.dumps never writes this; it is the {CVE_WEIGHTS_ONLY} "
                       "pattern (memory corruption in torch.load(weights_only=True) < 2.10)",
            hint="treat the file as hostile; do not load it with any torch version",
            cve=CVE_WEIGHTS_ONLY))
        ref = GlobalRef(label, GlobalClass.DANGEROUS, "SETITEM", label)
        self.seen_globals[(label, "")] = ref
        self.res.globals.append(ref)

    def _hostile_pattern(self, what: str) -> None:
        """A structure no checkpoint writer produces and only an attack needs: dangerous."""
        label = f"<{what}>"
        if (label, "") in self.seen_globals:
            return
        self.res.findings.append(Code.DANGEROUS_GLOBAL.finding(
            self.path, f"{what}: pickle.dumps never writes this for data",
            hint="treat the file as hostile; do not load it, not even with --trust"))
        ref = GlobalRef(label, GlobalClass.DANGEROUS, "BUILD", label)
        self.seen_globals[(label, "")] = ref
        self.res.globals.append(ref)

    def on_build_type(self, type_name: str | None, what: str) -> None:
        if type_name is None:
            self.block(f"BUILD on {what}: torch only builds Tensor, Parameter, OrderedDict "
                       "or allow-listed types")
            return
        if type_name in BUILDABLE_BY_DEFAULT:
            return
        if type_name not in TORCH_DEFAULT_ALLOWED and type_name not in self.need_allow:
            # Only reachable through a call result: the BUILD trap (numpy dtype classes).
            self.add_global(type_name, type_name, "BUILD")
            self.need_allow.setdefault(type_name, None)
