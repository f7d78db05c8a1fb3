"""Launched by tests/test_grpo_cli.py under `accelerate launch --num_processes 2 --cpu`: a short GRPO run that also
writes each process's trainable weights, so the test can check that the processes stayed in step."""
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

import aurora_nb.grpo
from aurora_nb.grpo import grpo_config, train_grpo
from aurora_nb.rewards import register_reward, reward_weights


@register_reward("test_vowels", overwrite=True)
def _vowels(text, **_):
    "A reward with spread on a random model's text, so each process's prompts give other gradients."
    letters = [c for c in text.lower() if c.isalpha()]
    return sum(c in "aeiou" for c in letters) / max(len(letters), 1)


class DumpWeights(TrainerCallback):
    "Write this process's trainable parameters to OUT/weights-rank<k>.pt when training ends."
    def on_train_end(self, args, state, control, model=None, **kw):
        sd = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
        torch.save(sd, Path(args.output_dir) / f"weights-rank{args.process_index}.pt")


if __name__ == "__main__":
    init, out, *overrides = sys.argv[1:]
    aurora_nb.grpo.reward_weights = lambda st: {**reward_weights(st), "test_vowels": 1.0}
    train_grpo(grpo_config(init, overrides=overrides), init, out, callbacks=[DumpWeights()], progress=False)
