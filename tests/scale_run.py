"""Launched by tests/test_scale.py: a short SFT (stage 0) or GRPO run of the tiny model, alone or as one of two gloo
processes under `accelerate launch`, which writes the trained weights for the equivalence check.

    python tests/scale_run.py sft OUT [KEY=VALUE ...]
    python tests/scale_run.py grpo INIT OUT [KEY=VALUE ...]     (INIT: a stage-2 run folder holding model/)

GRPO samples its rollouts; two processes draw from their own generators, so this script seeds each prompt's sampling
from the prompt's token ids: the same prompt gets the same rollouts whichever process samples it.
"""
import hashlib
import os
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

import aurora_nb.grpo
from aurora_nb.config import get_config
from aurora_nb.grpo import grpo_config, train_grpo
from aurora_nb.rewards import register_reward, reward_weights
from aurora_nb.sft import train_stage


@register_reward("test_vowels", overwrite=True)
def _vowels(text, **_):
    "A reward with spread on a random model's text, so the policy term has a gradient."
    letters = [c for c in text.lower() if c.isalpha()]
    return sum(c in "aeiou" for c in letters) / max(len(letters), 1)


_sample_group = aurora_nb.grpo.sample_group


def seeded_sample_group(model, batch, G, *args, generator=None, **kw):
    "`sample_group` with a generator seeded from the prompt's ids."
    seed = int(hashlib.sha256(str(batch["input_ids"].tolist()).encode()).hexdigest()[:8], 16)
    return _sample_group(model, batch, G, *args, generator=torch.Generator(device=model.device).manual_seed(seed), **kw)


class DumpWeights(TrainerCallback):
    "Write process 0's trainable parameters to OUT/weights.pt when training ends."
    def on_train_end(self, args, state, control, model=None, **kw):
        if args.process_index == 0:
            torch.save({n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
                       Path(args.output_dir) / "weights.pt")


if __name__ == "__main__":
    torch.set_num_threads(1)
    kind, *rest = sys.argv[1:]
    if kind == "sft":
        out, *overrides = rest
        train_stage(get_config("tiny", overrides), "teacher", out, callbacks=[DumpWeights()], progress=False)
    else:
        init, out, *overrides = rest
        if not os.environ.get("SCALE_RUN_UNSEEDED"): aurora_nb.grpo.sample_group = seeded_sample_group  # (unset: the mutation check)
        aurora_nb.grpo.reward_weights = lambda st: {**reward_weights(st), "test_vowels": 1.0}
        train_grpo(grpo_config(init, overrides=overrides), init, out, callbacks=[DumpWeights()], progress=False)
