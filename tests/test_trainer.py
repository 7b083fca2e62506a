"""Trainer behaviour on a tiny synthetic volume of bright discs."""

import math
import threading
import time

import numpy as np
import pytest
import torch

from napari_sizeloss.bounds import SizeBounds
from napari_sizeloss.metrics import dice_3d
from napari_sizeloss.trainer import JITTER, EventKind, Predictor, TrainConfig, TrainingSession, train
from napari_sizeloss.weak_labels import SeedsError


def disc_volume(shape=(48, 40, 3, 2), radii=(9, 7, 5), seed=0):
    """Bright discs (one per slice, radius shrinking with z) on a darker noisy ring background."""
    rng = np.random.default_rng(seed)
    X, Y, Z, T = shape
    xx, yy = np.meshgrid(np.arange(X), np.arange(Y), indexing="ij")
    image = np.zeros(shape, np.float32)
    target = np.zeros(shape, bool)
    for z in range(Z):
        for t in range(T):
            r = radii[z] - t
            disc = (xx - 24) ** 2 + (yy - 20) ** 2 <= r**2
            ring = ((xx - 24) ** 2 + (yy - 20) ** 2 <= (r + 4) ** 2) & ~disc
            image[..., z, t] = 0.2 + 0.8 * disc + 0.4 * ring
            target[..., z, t] = disc
    image += rng.normal(0, 0.05, size=shape).astype(np.float32)
    seeds = np.zeros(shape, np.uint8)
    seeds[24, 20, :, 0] = 1
    seeds[23, 20, :, 0] = 1
    return image, seeds, target


def small_config(**kw):
    base = dict(steps=30, batch_size=4, crop=32, device="cpu", preview_every=0, preview_interval_s=0.0,
                seed=0)
    base.update(kw)
    return TrainConfig.interactive(**base)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="penalty"):
        TrainConfig(penalty="l2")
    with pytest.raises(ValueError, match="budget"):
        TrainConfig(steps=None, minutes=None)
    with pytest.raises(ValueError, match="learning rate"):
        TrainConfig(lr=-1)
    paper = TrainConfig.paper()
    assert (paper.batch_size, paper.crop, paper.lr, paper.lr_halve_every, paper.size_weight) == (1, None, 5e-3, 100, 1e-2)


def test_events_and_budget():
    image, seeds, _ = disc_volume()
    events = []
    session = train(image, seeds, SizeBounds(20, 300), config=small_config(steps=5), callback=events.append)
    kinds = [e.kind for e in events]
    assert kinds == [EventKind.STEP] * 5 + [EventKind.DONE]
    assert [e.step for e in events[:5]] == [1, 2, 3, 4, 5]
    assert all(np.isclose(e.loss, e.ce + e.size) for e in events[:5])
    assert events[0].sizes.shape == (4,) and events[0].lower.shape == (4,)
    assert events[-1].stopped is False
    assert session.total_steps_done == 5


class HostReadbacks(torch.overrides.TorchFunctionMode):
    """Counts the tensor methods that copy a result to the host (each waits for a GPU)."""

    NAMES = ("__float__", "__int__", "__bool__", "__index__", "item", "tolist", "cpu")

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.NAMES:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def test_a_training_step_reads_back_from_the_device_once():
    image, seeds, _ = disc_volume()
    session = TrainingSession(image, seeds, SizeBounds(20, 300), config=small_config(steps=4))
    events = session.run()
    first = next(events)
    with HostReadbacks() as readbacks:
        steps = [next(events) for _ in range(3)]
    assert readbacks.calls == ["cpu"] * 3
    # the one copy still carries every figure of the event
    for event in (first, *steps):
        assert np.isfinite(event.loss) and event.loss == pytest.approx(event.ce + event.size, rel=1e-6)
        h, w = session.roi.shape
        assert event.sizes.shape == (4,) and np.all((event.sizes > 0) & (event.sizes < h * w))


