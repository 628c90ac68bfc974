"""Peak memory of one `repair`, run by tests/test_repair_memory.py in a fresh process.

    python repair_mem.py CKPT [CONSUMER]   prints a JSON line {"base": KiB, "peak": KiB, ...}

`base` is the process's peak RSS (getrusage ru_maxrss) after the imports, before repairing;
`peak` the peak RSS after it (planning, writing, verification and the resume-equivalence diff
included). DeepSpeed is imported before the baseline when it is installed: the diff's loader
imports the classes the written allow-list names (LossScaler...), a fixed cost that does not
grow with the file and is not the repair's."""

import contextlib
import json
import resource
import sys

import torch  # noqa: F401  (imported before the baseline: its footprint is not the repair's)

with contextlib.suppress(ImportError):
    import deepspeed  # noqa: F401

from ckptdoctor.repair import repair

ckpt = sys.argv[1]
consumer = sys.argv[2] if len(sys.argv) > 2 else "torch"
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = repair(ckpt, consumer=consumer)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"base": base, "peak": peak, "exit": result.exit_code,
                  "outcomes": {o.rel: str(o.status) for o in result.outcomes}}))
