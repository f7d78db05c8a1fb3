"""Tests of aurora_nb.model on the tiny preset: shapes, mixed frame sizes, trainable policy and precision, [SEG]
read-out, Trainer compatibility, the CPU collator, cheap passes, inference, save/load, devices, cache, SAM sizes."""
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import LogitsProcessor, LogitsProcessorList, SamModel

from aurora_nb.config import get_config
from aurora_nb.cot import SYSTEM_PROMPT, build_messages, make_tiny_tokenizer, teacher_answer, with_teacher_answers
from aurora_nb.model import (MM_SUPPRESS, AuroraCollator, AuroraModel, SegProjector, adapt_sam_image_size,
                             answer_rows, build_model, build_processor, build_tokenizer, completion_logprobs,
                             component_of, decode_masks, enable_embedding_cache, from_pretrained, generate_answers,
                             lora_modules, masks_to_original, model_device, model_inputs, predict, prepare_batch,
                             sam_config, sam_preprocess, sam_resized_hw, seg_hidden_states, seg_states_from_generate,
                             thinker_base, trainable_table, unpad_masks, with_seg_fallback)

torch.set_num_threads(2)
H, W = 72, 96  # non-square native frames: exercises the pad/crop path


def make_item(seed: int, expression: str = "The object making a low-pitched, pulsing sound.", category: str = "gong",
              hw: tuple[int, int] = (H, W)):
    "A synthetic item with the RefAVSDataset shapes (T=10, 10 s of 16 kHz audio)."
    rng = np.random.default_rng(seed)
    h, w = hw
    masks = np.zeros((10, h, w), np.uint8)
    masks[:, 10:40, 20:60] = 1
    return dict(frames=rng.integers(0, 255, (10, h, w, 3), dtype=np.uint8),
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
    order = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|VIDEO|>"]
    got = tok.convert_tokens_to_ids(order)
    assert got == sorted(got) and got[-1] - got[0] == 13


def test_prompt_text_as_released():
    "System message with its <<SYS>> wrapper and line breaks; a line break between the media and the reference."
    proc = build_processor(get_config("tiny"))
    text = proc.apply_chat_template(build_messages(" A gong.  "), add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system\n<<SYS>>\nYou are a helpful, respectful and honest assistant.")
    assert "while being safe.  Your answers should not include" in text and "positive in nature.\nIf a question" in text
    assert "don't share false information.\n<</SYS>><|im_end|>" in text
    assert ("<|vision_bos|><|VIDEO|><|vision_eos|><|audio_bos|><|AUDIO|><|audio_eos|>\nThe reference is:  A gong.   "
            "Please segment the corresponding object in the images.<|im_end|>\n<|im_start|>assistant\n") in text
    assert SYSTEM_PROMPT.count("\n") == 3


def test_forward_shapes(tiny):
    batch = prepare_batch(tiny, ITEMS, answers=ANSWERS, build_messages=build_messages)
    assert batch["sam_pixel_values"].shape == (2, 10, 3, 128, 128)
    out = tiny(**model_inputs(batch))
    assert out.mask_logits.shape == (2, 10, H, W) and out.mask_logits.dtype == torch.float32
    assert out.low_res_masks.shape == (2, 10, 64, 64)  # 128 px / patch 8 = 16x16 grid, x4
    assert out.seg_embeddings.shape == (2, 32) and out.seg_hidden.shape == (2, 64)
    assert out.seg_found.tolist() == [True, True]
    assert torch.isfinite(out.loss) and torch.isfinite(out.mask_logits).all()
    w = tiny.loss_weights
    torch.testing.assert_close(out.loss, w["ce"] * out.ce_loss + w["bce"] * out.bce_loss + w["dice"] * out.dice_loss)
    lab = batch["labels"][0]
    assert tiny.tokenizer.decode(lab[lab != -100]) == ANSWERS[0] + "<|im_end|>"


def test_mixed_frame_sizes_train_and_predict(tiny):
    "A batch of two frame sizes: masks and losses per sample at its own size, equal to each sample alone."
    items = with_teacher_answers([make_item(0), make_item(1, "The silent object.", "whistle", hw=(60, 50))])
    collate = AuroraCollator(tiny.processor, tiny.config, build_messages=build_messages)
    batch = collate(items)
    assert batch["mask_sizes"].tolist() == [[H, W], [60, 50]] and batch["gt_masks"].shape == (2, 10, H, W)
    with torch.no_grad():
        out = tiny(**model_inputs(batch))
        alone = [tiny(**model_inputs(collate([it]))) for it in items]
    masks = unpad_masks(out.mask_logits, out.mask_sizes)
    assert [tuple(m.shape) for m in masks] == [(10, H, W), (10, 60, 50)]
    for m, a in zip(masks, alone):
        torch.testing.assert_close(m, a.mask_logits[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.bce_loss, (alone[0].bce_loss + alone[1].bce_loss) / 2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.dice_loss, (alone[0].dice_loss + alone[1].dice_loss) / 2, atol=1e-5, rtol=1e-5)
    preds = predict(tiny, items, max_new_tokens=3, build_messages=build_messages)
    assert [tuple(p.mask_logits.shape) for p in preds] == [(10, H, W), (10, 60, 50)]


def test_seg_hidden_states_answer_only_and_right_padded_fallback():
    h = torch.arange(2 * 6 * 1.0).reshape(2, 6, 1)
    ids = torch.tensor([[9, 1, 2, 3, 0, 0], [0, 9, 1, 9, 2, 3]])
    ans = torch.tensor([[0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 0]])  # row 0: right padded, [SEG] only in the prompt
    st, found = seg_hidden_states(h, ids, 9, ans)
    assert found.tolist() == [False, True]
    assert st[:, 0].tolist() == [3.0, 9.0]  # row 0: its last answer token (not the padding, not the prompt's [SEG])


def test_seg_in_the_prompt_is_not_found(tiny):
    "An expression containing [SEG] and an answer without it: found=False, the state of the answer's last token."
    items = [{**ITEMS[0], "expression": "The [SEG] object.", "answer": "It is gong."}]
    batch = AuroraCollator(tiny.processor, tiny.config, build_messages=build_messages)(items)
    assert (batch["input_ids"] == tiny.seg_token_id).sum() == 1  # the prompt's
    with torch.no_grad():
        out = tiny(**model_inputs(batch))
    assert out.seg_found.tolist() == [False]
    with pytest.raises(ValueError, match="labels or answer_mask"):
        tiny(**{k: v for k, v in model_inputs(batch).items() if k != "labels"})


def test_projector_activation_golden_value():
    proj = SegProjector(2, 1)
    with torch.no_grad():
        proj[0].weight.copy_(torch.eye(2)); proj[0].bias.zero_()
        proj[2].weight.fill_(1.0); proj[2].bias.zero_()
    assert proj(torch.tensor([[2.0, -3.0]])).item() == 2.0  # ReLU drops the -3 (GELU would give 2 - 0.004)


def test_decode_masks_batch_invariant(tiny):
    torch.manual_seed(0)
    prompts, emb = torch.randn(2, 32), torch.randn(2, 3, 32, 16, 16)
    with torch.no_grad():
        both = decode_masks(tiny.sam, prompts, emb)
        one = decode_masks(tiny.sam, prompts[1:], emb[1:])
    torch.testing.assert_close(both[1:], one, atol=1e-5, rtol=1e-5)


def test_full_policy_gradients_reach_exactly_the_trainable_parts(capsys):
    model = build_model(lora_cfg())
    assert "LoRA on 8 modules" in capsys.readouterr().out  # printed at start-up
    table = trainable_table(model)
    trained = set(table.index[(table.trainable > 0)]) - {"total"}
    assert trained == {"LoRA", "token rows", "projector", "mask decoder"}
    names = lora_modules(model)  # the official scope: q/v of the LLM and of the audio encoder, never the vision encoder
    assert {n.split(".")[4] for n in names} == {"language_model", "audio_tower"}
    assert all(n.endswith(("q_proj", "v_proj")) and ".visual." not in n for n in names)
    model.train()
    out = model(**model_inputs(prepare_batch(model, ITEMS, answers=ANSWERS, build_messages=build_messages)))
    out.loss.backward()
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, f"frozen {n} got a gradient"
        elif "iou_prediction_head" in n:
            continue  # the IoU head is trainable but no loss reads its output (as in the official code)
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"trainable {n} got no gradient"
    assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n and "audio_tower" in n)


def test_llm_scope_and_full_token_rows():
    llm = build_model(lora_cfg(**{"model.lora.scope": "llm"}))
    assert lora_modules(llm) and all(".language_model." in n for n in lora_modules(llm))
    full = build_model(lora_cfg(**{"model.token_rows": "full"}))
    V, d = full.thinker.get_input_embeddings().weight.shape
    assert trainable_table(full).loc["token rows", "trainable"] == 2 * V * d  # embed_tokens and lm_head in full


def test_seg_row_of_lm_head_and_embeddings_train():
    "With the default (new rows only), one step changes exactly the [SEG] rows of lm_head and embed_tokens."
    torch.manual_seed(0)
    model = build_model(lora_cfg())
    base = model.thinker.get_base_model()
    seg = model.seg_token_id
    def merged(w):  # the effective matrix: base weight with the trainable rows written in
        return w.token_adapter.get_merged_weights(w.token_adapter.active_adapters).detach().clone()
    before = {k: merged(m) for k, m in [("lm_head", base.lm_head), ("embed", base.model.language_model.embed_tokens)]}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    model(**model_inputs(prepare_batch(model, ITEMS, answers=ANSWERS, build_messages=build_messages))).loss.backward()
    opt.step()
    for k, m in [("lm_head", base.lm_head), ("embed", base.model.language_model.embed_tokens)]:
        changed = (merged(m) != before[k]).any(1).nonzero().flatten().tolist()
        assert changed == [seg], (k, changed)


def test_fp32_master_weights_with_bf16_frozen_weights():
    "bf16 frozen weights, fp32 trainable ones, bf16 autocast: a small AdamW step changes the trainable weights."
    torch.manual_seed(0)
    model = build_model(lora_cfg(**{"model.dtype": "bfloat16"}))
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 for p in trainable)
    assert any(p.dtype == torch.bfloat16 for p in model.parameters() if not p.requires_grad)
    dec = [p for n, p in model.named_parameters() if component_of(n) in ("projector", "mask decoder") and p.requires_grad]
    before = [p.detach().clone() for p in dec]
    opt = torch.optim.AdamW(trainable, lr=1e-5)
    model.train()
    out = model(**model_inputs(prepare_batch(model, ITEMS, answers=ANSWERS, build_messages=build_messages)))
    assert out.mask_logits.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward(); opt.step()
    grads = [p.grad is not None for p in dec]
    moved = sum(int((p != b).sum()) for p, b, g in zip(dec, before, grads) if g)
    total = sum(p.numel() for p, g in zip(dec, grads) if g)
    assert moved / total > 0.9, f"only {moved / total:.0%} of the decoder/projector weights moved at lr 1e-5"


class ForceSeg(LogitsProcessor):
    "Force [SEG] as new token number `at` in the rows `rows` (a random model would never emit it)."
    def __init__(self, prompt_len, at, seg, rows=None):
        self.prompt_len, self.at, self.seg, self.rows = prompt_len, at, seg, rows

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] - self.prompt_len == self.at:
            rows = self.rows if self.rows is not None else list(range(len(scores)))
            scores[rows] = -1e9
            scores[rows, self.seg] = 0
        return scores


