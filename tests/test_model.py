"""Tests of aurora_nb.model on the tiny preset: shapes, trainable policy, [SEG] read-out, save/load, cache, SAM sizes."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import LogitsProcessor, LogitsProcessorList, SamModel

from aurora_nb.config import get_config
from aurora_nb.model import (MM_SUPPRESS, AuroraModel, adapt_sam_image_size, build_model, build_tokenizer, component_of,
                             decode_masks, from_pretrained, masks_to_original, model_inputs, predict, prepare_batch,
                             sam_config, sam_preprocess, sam_resized_hw, seg_hidden_states, seg_states_from_generate,
                             teacher_answer, trainable_table)

torch.set_num_threads(2)
H, W = 72, 96  # non-square native frames: exercises the pad/crop path


def make_item(seed: int, expression: str = "The object making a low-pitched, pulsing sound.", category: str = "gong"):
    "A synthetic item with the RefAVSDataset shapes (T=10, 10 s of 16 kHz audio)."
    rng = np.random.default_rng(seed)
    masks = np.zeros((10, H, W), np.uint8)
    masks[:, 10:40, 20:60] = 1
    return dict(frames=rng.integers(0, 255, (10, H, W, 3), dtype=np.uint8),
                audio=(rng.standard_normal(160000) * 0.1).astype(np.float32), masks=masks, expression=expression,
                category=category)


ITEMS = [make_item(0), make_item(1, "The silent object.", "whistle")]
ANSWERS = [teacher_answer(it["category"]) for it in ITEMS]


@pytest.fixture(scope="module")
def tiny():
    return build_model(get_config("tiny"))


def lora_cfg(**extra):
    "The full preset's trainable policy on tiny sizes (dropout 0 so outputs are deterministic)."
    o = {"model.trainable": "lora", "model.freeze_sam_encoder": True, "model.lora.dropout": 0.0, **extra}
    return get_config("tiny", o)


def test_tokenizer_seg_is_plain_added_token():
    tok = build_tokenizer(get_config("tiny"))
    seg = tok.convert_tokens_to_ids("[SEG]")
    assert "[SEG]" not in tok.all_special_tokens
    ids = tok("It is gong [SEG].")["input_ids"]
    assert seg in ids and tok.decode(ids, skip_special_tokens=True) == "It is gong [SEG]."
    # Qwen2.5-Omni specials pinned in the checkpoint's relative order
    order = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|VIDEO|>"]
    got = tok.convert_tokens_to_ids(order)
    assert got == sorted(got) and got[-1] - got[0] == 13


def test_forward_shapes(tiny):
    batch = prepare_batch(tiny, ITEMS, answers=ANSWERS)
    assert batch["sam_pixel_values"].shape == (2, 10, 3, 128, 128)
    out = tiny(**model_inputs(batch))
    assert out.mask_logits.shape == (2, 10, H, W)
    assert out.low_res_masks.shape == (2, 10, 64, 64)  # 128 px / patch 8 = 16x16 grid, x4
    assert out.seg_embeddings.shape == (2, 32) and out.seg_hidden.shape == (2, 64)
    assert out.seg_found.tolist() == [True, True]
    assert torch.isfinite(out.loss) and torch.isfinite(out.mask_logits).all()
    lab = batch["labels"][0]
    assert tiny.tokenizer.decode(lab[lab != -100]) == ANSWERS[0] + "<|im_end|>"


def test_seg_hidden_states_fallback_and_last():
    h = torch.arange(2 * 5 * 1.0).reshape(2, 5, 1)
    ids = torch.tensor([[0, 9, 1, 9, 2], [0, 0, 1, 2, 3]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [0, 1, 1, 1, 1]])  # right pad, left pad
    st, found = seg_hidden_states(h, ids, 9, mask)
    assert found.tolist() == [True, False]
    assert st[:, 0].tolist() == [3.0, 9.0]  # last [SEG] of row 0; last real token of row 1


def test_full_policy_gradients_reach_exactly_the_trainable_parts():
    model = build_model(lora_cfg())
    table = trainable_table(model)
    trained = set(table.index[(table.trainable > 0)]) - {"total"}
    assert trained == {"LoRA", "token rows", "projector", "mask decoder"}
    lora_names = [n for n, _ in model.named_parameters() if "lora_" in n]
    assert lora_names and all(".language_model." in n for n in lora_names)
    model.train()
    batch = prepare_batch(model, ITEMS, answers=ANSWERS)
    out = model(**model_inputs(batch))
    loss = out.loss + F.binary_cross_entropy_with_logits(out.mask_logits, batch["gt_masks"])
    loss.backward()
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, f"frozen {n} got a gradient"
        elif "iou_prediction_head" in n:
            continue  # the IoU head is trainable but no loss reads its output (as in the official code)
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"trainable {n} got no gradient"
    assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)
    assert all(component_of(n) in {"LoRA", "token rows", "projector", "mask decoder"}
               for n, p in model.named_parameters() if p.requires_grad)


class ForceSeg(LogitsProcessor):
    "Force [SEG] as new token number `at` (a random model would never emit it)."
    def __init__(self, prompt_len, at, seg):
        self.prompt_len, self.at, self.seg = prompt_len, at, seg

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] - self.prompt_len == self.at:
            scores[:] = -1e9
            scores[:, self.seg] = 0
        return scores


def test_seg_state_from_generate_equals_teacher_forced(tiny):
    tiny.eval()
    batch = prepare_batch(tiny, ITEMS)  # left-padded generation prompts of different lengths
    inputs = {k: v for k, v in model_inputs(batch).items() if k not in ("sam_pixel_values", "mask_size")}
    L = inputs["input_ids"].shape[1]
    with torch.no_grad():
        gen = tiny.thinker.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False,
                                    return_dict_in_generate=True, output_hidden_states=True,
                                    suppress_tokens=tiny.tokenizer.convert_tokens_to_ids(MM_SUPPRESS),
                                    logits_processor=LogitsProcessorList([ForceSeg(L, 2, tiny.seg_token_id)]))
        g_state, g_found = seg_states_from_generate(gen, inputs["attention_mask"], tiny.seg_token_id)
        seqs = gen.sequences
        mask = torch.cat([inputs["attention_mask"], torch.ones_like(seqs[:, L:])], 1)
        mm = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
        tf = tiny.thinker(input_ids=seqs, attention_mask=mask, output_hidden_states=True, **mm)
        t_state, t_found = seg_hidden_states(tf.hidden_states[-1], seqs, tiny.seg_token_id, mask)
    assert g_found.all() and t_found.all()
    torch.testing.assert_close(g_state, t_state, atol=1e-5, rtol=1e-5)


def test_predict_uses_fallback_and_returns_original_size(tiny):
    preds = predict(tiny, ITEMS, max_new_tokens=4)
    for p in preds:
        assert p.mask_logits.shape == (10, H, W) and torch.isfinite(p.mask_logits).all()
        assert "[SEG]" in p.text and (p.used_fallback == p.text.endswith("It is [SEG]."))


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model(lora_cfg())
    with torch.no_grad():  # move LoRA B and the token rows off their zero init so the round trip is meaningful
        for n, p in model.named_parameters():
            if p.requires_grad: p.add_(torch.randn_like(p) * 0.01)
    model.save_pretrained(tmp_path / "m")
    back = from_pretrained(tmp_path / "m")
    model.eval(); back.eval()
    for (n, a), (m, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert n == m and torch.equal(a, b), n
    batch = model_inputs(prepare_batch(model, ITEMS, answers=ANSWERS))
    with torch.no_grad():
        o1, o2 = model(**batch), back(**batch)
    assert torch.equal(o1.mask_logits, o2.mask_logits) and torch.equal(o1.logits, o2.logits)
    assert back.config == model.config


def test_not_an_aurora_folder_fails_clearly(tmp_path):
    (tmp_path / "some_model").mkdir()
    with pytest.raises(FileNotFoundError, match=r"some_model is not an aurora_nb model folder: aurora_config.yaml"):
        from_pretrained(tmp_path / "some_model")


def test_cache_hit_equals_miss(tmp_path):
    cfg = get_config("tiny", {"model.freeze_sam_encoder": True, "model.cache_dir": str(tmp_path / "cache")})
    model = build_model(cfg).eval()
    from aurora_nb.model import enable_embedding_cache
    plain = prepare_batch(model, ITEMS, answers=ANSWERS)
    cache = enable_embedding_cache(model)
    assert cache is not None and cache.dir.parent == tmp_path / "cache"
    miss = prepare_batch(model, ITEMS, answers=ANSWERS)
    assert (cache.misses, cache.hits) == (20, 0)
    hit = prepare_batch(model, ITEMS, answers=ANSWERS)
    assert (cache.misses, cache.hits) == (20, 20)
    assert torch.equal(miss["sam_image_embeddings"], hit["sam_image_embeddings"])
    with torch.no_grad():
        m_px, m_miss, m_hit = (model(**model_inputs(b)).mask_logits for b in (plain, miss, hit))
    assert torch.equal(m_miss, m_hit)
    torch.testing.assert_close(m_px, m_hit)  # same embeddings whether computed now or read back
    # a trainable encoder never uses the cache
    assert enable_embedding_cache(build_model(get_config("tiny"))) is None


def test_sam_preprocess_and_back():
    frames = np.full((2, 60, 120, 3), 255, np.uint8)
    x = sam_preprocess(frames, 128)
    assert x.shape == (2, 3, 128, 128) and sam_resized_hw(60, 120, 128) == (64, 128)
    assert torch.allclose(x[0, 0, :64], torch.tensor((255 - 123.675) / 58.395))
    assert (x[:, :, 64:] == 0).all()  # zero padding at the bottom
    low = torch.zeros(2, 32, 32); low[:, :16] = 5.0  # the un-padded half (top) is "object"
    back = masks_to_original(low, 128, (60, 120))
    assert back.shape == (2, 60, 120) and (back > 0).float().mean() > 0.9


def test_adapt_sam_image_size_256_to_128():
    cfg = get_config("tiny", {"model.sam_image_size": 256})
    torch.manual_seed(0)
    sam = SamModel(sam_config(cfg.model)).eval()
    assert sam.vision_encoder.pos_embed.shape[1:3] == (32, 32)
    adapt_sam_image_size(sam, 128)
    assert sam.vision_encoder.pos_embed.shape[1:3] == (16, 16)
    g = cfg.model.sam_size["global_attn_indexes"][0]
    assert sam.vision_encoder.layers[g].attn.rel_pos_h.shape[0] == 2 * 16 - 1
    assert sam.vision_encoder.layers[0].attn.rel_pos_h.shape[0] == 2 * 8 - 1  # windowed block unchanged
    assert sam.prompt_encoder.image_embedding_size == (16, 16)
    with torch.no_grad():
        emb = sam.vision_encoder(pixel_values=torch.randn(2, 3, 128, 128)).last_hidden_state
        low = decode_masks(sam, torch.randn(1, 32), emb[None])
    assert emb.shape == (2, 32, 16, 16) and low.shape == (1, 2, 64, 64) and torch.isfinite(low).all()


def test_items_from_the_committed_sample(tiny, repo_root):
    from aurora_nb.data import RefAVSDataset
    ds = RefAVSDataset(repo_root / "data" / "synth", "train")
    items = [ds[0], ds[1]]
    batch = prepare_batch(tiny, items, answers=[teacher_answer(it["category"]) for it in items])
    with torch.no_grad():
        out = tiny(**model_inputs(batch))
    T, h, w = items[0]["masks"].shape
    assert out.mask_logits.shape == (2, T, h, w) and batch["gt_masks"].shape == (2, T, h, w)
    assert out.seg_found.all() and torch.isfinite(out.loss)


def test_too_long_rows_are_reported_not_cut(tiny):
    short = get_config("tiny", {"model.max_length": 64})
    model = AuroraModel(tiny.thinker, tiny.projector, tiny.sam, tiny.tokenizer, tiny.processor, short)
    with pytest.raises(ValueError, match=r"longer than model.max_length=64"):
        prepare_batch(model, ITEMS, answers=ANSWERS)


def test_lora_disabled_trains_the_whole_language_model():
    model = build_model(lora_cfg(**{"model.lora.enabled": False}))
    t = trainable_table(model)
    assert set(t.index[t.trainable > 0]) - {"total"} == {"LLM", "projector", "mask decoder"}
    assert t.loc["vision", "trainable"] == 0 and t.loc["audio", "trainable"] == 0


def test_pretrained_path_offline(tmp_path):
    "The `full` code path (from_pretrained, no embedding shrink, SAM re-sized, LoRA) on tiny checkpoints saved here."
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration
    from aurora_nb.model import thinker_config
    tiny = get_config("tiny")
    tok = build_tokenizer(tiny)
    spare = get_config("tiny", {"model.thinker_size": {**tiny.model.thinker_size, "vocab_size": len(tok) + 8}})
    Qwen2_5OmniThinkerForConditionalGeneration(thinker_config(spare.model, tok)).save_pretrained(tmp_path / "thinker")
    tok.save_pretrained(tmp_path / "thinker")
    SamModel(sam_config(get_config("tiny", {"model.sam_image_size": 256}).model)).save_pretrained(tmp_path / "sam")
    cfg = get_config("tiny", {"model.from_scratch": False, "model.thinker": str(tmp_path / "thinker"),
                              "model.segmenter": str(tmp_path / "sam"), "model.tokenizer": "",
                              "model.trainable": "lora", "model.freeze_sam_encoder": True})
    model = build_model(cfg)
    assert model.thinker.get_input_embeddings().weight.shape[0] == len(tok) + 8  # not shrunk to len(tok)
    assert model.sam.vision_encoder.pos_embed.shape[1:3] == (16, 16)  # 256 px checkpoint adapted to 128 px
    assert trainable_table(model).loc["LoRA", "trainable"] > 0
    with torch.no_grad():
        out = model(**model_inputs(prepare_batch(model, ITEMS, answers=ANSWERS)))
    assert out.mask_logits.shape == (2, 10, H, W) and torch.isfinite(out.mask_logits).all()
    model.save_pretrained(tmp_path / "run")  # only what the checkpoints do not hold
    from safetensors.torch import load_file
    saved = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert saved and all(component_of(n) in {"LoRA", "token rows", "projector", "mask decoder"} for n in saved)
    back = from_pretrained(tmp_path / "run")
    for (n, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), n


def test_committed_tokenizer_is_what_make_tiny_tokenizer_builds(tmp_path, repo_root):
    "data/tokenizer must be reproducible: a change to the synthetic text or the prompts needs a rebuild."
    import json
    from aurora_nb.model import make_tiny_tokenizer
    make_tiny_tokenizer(tmp_path)
    built = json.loads((tmp_path / "tokenizer.json").read_text())
    committed = json.loads((repo_root / "data" / "tokenizer" / "tokenizer.json").read_text())
    assert built["model"] == committed["model"] and built["added_tokens"] == committed["added_tokens"], \
        "data/tokenizer is stale: rebuild it with aurora_nb.model.make_tiny_tokenizer('data/tokenizer')"
