"""A tiny real transformers Trainer run on CPU, run by tests/test_convert_matrix.py.

    python trainer_job.py plain     OUT   2 steps, save at step 2 -> OUT/checkpoint-2
    python trainer_job.py deepspeed OUT   the same through DeepSpeed ZeRO-2 (gloo, 1 rank)
The tokenizer (a word-level `tokenizers` model, no download) is passed to the Trainer, which
saves it into the checkpoint with config.json and generation_config.json."""

import sys
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fixtures import factory as F
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Trainer, TrainingArguments

mode, out = sys.argv[1], sys.argv[2]
vocab = {f"w{i}": i for i in range(128)}
vocab["[UNK]"] = 3
tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="w0",
                                 bos_token="w1", eos_token="w2")
model = F.tiny_llama(0)
g = torch.Generator().manual_seed(0)
data = []
for _ in range(8):
    ids = torch.randint(3, 128, (12,), generator=g)
    data.append({"input_ids": ids, "labels": ids.clone()})
extra = {}
if mode == "deepspeed":
    extra["deepspeed"] = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
                          "zero_optimization": {"stage": 2},
                          "optimizer": {"type": "AdamW",
                                        "params": {"lr": 1e-2, "torch_adam": True}}}
args = TrainingArguments(out, per_device_train_batch_size=2, max_steps=2, save_steps=2,
                         save_strategy="steps", use_cpu=True, report_to=[],
                         logging_strategy="no", learning_rate=1e-2, seed=0, disable_tqdm=True,
                         **extra)
Trainer(model=model, args=args, train_dataset=data, processing_class=hf_tok).train()