def test_seg_state_from_generate_equals_teacher_forced(tiny):
    tiny.eval()
    batch = prepare_batch(tiny, ITEMS, build_messages=build_messages)  # left-padded generation prompts of different lengths
    L = batch["input_ids"].shape[1]
    answers, gen = generate_answers(tiny, batch, 5, min_new_tokens=5, return_dict_in_generate=True,
                                    output_hidden_states=True,
                                    logits_processor=LogitsProcessorList([ForceSeg(L, 2, tiny.seg_token_id)]))
    g_state, g_found = seg_states_from_generate(gen, L, answers, tiny.seg_token_id)
    rows = answer_rows(batch, answers, tiny.tokenizer.pad_token_id)
    mm = {k: v for k, v in model_inputs(batch).items() if k in ("pixel_values_videos", "video_grid_thw",
                                                               "video_second_per_grid", "input_features",
                                                               "feature_attention_mask")}
    with torch.no_grad():
        tf = tiny.thinker(input_ids=rows["input_ids"], attention_mask=rows["attention_mask"], output_hidden_states=True, **mm)
    t_state, t_found = seg_hidden_states(tf.hidden_states[-1], rows["input_ids"], tiny.seg_token_id, rows["answer_mask"])
    assert g_found.all() and t_found.all()
    torch.testing.assert_close(g_state, t_state, atol=1e-5, rtol=1e-5)


