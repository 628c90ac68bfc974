"""Rewrite rules: what each object a transcoding load captured becomes.

Every rule is one small registered unit (`RULES`, walked in order, first match wins):

  matches(value, ctx) -> bool    is this object mine? (`value` is a capture, a stand-in, a
                                 plain container; `ctx` knows the key path, the file's flavor
                                 and the enclosing objects)
  convert(value, ctx) -> new     the value to save instead (a weights_only-clean value, or a
                                 `Kept` marker that re-pickles the object as it was)
  why                            one sentence for the plan
  keep                           True: the object is kept and allow-listed, because converting
                                 it would break the framework that reads it back

The rule type and its context live in rulebase.py; the walk that applies the rules
(`Converter`) in walk.py."""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from ..layouts.hf_trainer import TRAINING_ARGS
from ..standins import (
    DTypeCapture,
    EnumStandIn,
    NDArrayCapture,
    ScalarCapture,
    StandIn,
    import_dotted,
)
from .model import Change
from .rulebase import (
    Ctx,
    Kept,
    RngSite,
    Rule,
    _enum_shaped,
    _is_primitive,
    _prim,
    class_ref_name,
    describe_found,
    keep,
    name_of,
    render_path,
    state_dict_of,
)


# --- numpy -------------------------------------------------------------------------------------
def _is_np_rng(v: Any, ctx: Ctx) -> bool:
    return (type(v) is tuple and len(v) == 5 and v[0] == "MT19937"
            and isinstance(v[1], NDArrayCapture) and tuple(v[1].shape) == (624,))


def _conv_np_rng(v: tuple, ctx: Ctx) -> tuple:
    key = v[1].to_numpy()
    pos, has_gauss, gauss = (_prim(x) for x in v[2:])
    out = ("MT19937", [int(x) for x in key.tolist()], int(pos), int(has_gauss), float(gauss))
    ctx.conv.rng.append(RngSite("numpy", ctx.path, ("MT19937", key.copy(), int(pos),
                                                    int(has_gauss), float(gauss))))
    return out


def _conv_array(v: NDArrayCapture, ctx: Ctx) -> Any:
    arr = v.to_numpy()
    if arr.dtype.kind in "Mm":  # datetime64 / timedelta64: numpy's own text spelling
        return arr.astype(str).tolist()
    if arr.dtype.hasobject:  # items are loaded objects (maybe captures themselves)
        return ctx.walk(arr.tolist())
    try:
        out = v.to_primitive()
    except (TypeError, RuntimeError, ValueError):  # a dtype torch has no tensor for
        out = arr.tolist()
    return out


def _conv_scalar(v: ScalarCapture, ctx: Ctx) -> Any:
    value = v.to_numpy()
    if getattr(value, "dtype", None) is not None and value.dtype.kind in "Mm":
        return str(value)
    out = v.to_primitive()
    return out if _is_primitive(out) else ctx.walk(out)


# --- dict subclasses, Namespace, omegaconf, TrainingArguments ------------------------------------
def _is_marked_dict(v: Any, ctx: Ctx) -> bool:
    return type(v) is dict and ctx.conv.marks is not None and ctx.conv.marks.get(v) is not None


def _conv_dict(v: dict, ctx: Ctx) -> dict:
    return {ctx.walk(k, "<key>"): ctx.walk(x, k) for k, x in v.items()}


NAMESPACES = frozenset({"argparse.Namespace", "types.SimpleNamespace"})


def _is_megatron_args(v: Any, ctx: Ctx) -> bool:
    return (name_of(v) in NAMESPACES and ctx.flavor == "megatron" and ctx.path == ("args",))


def _is_namespace(v: Any, ctx: Ctx) -> bool:
    return isinstance(v, StandIn) and name_of(v) in NAMESPACES


def _conv_namespace(v: StandIn, ctx: Ctx) -> dict:
    return {k: ctx.walk(x, k, inside=name_of(v)) for k, x in state_dict_of(v).items()}


