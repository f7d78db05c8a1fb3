"""Device tests of aurora_nb.model: a model placed on a GPU runs forward, the cheap pass and inference as on the CPU.
Skipped without CUDA; run them on a GPU machine with `pytest -q tests/test_device.py`."""
import pytest
import torch

from aurora_nb.config import get_config
from aurora_nb.cot import build_messages, with_teacher_answers
from aurora_nb.data import RefAVSDataset
from aurora_nb.model import (build_model, completion_logprobs, from_pretrained, model_device, model_inputs, predict,
                             prepare_batch)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def pair(tmp_path_factory, repo_root):
    "The same tiny model on the CPU and, through `from_pretrained(device='cuda')`, on the GPU; two committed items."
    torch.manual_seed(0)
    cpu = build_model(get_config("tiny")).eval()
    folder = cpu.save_pretrained(tmp_path_factory.mktemp("m") / "m")
    gpu = from_pretrained(folder, device="cuda")
    ds = RefAVSDataset(repo_root / "data" / "synth", "train")
    return cpu, gpu, with_teacher_answers([ds[0], ds[2]])


def test_from_pretrained_puts_every_part_on_the_gpu(pair):
    _, gpu, _ = pair
    assert model_device(gpu).type == "cuda" and not gpu.training
    assert {p.device.type for p in gpu.parameters()} == {"cuda"}


def test_forward_and_cheap_pass_on_the_gpu_match_the_cpu(pair):
    cpu, gpu, items = pair
    batch = prepare_batch(cpu, items, answers=[it["answer"] for it in items], build_messages=build_messages)
    with torch.no_grad():
        a = cpu(**model_inputs(batch, model_device(cpu)))
        b = gpu(**model_inputs(batch, model_device(gpu)))
        lp_cpu, lp_gpu = completion_logprobs(cpu, batch), completion_logprobs(gpu, batch)
    assert b.mask_logits.device.type == "cuda" and lp_gpu.device.type == "cuda"
    torch.testing.assert_close(b.mask_logits.cpu(), a.mask_logits, atol=2e-2, rtol=2e-2)  # TF32 convolutions on the GPU
    torch.testing.assert_close(lp_gpu.cpu(), lp_cpu, atol=2e-2, rtol=2e-2)


def test_predict_on_the_gpu(pair):
    _, gpu, items = pair
    preds = predict(gpu, items, max_new_tokens=8, build_messages=build_messages)
    assert [tuple(p.mask_logits.shape) for p in preds] == [tuple(it["masks"].shape) for it in items]
    assert all(p.mask_logits.device.type == "cpu" and torch.isfinite(p.mask_logits).all() for p in preds)
    assert all("[SEG]" in p.text for p in preds)