def test_predict_equals_teacher_forced_forward(tiny):
    "Row 0 emits [SEG] (state read from generate), row 1 gets the fallback (one thinker pass): both equal a forward."
    batch = prepare_batch(tiny, ITEMS, build_messages=build_messages)
    L = batch["input_ids"].shape[1]
    preds = predict(tiny, ITEMS, max_new_tokens=4,
                    logits_processor=LogitsProcessorList([ForceSeg(L, 1, tiny.seg_token_id, rows=[0])]), build_messages=build_messages)
    assert [p.used_fallback for p in preds] == [False, True]
    assert preds[1].text.endswith("It is [SEG].") and "[SEG]" in preds[0].text
    assert preds[0].own_text == preds[0].text and "[SEG]" not in preds[1].own_text  # the model's own words, fallback left out
    assert preds[1].text.startswith(preds[1].own_text) and len(preds[1].own_text) < len(preds[1].text)
    full = {**batch, **answer_rows(batch, [p.answer_ids for p in preds], tiny.tokenizer.pad_token_id)}
    with torch.no_grad():
        out = tiny(**model_inputs(full))
    assert out.seg_found.all()
    for b, p in enumerate(preds):
        assert p.mask_logits.shape == (10, H, W)
        torch.testing.assert_close(p.mask_logits, out.mask_logits[b], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(p.seg_embedding, out.seg_embeddings[b], atol=1e-5, rtol=1e-5)


def test_completion_logprobs_equal_full_forward(tiny):
    batch = prepare_batch(tiny, ITEMS, answers=ANSWERS, build_messages=build_messages)
    with torch.no_grad():
        lp = completion_logprobs(tiny, batch)
        full = torch.log_softmax(tiny(**model_inputs(batch)).logits.float(), -1)  # [B, L, V]
    comp = batch["labels"] != -100
    ids = batch["input_ids"]
    b, p = comp[:, 1:].nonzero(as_tuple=True)
    ref = torch.zeros_like(lp)
    ref[b, p + 1] = full[b, p, ids[b, p + 1]]
    assert (lp[~comp] == 0).all() and (lp[comp] < 0).all()
    torch.testing.assert_close(lp, ref, atol=1e-5, rtol=0)


def test_collator_is_cpu_only_picklable_and_works_with_workers(tiny):
    collate = AuroraCollator(tiny.processor, tiny.config, build_messages=build_messages)
    side = tiny.tokenizer.padding_side
    back = pickle.loads(pickle.dumps(collate))
    items = with_teacher_answers([make_item(i) for i in range(4)])
    AuroraCollator(tiny.processor, tiny.config, answer_key=None, build_messages=build_messages)(items)  # left padding asked per call
    assert tiny.tokenizer.padding_side == side
    loader = torch.utils.data.DataLoader(items, batch_size=2, num_workers=2, collate_fn=back)
    batches = list(loader)
    assert len(batches) == 2 and all(b["labels"].shape[0] == 2 and "sam_pixel_values" in b for b in batches)
    assert not any(torch.is_tensor(v) and v.dtype.is_floating_point and v.requires_grad for b in batches for v in b.values())


def test_explicit_forward_signature(tiny):
    "No **kwargs: the Trainer divides by the accumulation steps, and unknown batch keys fail loudly."
    import inspect
    assert not any(p.kind == p.VAR_KEYWORD for p in inspect.signature(AuroraModel.forward).parameters.values())
    with pytest.raises(TypeError, match="unexpected keyword argument 'gt_mask'"):
        tiny(**model_inputs(prepare_batch(tiny, ITEMS, answers=ANSWERS, build_messages=build_messages)), gt_mask=None)


def _trainer_grads(tmp_path, bs, accum, items):
    "Gradients of one Trainer step (lr 0) with micro-batch `bs` and `accum` accumulation steps."
    from transformers import Trainer, TrainerCallback, TrainingArguments
    torch.manual_seed(0)
    model = build_model(get_config("tiny"))
    grads = {}

    class Grab(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kw):
            grads.update({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})

    args = TrainingArguments(output_dir=str(tmp_path / f"t{bs}x{accum}"), per_device_train_batch_size=bs,
                             gradient_accumulation_steps=accum, max_steps=1, learning_rate=0.0, report_to=[],
                             use_cpu=True, save_strategy="no", dataloader_num_workers=0, max_grad_norm=0.0,
                             remove_unused_columns=False, seed=0, logging_strategy="no")
    tr = Trainer(model=model, args=args, train_dataset=items, data_collator=AuroraCollator(model.processor, model.config, build_messages=build_messages),
                 callbacks=[Grab()])
    assert tr.model_accepts_loss_kwargs is False
    tr.train()
    return grads, tr


def test_trainer_grad_accumulation_is_equivalent(tmp_path):
    "Batch 4 x accumulation 1 and batch 2 x accumulation 2 give the same gradients through a real Trainer step."
    items = with_teacher_answers([make_item(i, category="gong") for i in range(4)])  # equal answer lengths
    g1, _ = _trainer_grads(tmp_path, 4, 1, items)
    g2, tr = _trainer_grads(tmp_path, 2, 2, items)
    assert g1.keys() == g2.keys() and len(g1) > 10
    for n in g1:
        torch.testing.assert_close(g2[n], g1[n], atol=2e-5, rtol=2e-3, msg=n)
    # checkpoints: Trainer.save_model writes the shared SAM tensors once and they load back
    tr.save_model(str(tmp_path / "ckpt"))
    from safetensors.torch import load_file
    state = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    fresh = build_model(get_config("tiny", {"seed": 1}))
    fresh.load_state_dict(state, strict=True)
    for (n, a), (_, b) in zip(tr.model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), n


def test_activation_checkpointing_gives_the_same_gradients():
    def grads(ckpt):
        torch.manual_seed(0)
        model = build_model(lora_cfg())
        if ckpt: model.gradient_checkpointing_enable()
        model.train()
        model(**model_inputs(prepare_batch(model, ITEMS, answers=ANSWERS, build_messages=build_messages))).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    a, b = grads(False), grads(True)
    assert a.keys() == b.keys()
    for n in a: torch.testing.assert_close(a[n], b[n], atol=1e-5, rtol=1e-4)


def test_gradient_checkpointing_setting_applies_when_built_and_loaded(tmp_path):
    "model.gradient_checkpointing turns activation checkpointing on in build_model and from_pretrained; off by default."
    from aurora_nb.model import thinker_base
    assert not thinker_base(build_model(lora_cfg())).is_activation_checkpointing
    model = build_model(lora_cfg(**{"model.gradient_checkpointing": True}))
    assert thinker_base(model).is_activation_checkpointing
    model.save_pretrained(tmp_path / "m")
    assert thinker_base(from_pretrained(tmp_path / "m")).is_activation_checkpointing


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
    batch = model_inputs(prepare_batch(model, ITEMS, answers=ANSWERS, build_messages=build_messages))
    with torch.no_grad():
        o1, o2 = model(**batch), back(**batch)
    assert torch.equal(o1.mask_logits, o2.mask_logits) and torch.equal(o1.logits, o2.logits)
    assert back.config == model.config


class Placed(Exception):
    "Raised by a stand-in `run_device`: the loader asked where to place its model."


def test_from_pretrained_places_the_model_where_asked(tmp_path, monkeypatch):
    "device=None stays on the CPU (a Trainer places it); a device goes through `place`; 'meta' really moves it there."
    import aurora_nb.model as M
    folder = build_model(get_config("tiny")).save_pretrained(tmp_path / "m")
    assert model_device(from_pretrained(folder)) == torch.device("cpu")
    on_meta = from_pretrained(folder, device="meta")
    assert model_device(on_meta) == on_meta.device == torch.device("meta") and not on_meta.training

    def run_device(device=None): raise Placed(device)
    monkeypatch.setattr(M, "run_device", run_device)
    for asked in ["cuda:1", "auto"]:
        with pytest.raises(Placed) as e:
            from_pretrained(folder, device=asked)
        assert e.value.args == (asked,)


def test_model_device_is_where_inputs_go():
    "An object's own `device` (AuroraModel: its input embeddings'; a teacher without parameters), else the first parameter's."
    from types import SimpleNamespace
    assert model_device(SimpleNamespace(device=torch.device("meta"))) == torch.device("meta")
    assert model_device(torch.nn.Linear(2, 2).to("meta")) == torch.device("meta")


def test_inference_and_cheap_passes_send_inputs_to_model_device(monkeypatch):
    "Inputs go where `model_device` says (here a stand-in, meta), not where the collator made them (the CPU)."
    import aurora_nb.model as M
    model = build_model(get_config("tiny"))

    class Stop(Exception): pass
    seen = []

    def spy(*args, **kwargs):
        seen.append({k: v.device.type for k, v in kwargs.items() if torch.is_tensor(v)})
        raise Stop

    monkeypatch.setattr(M, "model_device", lambda m: torch.device("meta"))
    monkeypatch.setattr(model.thinker, "generate", spy)
    with pytest.raises(Stop):
        predict(model, ITEMS, max_new_tokens=2, build_messages=build_messages)
    monkeypatch.setattr(thinker_base(model).model, "forward", spy)
    with pytest.raises(Stop):
        completion_logprobs(model, prepare_batch(model, ITEMS, answers=ANSWERS, build_messages=build_messages))
    assert len(seen) == 2 and all(d and set(d.values()) == {"meta"} for d in seen), seen
    assert {"input_ids", "attention_mask", "pixel_values_videos", "input_features"} <= set(seen[0])


def test_seg_fallback_is_appended_only_without_seg(tiny):
    tok = tiny.tokenizer
    ids, fb = with_seg_fallback(tiny, [tok("It is gong [SEG].")["input_ids"], tok("It is gong.")["input_ids"], []])
    assert fb == [False, True, True]
    assert [tok.decode(a) for a in ids] == ["It is gong [SEG].", "It is gong. It is [SEG].", "It is [SEG]."]


def test_not_an_aurora_folder_fails_clearly(tmp_path):
    (tmp_path / "some_model").mkdir()
    with pytest.raises(FileNotFoundError, match=r"some_model is not an aurora_nb model folder: aurora_config.yaml"):
        from_pretrained(tmp_path / "some_model")


def test_cache_hit_equals_miss_and_follows_encoder_weights(tmp_path):
    cfg = get_config("tiny", {"model.freeze_sam_encoder": True, "model.cache_dir": str(tmp_path / "cache")})
    model = build_model(cfg).eval()
    batch = model_inputs(prepare_batch(model, ITEMS, answers=ANSWERS, build_messages=build_messages))
    with torch.no_grad():
        plain = model(**batch).mask_logits
        cache = enable_embedding_cache(model)
        assert cache is not None and cache.dir.parent == tmp_path / "cache"
        miss = model(**batch).mask_logits
        assert (cache.misses, cache.hits) == (20, 0)
        hit = model(**batch).mask_logits
        assert (cache.misses, cache.hits) == (20, 20)
        assert torch.equal(miss, hit)
        torch.testing.assert_close(plain, hit)
        old_dir = cache.dir
        for p in model.sam.vision_encoder.parameters(): p.mul_(1.5)  # new encoder weights: the old entries are stale
        changed = model(**batch).mask_logits
        assert (cache.misses, cache.hits) == (40, 20) and cache.dir != old_dir
        model.embedding_cache = None
        torch.testing.assert_close(changed, model(**batch).mask_logits)
    assert enable_embedding_cache(build_model(get_config("tiny"))) is None  # a trainable encoder is never cached


def test_sam_preprocess_and_back():
    frames = np.full((2, 60, 120, 3), 255, np.uint8)
    x = sam_preprocess(frames, 128)
    assert x.shape == (2, 3, 128, 128) and sam_resized_hw(60, 120, 128) == (64, 128)
    assert torch.allclose(x[0, 0, :64], torch.tensor((255 - 123.675) / 58.395))
    assert (x[:, :, 64:] == 0).all()  # zero padding at the bottom
    low = torch.zeros(2, 32, 32); low[:, :16] = 5.0  # the un-padded half (top) is "object"
    back = masks_to_original(low, 128, (60, 120))
    assert back.shape == (2, 60, 120) and (back > 0).float().mean() > 0.9


def test_sam_frames_go_through_a_uint8_resize():
    "As the official loader: the resized frame is uint8 before normalisation (a float resize leaves fractions)."
    rng = np.random.default_rng(0)
    x = sam_preprocess(rng.integers(0, 255, (1, 50, 70, 3), dtype=np.uint8), 64)  # [1, 3, 64, 64]
    h, w = sam_resized_hw(50, 70, 64)
    px = x[0, :, :h, :w] * torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1) + torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    assert (px - px.round()).abs().max() < 1e-3