def test_size_term_is_normalised_quadratic_penalty():
    image, seeds, _ = disc_volume()
    session = TrainingSession(image, seeds, SizeBounds(50, 60), config=small_config())
    torch.manual_seed(3)
    logits = torch.randn(2, 2, 16, 16)
    targets = torch.full((2, 16, 16), -1, dtype=torch.long)
    targets[0, 3, 3] = 1
    lower = torch.tensor([50.0, 0.0])
    upper = torch.tensor([60.0, 10.0])
    loss, ce, size, sizes = session._loss(logits, targets, lower, upper)
    s = torch.softmax(logits, 1)[:, 1].sum((1, 2))
    expected = torch.where(s < lower, (s - lower) ** 2, torch.where(s > upper, (s - upper) ** 2, torch.zeros_like(s)))
    area = image.shape[0] * image.shape[1]
    assert torch.allclose(size, 1e-2 * expected.mean() / area, rtol=1e-5)
    assert torch.allclose(sizes, s)


def test_size_penalty_beats_cross_entropy_alone():
    image, seeds, target = disc_volume()
    bounds = SizeBounds(60, 300)
    with_size = train(image, seeds, bounds, config=small_config(steps=60))
    without = train(image, seeds, bounds, config=small_config(steps=60, size_weight=0.0))
    d_size = float(np.mean(dice_3d(with_size.predict(), target)))
    d_ce = float(np.mean(dice_3d(without.predict(), target)))
    # with foreground dots only, CE alone has no reason to stop growing
    assert d_size > d_ce + 0.1, (d_size, d_ce)
    assert d_size > 0.6


def test_stop_from_another_thread_ends_within_a_step():
    image, seeds, _ = disc_volume()
    session = TrainingSession(image, seeds, SizeBounds(20, 300), config=small_config(steps=10_000))
    events = []
    for event in session.run():
        events.append(event)
        if event.step == 3:
            threading.Thread(target=session.stop).start()
            threading.Event().wait(0.05)
    assert events[-1].kind is EventKind.DONE and events[-1].stopped
    assert events[-2].step <= 4


def test_preview_of_requested_slice():
    image, seeds, _ = disc_volume()
    session = TrainingSession(image, seeds, SizeBounds(20, 300), config=small_config(steps=4, preview_every=2))
    session.request_preview(2, 1)
    events = list(session.run())
    previews = [e.preview for e in events if e.preview is not None]
    assert len(previews) == 2
    assert (previews[0].z, previews[0].t) == (2, 1)
    assert previews[0].mask.shape == image.shape[:2] and previews[0].mask.dtype == np.uint8


