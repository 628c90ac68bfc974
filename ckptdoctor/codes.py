"""Stable finding codes. A code never changes meaning once released; new checks get new codes.

Prefixes group them so `--select CK1` / `--ignore CK4` work:
  CK0xx  input and I/O           CK1xx  pickles and globals      CK2xx  torch zip / legacy
  CK3xx  safetensors             CK4xx  layout completeness      CK5xx  deep checks (--deep)
  CK6xx  loading (--load)        CK7xx  repair / convert         CK8xx  numpy / dcp / other formats
  CK9xx  diff and estimates
"""

from __future__ import annotations

from .code_enum import TABLE_END, TABLE_START, CodeEnum, select
from .model import Severity


class Code(CodeEnum):
    """A finding code: (code, severity, title, doc, fix). `doc` is the longer explanation in
    the docs table (empty: the title says it all); `fix` is what to do. docs/validate.md's
    code table is generated from these (`ckptdoctor codes --markdown`)."""

    # input and I/O
    PATH_MISSING = ("CK001", Severity.ERROR, "path does not exist",
        '',
        'check the path')
    UNREADABLE = ("CK002", Severity.ERROR, "file cannot be read",
        '',
        'check permissions / the storage mount')
    EMPTY_FILE = ("CK003", Severity.ERROR, "zero-byte file",
        'zero-byte file (`EOFError` in torch.load): a save was interrupted',
        'use the previous checkpoint (`ckptdoctor latest`)')
    NOT_REGULAR = ("CK004", Severity.ERROR, "not a regular file (FIFO, socket or device)",
        'not a regular file (FIFO, socket, device)',
        'point at the checkpoint file')
    SYMLINK_LOOP = ("CK005", Severity.ERROR, "symlink loop or dangling symlink",
        '',
        'fix or remove the link')
    EMPTY_DIR = ("CK006", Severity.ERROR, "directory holds no checkpoint files",
        'directory holds no files',
        'check the path')
    NO_LAYOUT = ("CK008", Severity.WARNING, "no known checkpoint layout",
        'no known checkpoint layout; files judged one by one',
        'none needed, or report the layout')
    TOO_MANY_FILES = ("CK009", Severity.WARNING, "walk stopped at the file limit",
        '',
        'validate a narrower directory')
    REMOTE_EXTRA = ("CK010", Severity.ERROR, "the URL needs an extra that is not installed",
        "the URL's protocol needs an optional dependency (exit 2)",
        "`pip install 'ckptdoctor[s3]'` (or `[gcs]`, `[hf]`, `[http]`, `[remote]` for all)")
    REMOTE_URL = ("CK011", Severity.ERROR, "not a storage URL ckptdoctor can read",
        'the URL scheme is no fsspec protocol (exit 2)',
        'use s3://, gs://, hf://, http(s):// or file://')
    REMOTE_CHANGED = ("CK012", Severity.ERROR, "remote object changed during the run",
        'the ETag or size of a remote object changed between two ranged reads; nothing read '
        'from it is reported (never a mix of two versions)',
        'run again once the writer has finished')
    REMOTE_TIMEOUT = ("CK013", Severity.ERROR, "remote request timed out",
        'a request to the storage endpoint got no answer within the timeout',
        'retry, or raise `--timeout`')
    REMOTE_FAILED = ("CK014", Severity.ERROR, "remote request failed",
        'the storage endpoint refused or failed a request (credentials, permissions, network)',
        'check credentials (AWS/GCP/HF_TOKEN chains) and `--storage-option`')
    REMOTE_READONLY = ("CK015", Severity.ERROR, "repair does not rewrite remote checkpoints",
        '`repair` on a URL is refused (exit 2)',
        'download, repair locally, upload: see docs/remote.md')
    REMOTE_BUDGET = ("CK016", Severity.ERROR, "--max-bytes budget exceeded",
        'reading a remote file would pass the `--max-bytes` budget; the file is not judged',
        'raise `--max-bytes` or validate without `--deep`')
    STORAGE_OPTION = ("CK017", Severity.ERROR, "--storage-option is not key=value",
        '`--storage-option` is not `key=value`, or the filesystem rejects it (exit 2)',
        'e.g. `--storage-option anon=true`')
    REMOTE_NO_RANGES = ("CK018", Severity.ERROR, "the server ignores Range requests",
        'an HTTP server answered a ranged read with the whole object; ckptdoctor does not '
        'download whole objects to inspect them',
        'serve the files from a range-capable server, or download them')
    FRAMEWORK_VERSION = ("CK090", Severity.ERROR, "--framework-version is not NAME=VERSION",
        '`--framework-version` is not `NAME=VERSION` with NAME one of torch, transformers, '
        'accelerate, deepspeed, lightning, peft (exit 2)',
        'e.g. `--framework-version deepspeed=0.15.4`')
    BAD_PREFIX = ("CK091", Severity.ERROR, "--select / --ignore prefix matches no code",
        '`--select` / `--ignore` PREFIX matches no finding code (a typo would silently select '
        'nothing; exit 2)',
        '`ckptdoctor codes` lists every code')

    # pickles
    DANGEROUS_GLOBAL = ("CK101", Severity.ERROR, "pickle references a code-executing global",
        'a pickle references a code-executing global (`os.system`, `builtins.exec`, ...)',
        'do not load the file; it can run code. Nothing overrides this')
    UNKNOWN_GLOBAL = ("CK102", Severity.WARNING, "pickle references a global of unknown safety",
        'a pickle references a global of unknown safety',
        "`--allow` it only if you trust the file's origin")
    WEIGHTS_ONLY_FAILS = ("CK103", Severity.WARNING,
                          "plain torch.load(weights_only=True) fails; an allow-list fixes it",
        'plain `torch.load(weights_only=True)` fails; an allow-list fixes it',
        '`ckptdoctor repair`, or the allow-list in the hint')
    WEIGHTS_ONLY_UNFIXABLE = ("CK104", Severity.WARNING,
                              "torch.load(weights_only=True) fails and no allow-list helps",
        'plain `torch.load(weights_only=True)` fails and no allow-list helps (protocol > 2 '
        'opcodes, `defaultdict`, blocked modules)',
        '`ckptdoctor repair` re-saves it')
    PICKLE_MALFORMED = ("CK105", Severity.ERROR, "pickle stream is malformed or truncated",
        'pickle stream malformed or truncated',
        'the file is damaged; use the previous checkpoint')
    PICKLE_LIMIT = ("CK106", Severity.ERROR, "pickle exceeds a scan limit",
        '',
        'treat as hostile')
    DYNAMIC_GLOBAL = ("CK107", Severity.ERROR, "global name computed at load time",
        'a global whose name is computed at load time',
        'treat as hostile')
    PICKLE_PROTOCOL = ("CK108", Severity.WARNING,
                       "pickle protocol > 2: torch's weights-only unpickler rejects it",
        'pickle protocol > 2 ("Unsupported operand 149")',
        '`ckptdoctor repair` re-saves with protocol 2')
    TORCH_WEIGHTS_ONLY_CVE = ("CK110", Severity.WARNING,
                              "installed torch has a known weights_only hole (CVE)",
        'the installed torch is older than 2.6 (CVE-2025-32434: weights_only can run code) or 2.10 '
        '(CVE-2026-24747: weights_only memory corruption); stated whenever a file is judged by '
        '`torch.load(weights_only=True)`',
        'upgrade torch before loading files you did not write')
    # scan states (fail closed) and reader differentials
    SCAN_INCONCLUSIVE = ("CK120", Severity.ERROR,
                         "scan inconclusive: not every byte the consumer reads was scanned",
        'scan inconclusive (a cap hit, readers disagree, a record unreadable): not every byte the '
        'consumer reads was scanned',
        'never load it; nothing overrides this')
    SCAN_FAILED = ("CK121", Severity.ERROR, "the scan of this file could not run",
        'the scan of this file could not run (internal error)',
        'report it; the file is treated as not loadable')
    POLYGLOT = ("CK122", Severity.ERROR, "file is also a valid pickle (polyglot)",
        'the file is also a valid pickle (polyglot): `torch.load(weights_only=False)` would '
        'unpickle it',
        'treat as hostile')
    CVE_PATTERN = ("CK123", Severity.ERROR,
                   "SETITEM(S) into a non-dict: the CVE-2026-24747 exploit pattern",
        '',
        'treat as hostile, with any torch version')
    STORAGE_NUMEL = ("CK124", Severity.ERROR,
                     "storage size disagrees with its declared numel (CVE-2026-24747 pattern)",
        "a storage record's size disagrees with its declared numel (CVE-2026-24747 pattern)",
        'treat as hostile')

    # torch zip / legacy
    ZIP_TRUNCATED = ("CK201", Severity.ERROR, "zip archive truncated (no central directory)",
        'zip truncated: "failed finding central directory"',
        'the save was cut short; use the previous checkpoint')
    ZIP_STORAGE_MISSING = ("CK202", Severity.ERROR, "storage referenced by the pickle is missing",
        'a storage the pickle references is missing',
        'damaged file; use the previous checkpoint')
    ZIP_STORAGE_SHORT = ("CK203", Severity.ERROR, "storage record smaller than its tensors need",
        'a storage record is smaller than its tensors need',
        'damaged file')
    ZIP_CRC = ("CK204", Severity.ERROR, "zip record CRC32 mismatch (data corrupted)",
        'zip record CRC32 mismatch (`--deep`)',
        'bytes changed after the save: restore from backup')
    ZIP_COMPRESSED = ("CK205", Severity.ERROR, "compressed zip record (torch never compresses)",
        '',
        'not written by torch.save; treat with care')
    ZIP_BAD_NAME = ("CK206", Severity.ERROR, "zip record name is absolute or contains '..'",
        'zip record name absolute or containing `..`',
        'treat as hostile')
    ZIP_NO_PICKLE = ("CK207", Severity.ERROR, "torch zip has no data.pkl",
        'torch zip without `data.pkl`',
        'not a torch checkpoint')
    ZIP_CORRUPT = ("CK208", Severity.ERROR, "zip structure corrupt",
        '',
        'damaged file')
    LEGACY_TRUNCATED = ("CK209", Severity.ERROR, "legacy torch file truncated",
        '',
        'damaged file')
    BYTEORDER = ("CK210", Severity.WARNING, "checkpoint byte order differs from this machine",
        'written on a machine of the other byte order',
        'load on a matching machine')
    ZIP_READERS_DIFFER = ("CK220", Severity.ERROR,
                          "zip readers disagree: torch's reader sees other records than zipfile",
        "zip readers disagree: torch's reader (miniz: declared central-directory offset) sees "
        "other records than Python's `zipfile`",
        'treat as hostile')
    ZIP_ENTRY_FLAGS = ("CK221", Severity.ERROR,
                       "zip record has encryption/patch flags, a CRC mismatch or a local name "
                       "that differs from the central directory",
        'zip record with encryption/patch flag bits, a CRC mismatch, or a local-header name that '
        'differs from the central directory',
        'treat as hostile')

    # safetensors
    ST_HEADER_SMALL = ("CK301", Severity.ERROR, "safetensors file too small for a header",
        'safetensors file too small for a header ("header too small")',
        'the save was cut short')
    ST_HEADER_LENGTH = ("CK302", Severity.ERROR, "safetensors header length invalid",
        '',
        'truncated or not safetensors')
    ST_HEADER_JSON = ("CK303", Severity.ERROR, "safetensors header is not valid JSON",
        '',
        'damaged file')
    ST_OFFSETS = ("CK304", Severity.ERROR, "safetensors offsets overlap, repeat or mismatch shapes",
        'safetensors offsets overlap, repeat, leave gaps or mismatch shapes',
        'damaged or hand-made file')
    ST_COVERAGE = ("CK305", Severity.ERROR, "safetensors data not fully covered / file truncated",
        'safetensors data not fully covered ("incomplete metadata, file not fully covered")',
        'the save was cut short')
    ST_ENTRY = ("CK306", Severity.ERROR, "safetensors entry has an invalid dtype or shape",
        'safetensors entry with an invalid dtype or shape',
        'damaged file')
    ST_NO_FORMAT = ("CK307", Severity.INFO, "safetensors metadata lacks format=pt",
        'safetensors without `format=pt` metadata (transformers refuses it)',
        '`ckptdoctor convert --to safetensors` writes it')

    # layout completeness
    MISSING_FILE = ("CK401", Severity.ERROR, "a file the framework needs to resume is missing",
        '',
        'use the previous checkpoint')
    INDEX_SHARD_MISSING = ("CK402", Severity.ERROR, "index names a shard that does not exist",
        'the weight index names a shard that does not exist',
        'the save was cut short')
    INDEX_TENSOR_MISSING = ("CK403", Severity.ERROR, "index names a tensor its shard lacks",
        'the index names a tensor its shard lacks',
        'damaged save')
    STEP_MISMATCH = ("CK404", Severity.ERROR, "recorded step differs from the directory name",
        '',
        'an old checkpoint was overwritten in part')
    RNG_RANK_MISSING = ("CK405", Severity.WARNING, "RNG state missing for a rank",
        'RNG state missing for a rank (resume continues with fresh RNG; the model records no '
        'dropout, else `CK401`)',
        'accept, or use another checkpoint')
    LEFTOVER_TMP = ("CK406", Severity.WARNING, "leftover temporary file or directory",
        'leftover temporary file or directory (`tmp-checkpoint-*`, any `tmp-*` dir, `*.tmp`); '
        'its contents are not judged',
        'an interrupted save; delete it')
    DANGLING_LINK = ("CK407", Severity.ERROR, "dangling symlink",
        'dangling symlink (e.g. `last.ckpt`)',
        'point it at an existing checkpoint')
    LATEST_TAG_MISSING = ("CK408", Severity.ERROR, "'latest' names a tag that does not exist",
        'DeepSpeed `latest` names a tag that does not exist',
        'write the right tag into `latest`')
    SHARD_COUNT = ("CK409", Severity.ERROR, "optimizer shard count differs from world size",
        'optimizer shard count differs from the world size / `partition_count`',
        'a rank did not save; use the previous checkpoint')
    ADAPTER_EMPTY = ("CK410", Severity.ERROR, "PEFT adapter holds no tensors",
        'PEFT adapter holds no tensors, or only zero-sized ones (saved under ZeRO-3 without '
        'gathering). peft 0.21: no tensors load with only a "Found missing adapter keys" warning '
        '(a fresh adapter, i.e. the base model); zero-sized tensors raise `size mismatch ... '
        'torch.Size([0])`',
        're-save the adapter from a gathered model')
    ADAPTER_MISMATCH = ("CK411", Severity.ERROR, "PEFT adapter tensors do not match its config",
        "PEFT adapter tensors do not match its config's rank (lora_A / lora_B shapes, a missing "
        "half)",
        're-save the adapter')
    DCP_STORAGE = ("CK412", Severity.ERROR,
                   "DCP storage file missing or shorter than metadata says",
        'DCP storage file missing or shorter than `.metadata` says',
        'a rank did not finish; use the previous checkpoint')
    TRACKER_MISSING = ("CK413", Severity.ERROR, "checkpoint tracker file missing or invalid",
        'Megatron tracker missing or naming no iteration',
        'Megatron would start from scratch silently')
    INDEX_INVALID = ("CK414", Severity.ERROR, "weight index invalid or total_size mismatch",
        'weight index invalid or `total_size` mismatch',
        'damaged save')
    JSON_INVALID = ("CK415", Severity.ERROR, "JSON sidecar does not parse",
        'a JSON sidecar does not parse',
        'damaged save')
    MODEL_ONLY = ("CK416", Severity.WARNING, "checkpoint holds model weights only (no optimizer)",
        'the checkpoint holds model weights only',
        'resuming training state will fail')
    UNREAD_MISSING = ("CK420", Severity.WARNING,
                      "a file the resume does not read is missing",
        'a file the resume does not read is missing (Lingua `params.json`)',
        'copy it from another step if consolidation or eval need it')
    LOAD_NOT_NEEDED = ("CK421", Severity.WARNING,
                       "file does not load, but the resume never reads it or survives the failure",
        "a file does not load (or is damaged), but the resume never reads it (HF "
        "`training_args.bin`, a DeepSpeed tag `latest` does not name) or catches the failure "
        "(accelerate's RNG restore); `detail.was` keeps the original code",
        'nothing for the resume; repair it if other tools read it')
    NEWER_TAG_BROKEN = ("CK422", Severity.WARNING,
                        "a tag newer than 'latest' is incomplete; resume uses 'latest'",
        'DeepSpeed: a tag other than the one `latest` names is incomplete (a newer save cut '
        'short); `load_checkpoint` resumes from `latest`',
        'delete the broken tag once `latest` is confirmed good')
    OLDER_TAG_RESUMABLE = ("CK423", Severity.INFO,
                           "'latest' names a broken tag; an older complete tag can be resumed",
        'DeepSpeed: `latest` names a broken tag and an older tag is complete; says how to resume '
        'it (`engine.load_checkpoint(dir, tag=...)`)',
        '`ckptdoctor repair DIR` points `latest` at it (the old one is backed up)')
    ADAPTER_TARGET_UNUSED = ("CK424", Severity.WARNING,
                             "PEFT target_modules without LoRA tensors in the adapter",
        'PEFT `target_modules` that have no LoRA tensors in the adapter',
        'check the config; the modules may not exist in the base model')

    # deep
    NONFINITE = ("CK501", Severity.ERROR, "tensor holds NaN or Inf",
        'tensor holds NaN or Inf (`--deep`); a warning in bookkeeping (callbacks) or with '
        '`--allow-nonfinite`',
        'training diverged before the save: use an earlier checkpoint')
    OPTIM_SHAPE = ("CK502", Severity.ERROR, "optimizer state shape differs from its parameter",
        'optimizer state shape differs from its parameter (`--deep`)',
        'mismatched optimizer file')
    MANIFEST_MISMATCH = ("CK503", Severity.ERROR, "file differs from the recorded manifest",
        'file differs from the manifest',
        'restore from a backup')
    MANIFEST_MISSING_FILE = ("CK504", Severity.ERROR, "file in the manifest is missing",
        'a file in the manifest is missing',
        'restore from a backup')
    CRC_NOT_RECORDED = ("CK510", Severity.INFO,
                        "zip records carry no CRC32 (saved with compute_crc32=False)",
        'zip records carry no CRC32 (saved with `compute_crc32=False`; `--deep`)',
        'record a manifest to detect later changes')

    # loading
    LOAD_FAILS = ("CK601", Severity.ERROR, "the resuming framework cannot load this file",
        '',
        '`ckptdoctor repair`, or the `safe_globals` snippet in the hint')
    LOAD_NEEDS_ALLOW = ("CK602", Severity.WARNING, "loads only with an allow-list",
        'loads only with an allow-list (`--load`)',
        '`ckptdoctor repair` for plain torch.load')
    LOAD_OK = ("CK603", Severity.INFO, "file loads",
        'file loads (`--load`)',
        'none')

    # repair / convert
    REPAIR_REFUSED = ("CK701", Severity.ERROR, "repair refused",
        'repair refused (dangerous global, or nothing it can do)',
        'see the message')
    REPAIR_VERIFY = ("CK702", Severity.ERROR, "rewritten file failed verification; original kept",
        'a rewritten file failed verification; the original was kept',
        'report it')
    LEFTOVER_WRITE = ("CK703", Severity.WARNING, "leftover from an interrupted ckptdoctor write",
        '',
        '`ckptdoctor repair` cleans it')
    KEPT_ALLOWLISTED = ("CK704", Severity.INFO, "object kept and allow-listed (rewrite would break "
                                                "resume)",
        'object kept and allow-listed (a rewrite would break resume)',
        'load with the written allow-list')
    CONVERT_FAILED = ("CK705", Severity.ERROR, "conversion failed; no output written",
        '',
        'see the message')
    CONVERT_VERIFY = ("CK706", Severity.ERROR,
                      "converted or resharded output differs from the source; output removed",
        '',
        'report it')
    CONVERT_NON_TENSOR = ("CK707", Severity.INFO,
                          "non-tensor entries not stored in the tensor file (JSON sidecar or "
                          "dropped)",
        'non-tensor entries kept in a JSON sidecar or dropped',
        'none')
    CONVERT_ALIAS = ("CK708", Severity.INFO,
                     "shared tensor stored once; alias recorded in metadata",
        'shared tensor stored once; alias recorded',
        'none')
    CONVERT_SKIPPED = ("CK709", Severity.WARNING,
                       "entries left out of the output (no --strip-prefix match, or training "
                       "state)",
        'entries left out of the output',
        'check `--strip-prefix`')
    WRITE_FAILED = ("CK710", Severity.ERROR,
                    "could not write (disk full, read-only, permission); originals untouched",
        'a write failed (disk full, read-only directory, permission); nothing was replaced',
        'free space or fix permissions, run again')
    CONVERT_CARRIED = ("CK730", Severity.INFO,
                       "config / tokenizer files carried over from the source or its run directory",
        'config / tokenizer files carried over from the checkpoint or its run directory '
        '(`convert`)',
        'none')
    CONVERT_NO_CONFIG = ("CK731", Severity.WARNING,
                         "no config.json found to carry over; from_pretrained needs one",
        'no `config.json` found to carry over; `from_pretrained` needs one',
        "copy the model's `config.json` next to the weights")
    CONVERT_LEFT_BEHIND = ("CK732", Severity.WARNING,
                           "training state left behind by --weights-only (files listed with their "
                           "state)",
        'training state left behind by `convert --weights-only`, listed with its state',
        'resume from a complete checkpoint, or restart from these weights')
    CONVERT_PARAMS = ("CK733", Severity.WARNING,
                      "params.json has no `model` section (Lingua builds the model from it)",
        '`--params` file has no `model` section (Lingua builds the model from it)',
        'pass the training config')
    RESHARD_FAILED = ("CK734", Severity.ERROR, "reshard failed; nothing written",
        '',
        'see the message')
    RESHARD_PER_RANK = ("CK735", Severity.WARNING,
                        "per-rank state that cannot be split differs between ranks; copied from "
                        "rank 0",
        'per-rank state that cannot be split (values that differ between ranks, items or files '
        'saved per rank): copied from rank 0 or kept as saved, and reported (`reshard`)',
        're-seed per-rank RNG / data order, or `--strict` to refuse')
    RESHARD_DONE = ("CK736", Severity.INFO,
                    "checkpoint resharded to a new data-parallel world size",
        '',
        'none')

    # other formats
    NPY_OBJECT = ("CK801", Severity.WARNING, "numpy object array: loading runs a pickle",
        'numpy object array: loading it runs a pickle',
        'never `allow_pickle=True` on untrusted files')
    DCP_METADATA = ("CK802", Severity.ERROR, "DCP .metadata cannot be parsed safely",
        'DCP `.metadata` holds non-DCP globals or is damaged',
        'DCP would `pickle.load` it: do not load')
    JSON_BAD = ("CK803", Severity.ERROR, "file looks like JSON but does not parse",
        'a file that looks like JSON does not parse',
        'damaged file')
    NPY_HEADER = ("CK820", Severity.ERROR, "numpy header invalid (shape, dtype or keys)",
        'numpy `.npy` header invalid (shape not non-negative ints, bad dtype or keys)',
        'damaged or hostile file')
    DCP_PATH = ("CK821", Severity.ERROR,
                "DCP storage path escapes the checkpoint or names no regular file",
        'a DCP storage path is absolute, escapes the checkpoint, or names no regular file',
        'treat as hostile')

    # diff and estimates (CK900-CK949)
    DIFF_UNREADABLE = ("CK901", Severity.ERROR, "a side of the diff cannot be read",
        '`diff`: a side cannot be read (cause in the message)',
        'see the message')
    DIFF_KEYS = ("CK902", Severity.WARNING, "entries present on one side only",
        '`diff`: entries present on one side only',
        'check which run / save wrote them')
    DIFF_RENAMED = ("CK903", Severity.INFO, "keys renamed by a prefix",
        '`diff`: keys renamed by a prefix (`module.` vs none), reported as one line',
        '`convert --strip-prefix`, or load with a key map')
    DIFF_SHAPE = ("CK904", Severity.ERROR, "tensor shape differs",
        '`diff`: tensor shape differs',
        'different model config')
    DIFF_DTYPE = ("CK905", Severity.WARNING, "tensor dtype differs",
        '`diff`: tensor dtype differs',
        'expected after `--dtype` conversions')
    DIFF_VALUES = ("CK906", Severity.WARNING, "tensor values differ beyond --rtol/--atol",
        '`diff`: tensor values differ beyond `--rtol/--atol`',
        'expected between steps; a bug after a conversion')
    DIFF_NONFINITE = ("CK907", Severity.WARNING, "tensor holds NaN or Inf on one side",
        '`diff`: tensor holds NaN or Inf on one side',
        'resume from an earlier checkpoint')
    DIFF_ZERO = ("CK908", Severity.INFO, "tensor is all zeros",
        '`diff`: tensor is all zeros (e.g. an untrained LoRA `lora_B`)',
        'check the adapter was trained / saved after training')
    DIFF_STATE = ("CK909", Severity.WARNING, "training state differs (step, epoch, lr, scheduler, "
                                             "values)",
        '`diff`: training state differs (step, epoch, lr, scheduler, other values)',
        'expected between steps')
    DIFF_RNG = ("CK910", Severity.WARNING, "RNG state differs",
        '`diff`: RNG state differs',
        'expected between steps; breaks exact resume otherwise')
    DIFF_STATE_MISSING = ("CK911", Severity.ERROR,
                          "training state present on one side only: resume restarts it",
        '`diff`: optimizer / scheduler / RNG state on one side only: resuming from the other '
        'restarts it',
        'resume from a checkpoint that has it')
    DIFF_RANKS = ("CK912", Severity.WARNING, "per-rank files differ",
        '`diff`: per-rank files differ',
        "a rank's save is missing, or the world size changed")
    NOT_RESUME_EQUIVALENT = ("CK913", Severity.ERROR,
                             "B would not continue training exactly as A would",
        '`diff --resume-equivalent`: B would not continue training exactly as A',
        'see the reasons in the message')
    EST_OVER_RAM = ("CK920", Severity.WARNING, "resume needs more CPU RAM than available",
        '`inspect`: the resume needs more CPU RAM than `--ram` / this machine has',
        'bigger host, or reshard')
    EST_OVER_GPU = ("CK921", Severity.WARNING, "resume needs more GPU memory than given",
        '`inspect`: weights + gradients + optimizer need more than `--gpu-mem` per rank',
        'higher ZeRO stage / FSDP, more ranks, offload')
    EST_PARTIAL = ("CK922", Severity.INFO, "memory estimate incomplete",
        '`inspect`: memory estimate incomplete (assumed AdamW) or a bad `--ram`/`--gpu-mem`',
        'none')
    GATE_FAILED = ("CK930", Severity.ERROR, "the pre-resume gate refused the checkpoint",
        'integrations: the pre-resume gate refused the checkpoint (no completion marker)',
        '`ckptdoctor latest RUN_DIR`')


BY_CODE = {c.value: c for c in Code}
lookup = Code.lookup  # `ckptdoctor codes CK4`, --select / --ignore checks
markdown_table = Code.markdown_table  # docs/validate.md's table (`ckptdoctor codes --markdown`)

__all__ = ["Code", "BY_CODE", "TABLE_START", "TABLE_END", "markdown_table", "lookup", "select"]
