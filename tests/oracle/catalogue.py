"""The oracle's damage catalogue: which checkpoint each framework writes, and every damage
applied to it.  Nothing here says what the outcome should be: the real resume decides.

A case is ``(framework, damage)``.  Damages:

  ``none``                an undamaged copy of the reference (the control row);
  ``delete F``            remove file F of the checkpoint;
  ``truncate F @0|@half|@-1``  cut file F to 0 bytes, half its size, or one byte short;
  ``NaN weight``          the framework itself saves a run whose first trainable weight went NaN
                          (value damage: judged for ``--deep`` only, see ``Case.visible_to``);
  ``stray tmp dir``       a leftover staging dir inside the checkpoint (``tmp-<name>/`` holding
                          a half-written copy of its largest file), which no resume reads;
  ``numpy-1 F``           F replaced by the same kind of file written under numpy 1.26
                          (tests/fixtures/numpy1/); the state in it is foreign, so only
                          "resumes with finite losses" is asked of it, not the same losses;
  ``SIGKILL at P``        the framework's real save, killed (SIGKILL) when it starts writing
                          the file matching P (``P@n``: the n-th such file);
  ``cut-short newer tag`` (DeepSpeed) a complete save, then a second save killed before it
                          finished: the newer tag is partial while ``latest`` names the old one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NUMPY1 = ROOT / "tests" / "fixtures" / "numpy1"

# framework -> (checkpoint path relative to the save's work dir, files of the checkpoint
# relative to that path).  The file lists describe what the library writes (checked against
# the real reference by test_reference_layout); they hold no verdicts.
LAYOUT: dict[str, tuple[str, tuple[str, ...]]] = {
    "hf_trainer": ("checkpoint-2", (
        "config.json", "generation_config.json", "model.safetensors", "optimizer.pt",
        "rng_state.pth",
        "scheduler.pt", "trainer_state.json", "training_args.bin")),
    "hf_peft": ("checkpoint-2", (
        "README.md", "adapter_config.json", "adapter_model.safetensors", "optimizer.pt",
        "rng_state.pth",
        "scheduler.pt", "trainer_state.json", "training_args.bin")),
    "hf_deepspeed": ("checkpoint-2", (
        "config.json", "generation_config.json", "global_step2/mp_rank_00_model_states.pt",
        "global_step2/zero_pp_rank_0_mp_rank_00_optim_states.pt", "latest", "model.safetensors",
        "rng_state.pth",
        "trainer_state.json", "training_args.bin", "zero_to_fp32.py", "zero_to_torch.py")),
    "accelerate": ("state", (
        "model.safetensors", "optimizer.bin", "random_states_0.pkl", "scheduler.bin")),
    "lightning": ("checkpoints/last.ckpt", ("",)),  # a single file: "" is the checkpoint itself
    "deepspeed": ("ckpt", (
        "global_step2/bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "global_step2/mp_rank_00_model_states.pt",
        "latest", "zero_to_fp32.py", "zero_to_torch.py")),
    "deepspeed_2r": ("ckpt", (
        "global_step2/bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "global_step2/bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt",
        "global_step2/mp_rank_00_model_states.pt",
        "latest", "zero_to_fp32.py", "zero_to_torch.py")),
    "fsdp2": ("ckpt", (".metadata", "__0_0.distcp", "__1_0.distcp")),
    "dcp": ("ckpt", (".metadata", "__0_0.distcp")),
    "lingua": ("dump/checkpoints/0000000002", (
        ".metadata", "__0_0.distcp", "consolidated/consolidated.pth", "consolidated/params.json",
        "params.json",
        "train_state_00000.json")),
    "torchtitan": ("dump/checkpoint/step-2", (".metadata", "__0_0.distcp")),
}

# the files written under numpy 1.26 that stand in for a framework's own file
NUMPY1_FILES: dict[str, dict[str, str]] = {
    "hf_trainer": {"rng_state.pth": "rng_state.pth", "training_args.bin": "training_args.bin"},
    "hf_peft": {"rng_state.pth": "rng_state.pth"},
    "accelerate": {"random_states_0.pkl": "random_states_0.pkl"},
}

# SIGKILL points during each framework's real save (fnmatch on the basename being written)
KILLS: dict[str, tuple[str, ...]] = {
    "hf_trainer": ("optimizer.pt", "rng_state.pth", "trainer_state.json"),
    "hf_peft": ("optimizer.pt", "trainer_state.json"),
    "hf_deepspeed": ("*optim_states.pt", "trainer_state.json"),
    "accelerate": ("optimizer.bin", "random_states_0.pkl"),
    "lightning": ("last.ckpt",),
    "deepspeed": ("*optim_states.pt", "latest"),
    # rank-specific kills of the 2-rank save: "rank<r>:<pattern>"
    "deepspeed_2r": ("rank1:*optim_states.pt", "rank0:*optim_states.pt", "rank0:latest"),
    "fsdp2": ("rank1:__1_0.distcp", "rank0:__0_0.distcp", "rank0:.metadata"),
    "dcp": ("__0_0.distcp", ".metadata"),
    "lingua": (".metadata", "params.json", "train_state_00000.json"),
    "torchtitan": (".metadata",),
}

NAN_FRAMEWORKS = ("hf_trainer", "hf_peft", "accelerate", "lightning", "deepspeed", "fsdp2", "dcp")

MULTI_RANK = ("deepspeed_2r", "fsdp2")
OFFSETS = {"hf_deepspeed": ("half",)}  # its resume is slow (DeepSpeed init): one cut per file

# the CI subset (everything else is marked `oracle` and runs with `make oracle`)
FAST = {
    ("dcp", "none"),
    ("accelerate", "none"),
    ("hf_trainer", "none"),
    ("lingua", "none"),
    ("dcp", "delete .metadata"),
    ("dcp", "truncate __0_0.distcp @half"),
    ("dcp", "NaN weight"),
    ("accelerate", "numpy-1 random_states_0.pkl"),
    ("accelerate", "delete optimizer.bin"),
    ("hf_trainer", "delete trainer_state.json"),
    ("hf_trainer", "delete training_args.bin"),
    ("hf_trainer", "delete rng_state.pth"),
    ("hf_trainer", "truncate model.safetensors @-1"),
    ("lingua", "delete train_state_00000.json"),
    ("lingua", "delete params.json"),
    # rules the gate2 fixes made agree (false passes and false alarms measured before them)
    ("accelerate", "delete scheduler.bin"),
    ("accelerate", "delete random_states_0.pkl"),
    ("hf_trainer", "delete optimizer.pt"),
    ("hf_trainer", "stray tmp dir"),
    ("hf_trainer", "truncate generation_config.json @half"),
}


@dataclass(frozen=True)
class Case:
    framework: str
    damage: str
    kind: str  # none | delete | truncate | nan | tmpdir | numpy1 | kill | newer
    target: str = ""  # file (relative to the checkpoint) or kill pattern
    offset: str = ""  # truncate: "0" | "half" | "-1"
    compare_loss: bool = True
    tags: tuple[str, ...] = field(default=())

    @property
    def visible_to(self) -> frozenset[str]:
        """The `validate` modes that can see this damage at all.  Value damage (a NaN weight:
        every byte of every file is well-formed) is visible only to ``--deep``, which reads
        tensor values; static ``validate`` and ``--load`` read metadata only, by design, so
        the oracle does not judge them on it (the matrix shows "n/a")."""
        if self.kind == "nan":
            return frozenset({"deep"})
        return frozenset({"static", "load", "deep"})

    @property
    def id(self) -> str:
        return f"{self.framework}/{self.damage}"

    @property
    def fast(self) -> bool:
        return (self.framework, self.damage) in FAST

    @property
    def save_variant(self) -> str:
        """The save this case starts from ("clean" = the shared reference)."""
        if self.kind == "nan":
            return "nan"
        if self.kind == "kill" and self.target.startswith("rank"):
            return f"kill-{self.target}"  # kill-rank<r>:<pattern>
        if self.kind == "kill":
            return f"kill:{self.target}"
        if self.kind == "newer":
            return "newer-kill:*optim_states.pt@2"
        return "clean"


def _label(rel: str) -> str:
    return rel or "the .ckpt file"


def cases() -> list[Case]:
    out: list[Case] = []
    for fw, (_, files) in LAYOUT.items():
        out.append(Case(fw, "none", "none"))
        if fw in MULTI_RANK:  # each 2-rank resume is slow: the per-rank files, NaN and the kills
            for rel in files:
                if "zero_pp_rank" in rel or rel.endswith(".distcp"):
                    out.append(Case(fw, f"delete {rel}", "delete", rel))
            if fw in NAN_FRAMEWORKS:
                out.append(Case(fw, "NaN weight", "nan"))
            for pat in KILLS[fw]:
                rank, _, p = pat.partition(":")
                out.append(
                    Case(fw, f"SIGKILL {rank.replace('rank', 'rank ')} of 2 at {p}", "kill", pat)
                )
            continue
        for rel in files:
            out.append(Case(fw, f"delete {_label(rel)}", "delete", rel))
        for rel in files:
            for off in OFFSETS.get(fw, ("0", "half", "-1")):
                out.append(Case(fw, f"truncate {_label(rel)} @{off}", "truncate", rel, off))
        if fw in NAN_FRAMEWORKS:
            out.append(Case(fw, "NaN weight", "nan"))
        if files != ("",):
            out.append(Case(fw, "stray tmp dir", "tmpdir"))
        for rel in NUMPY1_FILES.get(fw, {}):
            out.append(Case(fw, f"numpy-1 {rel}", "numpy1", rel,
                            compare_loss=not rel.startswith(("rng_state", "random_states"))))
        for pat in KILLS.get(fw, ()):
            out.append(Case(fw, f"SIGKILL at {pat}", "kill", pat))
        if fw == "deepspeed":
            out.append(Case(fw, "cut-short newer tag", "newer"))
    return out


def apply(case: Case, ckpt: Path) -> None:
    """Damage the copy of a checkpoint at ``ckpt`` in place (kill/nan/newer cases come damaged
    from their own save)."""
    if case.kind == "delete":
        (ckpt / case.target if case.target else ckpt).unlink()
    elif case.kind == "truncate":
        f = ckpt / case.target if case.target else ckpt
        size = f.stat().st_size
        new = {"0": 0, "half": size // 2, "-1": size - 1}[case.offset]
        os.truncate(f, new)
    elif case.kind == "tmpdir":
        files = [p for p in ckpt.rglob("*") if p.is_file()]
        big = max(files, key=lambda p: (p.stat().st_size, p.name))
        tmp = ckpt / f"tmp-{ckpt.name}"
        tmp.mkdir()
        data = big.read_bytes()
        (tmp / big.name).write_bytes(data[: len(data) // 2])
    elif case.kind == "numpy1":
        (ckpt / case.target).write_bytes(
            (NUMPY1 / NUMPY1_FILES[case.framework][case.target]).read_bytes()
        )


def by_id() -> dict[str, Case]:
    return {c.id: c for c in cases()}


def visible(case_id: str, mode: str) -> bool:
    """Whether `validate` in `mode` can see the damage of the case `case_id` (see visible_to);
    an id not in the catalogue is judged in every mode."""
    case = by_id().get(case_id)
    return case is None or mode in case.visible_to