class SteppingClock:
    """``time`` for the trainer whose ``perf_counter`` advances ``tick`` seconds per call."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 1000.0, tick

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now

    def __getattr__(self, name):
        return getattr(time, name)


def test_previews_keep_their_time_floor_apart_and_each_round_shows_one_at_once(monkeypatch):
    """On a fast device every few steps would be many previews a second: the floor spaces them.

    A fake clock makes the steps 'fast' (a few hundredths of a second each), so the
    count does not depend on this machine's speed.
    """
    import napari_sizeloss.trainer as trainer

    monkeypatch.setattr(trainer, "time", SteppingClock(0.01))
    image, seeds, _ = disc_volume()

    def preview_times(interval: float, steps: int = 40) -> list[float]:
        session = TrainingSession(image, seeds, SizeBounds(20, 300),
                                  config=small_config(steps=steps, preview_every=1, preview_interval_s=interval))
        session.request_preview(1, 0)
        return [e.elapsed_s for e in session.run() if e.preview is not None]

    assert len(preview_times(0.0)) == 40  # no floor: every step, as preview_every asks
    spaced = preview_times(0.25)
    assert spaced[0] == min(spaced) and 2 <= len(spaced) < 40  # the round's first step shows one
    assert all(b - a >= 0.25 for a, b in zip(spaced, spaced[1:]))
    assert len(preview_times(3600.0)) == 1  # one per round even with a floor longer than the round
    assert len(preview_times(3600.0, steps=3)) == 1  # ... and again in the next round


def test_config_rejects_a_negative_preview_interval():
    with pytest.raises(ValueError, match="preview_interval_s must be a finite number of seconds >= 0, got -1"):
        TrainConfig(preview_interval_s=-1)
    with pytest.raises(ValueError, match="preview_interval_s"):
        TrainConfig(preview_interval_s=float("nan"))


def test_tags_and_corrections_set_slice_bounds():
    image, seeds, target = disc_volume()
    absent = np.zeros((3, 2), bool)
    absent[1, 1] = True
    corrected = np.zeros((3, 2), bool)
    corrected[2, 1] = True
    session = TrainingSession(
        image, seeds, SizeBounds(20, 300), absent=absent,
        corrections=target.astype(np.uint8), corrected=corrected, config=small_config(),
    )
    lower, upper = session.slice_bounds_px()
    assert (lower[0, 0], upper[0, 0]) == (20, 300)  # dots: both bounds
    assert (lower[1, 1], upper[1, 1]) == (0, 0)  # tagged absent: suppression
    assert (lower[0, 1], upper[0, 1]) == (0, 300)  # no information: upper bound only
    area = target[..., 2, 1].sum()
    assert lower[2, 1] == upper[2, 1] == area  # corrected: its exact area
    # a corrected slice is fully supervised: every image pixel inside the
    # training crop is labelled (only padding beyond the image edge is not)
    J, roi = JITTER, session.roi
    X, Y = image.shape[:2]
    xs = slice(max(0, -(roi.x0 - J)), min(roi.x1 + J, X) - (roi.x0 - J))
    ys = slice(max(0, -(roi.y0 - J)), min(roi.y1 + J, Y) - (roi.y0 - J))
    assert (session._train_targets[xs, ys, 2, 1] >= 0).all()
    assert (session._train_targets[xs, ys, 2, 0] >= 0).mean() < 0.1  # an uncorrected slice is not

    bad = absent.copy()
    bad[0, 0] = True
    with pytest.raises(SeedsError, match="z=0, t=0"):
        TrainingSession(image, seeds, SizeBounds(20, 300), absent=bad, config=small_config())


def test_mm2_bounds_convert_with_spacing():
    image, seeds, _ = disc_volume()
    session = TrainingSession(
        image, seeds, SizeBounds(40, 600, unit="mm2"), spacing=(2.0, 1.0, 8.0), config=small_config()
    )
    assert session.bounds_px.unit == "px"
    assert math.isclose(session.bounds_px.lower, 20) and math.isclose(session.bounds_px.upper, 300)


def test_bad_inputs_are_refused():
    image, seeds, _ = disc_volume()
    with pytest.raises(ValueError, match="NaN"):
        nan = image.copy()
        nan[0, 0, 0, 0] = np.nan
        TrainingSession(nan, seeds, SizeBounds(20, 300), config=small_config())
    with pytest.raises(ValueError, match="shape"):
        TrainingSession(image, seeds[:, :, :2], SizeBounds(20, 300), config=small_config())
    with pytest.raises(ValueError, match="dots"):
        TrainingSession(image, np.zeros_like(seeds), SizeBounds(20, 300), config=small_config())
    with pytest.raises(ValueError, match="exceeds"):
        TrainingSession(image, seeds, SizeBounds(20, 10_000), config=small_config())


def test_same_seed_same_result():
    image, seeds, _ = disc_volume()
    a = train(image, seeds, SizeBounds(20, 300), config=small_config(steps=6)).probabilities()
    b = train(image, seeds, SizeBounds(20, 300), config=small_config(steps=6)).probabilities()
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_predicting_between_steps_leaves_training_unchanged():
    """Previews and whole-volume predictions during a round (the widget's, the bench's scoring) train nothing.

    A prediction puts the network in eval mode and back; one that left it in
    eval mode, moved the batch norms' running statistics or drew from the
    session's random streams would change every later step.
    """
    image, seeds, _ = disc_volume()

    def weights_after(predict_every: int, preview_every: int) -> dict:
        session = TrainingSession(image, seeds, SizeBounds(20, 300),
                                  config=small_config(steps=6, preview_every=preview_every))
        session.request_preview(1, 1)
        for event in session.run():
            if predict_every and event.kind is EventKind.STEP and event.step % predict_every == 0:
                session.predict()
        return {k: v.detach().clone() for k, v in session.model.state_dict().items()}

    plain = weights_after(0, 0)
    watched = weights_after(2, 1)
    assert plain.keys() == watched.keys()
    for name in plain:
        torch.testing.assert_close(watched[name], plain[name], rtol=0, atol=0, msg=name)


def test_checkpoint_round_trip_and_continue(tmp_path):
    image, seeds, target = disc_volume()
    session = train(image, seeds, SizeBounds(60, 300), config=small_config(steps=20))
    path = session.save(tmp_path / "m.ckpt")
    predictor = Predictor.from_checkpoint(path, device="cpu")
    np.testing.assert_array_equal(predictor.predict(image), session.predict())
    # a 3D volume of another shape works too (whole image, no region)
    other = predictor.predict(image[4:40, 2:38, :, 0])
    assert other.shape == (36, 36, 3) and other.dtype == np.uint8
    # continuing from the checkpoint starts from its weights
    resumed = TrainingSession(image, seeds, SizeBounds(60, 300), config=small_config(steps=1), checkpoint=path)
    np.testing.assert_allclose(resumed.probabilities(), session.probabilities(), atol=1e-5)


@pytest.mark.parametrize("box", ["auto", None])
def test_prediction_a_few_slices_at_a_time_equals_the_whole(tmp_path, box):
    """Predict's progress in the widget: every slice once, the one on screen first, the same probabilities."""
    image, seeds, _ = disc_volume(shape=(48, 40, 3, 4))
    session = train(image, seeds, SizeBounds(60, 300), config=small_config(steps=4))
    predictor = Predictor.from_checkpoint(session.save(tmp_path / "m.ckpt"), device="cpu")
    whole = predictor.probabilities(image, box)
    chunks = list(predictor.iter_probabilities(image, box, first=(2, 1), chunk_slices=5))
    assert [len(s) for s, _ in chunks] == [1, 5, 5, 1]  # the first alone, then 11 slices in fives
    np.testing.assert_array_equal(chunks[0][0], [[2, 1]])
    got = np.full(image.shape, np.nan, dtype=np.float32)
    for slices, probs in chunks:
        assert probs.shape == image.shape[:2] + (len(slices),)
        assert np.isnan(got[:, :, slices[:, 0], slices[:, 1]]).all()  # no slice twice
        got[:, :, slices[:, 0], slices[:, 1]] = probs
    np.testing.assert_allclose(got, whole, atol=1e-4)  # normalised on the whole image, not per chunk
    if box == "auto":  # the training region reaches past the image: chunks pad it as the whole volume does
        region = predictor.region_for(image.shape)
        assert region is not None and (region.x0 < 0 or region.y0 < 0 or region.x1 > 48 or region.y1 > 40)
    with pytest.raises(ValueError, match="outside the volume"):
        next(predictor.iter_probabilities(image, first=(3, 0)))


