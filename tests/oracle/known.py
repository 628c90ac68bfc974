"""Where `validate` and the real resume disagree today, per (framework, damage, mode).

Each entry becomes ``xfail(strict=True)``: once validate is fixed the test XPASSes, which
fails the run, and the entry must be deleted.  The reasons were measured by the oracle
(validate's error codes vs. what the framework's own resume did)."""

KNOWN: dict[tuple[str, str, str], str] = {
    ('hf_trainer', 'none', 'load'):
        'disagrees: validate --load exit 1 (CK601) vs real resume healthy',
    ('hf_trainer', 'none', 'deep'):
        'disagrees: validate --deep exit 1 (CK502) vs real resume healthy',
    ('hf_trainer', 'delete config.json', 'load'):
        'disagrees: validate --load exit 1 (CK601) vs real resume healthy',
    ('hf_trainer', 'delete config.json', 'deep'):
        'disagrees: validate --deep exit 1 (CK502) vs real resume healthy',
    ('hf_trainer', 'delete generation_config.json', 'load'):
        'disagrees: validate --load exit 1 (CK601) vs real resume healthy',
    ('hf_trainer', 'delete generation_config.json', 'deep'):
        'disagrees: validate --deep exit 1 (CK502) vs real resume healthy',
    ('hf_trainer', 'delete optimizer.pt', 'static'):
        'disagrees: validate exit 0 vs real resume resumes, different loss',
    ('hf_trainer', 'delete optimizer.pt', 'deep'):
        'disagrees: validate --deep exit 0 vs real resume resumes, different loss',
    ('hf_trainer', 'delete rng_state.pth', 'static'):
        'disagrees: validate exit 0 vs real resume resumes, different loss',
    ('hf_trainer', 'delete scheduler.pt', 'static'):
        'disagrees: validate exit 0 vs real resume resumes, different loss',
    ('hf_trainer', 'delete training_args.bin', 'deep'):
        'disagrees: validate --deep exit 1 (CK502) vs real resume healthy',
    ('hf_trainer', 'truncate config.json @-1', 'load'):
        'disagrees: validate --load exit 1 (CK601) vs real resume healthy',
    ('hf_trainer', 'truncate config.json @-1', 'deep'):
        'disagrees: validate --deep exit 1 (CK502) vs real resume healthy',
    ('hf_trainer', 'truncate generation_config.json @0', 'static'):
        'disagrees: validate exit 1 (CK003) vs real resume healthy',
    ('hf_trainer', 'truncate generation_config.json @0', 'load'):
        'disagrees: validate --load exit 1 (CK003, CK601) vs real resume healthy',
    ('hf_trainer', 'truncate generation_config.json @0', 'deep'):
        'disagrees: validate --deep exit 1 (CK003, CK502) vs real resume healthy',
    ('hf_trainer', 'truncate generation_config.json @half', 'static'):
        'disagrees: validate exit 1 (CK803) vs real resume healthy',
    ('hf_trainer', 'truncate generation_config.json @half', 'load'):
        'disagrees: validate --load exit 1 (CK601, CK803) vs real resume healthy',
    ('hf_trainer', 'truncate generation_config.json @half', 'deep'):
        'disagrees: validate --deep exit 1 (CK502, CK803) vs real resume healthy',
    ('hf_trainer', 'truncate generation_config.json @-1', 'load'):
        'disagrees: validate --load exit 1 (CK601) vs real resume healthy',
    ('hf_trainer', 'truncate generation_config.json @-1', 'deep'):
        'disagrees: validate --deep exit 1 (CK502) vs real resume healthy',
    ('hf_trainer', 'truncate trainer_state.json @-1', 'load'):
        'disagrees: validate --load exit 1 (CK601) vs real resume healthy',
    ('hf_trainer', 'truncate trainer_state.json @-1', 'deep'):
        'disagrees: validate --deep exit 1 (CK502) vs real resume healthy',
    ('hf_trainer', 'truncate training_args.bin @0', 'static'):
        'disagrees: validate exit 1 (CK003) vs real resume healthy',
    ('hf_trainer', 'truncate training_args.bin @0', 'load'):
        'disagrees: validate --load exit 1 (CK003) vs real resume healthy',
    ('hf_trainer', 'truncate training_args.bin @0', 'deep'):
        'disagrees: validate --deep exit 1 (CK003, CK502) vs real resume healthy',
    ('hf_trainer', 'truncate training_args.bin @half', 'static'):
        'disagrees: validate exit 1 (CK201) vs real resume healthy',
    ('hf_trainer', 'truncate training_args.bin @half', 'load'):
        'disagrees: validate --load exit 1 (CK201) vs real resume healthy',
    ('hf_trainer', 'truncate training_args.bin @half', 'deep'):
        'disagrees: validate --deep exit 1 (CK201, CK502) vs real resume healthy',
    ('hf_trainer', 'truncate training_args.bin @-1', 'static'):
        'disagrees: validate exit 1 (CK201) vs real resume healthy',
    ('hf_trainer', 'truncate training_args.bin @-1', 'load'):
        'disagrees: validate --load exit 1 (CK201) vs real resume healthy',
    ('hf_trainer', 'truncate training_args.bin @-1', 'deep'):
        'disagrees: validate --deep exit 1 (CK201, CK502) vs real resume healthy',
    ('hf_trainer', 'NaN weight', 'static'):
        'disagrees: validate exit 0 vs real resume resumes, different loss',
    ('hf_trainer', 'stray tmp dir', 'static'):
        'disagrees: validate exit 1 (CK601) vs real resume healthy',
    ('hf_trainer', 'stray tmp dir', 'load'):
        'disagrees: validate --load exit 1 (CK601) vs real resume healthy',
    ('hf_trainer', 'stray tmp dir', 'deep'):
        'disagrees: validate --deep exit 1 (CK502, CK601) vs real resume healthy',
    ('hf_trainer', 'numpy-1 training_args.bin', 'load'):
        'disagrees: validate --load exit 1 (CK601) vs real resume healthy',
    ('hf_trainer', 'numpy-1 training_args.bin', 'deep'):
        'disagrees: validate --deep exit 1 (CK502) vs real resume healthy',
    ('hf_peft', 'none', 'load'):
        'disagrees: validate --load exit 1 (CK601) vs real resume healthy',
    ('hf_peft', 'delete README.md', 'load'):
        'disagrees: validate --load exit 1 (CK601) vs real resume healthy',
    ('hf_peft', 'delete adapter_config.json', 'static'):
        'disagrees: validate exit 1 (CK401) vs real resume healthy',
    ('hf_peft', 'delete adapter_config.json', 'load'):
        'disagrees: validate --load exit 1 (CK401, CK601) vs real resume healthy',
    ('hf_peft', 'delete adapter_config.json', 'deep'):
        'disagrees: validate --deep exit 1 (CK401) vs real resume healthy',
    ('hf_peft', 'delete optimizer.pt', 'static'):
        'disagrees: validate exit 0 vs real resume resumes, different loss',
    ('hf_peft', 'delete optimizer.pt', 'deep'):
        'disagrees: validate --deep exit 0 vs real resume resumes, different loss',
    ('hf_peft', 'delete rng_state.pth', 'load'):
        'disagrees: validate --load exit 1 (CK601) vs real resume healthy',
    ('hf_peft', 'delete scheduler.pt', 'static'):
        'disagrees: validate exit 0 vs real resume resumes, different loss',
    ('hf_peft', 'delete scheduler.pt', 'deep'):
        'disagrees: validate --deep exit 0 vs real resume resumes, different loss',
    ('hf_peft', 'truncate README.md @0', 'static'):
        'disagrees: validate exit 1 (CK003) vs real resume healthy',
    ('hf_peft', 'truncate README.md @0', 'load'):
        'disagrees: validate --load exit 1 (CK003, CK601) vs real resume healthy',
    ('hf_peft', 'truncate README.md @0', 'deep'):
        'disagrees: validate --deep exit 1 (CK003) vs real resume healthy',
    ('hf_peft', 'truncate README.md @half', 'load'):
        'disagrees: validate --load exit 1 (CK601) vs real resume healthy',
    ('hf_peft', 'truncate README.md @-1', 'load'):
        'disagrees: validate --load exit 1 (CK601) vs real resume healthy',
    ('hf_peft', 'truncate adapter_config.json @0', 'static'):
        'disagrees: validate exit 1 (CK003) vs real resume healthy',
    ('hf_peft', 'truncate adapter_config.json @0', 'load'):
        'disagrees: validate --load exit 1 (CK003, CK601) vs real resume healthy',
    ('hf_peft', 'truncate adapter_config.json @0', 'deep'):
        'disagrees: validate --deep exit 1 (CK003) vs real resume healthy',
    ('hf_peft', 'truncate adapter_config.json @half', 'static'):
        'disagrees: validate exit 1 (CK415, CK803) vs real resume healthy',
    ('hf_peft', 'truncate adapter_config.json @half', 'load'):
        'disagrees: validate --load exit 1 (CK415, CK601, CK803) vs real resume healthy',
    ('hf_peft', 'truncate adapter_config.json @half', 'deep'):
        'disagrees: validate --deep exit 1 (CK415, CK803) vs real resume healthy',
    ('hf_peft', 'truncate adapter_config.json @-1', 'static'):
        'disagrees: validate exit 1 (CK415, CK803) vs real resume healthy',
    ('hf_peft', 'truncate adapter_config.json @-1', 'load'):
        'disagrees: validate --load exit 1 (CK415, CK601, CK803) vs real resume healthy',
    ('hf_peft', 'truncate adapter_config.json @-1', 'deep'):
        'disagrees: validate --deep exit 1 (CK415, CK803) vs real resume healthy',
    ('hf_peft', 'truncate trainer_state.json @-1', 'load'):
        'disagrees: validate --load exit 1 (CK601) vs real resume healthy',
    ('hf_peft', 'truncate training_args.bin @0', 'static'):
        'disagrees: validate exit 1 (CK003) vs real resume healthy',
    ('hf_peft', 'truncate training_args.bin @0', 'load'):
        'disagrees: validate --load exit 1 (CK003) vs real resume healthy',
    ('hf_peft', 'truncate training_args.bin @0', 'deep'):
        'disagrees: validate --deep exit 1 (CK003) vs real resume healthy',
    ('hf_peft', 'truncate training_args.bin @half', 'static'):
        'disagrees: validate exit 1 (CK201) vs real resume healthy',
    ('hf_peft', 'truncate training_args.bin @half', 'load'):
        'disagrees: validate --load exit 1 (CK201) vs real resume healthy',
    ('hf_peft', 'truncate training_args.bin @half', 'deep'):
        'disagrees: validate --deep exit 1 (CK201) vs real resume healthy',
    ('hf_peft', 'truncate training_args.bin @-1', 'static'):
        'disagrees: validate exit 1 (CK201) vs real resume healthy',
    ('hf_peft', 'truncate training_args.bin @-1', 'load'):
        'disagrees: validate --load exit 1 (CK201) vs real resume healthy',
    ('hf_peft', 'truncate training_args.bin @-1', 'deep'):
        'disagrees: validate --deep exit 1 (CK201) vs real resume healthy',
    ('hf_peft', 'NaN weight', 'static'):
        'disagrees: validate exit 0 vs real resume resumes, different loss',
    ('hf_peft', 'NaN weight', 'deep'):
        'disagrees: validate --deep exit 0 vs real resume resumes, different loss',
    ('hf_peft', 'stray tmp dir', 'static'):
        'disagrees: validate exit 1 (CK601) vs real resume healthy',
    ('hf_peft', 'stray tmp dir', 'load'):
        'disagrees: validate --load exit 1 (CK601) vs real resume healthy',
    ('hf_peft', 'stray tmp dir', 'deep'):
        'disagrees: validate --deep exit 1 (CK601) vs real resume healthy',
    ('hf_deepspeed', 'none', 'load'):
        'disagrees: validate --load exit 1 vs real resume healthy',
    ('hf_deepspeed', 'delete config.json', 'load'):
        'disagrees: validate --load exit 1 (CK601) vs real resume healthy',
    ('hf_deepspeed', 'delete generation_config.json', 'load'):
        'disagrees: validate --load exit 1 (CK601) vs real resume healthy',
    ('hf_deepspeed', 'delete model.safetensors', 'load'):
        'disagrees: validate --load exit 1 (CK601) vs real resume healthy',
    ('hf_deepspeed', 'delete rng_state.pth', 'static'):
        'disagrees: validate exit 0 vs real resume resumes, different loss',
    ('hf_deepspeed', 'delete rng_state.pth', 'deep'):
        'disagrees: validate --deep exit 0 vs real resume resumes, different loss',
    ('hf_deepspeed', 'delete zero_to_fp32.py', 'load'):
        'disagrees: validate --load exit 1 (CK601) vs real resume healthy',
    ('hf_deepspeed', 'delete zero_to_torch.py', 'load'):
        'disagrees: validate --load exit 1 (CK601) vs real resume healthy',
    ('hf_deepspeed', 'truncate config.json @half', 'static'):
        'disagrees: validate exit 1 (CK803) vs real resume healthy',
    ('hf_deepspeed', 'truncate config.json @half', 'load'):
        'disagrees: validate --load exit 1 (CK601, CK803) vs real resume healthy',
    ('hf_deepspeed', 'truncate config.json @half', 'deep'):
        'disagrees: validate --deep exit 1 (CK803) vs real resume healthy',
    ('hf_deepspeed', 'truncate generation_config.json @half', 'static'):
        'disagrees: validate exit 1 (CK803) vs real resume healthy',
    ('hf_deepspeed', 'truncate generation_config.json @half', 'load'):
        'disagrees: validate --load exit 1 (CK601, CK803) vs real resume healthy',
    ('hf_deepspeed', 'truncate generation_config.json @half', 'deep'):
        'disagrees: validate --deep exit 1 (CK803) vs real resume healthy',
    ('hf_deepspeed', 'truncate model.safetensors @half', 'static'):
        'disagrees: validate exit 1 (CK305) vs real resume healthy',
    ('hf_deepspeed', 'truncate model.safetensors @half', 'load'):
        'disagrees: validate --load exit 1 (CK305, CK601) vs real resume healthy',
    ('hf_deepspeed', 'truncate model.safetensors @half', 'deep'):
        'disagrees: validate --deep exit 1 (CK305) vs real resume healthy',
    ('hf_deepspeed', 'truncate training_args.bin @half', 'static'):
        'disagrees: validate exit 1 (CK201) vs real resume healthy',
    ('hf_deepspeed', 'truncate training_args.bin @half', 'load'):
        'disagrees: validate --load exit 1 (CK201) vs real resume healthy',
    ('hf_deepspeed', 'truncate training_args.bin @half', 'deep'):
        'disagrees: validate --deep exit 1 (CK201) vs real resume healthy',
    ('hf_deepspeed', 'truncate zero_to_fp32.py @half', 'load'):
        'disagrees: validate --load exit 1 (CK601) vs real resume healthy',
    ('hf_deepspeed', 'truncate zero_to_torch.py @half', 'load'):
        'disagrees: validate --load exit 1 (CK601) vs real resume healthy',
    ('hf_deepspeed', 'stray tmp dir', 'static'):
        'disagrees: validate exit 1 (CK601) vs real resume healthy',
    ('hf_deepspeed', 'stray tmp dir', 'load'):
        'disagrees: validate --load exit 1 (CK601) vs real resume healthy',
    ('hf_deepspeed', 'stray tmp dir', 'deep'):
        'disagrees: validate --deep exit 1 (CK601) vs real resume healthy',
    ('accelerate', 'none', 'deep'):
        'disagrees: validate --deep exit 1 (CK502) vs real resume healthy',
    ('accelerate', 'delete optimizer.bin', 'static'):
        'disagrees: validate exit 0 vs real resume fails (FileNotFoundError)',
    ('accelerate', 'delete optimizer.bin', 'load'):
        'disagrees: validate --load exit 0 vs real resume fails (FileNotFoundError)',
    ('accelerate', 'delete optimizer.bin', 'deep'):
        'disagrees: validate --deep exit 0 vs real resume fails (FileNotFoundError)',
    ('accelerate', 'delete random_states_0.pkl', 'static'):
        'disagrees: validate exit 0 vs real resume resumes, different loss',
    ('accelerate', 'delete random_states_0.pkl', 'load'):
        'disagrees: validate --load exit 0 vs real resume resumes, different loss',
    ('accelerate', 'delete scheduler.bin', 'static'):
        'disagrees: validate exit 0 vs real resume fails (FileNotFoundError)',
    ('accelerate', 'delete scheduler.bin', 'load'):
        'disagrees: validate --load exit 0 vs real resume fails (FileNotFoundError)',
    ('accelerate', 'NaN weight', 'static'):
        'disagrees: validate exit 0 vs real resume resumes, NaN loss',
    ('accelerate', 'NaN weight', 'load'):
        'disagrees: validate --load exit 0 vs real resume resumes, NaN loss',
    ('accelerate', 'stray tmp dir', 'static'):
        'disagrees: validate exit 1 (CK201) vs real resume healthy',
    ('accelerate', 'stray tmp dir', 'load'):
        'disagrees: validate --load exit 1 (CK201) vs real resume healthy',
    ('accelerate', 'stray tmp dir', 'deep'):
        'disagrees: validate --deep exit 1 (CK201, CK502) vs real resume healthy',
    ('accelerate', 'numpy-1 random_states_0.pkl', 'deep'):
        'disagrees: validate --deep exit 1 (CK502) vs real resume healthy',
    ('accelerate', 'SIGKILL at optimizer.bin', 'static'):
        'disagrees: validate exit 0 vs real resume fails (FileNotFoundError)',
    ('accelerate', 'SIGKILL at optimizer.bin', 'load'):
        'disagrees: validate --load exit 0 vs real resume fails (FileNotFoundError)',
    ('accelerate', 'SIGKILL at optimizer.bin', 'deep'):
        'disagrees: validate --deep exit 0 vs real resume fails (FileNotFoundError)',
    ('accelerate', 'SIGKILL at random_states_0.pkl', 'static'):
        'disagrees: validate exit 0 vs real resume resumes, different loss',
    ('accelerate', 'SIGKILL at random_states_0.pkl', 'load'):
        'disagrees: validate --load exit 0 vs real resume resumes, different loss',
    ('lightning', 'NaN weight', 'static'):
        'disagrees: validate exit 0 vs real resume resumes, NaN loss',
    ('lightning', 'NaN weight', 'load'):
        'disagrees: validate --load exit 0 vs real resume resumes, NaN loss',
    ('lightning', 'NaN weight', 'deep'):
        'disagrees: validate --deep exit 0 vs real resume resumes, NaN loss',
    ('deepspeed', 'truncate zero_to_fp32.py @0', 'static'):
        'disagrees: validate exit 1 (CK003) vs real resume healthy',
    ('deepspeed', 'truncate zero_to_fp32.py @0', 'load'):
        'disagrees: validate --load exit 1 (CK003) vs real resume healthy',
    ('deepspeed', 'truncate zero_to_fp32.py @0', 'deep'):
        'disagrees: validate --deep exit 1 (CK003) vs real resume healthy',
    ('deepspeed', 'truncate zero_to_torch.py @0', 'static'):
        'disagrees: validate exit 1 (CK003) vs real resume healthy',
    ('deepspeed', 'truncate zero_to_torch.py @0', 'load'):
        'disagrees: validate --load exit 1 (CK003) vs real resume healthy',
    ('deepspeed', 'truncate zero_to_torch.py @0', 'deep'):
        'disagrees: validate --deep exit 1 (CK003) vs real resume healthy',
    ('deepspeed', 'NaN weight', 'static'):
        'disagrees: validate exit 0 vs real resume resumes, NaN loss',
    ('deepspeed', 'NaN weight', 'load'):
        'disagrees: validate --load exit 0 vs real resume resumes, NaN loss',
    ('deepspeed', 'NaN weight', 'deep'):
        'disagrees: validate --deep exit 0 vs real resume resumes, NaN loss',
    ('deepspeed', 'cut-short newer tag', 'static'):
        'disagrees: validate exit 1 (CK409) vs real resume healthy',
    ('deepspeed', 'cut-short newer tag', 'load'):
        'disagrees: validate --load exit 1 (CK409) vs real resume healthy',
    ('deepspeed', 'cut-short newer tag', 'deep'):
        'disagrees: validate --deep exit 1 (CK409) vs real resume healthy',
    ('fsdp2', 'NaN weight', 'static'):
        'disagrees: validate exit 0 vs real resume resumes, NaN loss',
    ('fsdp2', 'NaN weight', 'load'):
        'disagrees: validate --load exit 0 vs real resume resumes, NaN loss',
    ('fsdp2', 'NaN weight', 'deep'):
        'disagrees: validate --deep exit 0 vs real resume resumes, NaN loss',
    ('dcp', 'NaN weight', 'static'):
        'disagrees: validate exit 0 vs real resume resumes, NaN loss',
    ('dcp', 'NaN weight', 'load'):
        'disagrees: validate --load exit 0 vs real resume resumes, NaN loss',
    ('dcp', 'NaN weight', 'deep'):
        'disagrees: validate --deep exit 0 vs real resume resumes, NaN loss',
    ('lingua', 'delete params.json', 'static'):
        'disagrees: validate exit 1 (CK401) vs real resume healthy',
    ('lingua', 'delete params.json', 'load'):
        'disagrees: validate --load exit 1 (CK401) vs real resume healthy',
    ('lingua', 'delete params.json', 'deep'):
        'disagrees: validate --deep exit 1 (CK401) vs real resume healthy',
    ('lingua', 'truncate consolidated/consolidated.pth @0', 'static'):
        'disagrees: validate exit 1 (CK003) vs real resume healthy',
    ('lingua', 'truncate consolidated/consolidated.pth @0', 'load'):
        'disagrees: validate --load exit 1 (CK003) vs real resume healthy',
    ('lingua', 'truncate consolidated/consolidated.pth @0', 'deep'):
        'disagrees: validate --deep exit 1 (CK003) vs real resume healthy',
    ('lingua', 'truncate consolidated/consolidated.pth @half', 'static'):
        'disagrees: validate exit 1 (CK201) vs real resume healthy',
    ('lingua', 'truncate consolidated/consolidated.pth @half', 'load'):
        'disagrees: validate --load exit 1 (CK201) vs real resume healthy',
    ('lingua', 'truncate consolidated/consolidated.pth @half', 'deep'):
        'disagrees: validate --deep exit 1 (CK201) vs real resume healthy',
    ('lingua', 'truncate consolidated/consolidated.pth @-1', 'static'):
        'disagrees: validate exit 1 (CK201) vs real resume healthy',
    ('lingua', 'truncate consolidated/consolidated.pth @-1', 'load'):
        'disagrees: validate --load exit 1 (CK201) vs real resume healthy',
    ('lingua', 'truncate consolidated/consolidated.pth @-1', 'deep'):
        'disagrees: validate --deep exit 1 (CK201) vs real resume healthy',
    ('lingua', 'truncate consolidated/params.json @0', 'static'):
        'disagrees: validate exit 1 (CK003) vs real resume healthy',
    ('lingua', 'truncate consolidated/params.json @0', 'load'):
        'disagrees: validate --load exit 1 (CK003) vs real resume healthy',
    ('lingua', 'truncate consolidated/params.json @0', 'deep'):
        'disagrees: validate --deep exit 1 (CK003) vs real resume healthy',
    ('lingua', 'truncate consolidated/params.json @half', 'static'):
        'disagrees: validate exit 1 (CK803) vs real resume healthy',
    ('lingua', 'truncate consolidated/params.json @half', 'load'):
        'disagrees: validate --load exit 1 (CK803) vs real resume healthy',
    ('lingua', 'truncate consolidated/params.json @half', 'deep'):
        'disagrees: validate --deep exit 1 (CK803) vs real resume healthy',
    ('lingua', 'truncate consolidated/params.json @-1', 'static'):
        'disagrees: validate exit 1 (CK803) vs real resume healthy',
    ('lingua', 'truncate consolidated/params.json @-1', 'load'):
        'disagrees: validate --load exit 1 (CK803) vs real resume healthy',
    ('lingua', 'truncate consolidated/params.json @-1', 'deep'):
        'disagrees: validate --deep exit 1 (CK803) vs real resume healthy',
    ('lingua', 'truncate params.json @0', 'static'):
        'disagrees: validate exit 1 (CK003) vs real resume healthy',
    ('lingua', 'truncate params.json @0', 'load'):
        'disagrees: validate --load exit 1 (CK003) vs real resume healthy',
    ('lingua', 'truncate params.json @0', 'deep'):
        'disagrees: validate --deep exit 1 (CK003) vs real resume healthy',
    ('lingua', 'truncate params.json @half', 'static'):
        'disagrees: validate exit 1 (CK415, CK803) vs real resume healthy',
    ('lingua', 'truncate params.json @half', 'load'):
        'disagrees: validate --load exit 1 (CK415, CK803) vs real resume healthy',
    ('lingua', 'truncate params.json @half', 'deep'):
        'disagrees: validate --deep exit 1 (CK415, CK803) vs real resume healthy',
    ('lingua', 'truncate params.json @-1', 'static'):
        'disagrees: validate exit 1 (CK415, CK803) vs real resume healthy',
    ('lingua', 'truncate params.json @-1', 'load'):
        'disagrees: validate --load exit 1 (CK415, CK803) vs real resume healthy',
    ('lingua', 'truncate params.json @-1', 'deep'):
        'disagrees: validate --deep exit 1 (CK415, CK803) vs real resume healthy',
    ('lingua', 'SIGKILL at params.json', 'static'):
        'disagrees: validate exit 0 vs real resume fails (RuntimeError)',
    ('lingua', 'SIGKILL at params.json', 'load'):
        'disagrees: validate --load exit 0 vs real resume fails (RuntimeError)',
    ('lingua', 'SIGKILL at params.json', 'deep'):
        'disagrees: validate --deep exit 0 vs real resume fails (RuntimeError)',
}
