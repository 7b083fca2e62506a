"""The fast paths compute what the plain fp32 paths compute; bench pieces do what they say.

Speed itself is measured by ``napari-sizeloss bench``, never asserted here.
"""

import numpy as np
import pytest
import torch

from napari_sizeloss.bench import time_to_quality, worst_slices
from napari_sizeloss.device import make_adam
from napari_sizeloss.losses import partial_cross_entropy, size_penalty
from napari_sizeloss.network import ENet
from napari_sizeloss.trainer import predict_volume


def _loss(model, x, y):
    logits = model(x).float()
    probs = torch.softmax(logits, 1)[:, 1:2]
    return partial_cross_entropy(logits, y) + 1e-2 * size_penalty(probs, 50.0, 300.0).mean() / (32 * 32)


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(4, 1, 32, 32, generator=g)
    y = torch.full((4, 32, 32), -1, dtype=torch.long)
    y[:, 14:18, 14:18] = 1
    y[:, :2, :] = 0
    return x, y


def test_fused_adam_follows_plain_adam():
    """make_adam's fused update is Adam's arithmetic: same parameters after 20 steps."""
    g = torch.Generator().manual_seed(0)
    shapes = [(16, 1, 3, 3), (16,), (2, 16, 1, 1)]
    start = [torch.randn(s, generator=g) for s in shapes]
    goals = [torch.randn(s, generator=g) for s in shapes]
    runs = []
    for fused in (True, False):
        params = [t.clone().requires_grad_() for t in start]
        opt = make_adam(params, 5e-3, "cpu") if fused else torch.optim.Adam(params, lr=5e-3, foreach=False)
        assert bool(opt.defaults.get("fused")) is fused
        for _ in range(20):
            opt.zero_grad()
            sum(((p - q) ** 2 * (1 + q.abs())).sum() for p, q in zip(params, goals)).backward()
            opt.step()
        runs.append([p.detach().clone() for p in params])
    moved = max(float((a - b).abs().max()) for a, b in zip(runs[1], start))
    assert moved > 0.05  # the optimiser really moved the parameters
    for a, b in zip(*runs):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_one_fused_training_step_of_enet_matches_the_plain_step():
    torch.manual_seed(0)
    fast, plain = ENet(), ENet()
    plain.load_state_dict(fast.state_dict())
    x, y = _batch(0)
    for model, opt in ((fast, make_adam(fast.parameters(), 1e-3)), (plain, torch.optim.Adam(plain.parameters(), lr=1e-3))):
        torch.manual_seed(1)  # same dropout masks
        opt.zero_grad()
        _loss(model, x, y).backward()
        opt.step()
    fast.eval(), plain.eval()
    with torch.no_grad():
        assert float(_loss(fast, x, y)) == pytest.approx(float(_loss(plain, x, y)), rel=1e-4)


@pytest.mark.parametrize("fold", [False, True])
def test_batched_channels_last_prediction_matches_slice_by_slice_fp32(monkeypatch, fold):
    """Folded (large predictions) or not, channels-last batches give the plain path's probabilities."""
    from napari_sizeloss import inference
    from napari_sizeloss.device import to_channels_last

    torch.manual_seed(1)
    model = ENet()
    image = np.random.default_rng(0).random((40, 36, 3, 2), dtype=np.float32)
    plain = np.stack(
        [
            np.stack(
                [predict_volume(model, image[:, :, z, t], normalisation=None, amp=False) for t in range(2)], -1
            )
            for z in range(3)
        ],
        2,
    )
    if fold:
        monkeypatch.setattr(inference, "FOLD_MIN_PIXELS", 40 * 36 * 6)
    net = inference.inference_model(model, 40 * 36 * 6, channels_last=True)  # what predict_volume will run
    seen = []
    conv = net.down1.branch[0]
    handle = conv.register_forward_pre_hook(lambda m, args: seen.append(args[0].stride() == to_channels_last(args[0]).stride()))
    fast = predict_volume(model, image, normalisation=None, batch_size=6, channels_last=True)
    handle.remove()
    np.testing.assert_allclose(fast, plain, atol=1e-5)
    # the folded copy runs channels-last; the model itself (too small to fold) in its own layout, never mixed
    assert seen == [fold]