def test_batch_one_still_trains_on_labelled_slices():
    """With one slice per step, half the steps draw a slice with dots (labelled_fraction 0.5)."""
    image, seeds, _ = disc_volume()
    session = TrainingSession(image, seeds, SizeBounds(20, 300), config=small_config(batch_size=1, crop=None))
    labelled = 0
    for _ in range(200):
        _, targets, _, _ = session._sample_batch()
        labelled += int((targets >= 0).any())
    Z, T = image.shape[2:]
    share_of_labelled = len(session._labelled_slices) / (Z * T)
    expected = 0.5 + 0.5 * share_of_labelled
    assert abs(labelled / 200 - expected) < 0.12


def test_learning_rate_decays_over_a_round_and_a_resumed_round_starts_lower(tmp_path):
    image, seeds, _ = disc_volume()
    session = TrainingSession(image, seeds, SizeBounds(20, 300), config=small_config(steps=10, lr=4e-3))
    first = [e.lr for e in session.run() if e.kind is EventKind.STEP]
    assert first[0] == pytest.approx(4e-3, rel=0.05)  # cosine starts at lr...
    assert first[-1] < 0.2 * 4e-3 and all(a >= b for a, b in zip(first, first[1:]))  # ...and decays
    second = [e.lr for e in session.run() if e.kind is EventKind.STEP]
    assert second[0] == pytest.approx(0.5 * 4e-3, rel=0.05)  # continuing trained weights: half
    path = session.save(tmp_path / "m.ckpt")
    resumed = TrainingSession(image, seeds, SizeBounds(20, 300), config=small_config(steps=2, lr=4e-3), checkpoint=path)
    assert next(resumed.run()).lr == pytest.approx(0.5 * 4e-3, rel=0.05)
    paper = TrainConfig.paper(steps=5, device="cpu", preview_every=0)
    assert paper.lr_decay is None and paper.resume_lr_factor == 1.0


def _layouts_seen(session):
    """Whether each forward pass fed the network's second convolution a channels-last batch."""
    from napari_sizeloss.device import to_channels_last

    seen = []
    conv = session.model.down1.branch[0]  # 16 input channels: the layout is unambiguous
    handle = conv.register_forward_pre_hook(lambda m, args: seen.append(args[0].stride() == to_channels_last(args[0]).stride()))
    try:
        for _ in session.run():
            pass
    finally:
        handle.remove()
    return seen


