"""GRPO speed on tiny models, one run: (1) rollout time per group, one shared multimodal prefill (`sample_group`)
against `generate` on G copies of the prompt; (2) one text-only GRPO step (G rollouts, one log-prob pass, `grpo_loss`,
backward, AdamW) against trl 1.16's `GRPOTrainer` step, same model, prompts, G, lengths and β.

    .venv/bin/python benchmarks/bench_grpo.py [--G 3] [--max-new-tokens 32] [--repeats 3]
"""
import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1"); os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch

from aurora_nb.config import get_config, resolve_path
from aurora_nb.cot import build_messages
from aurora_nb.data import RefAVSDataset
from aurora_nb.grpo import grpo_loss, group_advantages, repeat_group, sample_group
from aurora_nb.model import AuroraCollator, build_model, generate_answers


def best(fn, repeats):
    "Fastest of `repeats` timed calls (after one warm-up)."
    fn(); ts = []
    for _ in range(repeats):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return min(ts)


def rollouts(G, n, repeats):
    cfg = get_config("tiny", {"model.trainable": "lora", "model.lora.dropout": 0.0})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    item = RefAVSDataset(resolve_path(cfg.data.root), "train")[0]
    prompt = AuroraCollator(model.processor, cfg, answer_key=None, build_messages=build_messages)([item])
    grp = repeat_group(prompt, G)
    shared = best(lambda: sample_group(model, prompt, G, n), repeats)
    naive = best(lambda: generate_answers(model, grp, max_new_tokens=n, do_sample=True, top_p=0.9, temperature=1.0), repeats)
    return prompt["input_ids"].shape[1], shared, naive


def text_steps(G, n, repeats):
    from datasets import Dataset
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
    from trl import GRPOConfig, GRPOTrainer
    tok = AutoTokenizer.from_pretrained(str(resolve_path("data/tokenizer")))
    def lm():
        torch.manual_seed(0)
        return Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id))
    prompts = ["The object making a low-pitched, pulsing sound."] * 8
    reward = lambda completions, **_: [float(len(c)) for c in completions]
    # trl: beta 0 (a non-zero beta would load a reference copy from the hub); the same for ours
    with tempfile.TemporaryDirectory() as d:
        args = GRPOConfig(output_dir=d, loss_type="grpo", beta=0.0, num_generations=G, per_device_train_batch_size=G,
                          max_completion_length=n, use_cpu=True, report_to=[], activation_checkpointing=False,
                          max_steps=1 + repeats, logging_steps=1000, save_strategy="no", disable_tqdm=True,
                          generation_kwargs={"min_new_tokens": n})
        tr = GRPOTrainer(model=lm(), reward_funcs=[reward], args=args, train_dataset=Dataset.from_dict({"prompt": prompts}),
                         processing_class=tok)
        times = []
        from transformers import TrainerCallback
        class T(TrainerCallback):
            def on_step_begin(self, *a, **k): self.t = time.perf_counter()
            def on_step_end(self, *a, **k): times.append(time.perf_counter() - self.t)
        tr.add_callback(T()); tr.train()
        trl_s = min(times[1:])
    model = lm()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    enc = tok([prompts[0]], return_tensors="pt")
    def ours():
        with torch.no_grad():
            seq = model.generate(**enc, do_sample=True, top_p=1.0, temperature=1.0, max_new_tokens=n, min_new_tokens=n,
                                 num_return_sequences=G, pad_token_id=tok.pad_token_id)
        P = enc["input_ids"].shape[1]
        comp = seq[:, P:]
        texts = tok.batch_decode(comp)
        adv = group_advantages(torch.tensor(reward(texts)), G)
        h = model.model(input_ids=seq).last_hidden_state[:, P - 1:-1]  # [G, n, d]
        lp = torch.log_softmax(model.lm_head(h).float(), -1).gather(-1, comp[..., None])[..., 0]
        loss = grpo_loss(lp, adv, torch.ones_like(lp), beta=0.0).loss
        opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step()
    return best(ours, repeats), trl_s


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--G", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=32, help="an untrained model never stops: every rollout's length")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    L, shared, naive = rollouts(a.G, a.max_new_tokens, a.repeats)
    print(f"rollouts, G={a.G}, prompt {L} tokens, {a.max_new_tokens} new tokens: shared prefill {shared:.3f} s, "
          f"generate on G copies {naive:.3f} s, ratio {shared / naive:.2f} (goal <= 0.6)")
    ours, trl_s = text_steps(a.G, a.max_new_tokens, a.repeats)
    print(f"text-only GRPO step, G={a.G}, {a.max_new_tokens} tokens: ours {ours:.3f} s, trl GRPOTrainer {trl_s:.3f} s, "
          f"ratio {ours / trl_s:.2f} (goal <= 1.0)")


if __name__ == "__main__":
    main()
