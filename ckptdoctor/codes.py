"""Stable finding codes. A code never changes meaning once released; new checks get new codes.

Prefixes group them so `--select CK1` / `--ignore CK4` work:
  CK0xx  input and I/O           CK1xx  pickles and globals      CK2xx  torch zip / legacy
  CK3xx  safetensors             CK4xx  layout completeness      CK5xx  deep checks (--deep)
  CK6xx  loading (--load)        CK7xx  repair / convert         CK8xx  numpy / dcp / other formats
  CK9xx  diff and estimates
"""

from __future__ import annotations

import enum

from .model import Finding, Severity


class Code(enum.Enum):
    def __new__(cls, code: str, severity: Severity, title: str):
        obj = object.__new__(cls)
        obj._value_ = code
        obj.severity = severity
        obj.title = title
        return obj

    # input and I/O
    PATH_MISSING = ("CK001", Severity.ERROR, "path does not exist")
    UNREADABLE = ("CK002", Severity.ERROR, "file cannot be read")
    EMPTY_FILE = ("CK003", Severity.ERROR, "zero-byte file")
    NOT_REGULAR = ("CK004", Severity.ERROR, "not a regular file (FIFO, socket or device)")
    SYMLINK_LOOP = ("CK005", Severity.ERROR, "symlink loop or dangling symlink")
    EMPTY_DIR = ("CK006", Severity.ERROR, "directory holds no checkpoint files")
    UNKNOWN_FORMAT = ("CK007", Severity.INFO, "file format not recognised")
    NO_LAYOUT = ("CK008", Severity.WARNING, "no known checkpoint layout")
    TOO_MANY_FILES = ("CK009", Severity.WARNING, "walk stopped at the file limit")
    FRAMEWORK_VERSION = ("CK090", Severity.ERROR, "--framework-version is not NAME=VERSION")

    # pickles
    DANGEROUS_GLOBAL = ("CK101", Severity.ERROR, "pickle references a code-executing global")
    UNKNOWN_GLOBAL = ("CK102", Severity.WARNING, "pickle references a global of unknown safety")
    WEIGHTS_ONLY_FAILS = ("CK103", Severity.WARNING,
                          "plain torch.load(weights_only=True) fails; an allow-list fixes it")
    WEIGHTS_ONLY_UNFIXABLE = ("CK104", Severity.WARNING,
                              "torch.load(weights_only=True) fails and no allow-list helps")
    PICKLE_MALFORMED = ("CK105", Severity.ERROR, "pickle stream is malformed or truncated")
    PICKLE_LIMIT = ("CK106", Severity.ERROR, "pickle exceeds a scan limit")
    DYNAMIC_GLOBAL = ("CK107", Severity.ERROR, "global name computed at load time")
    PICKLE_PROTOCOL = ("CK108", Severity.WARNING,
                       "pickle protocol > 2: torch's weights-only unpickler rejects it")
    TORCH_WEIGHTS_ONLY_CVE = ("CK110", Severity.WARNING,
                              "installed torch has a known weights_only hole (CVE)")
    # scan states (fail closed) and reader differentials
    SCAN_INCONCLUSIVE = ("CK120", Severity.ERROR,
                         "scan inconclusive: not every byte the consumer reads was scanned")
    SCAN_FAILED = ("CK121", Severity.ERROR, "the scan of this file could not run")
    POLYGLOT = ("CK122", Severity.ERROR, "file is also a valid pickle (polyglot)")
    CVE_PATTERN = ("CK123", Severity.ERROR,
                   "SETITEM(S) into a non-dict: the CVE-2026-24747 exploit pattern")
    STORAGE_NUMEL = ("CK124", Severity.ERROR,
                     "storage size disagrees with its declared numel (CVE-2026-24747 pattern)")

    # torch zip / legacy
    ZIP_TRUNCATED = ("CK201", Severity.ERROR, "zip archive truncated (no central directory)")
    ZIP_STORAGE_MISSING = ("CK202", Severity.ERROR, "storage referenced by the pickle is missing")
    ZIP_STORAGE_SHORT = ("CK203", Severity.ERROR, "storage record smaller than its tensors need")
    ZIP_CRC = ("CK204", Severity.ERROR, "zip record CRC32 mismatch (data corrupted)")
    ZIP_COMPRESSED = ("CK205", Severity.ERROR, "compressed zip record (torch never compresses)")
    ZIP_BAD_NAME = ("CK206", Severity.ERROR, "zip record name is absolute or contains '..'")
    ZIP_NO_PICKLE = ("CK207", Severity.ERROR, "torch zip has no data.pkl")
    ZIP_CORRUPT = ("CK208", Severity.ERROR, "zip structure corrupt")
    LEGACY_TRUNCATED = ("CK209", Severity.ERROR, "legacy torch file truncated")
    BYTEORDER = ("CK210", Severity.WARNING, "checkpoint byte order differs from this machine")
    ZIP_READERS_DIFFER = ("CK220", Severity.ERROR,
                          "zip readers disagree: torch's reader sees other records than zipfile")
    ZIP_ENTRY_FLAGS = ("CK221", Severity.ERROR,
                       "zip record has encryption/patch flags, a CRC mismatch or a local name "
                       "that differs from the central directory")

    # safetensors
    ST_HEADER_SMALL = ("CK301", Severity.ERROR, "safetensors file too small for a header")
    ST_HEADER_LENGTH = ("CK302", Severity.ERROR, "safetensors header length invalid")
    ST_HEADER_JSON = ("CK303", Severity.ERROR, "safetensors header is not valid JSON")
    ST_OFFSETS = ("CK304", Severity.ERROR, "safetensors offsets overlap, repeat or mismatch shapes")
    ST_COVERAGE = ("CK305", Severity.ERROR, "safetensors data not fully covered / file truncated")
    ST_ENTRY = ("CK306", Severity.ERROR, "safetensors entry has an invalid dtype or shape")
    ST_NO_FORMAT = ("CK307", Severity.INFO, "safetensors metadata lacks format=pt")

    # layout completeness
    MISSING_FILE = ("CK401", Severity.ERROR, "a file the framework needs to resume is missing")
    INDEX_SHARD_MISSING = ("CK402", Severity.ERROR, "index names a shard that does not exist")
    INDEX_TENSOR_MISSING = ("CK403", Severity.ERROR, "index names a tensor its shard lacks")
    STEP_MISMATCH = ("CK404", Severity.ERROR, "recorded step differs from the directory name")
    RNG_RANK_MISSING = ("CK405", Severity.WARNING, "RNG state missing for a rank")
    LEFTOVER_TMP = ("CK406", Severity.WARNING, "leftover temporary file or directory")
    DANGLING_LINK = ("CK407", Severity.ERROR, "dangling symlink")
    LATEST_TAG_MISSING = ("CK408", Severity.ERROR, "'latest' names a tag that does not exist")
    SHARD_COUNT = ("CK409", Severity.ERROR, "optimizer shard count differs from world size")
    ADAPTER_EMPTY = ("CK410", Severity.ERROR, "PEFT adapter holds no tensors")
    ADAPTER_MISMATCH = ("CK411", Severity.ERROR, "PEFT adapter tensors do not match its config")
    DCP_STORAGE = ("CK412", Severity.ERROR, "DCP storage file missing or shorter than metadata says")
    TRACKER_MISSING = ("CK413", Severity.ERROR, "checkpoint tracker file missing or invalid")
    INDEX_INVALID = ("CK414", Severity.ERROR, "weight index invalid or total_size mismatch")
    JSON_INVALID = ("CK415", Severity.ERROR, "JSON sidecar does not parse")
    MODEL_ONLY = ("CK416", Severity.WARNING, "checkpoint holds model weights only (no optimizer)")
    OPTIONAL_MISSING = ("CK417", Severity.WARNING, "optional resume state missing; resume skips it")
    UNREAD_MISSING = ("CK420", Severity.WARNING,
                      "a file the resume does not read is missing")
    LOAD_NOT_NEEDED = ("CK421", Severity.WARNING,
                       "file does not load, but the resume never reads it or survives the failure")
    NEWER_TAG_BROKEN = ("CK422", Severity.WARNING,
                        "a tag newer than 'latest' is incomplete; resume uses 'latest'")
    OLDER_TAG_RESUMABLE = ("CK423", Severity.INFO,
                           "'latest' names a broken tag; an older complete tag can be resumed")
    ADAPTER_TARGET_UNUSED = ("CK424", Severity.WARNING,
                             "PEFT target_modules without LoRA tensors in the adapter")

    # deep
    NONFINITE = ("CK501", Severity.ERROR, "tensor holds NaN or Inf")
    OPTIM_SHAPE = ("CK502", Severity.ERROR, "optimizer state shape differs from its parameter")
    MANIFEST_MISMATCH = ("CK503", Severity.ERROR, "file differs from the recorded manifest")
    MANIFEST_MISSING_FILE = ("CK504", Severity.ERROR, "file in the manifest is missing")
    CRC_NOT_RECORDED = ("CK510", Severity.INFO,
                        "zip records carry no CRC32 (saved with compute_crc32=False)")

    # loading
    LOAD_FAILS = ("CK601", Severity.ERROR, "the resuming framework cannot load this file")
    LOAD_NEEDS_ALLOW = ("CK602", Severity.WARNING, "loads only with an allow-list")
    LOAD_OK = ("CK603", Severity.INFO, "file loads")

    # repair / convert
    REPAIR_REFUSED = ("CK701", Severity.ERROR, "repair refused")
    REPAIR_VERIFY = ("CK702", Severity.ERROR, "rewritten file failed verification; original kept")
    LEFTOVER_WRITE = ("CK703", Severity.WARNING, "leftover from an interrupted ckptdoctor write")
    KEPT_ALLOWLISTED = ("CK704", Severity.INFO, "object kept and allow-listed (rewrite would break resume)")
    CONVERT_FAILED = ("CK705", Severity.ERROR, "conversion failed; no output written")
    CONVERT_VERIFY = ("CK706", Severity.ERROR,
                      "converted output differs from the source; output removed")
    CONVERT_NON_TENSOR = ("CK707", Severity.INFO,
                          "non-tensor entries not stored in the tensor file (JSON sidecar or dropped)")
    CONVERT_ALIAS = ("CK708", Severity.INFO, "shared tensor stored once; alias recorded in metadata")
    CONVERT_SKIPPED = ("CK709", Severity.WARNING,
                       "entries left out of the output (no --strip-prefix match, or training state)")
    WRITE_FAILED = ("CK710", Severity.ERROR,
                    "could not write (disk full, read-only, permission); originals untouched")
    CONVERT_CARRIED = ("CK730", Severity.INFO,
                       "config / tokenizer files carried over from the source or its run directory")
    CONVERT_NO_CONFIG = ("CK731", Severity.WARNING,
                         "no config.json found to carry over; from_pretrained needs one")
    CONVERT_LEFT_BEHIND = ("CK732", Severity.WARNING,
                           "training state left behind by --weights-only (files listed with their state)")
    CONVERT_PARAMS = ("CK733", Severity.WARNING,
                      "params.json has no `model` section (Lingua builds the model from it)")
    RESHARD_FAILED = ("CK734", Severity.ERROR, "reshard failed; nothing written")
    RESHARD_PER_RANK = ("CK735", Severity.WARNING,
                        "per-rank state that cannot be split differs between ranks; copied from rank 0")
    RESHARD_DONE = ("CK736", Severity.INFO, "checkpoint resharded to a new data-parallel world size")

    # other formats
    NPY_OBJECT = ("CK801", Severity.WARNING, "numpy object array: loading runs a pickle")
    DCP_METADATA = ("CK802", Severity.ERROR, "DCP .metadata cannot be parsed safely")
    JSON_BAD = ("CK803", Severity.ERROR, "file looks like JSON but does not parse")
    NPY_HEADER = ("CK820", Severity.ERROR, "numpy header invalid (shape, dtype or keys)")
    DCP_PATH = ("CK821", Severity.ERROR,
                "DCP storage path escapes the checkpoint or names no regular file")

    # diff and estimates (CK900-CK949)
    DIFF_UNREADABLE = ("CK901", Severity.ERROR, "a side of the diff cannot be read")
    DIFF_KEYS = ("CK902", Severity.WARNING, "entries present on one side only")
    DIFF_RENAMED = ("CK903", Severity.INFO, "keys renamed by a prefix")
    DIFF_SHAPE = ("CK904", Severity.ERROR, "tensor shape differs")
    DIFF_DTYPE = ("CK905", Severity.WARNING, "tensor dtype differs")
    DIFF_VALUES = ("CK906", Severity.WARNING, "tensor values differ beyond --rtol/--atol")
    DIFF_NONFINITE = ("CK907", Severity.WARNING, "tensor holds NaN or Inf on one side")
    DIFF_ZERO = ("CK908", Severity.INFO, "tensor is all zeros")
    DIFF_STATE = ("CK909", Severity.WARNING, "training state differs (step, epoch, lr, scheduler, values)")
    DIFF_RNG = ("CK910", Severity.WARNING, "RNG state differs")
    DIFF_STATE_MISSING = ("CK911", Severity.ERROR,
                          "training state present on one side only: resume restarts it")
    DIFF_RANKS = ("CK912", Severity.WARNING, "per-rank files differ")
    NOT_RESUME_EQUIVALENT = ("CK913", Severity.ERROR,
                             "B would not continue training exactly as A would")
    EST_OVER_RAM = ("CK920", Severity.WARNING, "resume needs more CPU RAM than available")
    EST_OVER_GPU = ("CK921", Severity.WARNING, "resume needs more GPU memory than given")
    EST_PARTIAL = ("CK922", Severity.INFO, "memory estimate incomplete")
    GATE_FAILED = ("CK930", Severity.ERROR, "the pre-resume gate refused the checkpoint")

    @property
    def code(self) -> str:
        return self.value

    def finding(self, path: str, message: str = "", hint: str = "",
                severity: Severity | None = None, **detail) -> Finding:
        return Finding(self.value, severity if severity is not None else self.severity, path,
                       message or self.title, hint, dict(detail))


BY_CODE = {c.value: c for c in Code}


def select(findings: list[Finding], select: list[str] | None, ignore: list[str] | None
           ) -> list[Finding]:
    """Keep findings whose code starts with a --select prefix and none of the --ignore ones."""
    out = []
    for f in findings:
        if select and not any(f.code.startswith(p) for p in select):
            continue
        if ignore and any(f.code.startswith(p) for p in ignore):
            continue
        out.append(f)
    return out
