"The pretraining path: reserved seeds, no referring expression, a short run through the real loop, and resuming."
import pytest
import torch

from aurora_nb.config import get_config
from aurora_nb.pretrain import (PRETRAIN_SEEDS, TRAIN_SEED, check_pretrain_seed, checkpoints, contains_referring_expression,
                                pretrain, pretrain_clip, pretrain_examples, referring_expressions)
from aurora_nb.model import weights_fingerprint


@pytest.mark.parametrize("seed", [0, 1, 2, 42, 999, PRETRAIN_SEEDS.stop])
def test_seed_guard_refuses_demo_seeds(seed):
    with pytest.raises(ValueError, match="not reserved"): check_pretrain_seed(seed)
    with pytest.raises(ValueError, match="not reserved"): pretrain_clip(seed, 0)


def test_seed_guard_refuses_the_run_seed():
    check_pretrain_seed(1005)
    with pytest.raises(ValueError, match="run's seed"): check_pretrain_seed(1005, get_config("tiny", ["seed=1005"]))


def test_no_example_contains_a_referring_expression():
    n = 0
    for i in range(30):
        clip = pretrain_clip(TRAIN_SEED, i)
        assert referring_expressions(clip)  # the generator's expressions for this clip are there to compare with
        for ex in pretrain_examples(clip):
            assert not contains_referring_expression(ex, clip), (i, ex["expression"], ex["answer"])
            n += 1
    assert n > 100


def test_short_run_and_resume_match_an_uninterrupted_run(tmp_path):
    cfg = get_config("tiny", ["data.system_prompt=none"])  # shorter rows: the same path, faster
    kw = dict(steps=4, clips=2, batch_size=2, save_every=2, device="cpu", progress=False)
    full, s_full = pretrain(cfg, tmp_path / "a", **kw)
    assert [p.name for p in checkpoints(tmp_path / "a")] == ["checkpoint-2", "checkpoint-4"]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in s_full["history"])
    assert {r["task"] for r in s_full["history"]} <= {"see", "hear", "segment"}
    _, s_cut = pretrain(cfg, tmp_path / "b", stop_after=2, **kw)  # interrupted after the checkpoint at step 2
    assert s_cut["step"] == 2
    resumed, s_res = pretrain(cfg, tmp_path / "b", **kw)
    assert s_res["step"] == 4 and len(s_res["history"]) == 4
    assert s_res["history"] == s_full["history"]  # same batches, same losses
    assert weights_fingerprint(resumed) == weights_fingerprint(full)