def test_a_channels_last_training_step_computes_the_contiguous_one():
    """In float64, where rounding cannot hide a difference (float32 differs by up to about 1 %)."""
    from napari_sizeloss.device import to_channels_last

    torch.manual_seed(0)
    plain = ENet().double()
    fast = ENet().double()
    fast.load_state_dict(plain.state_dict())
    fast.to(memory_format=torch.channels_last)
    x, y = _batch(4)
    x = x.double()
    grads = []
    for model, batch in ((plain, x), (fast, to_channels_last(x))):
        torch.manual_seed(1)  # same dropout masks
        _loss(model, batch, y).backward()
        grads.append({n: p.grad.contiguous() for n, p in model.named_parameters()})
    assert fast.down1.branch[0].weight.grad.stride() != grads[1]["down1.branch.0.weight"].stride()  # truly channels-last
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-9, atol=1e-12, msg=name)


def test_mixed_precision_loss_and_prediction_stay_close_to_fp32():
    """The autocast path (bf16 here; fp16/bf16 on CUDA) changes the numbers only slightly."""
    torch.manual_seed(2)
    model = ENet().eval()
    x, y = _batch(3)
    with torch.no_grad():
        ref = _loss(model, x, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = _loss(model, x, y)
    assert float(low) == pytest.approx(float(ref), rel=0.05)
    image = np.random.default_rng(1).random((32, 32, 2), dtype=np.float32)
    p32 = predict_volume(model, image, normalisation=None, amp=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        p16 = predict_volume(model, image, normalisation=None, amp=False)
    assert np.abs(p16 - p32).max() < 0.05
    assert ((p16 > 0.5) == (p32 > 0.5)).mean() > 0.99


def test_worst_slices_are_those_with_the_most_wrong_pixels():
    target = np.zeros((10, 10, 3, 2), bool)
    target[2:8, 2:8] = True
    target[..., 2, 1] = False  # target absent here...
    pred = target.copy()
    pred[2:5, 2:8, 1, 0] = False  # 18 pixels missed
    pred[2:3, 2:8, 0, 1] = False  # 6 missed
    pred[0:5, 0:5, 2, 1] = True  # ...but a 25-pixel blob predicted: the worst
    assert worst_slices(pred, target, 2) == [(2, 1), (1, 0)]
    assert worst_slices(target, target, 2) == []  # nothing to correct


def test_time_to_quality_reports_a_corrections_round():
    out = time_to_quality("cpu", steps=4, correction_steps=4, steps_between=2, threads=1)
    assert len(out["corrected_slices"]) == 2
    assert out["dice_curve"] and out["dice_curve_corrections"]
    assert out["dice_curve_corrections"][0][0] >= out["dice_curve"][-1][0]  # the time axis continues
    assert len(out["dice_curve"]) >= 2  # scored at steps 2 and 4
    assert 0.0 <= out["dice_at_60s"] <= 1.0 and 0.0 <= out["dice_after_corrections"] <= 1.0
    assert out["peak_rss_mb"] > 0


def test_quality_over_demo_cases_reuses_the_first_and_reports_the_range(capsys):
    from napari_sizeloss.bench import quality_by_case

    first = {"time_to_dice_085_s": None, "time_to_dice_085_held_s": None, "dice_at_60s": 0.5,
             "dice_after_first_round": 0.5, "dice_after_corrections": 0.25, "first_round_s": 1.0,
             "bounds_px": [100.0, 848.0], "bounds_px_after_corrections": [100.0, 1050.0],
             "network_dice_after_first_round": 0.4, "network_dice_after_corrections": 0.2}
    rows = quality_by_case("cpu", [0, 1], first=first, steps=2, correction_steps=2, threads=1)
    assert [r["seed"] for r in rows] == [0, 1]
    assert rows[0] == {"seed": 0, **first}  # seed 0's session is the bench's own: not run again
    assert 0.0 <= rows[1]["dice_at_60s"] <= 1.0 and rows[1]["first_round_s"] > 0
    out = capsys.readouterr().out
    low, high = sorted([0.5, rows[1]["dice_at_60s"]])
    assert f"3D Dice within 60 s: {low}-{high}" in out and "over 2 seeds" in out
    assert f"over 2 seeds, {sum(v >= 0.85 for v in (low, high))} at 0.85 or more" in out
    assert "seed 0: Dice 0.85 not reached, 0.5 within 60 s, 0.25 after corrections (upper bound 848 -> 1050 px)" in out
    # the same sessions scored on every region the network predicts, beside the connected regions
    low_n, high_n = sorted([0.4, rows[1]["network_dice_after_first_round"]])
    assert f"every region the network predicts, at the first round's end: {low_n}-{high_n}" in out


def test_bench_refuses_a_case_count_below_one(capsys):
    from napari_sizeloss.cli import main

    with pytest.raises(SystemExit):
        main(["bench", "--cases", "0"])
    assert "must be at least 1" in capsys.readouterr().err


def test_enet_work_scales_with_pixels_and_a_step_costs_about_three_forwards():
    from napari_sizeloss.bench import enet_gflop

    big, small = enet_gflop(64), enet_gflop(32)
    assert big["forward"] == pytest.approx(4 * small["forward"], rel=0.02)  # work per pixel is constant
    assert 2.5 < big["train_step"] / big["forward"] < 3.5  # backward: gradients for inputs and weights
    # ENet's 1x1, 3x3, 5x1 and transposed convolutions at 256x256: about 0.94 GFLOP per slice
    assert 0.8 < enet_gflop(256)["forward"] < 1.1


def test_a_level_counts_as_held_only_when_no_later_score_falls_below_it():
    from napari_sizeloss.bench import held_from

    curve = [(1.0, 0.5), (2.0, 0.86), (3.0, 0.84), (4.0, 0.87), (5.0, 0.9)]
    assert held_from(curve, 0.85) == 4.0  # the first crossing (2.0) fell back at 3.0
    assert held_from(curve, 0.5) == 1.0
    assert held_from(curve[:3], 0.85) is None  # ends below the level
    assert held_from([], 0.85) is None


def test_time_to_quality_trains_with_the_simulated_users_absent_tags(monkeypatch):
    from napari_sizeloss import trainer
    from napari_sizeloss.demo import make_demo_case

    seen = []
    real = trainer.TrainingSession

    class Recording(real):
        def __init__(self, *args, absent=None, **kwargs):
            seen.append(None if absent is None else np.array(absent))
            super().__init__(*args, absent=absent, **kwargs)

    monkeypatch.setattr(trainer, "TrainingSession", Recording)
    out = time_to_quality("cpu", steps=2, correction_steps=2, steps_between=2, threads=1, tags="every-frame")
    case = make_demo_case(seed=0)
    expected = ~case.target.any(axis=(0, 1))
    assert expected.sum() > 0
    np.testing.assert_array_equal(seen[-1], expected)
    assert out["absent_tags"] == int(expected.sum()) and out["tags"] == "every-frame"
    time_to_quality("cpu", steps=2, correction_steps=2, steps_between=2, threads=1)
    assert not seen[-1].any()  # the default simulated user tags nothing


def test_bench_refuses_an_unknown_tag_strategy(capsys):
    from napari_sizeloss.cli import main

    with pytest.raises(SystemExit):
        main(["bench", "--tags", "oracle"])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("fixed", [False, True])
def test_the_corrections_round_widens_the_bounds_to_admit_the_corrected_slices(monkeypatch, fixed):
    """As Use corrections in the widget: a corrected slice above the upper bound raises it (unless fixed)."""
    from napari_sizeloss import bench, trainer
    from napari_sizeloss.demo import make_demo_case

    case = make_demo_case(seed=0)
    areas = case.target.sum(axis=(0, 1))  # (Z, T) px
    largest = tuple(int(v) for v in np.unravel_index(np.argmax(areas), areas.shape))
    assert areas[largest] > case.bounds.upper  # the other subject's heart is smaller: 1050 > 848 px
    monkeypatch.setattr(bench, "worst_slices", lambda mask, target, n=2: [largest, (5, 3)])
    updates = []
    real = trainer.TrainingSession

    class Recording(real):
        def update(self, **kwargs):
            updates.append(kwargs)
            super().update(**kwargs)

    monkeypatch.setattr(trainer, "TrainingSession", Recording)
    out = time_to_quality("cpu", steps=2, correction_steps=2, steps_between=2, threads=1, fixed_bounds=fixed)
    bounds = updates[-1]["bounds"]
    assert bounds.lower == case.bounds.lower  # slice (5, 3) is inside the bounds: the lower one stays
    expected = case.bounds.upper if fixed else float(areas[largest])
    assert bounds.upper == pytest.approx(expected)
    assert out["bounds_px_after_corrections"] == [round(case.bounds.lower, 1), round(expected, 1)]
    assert out["bounds_px"] == [round(case.bounds.lower, 1), round(case.bounds.upper, 1)]


def test_bench_prints_the_widened_bounds():
    from napari_sizeloss import bench

    q = {"bounds_px": [100.0, 848.0], "bounds_px_after_corrections": [90.0, 1050.0]}
    assert bench._widened(q) == " (upper bound 848 -> 1050 px, lower bound 100 -> 90 px)"
    assert bench._widened({"bounds_px": [1, 2], "bounds_px_after_corrections": [1, 2]}) == ""


def test_bench_takes_the_corrections_rounds_budget_and_refuses_none(capsys):
    from napari_sizeloss.cli import build_parser, main

    assert build_parser().parse_args(["bench"]).correction_steps is None  # as many as the first round
    assert build_parser().parse_args(["bench", "--correction-steps", "300"]).correction_steps == 300
    with pytest.raises(SystemExit):
        main(["bench", "--correction-steps", "0"])
    assert "must be at least 1" in capsys.readouterr().err


def test_bench_takes_the_first_rounds_budget_for_every_case(capsys):
    from napari_sizeloss.bench import round_steps
    from napari_sizeloss.cli import build_parser, main

    parse = build_parser().parse_args
    assert round_steps(parse(["bench"])) == (None, None)  # the interactive default, corrections as long
    assert round_steps(parse(["bench", "--steps", "450"])) == (450, None)
    assert round_steps(parse(["bench", "--steps", "450", "--correction-steps", "300"])) == (450, 300)
    assert round_steps(parse(["bench", "--quick"])) == (60, 20)
    assert round_steps(parse(["bench", "--quick", "--steps", "30"])) == (30, 20)
    with pytest.raises(SystemExit):
        main(["bench", "--steps", "0"])
    assert "must be at least 1" in capsys.readouterr().err


def test_the_corrections_round_trains_as_many_steps_as_the_first_by_default():
    """As the widget's Use corrections, which trains its Steps setting again."""
    out = time_to_quality("cpu", steps=3, steps_between=3, threads=1)
    assert out["first_round_steps"] == out["corrections_round_steps"] == 3


@pytest.mark.parametrize("amp, want", [(False, torch.float32), (True, torch.bfloat16)])
def test_train_step_runs_the_forward_in_the_asked_precision_and_trains(amp, want):
    """bench.TrainStep: bfloat16 when asked (also on a CPU, where autocast is off by default), and the step moves weights."""
    from napari_sizeloss.bench import TrainStep

    step = TrainStep("cpu", size=32, batch=2, amp=amp, dtype=torch.bfloat16)
    seen = []
    network = step.forward

    def forward(x):
        logits = network(x)
        seen.append(logits.dtype)
        return logits

    step.forward = forward
    before = [p.detach().clone() for p in network.parameters()]
    assert step() > 0
    assert seen == [want]
    moved = [not torch.equal(b, p) for b, p in zip(before, network.parameters())]
    assert sum(moved) > len(moved) // 2


def test_machine_info_reports_the_environment_settings_that_move_the_figures(monkeypatch):
    from napari_sizeloss.bench import ENV_SETTINGS, machine_info

    from napari_sizeloss import native_op, native_prelu

    for name in ENV_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    info = machine_info(torch.device("cpu"))
    assert "env" not in info
    assert info["native_prelu"] == native_prelu.status() and info["native_op"] == native_op.status()
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv("NAPARI_SIZELOSS_TUNE_MALLOC", "0")
    monkeypatch.setenv("UNRELATED_SETTING", "1")
    env = machine_info(torch.device("cpu"))["env"]
    assert env == {"OMP_WAIT_POLICY": "PASSIVE", "NAPARI_SIZELOSS_TUNE_MALLOC": "0"}


def test_the_benchs_sessions_predict_with_the_asked_test_time_views(predicted_tta, capsys):
    """``bench --tta``: every scored session (headline, other cases) predicts with those views."""
    from napari_sizeloss.bench import quality_by_case
    from napari_sizeloss.cli import build_parser

    assert build_parser().parse_args(["bench"]).tta is None  # the interactive default (flips)
    assert build_parser().parse_args(["bench", "--tta", "none"]).tta == "none"
    seen = predicted_tta
    time_to_quality("cpu", steps=2, correction_steps=2, steps_between=2, threads=1, tta="dihedral")
    assert seen and set(seen) == {"dihedral"}
    seen.clear()
    time_to_quality("cpu", steps=2, correction_steps=2, steps_between=2, threads=1)
    assert seen and set(seen) == {"flips"}
    seen.clear()
    quality_by_case("cpu", [1], steps=2, correction_steps=2, threads=1, tta="none")
    assert seen and set(seen) == {"none"}
