"""Batch-norm folding gives the same predictions as the network it was folded from."""

import numpy as np
import pytest
import torch
from torch import nn

from napari_sizeloss import inference
from napari_sizeloss.data import Box
from napari_sizeloss.device import make_adam
from napari_sizeloss.inference import count_batch_norms, fold_batch_norms, inference_model
from napari_sizeloss.network import ENet
from napari_sizeloss.trainer import predict_volume


def _enet_with_nontrivial_norms(seed=0) -> ENet:
    """An ENet whose batch norms are far from identity maps, so folding them matters."""
    torch.manual_seed(seed)
    model = ENet()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.2)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.bias is not None:
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return model


def test_folded_enet_gives_the_same_logits_with_one_batch_norm_left():
    model = _enet_with_nontrivial_norms(0)
    model.eval()
    x = torch.randn(3, 1, 45, 38)  # odd sizes: the padding path too
    with torch.no_grad():
        ref = model(x)
        folded = fold_batch_norms(model)
        out = folded(x)
    assert count_batch_norms(model) == 84
    assert count_batch_norms(folded) == 1  # the initial block's, after a concatenation
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert float(ref.abs().max()) > 1.0  # logits of real magnitude, not a trivially small comparison


def test_folding_leaves_the_original_untouched_and_trainable():
    model = _enet_with_nontrivial_norms(1)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batch_norms(model)
    assert model.training and not folded.training
    assert count_batch_norms(model) == 84
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.requires_grad for p in model.parameters())
    assert not any(p.requires_grad for p in folded.parameters())


def test_only_a_batch_norm_straight_after_a_matching_convolution_folds():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),  # followed (through a nested Sequential) by BN: folds
        nn.Sequential(nn.BatchNorm2d(4), nn.ReLU()),
        nn.BatchNorm2d(4),  # after a ReLU: stays
        nn.Conv2d(4, 4, 1, groups=2),  # grouped: its BN stays
        nn.BatchNorm2d(4),
        nn.ConvTranspose2d(4, 3, 2, stride=2, bias=False),  # transposed, no bias: folds
        nn.BatchNorm2d(3),
    )
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.3, 3)
                m.weight.uniform_(0.5, 2)
                m.bias.uniform_(-1, 1)
    net.eval()
    folded = fold_batch_norms(net)
    assert isinstance(folded[1][0], nn.Identity)
    assert isinstance(folded[2], nn.BatchNorm2d) and isinstance(folded[4], nn.BatchNorm2d)
    assert isinstance(folded[6], nn.Identity)
    x = torch.randn(2, 2, 6, 5)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-5, atol=1e-5)


def test_a_batch_norm_without_running_statistics_is_left_alone():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3, track_running_stats=False)).eval()
    folded = fold_batch_norms(net)
    assert isinstance(folded[1], nn.BatchNorm2d)  # it normalises with each batch's statistics: nothing to fold
    x = torch.randn(2, 1, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x))


def test_inference_model_folds_large_predictions_only_and_refolds_after_training(monkeypatch):
    monkeypatch.setattr(inference, "FOLD_MIN_PIXELS", 1000)
    model = _enet_with_nontrivial_norms(2)
    assert inference_model(model, 999) is model and not model.training
    folded = inference_model(model, 1000)
    assert folded is not model and count_batch_norms(folded) == 1
    assert inference_model(model, 5000) is folded  # weights unchanged: the same copy

    model.eval()
    opt = make_adam(model.parameters(), 2e-3)  # fused: changes weights without bumping their versions
    x = torch.randn(2, 1, 32, 32)
    model(x).square().mean().backward()
    opt.step()  # weights change; running statistics (eval mode) do not
    refolded = inference_model(model, 1000)
    assert refolded is not folded
    with torch.no_grad():
        torch.testing.assert_close(refolded(x), model(x), rtol=1e-4, atol=1e-4)
        assert float((folded(x) - model(x)).abs().max()) > 1e-2  # the stale copy really was stale

        model.down1.branch[0].weight.data.mul_(1.5)  # a write through .data: no version bump either
        assert inference_model(model, 1000) is not refolded
        model.stage1[0].branch[1][0].running_var.fill_(2.0)  # a buffer
        last = inference_model(model, 1000)
        torch.testing.assert_close(last(x), model(x), rtol=1e-4, atol=1e-4)
        assert inference_model(model, 1000) is last