# Attributes TrainingArguments builds at run time (not dataclass fields; to_dict() skips them).
TA_RUNTIME = frozenset({"distributed_state", "deepspeed_plugin", "hf_deepspeed_config"})


def _is_training_args(v: Any, ctx: Ctx) -> bool:
    return isinstance(v, StandIn) and bool(TRAINING_ARGS.match(name_of(v) or ""))


def _conv_training_args(v: StandIn, ctx: Ctx) -> dict:
    name = name_of(v)
    state = state_dict_of(v)
    out = {k: ctx.walk(x, k, inside=name) for k, x in state.items()
           if not k.startswith("_") and k not in TA_RUNTIME}
    for k, x in state.items():
        if (k.startswith("_") or k in TA_RUNTIME) and name_of(x):
            ctx.conv.changes.append(Change(
                render_path(ctx.path + (k,)), describe_found(x, ctx), "training-args",
                "dropped", "run-time state TrainingArguments rebuilds itself (not a dataclass "
                "field; to_dict() leaves it out too)"))
    # The sidecar is to_dict() as transformers writes it: secrets masked.
    shown = {k: (f"<{k.upper()}>" if k.endswith("_token") and x is not None else x)
             for k, x in out.items()}
    stem = ctx.conv.file_stem
    sidecar = "training_args.json" if stem == "training_args" else f"{stem}.training_args.json"
    ctx.conv.sidecars[sidecar] = (json.dumps(shown, indent=2, sort_keys=True, default=_json_default)
                                  + "\n").encode()
    return out


def _json_default(v: Any) -> Any:
    if isinstance(v, (set, tuple)):
        return list(v)
    if isinstance(v, Kept):
        return {"__kept__": v.name}
    return str(v)


def _is_ta_member(v: Any, ctx: Ctx) -> bool:
    """Dataclass-like helpers inside TrainingArguments (AcceleratorConfig, ...)."""
    return (isinstance(v, StandIn) and not v.args and isinstance(v.state, dict)
            and any(TRAINING_ARGS.match(n) for n in ctx.inside))


OMEGA_CONTAINERS = frozenset({"omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig"})


def _is_omegaconf(v: Any, ctx: Ctx) -> bool:
    return isinstance(v, StandIn) and name_of(v) in OMEGA_CONTAINERS


def _omega_raw(node: Any) -> Any:
    """The container a DictConfig/ListConfig holds, interpolations still as strings."""
    name = name_of(node)
    if name in OMEGA_CONTAINERS:
        content = state_dict_of(node).get("_content")
        if content is None or isinstance(content, str):
            return content  # None config, "???" or a whole-container interpolation
        if name.endswith("DictConfig"):
            return {k: _omega_raw(c) for k, c in content.items()}
        return [_omega_raw(c) for c in content]
    if isinstance(node, StandIn) and (name or "").startswith("omegaconf.nodes."):
        return state_dict_of(node).get("_val")
    return node


_INTERP = re.compile(r"\$\{([A-Za-z_][\w\-]*(?:\.[\w\-]+)*)\}")


def _omega_lookup(root: Any, dotted: str) -> Any:
    cur = root
    for part in dotted.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            raise KeyError(dotted)
    return cur


