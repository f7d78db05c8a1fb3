"""Rewards: the release's 0/1, 0/1/2, [0, 1] semantics on hand-made answers and masks, the class read through the CoT
parser (hyphenated, quoted, multi-word), the registry and config weights, and hypothesis properties: never raise on
malformed text, always in range."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aurora_nb.config import GRPOStage
from aurora_nb.rewards import REWARDS, class_reward, format_reward, iou_reward, register_reward, reward_weights, score_rewards

GOOD = "Images: a dryer. Audio: a whir. Reference: the whirring one. Answer: The target is hair-dryer. It is [SEG]."


@pytest.mark.parametrize("text,expected", [
    (GOOD, 1.0), (GOOD + "<|im_end|>", 1.0), (GOOD + "<|im_end|><|endoftext|>  \n", 1.0),
    (GOOD[:-1], 0.0),  # no final period: truncated
    ("The target is dog. It is the dog.", 0.0),  # missing [SEG]
    ("The target is dog [SEG]. It is [SEG].", 1.0),  # two [SEG]s: it ends with the contract, the release's only condition
    ("It is [SEG]. The target is dog.", 0.0),  # [SEG] not at the end
    ("it is [seg].", 0.0),
])
def test_format_reward(text, expected):
    assert format_reward(text) == expected


def test_format_reward_is_the_releases_condition_only():
    "The choice pinned: ending with `It is [SEG].` is all; no count of earlier [SEG]s (the mask reads the last one)."
    for extra in ("[SEG] ", "[SEG][SEG] ", "The target is dog [SEG]. "):
        assert format_reward(extra + GOOD) == 1.0
    assert format_reward("[SEG] It is [SEG].") == 1.0 and format_reward("It is [SEG]. [SEG]") == 0.0


@pytest.mark.parametrize("text,category,expected", [
    (GOOD, "hair-dryer", 2.0), (GOOD, "hair_dryer", 2.0), (GOOD, "Hair Dryer", 2.0),
    ('The target is the "vacuum cleaner". It is [SEG].', "vacuum-cleaner", 2.0),  # quoted, multi-word
    ("The target is emergency-car. It is [SEG].", "emergency_car", 2.0),
    ("The target is man. It is [SEG].", "hair-dryer", 1.0),  # wrong class
    ("Images: a dryer. Audio: a whir. Reference: the whir", "hair-dryer", 0.0),  # truncated before the target
    ("The target is dog", "dog", 0.0),  # the sentence is cut off
    ("It is dog [SEG].", "dog", 0.0),  # teacher form: no reasoning target
    ("The target is nothing. It is [SEG].", "null", 2.0),
])
def test_class_reward_reads_classes_through_the_cot_parser(text, category, expected):
    assert class_reward(text, category) == expected


@pytest.mark.parametrize("text,category,expected", [
    ("The target is dog. It is [SEG].", "dog", 2.0), ("The target is the dog. It is [SEG].", "dog", 2.0),
    ("The target is hair-dryer. It is [SEG].", "hair-dryer", 1.0),  # \w+ stops at the hyphen (D4)
    ('The target is "man". It is [SEG].', "man", 0.0),  # a quote defeats the match
    ("The target is dog, I think. It is [SEG].", "dog", 0.0),  # a comma splits the sentence
    ("It is [SEG].", "dog", 0.0),
])
def test_official_parser_keeps_the_release_behaviour(text, category, expected):
    assert class_reward(text, category, parser="official") == expected


def test_unknown_parser_names_the_config_key():
    with pytest.raises(ValueError, match="stages.grpo.class_parser"):
        class_reward(GOOD, "dog", parser="strict")


def _logits(m):
    return torch.as_tensor(m, dtype=torch.float32) * 20 - 10


def test_iou_reward_by_hand():
    gt = torch.zeros(3, 4, 4, dtype=torch.uint8)
    gt[0, 1:3, 1:3] = 1; gt[1, 0, :] = 1  # frame 2 empty
    pred = torch.zeros(3, 4, 4)
    pred[0, 1:3, 1] = 1  # half the block: 0.5
    pred[1, 0, :2] = 1; pred[1, 1, :2] = 1  # inter 2, union 6: 1/3
    pred[2, 3, :] = 1  # 4 false positives on an empty frame: 12/16
    assert iou_reward(_logits(pred), gt) == pytest.approx((0.5 + 1 / 3 + 0.75) / 3, abs=1e-6)
    assert iou_reward(_logits(torch.zeros(3, 4, 4)), torch.zeros(3, 4, 4, dtype=torch.bool)) == pytest.approx(1.0)
    assert iou_reward(_logits(pred), gt, valid=torch.tensor([True, False, True])) == pytest.approx((0.5 + 0.75) / 2, abs=1e-6)
    assert iou_reward(_logits(pred), gt, valid=torch.zeros(3, dtype=torch.bool)) == 0.0


def test_iou_threshold_is_strict_half():
    gt = torch.ones(1, 1, 2, dtype=torch.bool)
    x = torch.tensor([[[0.0, 1e-3]]])  # σ = 0.5 exactly (background) and just above
    assert iou_reward(x, gt) == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("gt,match", [(torch.full((1, 2, 2), 255), "{0, 1} mask"), (torch.rand(1, 2, 2), "{0, 1} mask"),
                                      (torch.zeros(2, 2, 2), "must both be")])
def test_iou_reward_refuses_bad_masks(gt, match):
    with pytest.raises(ValueError, match=match):
        iou_reward(torch.zeros(1, 2, 2), gt)


def test_score_rewards_weights_from_the_config_and_totals():
    gt = torch.zeros(1, 2, 2, dtype=torch.bool); gt[0, 0, 0] = True
    rollouts = [dict(text=GOOD, mask_logits=_logits([[[1, 0], [0, 0]]])), dict(text="The target is", mask_logits=_logits([[[0, 0], [0, 0]]]))]
    s = score_rewards(rollouts, category="hair-dryer", gt=gt)
    assert s["format"].tolist() == [1, 0] and s["class"].tolist() == [2, 0] and s["iou"].tolist() == pytest.approx([1, 0])
    assert s["total"].tolist() == pytest.approx([4, 0])
    s2 = score_rewards(rollouts, reward_weights(GRPOStage(format_weight=0.5, class_weight=0.0, iou_weight=3.0)),
                       category="hair-dryer", gt=gt)
    assert s2["total"].tolist() == pytest.approx([0.5 + 3.0, 0.0])
    assert s2["class"].tolist() == [2, 0]  # reported even with weight 0
    official = score_rewards(rollouts, category="hair-dryer", gt=gt, parser="official")
    assert official["class"].tolist() == [0, 0]  # the "Answer:" header hides the target from the release's regex


def test_registry_adds_a_reward_by_name_and_guards_it():
    @register_reward("test_len", overwrite=True)
    def test_len(text, **_):
        return min(len(text) / 10, 1.0)
    try:
        s = score_rewards([dict(text="abcde"), dict(text="x" * 20)], {"test_len": 2.0})
        assert s["test_len"].tolist() == pytest.approx([0.5, 1.0]) and s["total"].tolist() == pytest.approx([1.0, 2.0])
        with pytest.raises(ValueError, match="exists"):
            register_reward("test_len")(test_len)
        with pytest.raises(ValueError, match=r"no reward named \['nope'\]"):
            score_rewards([dict(text="a")], {"nope": 1.0})
        with pytest.raises(ValueError, match="reward 'iou' cannot score rollout 0"):
            score_rewards([dict(text="a")], {"iou": 1.0})
        REWARDS["test_len"] = lambda text, **_: float("nan")
        with pytest.raises(ValueError, match="returned nan for rollout 0"):
            score_rewards([dict(text="a")], {"test_len": 1.0})
    finally:
        REWARDS.pop("test_len", None)


# ---- properties: never raise, stay in range ----

PIECES = st.sampled_from(["The target is", " the", " dog", " hair-dryer", ' "man"', ".", ",", "!", "?", " It is", " [SEG]",
                          "[SEG].", "<|im_end|>", "<|endoftext|>", "\n", "  ", "Answer:", "'", "-", "é", "\x00", "<|", "|>"])
TEXTS = st.one_of(st.text(), st.lists(st.one_of(PIECES, st.text(max_size=3)), max_size=30).map("".join),
                  st.none(), st.binary(), st.integers(), st.floats())
CATEGORIES = st.one_of(st.sampled_from(["dog", "hair-dryer", "hair_dryer", "null", "", "The Dog"]), st.text(), st.none())


@settings(max_examples=300, deadline=None)
@given(TEXTS, CATEGORIES)
def test_text_rewards_never_raise_and_stay_in_range(text, category):
    assert format_reward(text) in (0.0, 1.0)
    assert class_reward(text, category) in (0.0, 1.0, 2.0)
    assert class_reward(text, category, parser="official") in (0.0, 1.0, 2.0)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 3), st.integers(1, 5), st.integers(1, 5), st.data())
def test_iou_reward_stays_in_range(t, h, w, data):
    vals = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.sampled_from([0.0, -0.0]))
    x = torch.tensor(data.draw(st.lists(vals, min_size=t * h * w, max_size=t * h * w)), dtype=torch.float32).view(t, h, w)
    y = torch.tensor(data.draw(st.lists(st.integers(0, 1), min_size=t * h * w, max_size=t * h * w))).view(t, h, w)
    valid = torch.tensor(data.draw(st.lists(st.booleans(), min_size=t, max_size=t)))
    for v in (None, valid):
        r = iou_reward(x, y, v)
        assert 0.0 <= r <= 1.0