def test_fast_path_trains_channels_last_on_the_cpu_and_the_plain_path_contiguous():
    """Layouts only; that both compute the same step is tested in float64 (tests/test_bench.py)."""
    from napari_sizeloss.device import is_channels_last

    image, seeds, _ = disc_volume()
    sessions = {}
    for amp in (True, False):
        config = small_config(steps=2, amp=amp, ema_decay=None)  # predictions from the weights loaded below
        session = TrainingSession(image, seeds, SizeBounds(20, 300), config=config)
        assert is_channels_last(session.model) is amp
        assert _layouts_seen(session) == [amp, amp]  # no mixed layouts: the batch follows the weights
        sessions[amp] = session
    # the same weights predict the same in either layout
    sessions[True].model.load_state_dict(sessions[False].model.state_dict())
    assert is_channels_last(sessions[True].model)
    np.testing.assert_allclose(sessions[True].probabilities(), sessions[False].probabilities(), atol=1e-5)


def test_resuming_a_channels_last_session_lays_adams_moments_out_like_the_weights(tmp_path):
    """Fused Adam pairs elements by memory order: contiguous moments would corrupt channels-last updates."""
    image, seeds, _ = disc_volume()
    path = train(image, seeds, SizeBounds(60, 300), config=small_config(steps=3)).save(tmp_path / "m.ckpt")
    resumed = TrainingSession(image, seeds, SizeBounds(60, 300), config=small_config(steps=1), checkpoint=path)
    opt = resumed.optimizer
    moments = [(v, p) for g in opt.param_groups for p in g["params"] for v in opt.state[p].values() if v.dim() == 4]
    assert len(moments) > 100 and all(v.stride() == p.stride() for v, p in moments)
    assert any(p.stride() != p.contiguous().stride() for _, p in moments)  # really channels-last


def test_predictions_use_the_moving_average_of_the_weights(tmp_path):
    """Previews, Predict and the saved checkpoint use the average; training steps the raw weights."""
    from test_averaging import expected_average

    from napari_sizeloss.checkpoint import build_model, load_checkpoint
    from napari_sizeloss.device import is_channels_last
    from napari_sizeloss.trainer import predict_volume

    image, seeds, _ = disc_volume()
    session = TrainingSession(image, seeds, SizeBounds(20, 300), config=small_config(steps=8, ema_decay=0.6))
    assert session.prediction_model is session.model  # no step yet
    states = []
    for event in session.run():
        if event.kind is EventKind.STEP:
            states.append({k: v.detach().clone() for k, v in session.model.state_dict().items()})
    avg = expected_average(states, 0.6)
    averaged = session.prediction_model
    assert averaged is not session.model
    assert is_channels_last(averaged) and is_channels_last(session.model)  # the fast path's layout, kept
    for key, value in averaged.state_dict().items():
        torch.testing.assert_close(value.double(), avg[key], rtol=1e-5, atol=1e-6, msg=key)

    def probs(model):
        return predict_volume(model, session._image, normalisation=None, device="cpu", box=session.roi,
                              tta=session.config.tta)

    np.testing.assert_allclose(session.probabilities(), probs(averaged), atol=1e-5)
    assert np.abs(session.probabilities() - probs(session.model)).max() > 1e-3  # not the last step's weights
    saved = build_model(load_checkpoint(session.save(tmp_path / "m.ckpt")))
    for key, value in saved.state_dict().items():
        torch.testing.assert_close(value, averaged.state_dict()[key].contiguous(), msg=key)


def test_without_averaging_predictions_use_the_last_weights():
    image, seeds, _ = disc_volume()
    session = train(image, seeds, SizeBounds(20, 300), config=small_config(steps=3, ema_decay=None))
    assert session.prediction_model is session.model
    assert TrainConfig.interactive().ema_decay is None  # opt-in
    # switched off between rounds, the average is dropped
    averaged = train(image, seeds, SizeBounds(20, 300), config=small_config(steps=3, ema_decay=0.9))
    assert averaged.prediction_model is not averaged.model
    averaged.config.ema_decay = None
    list(averaged.run())
    assert averaged.prediction_model is averaged.model
    assert TrainConfig.paper().ema_decay is None  # the paper's protocol predicts with the last weights
    for bad in (0, 1, float("nan")):
        with pytest.raises(ValueError, match="ema_decay"):
            TrainConfig(ema_decay=bad)