def test_adapt_sam_image_size_256_to_128():
    cfg = get_config("tiny", {"model.sam_image_size": 256})
    torch.manual_seed(0)
    sam = SamModel(sam_config(cfg.model)).eval()
    g = cfg.model.sam_size["global_attn_indexes"][0]
    rel = sam.vision_encoder.layers[g].attn.rel_pos_h.detach().clone()  # [63, head_dim]
    assert sam.vision_encoder.pos_embed.shape[1:3] == (32, 32)
    adapt_sam_image_size(sam, 128)
    assert sam.vision_encoder.pos_embed.shape[1:3] == (16, 16)
    new = sam.vision_encoder.layers[g].attn.rel_pos_h
    assert new.shape[0] == 2 * 16 - 1
    bicubic = F.interpolate(rel[None, None], size=(31, rel.shape[1]), mode="bicubic", align_corners=False)[0, 0]
    torch.testing.assert_close(new.detach(), bicubic)  # official build_sam.py: bicubic, not linear
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
    batch = prepare_batch(tiny, items, answers=[teacher_answer(it["category"]) for it in items], build_messages=build_messages)
    with torch.no_grad():
        out = tiny(**model_inputs(batch))
    T, h, w = items[0]["masks"].shape
    assert out.mask_logits.shape == (2, T, h, w) and batch["gt_masks"].shape == (2, T, h, w)
    assert out.seg_found.all() and torch.isfinite(out.loss)