def _omega_resolve(value: Any, root: Any, depth: int = 0) -> Any:
    """Resolve `${a.b}` node interpolations (absolute paths) like OmegaConf.to_container(
    resolve=True). Resolver calls (`${oc.env:X}`, `${fn:...}`) are left as text: running them
    would read the environment of the machine doing the repair."""
    if depth > 32:
        return value
    if isinstance(value, dict):
        return {k: _omega_resolve(v, root, depth) for k, v in value.items()}
    if isinstance(value, list):
        return [_omega_resolve(v, root, depth) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value
    whole = _INTERP.fullmatch(value)
    try:
        if whole:
            return _omega_resolve(_omega_lookup(root, whole.group(1)), root, depth + 1)
        return _INTERP.sub(lambda m: str(_omega_resolve(_omega_lookup(root, m.group(1)), root,
                                                        depth + 1)), value)
    except KeyError:
        return value


def _conv_omegaconf(v: StandIn, ctx: Ctx) -> Any:
    raw = _omega_raw(v)
    return ctx.walk(_omega_resolve(raw, raw), inside=name_of(v))


# --- enums, paths, versions, class references ---------------------------------------------------
ZERO_STAGE = "deepspeed.runtime.zero.config.ZeroStageEnum"
# Enums with an int or str mixin: their value compares equal to the member.
VALUE_ENUMS = frozenset({
    "transformers.trainer_utils.IntervalStrategy", "transformers.trainer_utils.SchedulerType",
    "transformers.trainer_utils.HubStrategy", "transformers.trainer_utils.SaveStrategy",
    "transformers.trainer_utils.FSDPOption", "transformers.training_args.OptimizerNames",
    "transformers.debug_utils.DebugOption", "transformers.utils.generic.PaddingStrategy",
    "transformers.trainer_utils.EvaluationStrategy",
    "peft.utils.peft_types.PeftType", "peft.utils.peft_types.TaskType",
    "accelerate.utils.dataclasses.DistributedType",
    "accelerate.utils.dataclasses.PrecisionType",
    "accelerate.utils.dataclasses.DynamoBackend",
    "signal.Signals",
})


def _is_zero_stage(v: Any, ctx: Ctx) -> bool:
    return isinstance(v, StandIn) and name_of(v) == ZERO_STAGE and bool(v.args)


def _is_value_enum(v: Any, ctx: Ctx) -> bool:
    return (isinstance(v, StandIn) and name_of(v) in VALUE_ENUMS and _enum_shaped(v)
            and ctx.flavor != "megatron")


def _enum_value(v: StandIn, ctx: Ctx) -> Any:
    return ctx.walk(v.args[0])


def _is_megatron_object(v: Any, ctx: Ctx) -> bool:
    if not isinstance(v, StandIn):
        return False
    n = name_of(v) or ""
    return n.startswith("megatron.") or (ctx.flavor == "megatron" and (
        isinstance(v, EnumStandIn) or n == "signal.Signals"))


def vouched_enum_kind(name: str) -> str | None:
    """'value' for an int/str-mixin Enum, 'plain' for another Enum, None if not an Enum or
    not importable. Only asked for names the user vouched for with --allow."""
    try:
        cls = import_dotted(name)
    except Exception:  # any import failure means "cannot tell"
        return None
    if isinstance(cls, type) and issubclass(cls, enum.Enum):
        return "value" if issubclass(cls, (int, str)) else "plain"
    return None


def _is_vouched_value_enum(v: Any, ctx: Ctx) -> bool:
    n = name_of(v)
    return (isinstance(v, StandIn) and n in ctx.allow and _enum_shaped(v)
            and ctx.conv.enum_kind(n) == "value")


PATH_NAMES = re.compile(r"^pathlib\.(_local\.)?(Pure)?(Posix|Windows)?Path$")


def _is_path(v: Any, ctx: Ctx) -> bool:
    return (isinstance(v, StandIn) and bool(PATH_NAMES.match(name_of(v) or ""))
            and all(isinstance(a, str) for a in v.args))


def _conv_path(v: StandIn, ctx: Ctx) -> str:
    pure = PureWindowsPath if "Windows" in (name_of(v) or "") else PurePosixPath
    return str(pure(*v.args)) if v.args else "."


TORCH_VERSION = "torch.torch_version.TorchVersion"


def _is_torch_version(v: Any, ctx: Ctx) -> bool:
    return (isinstance(v, StandIn) and name_of(v) == TORCH_VERSION and len(v.args) == 1
            and isinstance(v.args[0], str))


HPARAMS_TYPE_KEYS = frozenset({"hparams_type", "datamodule_hparams_type"})


def _is_hparams_type(v: Any, ctx: Ctx) -> bool:
    return len(ctx.path) == 1 and ctx.key in HPARAMS_TYPE_KEYS and class_ref_name(v) is not None


def _is_class_ref(v: Any, ctx: Ctx) -> bool:
    return class_ref_name(v) is not None


def _conv_class_ref(v: Any, ctx: Ctx) -> str:
    name = class_ref_name(v)
    assert name is not None  # the rule's test, _is_class_ref, matched
    return name


def _is_stdlib_container(v: Any, ctx: Ctx) -> bool:
    if type(v) is list:  # a deque: its stand-in returned a marked plain list
        return ctx.conv.marks is not None and ctx.conv.marks.get(v) is not None
    return (isinstance(v, StandIn) and name_of(v) == "builtins.frozenset" and len(v.args) == 1
            and isinstance(v.args[0], (list, tuple, set)))


def _conv_stdlib_container(v: Any, ctx: Ctx) -> Any:
    if type(v) is list:
        return [ctx.walk(x, i) for i, x in enumerate(v)]
    return {ctx.walk(x) for x in v.args[0]}


def _named(*names: str) -> Callable[[Any, Ctx], bool]:
    wanted = frozenset(names)
    return lambda v, ctx: isinstance(v, StandIn) and name_of(v) in wanted


def _any_standin(v: Any, ctx: Ctx) -> bool:
    return isinstance(v, StandIn)


def _keep(v: Any, ctx: Ctx) -> Kept:
    return keep(v, ctx)


# --- the registry ------------------------------------------------------------------------------
RULES: tuple[Rule, ...] = (
    Rule("numpy-rng-state",
         "np.random.get_state() tuple: Trainer, Accelerate and Megatron restore it with "
         "np.random.set_state(), which takes the key as a list and yields the identical stream",
         _is_np_rng, _conv_np_rng),
    Rule("numpy-array",
         "numpy arrays need numpy globals to load; numeric arrays become tensors (same dtype "
         "and bits), object, text and small arrays (<= 1024 items) become lists. Code calling "
         "ndarray methods on it needs np.asarray()",
         lambda v, ctx: isinstance(v, NDArrayCapture), _conv_array),
    Rule("numpy-scalar", "numpy scalars become the equal Python int/float/bool/complex",
         lambda v, ctx: isinstance(v, ScalarCapture), _conv_scalar),
    Rule("numpy-dtype", "a numpy dtype object becomes numpy's own spelling of it ('<f4')",
         lambda v, ctx: isinstance(v, DTypeCapture), lambda v, ctx: v.to_primitive()),
    Rule("dict-subclass",
         "defaultdict / AttributeDict become a plain dict with the same items: torch refuses "
         "to fill a dict subclass even when it is allow-listed (code relying on default "
         "insertion must wrap it again)",
         _is_marked_dict, _conv_dict),
    Rule("megatron-args",
         "Megatron reads checkpoint['args'] with getattr(args, ...); a dict would break it, so "
         "the Namespace is kept and allow-listed (Megatron >= Sep 2025 allow-lists it itself)",
         _is_megatron_args, _keep, keep=True),
    Rule("namespace-dict",
         "argparse.Namespace becomes a dict of its attributes: Lightning's fit(ckpt_path) "
         "never reads hyper_parameters; load_from_checkpoint passes them as keyword arguments",
         _is_namespace, _conv_namespace),
    Rule("training-args",
         "TrainingArguments becomes a plain dict of its fields (enums as values) plus a "
         "training_args.json sidecar; Trainer never reads training_args.bin on resume",
         _is_training_args, _conv_training_args,
         covers=("accelerate.state.", "accelerate.utils.deepspeed.",
                 "transformers.integrations.deepspeed."),
         trigger=("transformers.training_args", "trl.trainer.")),
    Rule("training-args-member",
         "a dataclass inside TrainingArguments (AcceleratorConfig, ...) becomes a dict of its "
         "fields, as TrainingArguments.to_dict() writes it",
         _is_ta_member, _conv_namespace),
    Rule("omegaconf-container",
         "DictConfig/ListConfig become plain dict/list (node interpolations ${a.b} resolved, "
         "resolver calls such as ${oc.env:X} kept as text); fit(ckpt_path) never reads them",
         _is_omegaconf, _conv_omegaconf),
    Rule("zero-stage-int",
         "DeepSpeed compares zero_stage with ints (`<= 2`, `== 3`); ZeroStageEnum is an int "
         "enum, so its int value behaves the same",
         _is_zero_stage, lambda v, ctx: int(_prim(v.args[0]))),
    Rule("deepspeed-loss-scaler",
         "the DeepSpeed engine installs the unpickled object as its live loss scaler "
         "(self.loss_scaler = sd['loss_scaler']); a dict would break resume. Kept and "
         "allow-listed (or use DeepSpeed >= 0.16, which loads it with weights_only=False)",
         _named("deepspeed.runtime.fp16.loss_scaler.LossScaler",
                "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler"), _keep, keep=True),
    Rule("deepspeed-fragment-address",
         "ds_to_universal reads .start/.numel of param_slice_mappings; kept and allow-listed",
         _named("deepspeed.utils.tensor_fragment.fragment_address"), _keep, keep=True),
    Rule("megatron-object",
         "Megatron compares its plain enums and reads its config objects by attribute; they "
         "are kept and allow-listed (megatron/core/safe_globals.py lists them)",
         _is_megatron_object, _keep, keep=True),
    Rule("enum-value",
         "an int/str-mixin enum member compares equal to its value, so the value replaces it",
         _is_value_enum, _enum_value),
    Rule("vouched-enum-value",
         "a --allow'ed int/str-mixin enum member compares equal to its value (checked by "
         "importing the vouched class)",
         _is_vouched_value_enum, _enum_value),
    Rule("path-str", "pathlib paths become str (os.fspath and open() accept both)",
         _is_path, _conv_path),
    Rule("torch-version-str", "TorchVersion is a str subclass; the plain str compares equal",
         _is_torch_version, lambda v, ctx: str(v.args[0])),
    Rule("hparams-type-str",
         "Lightning's hparams_type is a class object; stored as its dotted name Lightning "
         "wraps hyper-parameters in AttributeDict on load_from_checkpoint (attribute access "
         "keeps working); fit(ckpt_path) never reads it",
         _is_hparams_type, _conv_class_ref),
    Rule("class-ref-str", "a class object cannot load without allow-listing it; its dotted "
                          "name is stored instead", _is_class_ref, _conv_class_ref),
    Rule("stdlib-container",
         "deque becomes a list and frozenset a set (same items; code calling deque methods "
         "must wrap it again)", _is_stdlib_container, _conv_stdlib_container),
    Rule("io-bytesio",
         "io.BytesIO holds Transformer Engine _extra_state; only TE can interpret it, so it "
         "is kept and allow-listed", _named("_io.BytesIO", "io.BytesIO"), _keep, keep=True),
    Rule("keep-data",
         "no rewrite rule knows this type, and converting it could change what the framework "
         "reads back; kept and allow-listed", _any_standin, _keep, keep=True),
)
RULES_BY_NAME = {r.name: r for r in RULES}


def covered_names(names: list[str]) -> list[str]:
    """Unknown names some rule consumes in this file (its trigger is present too)."""
    out = []
    for rule in RULES:
        if rule.covers and any(n.startswith(rule.trigger) for n in names):
            out += [n for n in names if n.startswith(rule.covers)]
    return out


__all__ = ["RULES", "RULES_BY_NAME", "covered_names"]
