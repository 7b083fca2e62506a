"""Test-time augmentation: views, their inverses, and the averaged prediction against explicit references."""

import numpy as np
import pytest
import torch

from napari_sizeloss.bounds import SizeBounds
from napari_sizeloss.config import TTA_MODES, TrainConfig
from napari_sizeloss.network import ENet
from napari_sizeloss.trainer import PREDICT_PIXELS, Predictor, TrainingSession, predict_volume
from napari_sizeloss.tta import _apply, _undo, check_tta, tta_probabilities, tta_views, views_per_pass


def _asymmetric(shape=(2, 1, 16, 16)):
    return torch.arange(int(np.prod(shape)), dtype=torch.float32).reshape(shape)


@pytest.mark.parametrize("mode,count", [("none", 1), ("flips", 4), ("dihedral", 8)])
def test_views_are_distinct_and_each_is_undone(mode, count):
    x = _asymmetric()
    views = tta_views(mode)
    assert len(views) == count and views[0] == (0, ())
    seen = [_apply(x, v) for v in views]
    for i in range(count):  # no view repeats another: each adds information
        for j in range(i):
            assert not torch.equal(seen[i], seen[j])
    for v, y in zip(views, seen):
        torch.testing.assert_close(_undo(y, v), x, rtol=0, atol=0)


def test_an_unknown_mode_is_refused_in_one_line():
    with pytest.raises(ValueError, match="tta must be one of none, flips, dihedral; got 'mirror'"):
        check_tta("mirror")
    with pytest.raises(ValueError, match="tta must be one of"):
        TrainConfig(tta="mirror")
    with pytest.raises(ValueError, match="tta must be one of"):
        Predictor(model=ENet(), device=torch.device("cpu"), tta="all")
    assert TrainConfig.paper().tta == "none"  # the paper predicts once
    assert TrainConfig.interactive().tta == "flips"


def _pointwise_net():
    """A 1x1 convolution: it commutes with every flip and rotation, so averaging the views changes nothing."""
    torch.manual_seed(0)
    return torch.nn.Conv2d(1, 2, 1)


@pytest.mark.parametrize("mode", TTA_MODES)
@pytest.mark.parametrize("hw", [(16, 16), (16, 24)])
def test_an_equivariant_network_gives_the_plain_prediction(mode, hw):
    """Each view's output is turned back before averaging (a missing inverse would blur a pointwise net's map)."""
    net = _pointwise_net()
    x = torch.randn(3, 1, *hw)
    with torch.no_grad():
        plain = torch.softmax(net(x), dim=1)
        got = tta_probabilities(net, x, mode)
    assert got.shape == plain.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, plain, rtol=1e-5, atol=1e-6)


def test_the_average_is_over_each_views_prediction_turned_back():
    """Against an explicit loop, with a network that is not equivariant (a 3x3 convolution and a position ramp)."""
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(1, 2, 3, padding=1)

    def net(x):
        ramp = torch.linspace(0, 2, x.shape[-1])
        return conv(x) + ramp  # position-dependent: no view equals another's output turned back

    x = torch.randn(2, 1, 12, 12)
    with torch.no_grad():
        plain = torch.softmax(net(x), 1)
        for mode, rotations, flips in (("flips", [0], [(), (2,), (3,), (2, 3)]), ("dihedral", range(4), [(), (3,)])):
            expected = []
            for k in rotations:
                for f in flips:
                    v = torch.rot90(x, k, (2, 3))
                    v = torch.flip(v, f) if f else v
                    p = torch.softmax(net(v), 1)
                    p = torch.flip(p, f) if f else p
                    expected.append(torch.rot90(p, -k, (2, 3)))
            expected = torch.stack(expected).mean(0)
            got = tta_probabilities(net, x, mode)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
            assert (got - plain).abs().max() > 1e-3  # the views do differ for this network


def test_predict_volume_averages_the_predictions_of_the_flipped_and_turned_volumes():
    """``predict_volume(tta=...)`` equals predicting each flipped or turned volume and turning it back."""
    torch.manual_seed(0)
    model = ENet().eval()
    image = np.random.default_rng(0).random((32, 32, 2, 2), dtype=np.float32)
    kw = dict(normalisation=None, device="cpu", channels_last=False)

    def plain(img):
        return predict_volume(model, np.ascontiguousarray(img), **kw)

    flips = [plain(image), plain(image[::-1])[::-1], plain(image[:, ::-1])[:, ::-1], plain(image[::-1, ::-1])[::-1, ::-1]]
    np.testing.assert_allclose(predict_volume(model, image, tta="flips", **kw), np.mean(flips, 0), atol=1e-5)
    turned = []
    for k in range(4):
        for flip in (False, True):
            v = np.rot90(image, k, axes=(0, 1))
            v = v[:, ::-1] if flip else v
            p = plain(v)
            p = p[:, ::-1] if flip else p
            turned.append(np.rot90(p, -k, axes=(0, 1)))
    np.testing.assert_allclose(predict_volume(model, image, tta="dihedral", **kw), np.mean(turned, 0), atol=1e-5)


def test_a_pass_holds_no_more_pixels_than_a_plain_one():
    """The default batch shrinks by the views, so a pass of 8 views stays within PREDICT_PIXELS."""
    passes = []
    model = ENet().eval()

    def forward(x):
        passes.append(tuple(x.shape))
        return model(x)

    side = 64
    image = np.zeros((side, side, 40, 1), np.float32)
    for mode in TTA_MODES:
        passes.clear()
        predict_volume(model, image, normalisation=None, forward=forward, tta=mode)
        per_pass = PREDICT_PIXELS // (side * side * views_per_pass(mode)) * views_per_pass(mode)
        assert passes[0][0] == per_pass  # a forward given: the batch is padded to its full size
        assert all(n * h * w <= PREDICT_PIXELS for n, _, h, w in passes)


def _disc_case():
    from tests.test_trainer import disc_volume

    return disc_volume()


def test_a_session_predicts_with_its_configured_views_and_predict_can_override_them():
    image, seeds, _ = _disc_case()
    config = TrainConfig.interactive(steps=3, batch_size=2, crop=32, device="cpu", preview_every=0, seed=0,
                                     tta="flips")
    session = TrainingSession(image, seeds, SizeBounds(20, 300), config=config)
    list(session.run())
    model = session.prediction_model

    def reference(mode):
        return predict_volume(model, session._image, normalisation=None, device="cpu", box=session.roi,
                              channels_last=session._channels_last, tta=mode)

    np.testing.assert_allclose(session.probabilities(), reference("flips"), atol=1e-6)
    assert np.abs(reference("flips") - reference("none")).max() > 1e-3  # the setting matters
    np.testing.assert_array_equal(session.predict(keep_connected=False, tta="none"), (reference("none") > 0.5))
    np.testing.assert_array_equal(session.predict(keep_connected=False), (reference("flips") > 0.5))