def test_too_long_rows_are_reported_not_cut(tiny):
    short = get_config("tiny", {"model.max_length": 64})
    with pytest.raises(ValueError, match=r"longer than model.max_length=64"):
        AuroraCollator(tiny.processor, short, build_messages=build_messages)(with_teacher_answers(ITEMS))


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
        out = model(**model_inputs(prepare_batch(model, ITEMS, answers=ANSWERS, build_messages=build_messages)))
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
    make_tiny_tokenizer(tmp_path)
    built = json.loads((tmp_path / "tokenizer.json").read_text())
    committed = json.loads((repo_root / "data" / "tokenizer" / "tokenizer.json").read_text())
    assert built["model"] == committed["model"] and built["added_tokens"] == committed["added_tokens"], \
        "data/tokenizer is stale: rebuild it with aurora_nb.cot.make_tiny_tokenizer('data/tokenizer')"


def test_trainer_checkpoint_resume_with_activation_checkpointing(tmp_path):
    "The released policy under a Trainer with activation checkpointing: checkpoint-1 is written and resumed exactly."
    from transformers import Trainer, TrainingArguments
    items = with_teacher_answers([make_item(i) for i in range(2)])

    def trainer(seed):
        model = build_model(get_config("tiny", {"model.trainable": "lora", "model.freeze_sam_encoder": True, "seed": seed}))
        args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=1, learning_rate=1e-2,
                                 report_to=[], use_cpu=True, save_strategy="steps", save_steps=1, logging_strategy="no",
                                 remove_unused_columns=False, seed=0, activation_checkpointing=True)
        return Trainer(model=model, args=args, train_dataset=items, data_collator=AuroraCollator(model.processor, model.config, build_messages=build_messages))
    t1 = trainer(0)
    t1.train()
    assert t1.model.thinker.get_base_model().is_activation_checkpointing
    t2 = trainer(1)  # other random weights, replaced by the checkpoint's
    t2.train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))  # already at max_steps: loads, trains nothing
    for (n, a), (_, b) in zip(t1.model.state_dict().items(), t2.model.state_dict().items()):
        assert torch.equal(a, b), n
