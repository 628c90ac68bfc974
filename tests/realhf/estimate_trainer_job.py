"""A real transformers Trainer on CPU, one process, run by tests/test_estimate.py.

    python estimate_trainer_job.py save   OUT   one AdamW step on a GPT-2 with a 50k vocabulary
                                                (~13M parameters), saved: OUT/checkpoint-1
    python estimate_trainer_job.py resume OUT   a fresh model and Trainer, then
                                                trainer.train(resume_from_checkpoint=...)
                                                measured up to the first step (a callback's
                                                on_step_begin); writes OUT.peak.json
The peak is the kernel's high-water mark (VmHWM) after resetting it to the current RSS
(/proc/self/clear_refs) just before train(): what the resume adds to a process that already
holds its model, as a resuming training script does. The Trainer loads model.safetensors,
copies it into the model and drops it, then builds the optimizer and torch.loads optimizer.pt
(and scheduler.pt, rng_state.pth, trainer_state.json) before the first step."""

import contextlib
import ctypes
import gc
import io
import json
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fixtures import factory as F
from transformers import Trainer, TrainerCallback, TrainingArguments

mode, out = sys.argv[1], sys.argv[2]
VOCAB = 50_000
model = F.tiny_gpt2(0, vocab_size=VOCAB, n_embd=256, n_layer=1, n_head=2)
args = TrainingArguments(output_dir=out, max_steps=1, save_strategy="steps", save_steps=1,
                         per_device_train_batch_size=2, use_cpu=True, report_to=[],
                         disable_tqdm=True, logging_strategy="no", dataloader_num_workers=0,
                         seed=0)
trainer = Trainer(model=model, args=args,
                  train_dataset=F.tiny_dataset(n=4, seq_len=8, vocab_size=VOCAB))


def status(field):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(field + ":"))


if mode == "save":
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.train()
    sys.exit(0)

class Resumed(Exception):
    pass


class MeasureUntilFirstStep(TrainerCallback):
    """The resume is over when the first step begins: record, then stop the run there."""

    def on_step_begin(self, args, state, control, **kw):
        peak, after = status("VmHWM") - base, status("VmRSS") - base  # before any temporary
        # the load happened: a fresh AdamW has no moments until the checkpoint's are loaded
        moments = sum(s["exp_avg"].abs().sum().item() for s in trainer.optimizer.state.values())
        with open(f"{out}.peak.json", "w") as fh:
            json.dump({"peak": peak, "exp_avg_abs": moments, "global_step": state.global_step,
                       "after": after}, fh)
        raise Resumed


trainer.add_callback(MeasureUntilFirstStep())
ckpt = f"{out}/checkpoint-1"
# freed heap back to the kernel (the test fixes M_MMAP_THRESHOLD), then the high-water mark
# reset, so the RSS shows what the resume allocates
gc.collect()
ctypes.CDLL("libc.so.6").malloc_trim(0)
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # VmHWM := VmRSS
base = status("VmHWM")
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(Resumed):
    trainer.train(resume_from_checkpoint=ckpt)