@pytest.mark.parametrize("fold_min_pixels", [1, 1 << 62])
def test_predict_volume_matches_the_network_run_by_hand_folded_or_not(monkeypatch, fold_min_pixels):
    monkeypatch.setattr(inference, "FOLD_MIN_PIXELS", fold_min_pixels)
    model = _enet_with_nontrivial_norms(3)
    model.train()
    image = np.random.default_rng(0).random((40, 36, 2, 3), dtype=np.float32)
    probs = predict_volume(model, image, normalisation=None, amp=False, batch_size=4)  # 4 + 2 slices
    by_pixels = predict_volume(model, image, normalisation=None, amp=False)  # all 6 in one batch
    model.eval()
    with torch.no_grad():
        slices = torch.from_numpy(image.reshape(40, 36, 6).transpose(2, 0, 1)[:, None].copy())
        ref = torch.softmax(model(slices), 1)[:, 1].numpy().transpose(1, 2, 0).reshape(40, 36, 2, 3)
    np.testing.assert_allclose(probs, ref, atol=1e-5)
    np.testing.assert_allclose(by_pixels, ref, atol=1e-5)
    assert 0.01 < ref.mean() < 0.99 and ref.std() > 1e-3  # a non-degenerate prediction


def test_inference_model_lays_the_folded_copy_out_as_asked_and_leaves_the_model_alone(monkeypatch):
    from napari_sizeloss.device import is_channels_last

    monkeypatch.setattr(inference, "FOLD_MIN_PIXELS", 1000)
    model = _enet_with_nontrivial_norms(3)
    last = inference_model(model, 1000, channels_last=True)
    plain = inference_model(model, 1000, channels_last=False)
    assert is_channels_last(last) and not is_channels_last(plain) and not is_channels_last(model)
    assert inference_model(model, 1000) is plain  # None: the model's own layout
    assert inference_model(model, 1000, channels_last=True) is last  # both cached while the weights hold
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(last(x.to(memory_format=torch.channels_last)), plain(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "box",
    [Box(4, 36, 2, 34), Box(-8, 24, 20, 52), Box(30, 62, -10, 22), Box(50, 82, 0, 32)],
    ids=["inside", "past-left-and-right", "past-two-edges", "misses-the-image"],
)
def test_predict_volume_in_a_box_matches_crop_normalise_run_and_place_back_by_hand(box):
    """Batch by batch (no whole-volume copies) and still: normalised on the whole volume, padded
    with its normalised minimum beyond the image, zero outside the box, in the input's shape."""
    from napari_sizeloss.data import crop_volume, normalisation_params, normalise, uncrop_volume

    torch.manual_seed(4)
    model = ENet().eval()
    rng = np.random.default_rng(1)
    image = (rng.random((40, 36, 3, 2)) * 900 + 100).astype(np.int16)  # raw scanner integers
    params = normalisation_params(image)
    norm = normalise(image, params)
    crop = crop_volume(norm, box, fill=float(norm.min()))
    h, w = box.shape
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(crop.reshape(h, w, 6).transpose(2, 0, 1)[:, None]))
        probs = torch.softmax(model(x), 1)[:, 1].numpy().transpose(1, 2, 0).reshape(h, w, 3, 2)
    ref = uncrop_volume(probs, box, (40, 36))
    got = predict_volume(model, image, normalisation="auto", box=box, batch_size=4, amp=False)
    assert got.shape == image.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-6)
    if box.x0 >= 40:
        assert not got.any()
    else:
        assert got[max(box.x0, 0) : box.x1, max(box.y0, 0) : box.y1].std() > 1e-4  # a real prediction inside
        outside = np.ones((40, 36), bool)
        outside[max(box.x0, 0) : box.x1, max(box.y0, 0) : box.y1] = False
        assert not got[outside].any()
    one_slice = predict_volume(model, image[:, :, 1, 0], normalisation=params, box=box, amp=False)
    assert one_slice.shape == (40, 36)