def _two_blob_probabilities(shape):
    """Probabilities with the disc under the dots (centre 24, 20) and a second blob in a corner."""
    X, Y, Z, T = shape
    probs = np.zeros(shape, np.float32)
    probs[20:29, 16:25] = 0.9  # around the dots, every slice and frame
    probs[2:6, 2:6, 1, 1] = 0.8  # a separate blob, one slice-frame
    return probs


def test_masks_keep_the_regions_connected_to_dots_and_probabilities_stay_the_networks(monkeypatch):
    image, seeds, _ = disc_volume()
    session = TrainingSession(image, seeds, SizeBounds(20, 300), config=small_config())
    probs = _two_blob_probabilities(image.shape)
    monkeypatch.setattr(session, "_predict_probs", lambda image4, tta=None: probs)
    assert session.config.keep_connected  # the interactive default
    mask = session.predict()
    assert mask.sum() == 81 * 6 and not mask[2:6, 2:6].any()
    assert session.predict(keep_connected=False).sum() == 81 * 6 + 16  # every region
    assert session.predicted_sizes()[1, 1] == 81
    assert (session.probabilities() > 0.5).sum() == 81 * 6 + 16  # the network's own, unfiltered
    kept, left_out, n_left_out = session.predict_split()
    np.testing.assert_array_equal(kept, mask)
    assert n_left_out == 1 and left_out.sum() == 16 and left_out[2:6, 2:6, 1, 1].all()
    kept, left_out, n_left_out = session.predict_split(keep_connected=False)
    assert kept.sum() == 81 * 6 + 16 and n_left_out == 0 and not left_out.any()


def test_a_corrected_target_pixel_anchors_its_region_as_a_dot_does(monkeypatch):
    image, seeds, _ = disc_volume()
    corrections = np.zeros(image.shape, np.uint8)
    corrections[3, 3, 1, 1] = 1  # the user painted the corner blob as target on slice 1 of frame 1
    corrected = np.zeros((3, 2), bool)
    corrected[1, 1] = True
    session = TrainingSession(image, seeds, SizeBounds(1, 300), corrections=corrections, corrected=corrected,
                              config=small_config())
    monkeypatch.setattr(session, "_predict_probs", lambda image4, tta=None: _two_blob_probabilities(image.shape))
    assert session.predict().sum() == 81 * 6 + 16
    # painted on a slice that is *not* marked corrected, the pixel anchors nothing
    session.update(corrected=np.zeros((3, 2), bool))
    assert session.predict().sum() == 81 * 6


def test_a_preview_keeps_the_regions_its_dots_or_the_last_volume_anchor(monkeypatch):
    image, seeds, _ = disc_volume()  # target dots on every slice of frame 0
    probs = np.zeros(image.shape, np.float32)
    probs[20:29, 16:25] = 0.9  # the disc under the dots, every slice and frame
    probs[2:6, 2:6, 1, :] = 0.8  # a blob beside it on slice 1 of both frames

    def fake_probs(image4, tta=None):
        if image4.shape == image.shape:
            return probs
        (z, t) = session._preview_request
        return probs[:, :, z : z + 1, t : t + 1]

    def preview(z, t):
        session.request_preview(z, t)
        events = list(session.run())
        return [e.preview.mask for e in events if e.preview is not None][-1]

    session = TrainingSession(image, seeds, SizeBounds(20, 300), config=small_config(steps=1, preview_every=1))
    monkeypatch.setattr(session, "_predict_probs", fake_probs)
    assert preview(1, 0).sum() == 81  # a dotted slice: the blob is dropped
    assert preview(1, 1).sum() == 81 + 16  # no dot, no volume predicted yet: shown whole
    session.predict()  # the round's whole-volume mask, filtered in 4D
    assert preview(1, 1).sum() == 81  # it now anchors the undotted slice
    session.config.keep_connected = False
    assert preview(1, 0).sum() == 81 + 16


def test_the_papers_protocol_keeps_every_region():
    assert TrainConfig.paper().keep_connected is False
    assert TrainConfig.interactive().keep_connected is True
