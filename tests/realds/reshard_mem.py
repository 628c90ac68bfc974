"""Peak memory of one `reshard`, run by tests/test_reshard_memory.py in a fresh process.

    python reshard_mem.py SRC DST M    prints a JSON line {"base": KiB, "peak": KiB}

`base` is the process's peak RSS (getrusage ru_maxrss) after the imports (for a DCP source also
torch.distributed.checkpoint and the DCP modules), before resharding;
`peak` the peak RSS after it (verification included). The growth, peak - base, is what the
reshard itself needed at its worst moment."""

import json
import os
import resource
import sys

import torch  # imported before the baseline: its footprint is not the reshard's

from ckptdoctor.reshard import reshard

src, dst, m = sys.argv[1], sys.argv[2], int(sys.argv[3])
if os.path.isfile(os.path.join(src, ".metadata")):  # DCP: its modules (~50 MB) likewise
    import torch.distributed.checkpoint  # noqa: F401

    import ckptdoctor.convert.dcp_to_torch
    import ckptdoctor.equivalence
    import ckptdoctor.reshard_dcp  # noqa: F401
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = reshard(src, dst, m)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"base": base, "peak": peak, "verified": result.verified}))
