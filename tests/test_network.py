"""ENet: architecture of the paper, any input size on the input's pixel grid, rebuild from config."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from napari_sizeloss.network import (
    STRIDE,
    DownsamplingBottleneck,
    ENet,
    PReLU,
    RegularBottleneck,
    UpsamplingBottleneck,
    _PReLUFunction,
    _residual_sum,
    count_parameters,
    with_torch_prelu,
)


def _eval_model(**kwargs) -> ENet:
    torch.manual_seed(0)
    model = ENet(**kwargs)
    # Non-trivial running statistics so that eval mode is not an identity normalisation.
    model.train()
    with torch.no_grad():
        model(torch.rand(2, kwargs.get("in_channels", 1), 32, 32))
    return model.eval()


# ------------------------------------------------------------------ architecture
def test_parameter_count_is_that_of_the_paper():
    n = count_parameters(ENet(in_channels=1, num_classes=2))
    assert 350_000 <= n <= 370_000


def test_parameter_count_changes_only_where_the_paper_says():
    """Extra classes only widen the final 2x2 transposed conv (16*2*2 weights + 1 bias
    each); extra input channels trade initial-conv filters (3x3 x C_in x (16 - C_in))."""
    base = count_parameters(ENet(1, 2))
    assert count_parameters(ENet(1, 3)) - base == 16 * 2 * 2 + 1
    conv_1 = 9 * 1 * 15
    conv_3 = 9 * 3 * 13
    assert count_parameters(ENet(3, 4)) - base == (conv_3 - conv_1) + 2 * (16 * 2 * 2 + 1)


def test_trainable_only_excludes_frozen_parameters():
    model = ENet()
    model.fullconv.weight.requires_grad_(False)
    total = count_parameters(model)
    assert count_parameters(model, trainable_only=True) == total - model.fullconv.weight.numel()


def test_stage_resolutions_and_widths():
    """Feature maps at 1/2, 1/4, 1/8, 1/8, 1/4, 1/2 resolution with 16, 64, 128, 128, 64, 16 channels."""
    model = ENet().eval()
    shapes = {}
    for name in ("initial", "stage1", "stage2", "stage3", "stage4", "stage5"):
        getattr(model, name).register_forward_hook(
            lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape))
        )
    with torch.no_grad():
        model(torch.rand(1, 1, 64, 96))
    assert shapes == {
        "initial": (1, 16, 32, 48),
        "stage1": (1, 64, 16, 24),
        "stage2": (1, 128, 8, 12),
        "stage3": (1, 128, 8, 12),
        "stage4": (1, 64, 16, 24),
        "stage5": (1, 16, 32, 48),
    }


def test_stage_2_and_3_bottlenecks_in_the_papers_order():
    model = ENet()
    expected = [
        ("regular", 1),
        ("dilated", 2),
        ("asymmetric", 1),
        ("dilated", 4),
        ("regular", 1),
        ("dilated", 8),
        ("asymmetric", 1),
        ("dilated", 16),
    ]
    for stage in (model.stage2, model.stage3):
        assert [(b.kind, b.dilation) for b in stage] == expected
        for block, (kind, dilation) in zip(stage, expected):
            convs = [m for m in block.branch.modules() if isinstance(m, nn.Conv2d)]
            kernels = [m.kernel_size for m in convs]
            if kind == "asymmetric":
                assert kernels == [(1, 1), (5, 1), (1, 5), (1, 1)]
            else:
                assert kernels == [(1, 1), (3, 3), (1, 1)]
                assert convs[1].dilation == (dilation, dilation)
            assert convs[0].out_channels == 128 // 4  # internal ratio 4


def test_spatial_dropout_rates_per_stage():
    model = ENet(dropout_initial=0.01, dropout=0.1)

    def rates(module):
        return {m.p for m in module.modules() if isinstance(m, nn.Dropout2d)}

    assert rates(model.down1) | rates(model.stage1) == {0.01}
    for name in ("down2", "stage2", "stage3", "up4", "stage4", "up5", "stage5"):
        assert rates(getattr(model, name)) == {0.1}, name
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())  # only spatial dropout


def test_activations_are_prelu():
    model = ENet()
    assert not any(isinstance(m, (nn.ReLU, nn.LeakyReLU)) for m in model.modules())
    assert sum(isinstance(m, nn.PReLU) for m in model.modules()) > 50


# ------------------------------------------------------------------ shapes
@pytest.mark.parametrize(
    "in_channels, num_classes, shape",
    [
        (1, 2, (1, 37, 53)),
        (1, 2, (2, 64, 64)),
        (3, 4, (1, 37, 53)),
        (1, 2, (1, 1, 1)),
        (1, 2, (3, 9, 200)),
    ],
)
def test_logits_have_the_input_grid(in_channels, num_classes, shape):
    b, h, w = shape
    model = ENet(in_channels=in_channels, num_classes=num_classes)
    out = model(torch.rand(b, in_channels, h, w))  # training mode: batch norm on batch statistics
    assert out.shape == (b, num_classes, h, w)
    assert torch.isfinite(out).all()


def test_wrong_channel_count_is_refused():
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        ENet(in_channels=1)(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError):
        ENet()(torch.rand(16, 16))


@pytest.mark.parametrize("kwargs", [{"in_channels": 0}, {"in_channels": 16}, {"num_classes": 0}, {"dropout": 1.0}])
def test_invalid_constructor_arguments(kwargs):
    with pytest.raises(ValueError):
        ENet(**kwargs)


# ------------------------------------------------------------------ alignment
def _edge_pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Replicate-pad a (B, C, H, W) tensor with numpy (independent of torch's padding)."""
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (top, bottom), (left, right)), mode="edge")
    return torch.from_numpy(padded)


@pytest.mark.parametrize("h, w", [(37, 53), (41, 45), (33, 64)])
def test_logits_are_aligned_with_the_input_pixels(h, w):
    """Whatever split of the padding the model uses, its logit (i, j) must be the
    logit the unpadded network gives at the padded position of input pixel (i, j):
    there must be offsets (top, left) such that embedding the image at them by hand
    and reading the logits back at the same offsets gives the model's output."""
    model = _eval_model()
    x = torch.rand(1, 1, h, w)
    pad_h, pad_w = -h % STRIDE, -w % STRIDE
    with torch.no_grad():
        out = model(x)
        matches = []
        for top in range(pad_h + 1):
            for left in range(pad_w + 1):
                big = _edge_pad(x, top, pad_h - top, left, pad_w - left)
                ref = model(big)[:, :, top : top + h, left : left + w]
                if torch.allclose(out, ref, atol=1e-5):
                    matches.append((top, left))
    assert matches, "no embedding of the image reproduces the logits at its own pixels"
    # The documented convention: symmetric split, the odd pixel after.
    assert (pad_h // 2, pad_w // 2) in matches


def test_misaligned_reading_would_be_detected():
    """The check above is sensitive: reading the logits one pixel off does not match."""
    model = _eval_model()
    x = torch.rand(1, 1, 37, 53)
    with torch.no_grad():
        out = model(x)
        big = _edge_pad(x, 1, 2, 1, 2)
        ref = model(big)
    assert torch.allclose(out, ref[:, :, 1:38, 1:54], atol=1e-5)
    assert not torch.allclose(out, ref[:, :, 0:37, 1:54], atol=1e-3)
    assert not torch.allclose(out, ref[:, :, 1:38, 2:55], atol=1e-3)


def test_no_padding_when_sides_are_multiples_of_eight():
    model = _eval_model()
    x = torch.rand(2, 1, 40, 56)
    with torch.no_grad():
        assert torch.equal(model(x), model.forward_padded(x))


# ------------------------------------------------------------------ rebuild, determinism, gradients
def test_config_rebuilds_the_architecture_and_loads_the_weights_strictly():
    model = _eval_model(in_channels=3, num_classes=4, dropout_initial=0.02, dropout=0.2)
    assert model.config == {"in_channels": 3, "num_classes": 4, "dropout_initial": 0.02, "dropout": 0.2}
    twin = ENet(**model.config)
    twin.load_state_dict(model.state_dict(), strict=True)
    twin.eval()
    x = torch.rand(2, 3, 29, 31)
    with torch.no_grad():
        assert torch.equal(twin(x), model(x))
    # a different config gives a state dict that does not fit
    with pytest.raises(RuntimeError):
        ENet(in_channels=3, num_classes=2).load_state_dict(model.state_dict(), strict=True)


def test_config_is_a_copy():
    model = ENet()
    model.config["num_classes"] = 7
    assert model.config["num_classes"] == 2


def test_eval_mode_is_deterministic_and_per_image():
    model = _eval_model()
    x = torch.rand(3, 1, 37, 53)
    with torch.no_grad():
        a = model(x)
        b = model(x)
        single = model(x[1:2])
    assert torch.equal(a, b)
    # running statistics, no dropout: an image's logits do not depend on its batch mates
    assert torch.allclose(single, a[1:2], atol=1e-5)


def test_training_mode_applies_spatial_dropout():
    model = _eval_model()
    model.train()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.manual_seed(1)
        a = model(x)
        torch.manual_seed(2)
        b = model(x)
        torch.manual_seed(1)
        c = model(x)
    assert not torch.allclose(a, b)
    assert torch.equal(a, c)


def test_gradients_reach_every_parameter():
    model = ENet()
    x = torch.rand(2, 1, 37, 53)
    target = torch.randint(0, 2, (2, 37, 53))
    loss = F.cross_entropy(model(x), target)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# ------------------------------------------------------------------ memory format and mixed precision
def test_channels_last_gives_the_same_logits():
    model = _eval_model()
    x = torch.rand(2, 1, 45, 51)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-5)


def test_channels_last_model_keeps_every_activation_channels_last():
    """Laid out channels-last, every activation stays so, also when the
    one-channel input comes the usual PyTorch way (``contiguous`` leaves its
    strides NCHW): concatenated with the initial convolution, its pooled copy
    once made the whole trunk NCHW (each convolution then copied its input).
    """
    model = _eval_model().train().to(memory_format=torch.channels_last)
    layouts = {}

    def record(name):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[1] > 1:
                layouts[name] = output.is_contiguous(memory_format=torch.channels_last) and not output.is_contiguous()
        return hook

    for name, module in model.named_modules():
        if name:
            module.register_forward_hook(record(name))
    model(torch.rand(2, 1, 64, 48).contiguous(memory_format=torch.channels_last))
    assert len(layouts) > 50
    nchw = [name for name, cl in layouts.items() if not cl]
    assert not nchw, f"{len(nchw)} of {len(layouts)} activations not channels-last, first {nchw[:3]}"


def test_bfloat16_autocast_on_cpu_matches_float32():
    """Under autocast the max-unpooling indices still fit the tensors they index:
    the logits agree with float32 up to bfloat16 rounding, and training works."""
    model = _eval_model().to(memory_format=torch.channels_last)
    x = torch.rand(2, 1, 45, 51).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert out.shape == ref.shape
    assert out.dtype == torch.bfloat16
    # relative error of the whole logit map; a max-pool tie broken differently in
    # bfloat16 may move a few single values, so no per-pixel bound
    rel = (out.float() - ref).norm() / (ref - ref.mean()).norm()
    assert rel < 0.05
    assert (out.float().argmax(1) == ref.argmax(1)).float().mean() > 0.9

    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    F.cross_entropy(logits.float(), torch.randint(0, 2, (2, 45, 51))).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("num_parameters", [1, 5])
def test_prelu_gradients_are_torchs_including_at_zero(num_parameters):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 4, 6, generator=g, dtype=torch.float64)
    x[0, :, 0, :3] = 0.0  # exactly zero: torch's PReLU takes the slope there
    upstream = torch.randn(x.shape, generator=g, dtype=torch.float64)
    ours, theirs = PReLU(num_parameters).double(), nn.PReLU(num_parameters).double()
    with torch.no_grad():
        w = torch.linspace(-0.7, 1.3, num_parameters, dtype=torch.float64)  # negative and > 1 slopes too
        ours.weight.copy_(w)
        theirs.weight.copy_(w)
    grads = []
    for module in (ours, theirs):
        xi = x.clone().requires_grad_()
        out = module(xi)
        out.backward(upstream)
        grads.append((out.detach(), xi.grad, module.weight.grad))
    assert ours(x.clone().requires_grad_()).grad_fn.name() == "_PReLUFunctionBackward"  # the fast path ran
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # away from the kink at 0, the analytic gradients are the numerical ones
    xc = (torch.rand(2, num_parameters, 3, 3, generator=g, dtype=torch.float64) + 0.1) * torch.sign(
        torch.randn(2, num_parameters, 3, 3, generator=g, dtype=torch.float64))
    wc = w.clone().requires_grad_()
    assert torch.autograd.gradcheck(_PReLUFunction.apply, (xc.requires_grad_(), wc))


@pytest.mark.parametrize("x_grad, w_grad", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_prelu_backward_every_path_matches_torchs(x_grad, w_grad, dtype):
    """Both grads of a 4-D per-channel float input take the short path in backward; a frozen slope or
    input takes the general one. Each must give torch's gradients, channels-last inputs included."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 5, 7, generator=g, dtype=dtype).contiguous(memory_format=torch.channels_last)
    x[1, :, 2, :4] = 0.0
    upstream = torch.randn(x.shape, generator=g, dtype=dtype)
    ours, theirs = PReLU(6).to(dtype), nn.PReLU(6).to(dtype)
    with torch.no_grad():
        w = torch.linspace(-0.5, 1.5, 6, dtype=dtype)
        ours.weight.copy_(w)
        theirs.weight.copy_(w)
    results = []
    for module in (ours, theirs):
        module.weight.requires_grad_(w_grad)
        xi = x.clone().requires_grad_(x_grad)
        module(xi).backward(upstream)
        results.append((xi.grad, module.weight.grad))
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    for ours_grad, their_grad, needed in zip(*results, (x_grad, w_grad), strict=True):
        if needed:
            torch.testing.assert_close(ours_grad, their_grad, **tol)
            assert float(ours_grad.abs().max()) > 0
        else:
            assert ours_grad is None and their_grad is None


def test_enet_training_step_with_fast_prelu_matches_torchs_prelu():
    torch.manual_seed(0)
    ours = ENet()
    theirs = ENet()
    theirs.load_state_dict(ours.state_dict())

    assert with_torch_prelu(theirs) is theirs
    assert not any(isinstance(m, PReLU) for m in theirs.modules())
    x = torch.rand(2, 1, 40, 40)
    y = torch.randint(0, 2, (2, 40, 40))
    for model in (ours, theirs):
        torch.manual_seed(1)  # same dropout masks
        F.cross_entropy(model(x), y).backward()
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    prelu_grads = [m.weight.grad for m in ours.modules() if isinstance(m, PReLU)]
    assert len(prelu_grads) == 109 and all(float(g.abs().max()) > 0 for g in prelu_grads)


# ------------------------------------------------------------------ residual sums written in place
def _out_of_place(block, x, indices=None):
    """A bottleneck's output as ``PReLU(main + branch)`` with fresh tensors (the definition)."""
    dropouts = [m for m in block.modules() if isinstance(m, nn.Dropout2d)]
    assert dropouts and all(d.inplace for d in dropouts)
    for d in dropouts:
        d.inplace = False  # nn.Dropout2d's own default
    try:
        branch = block.branch(x)
    finally:
        for d in dropouts:
            d.inplace = True
    if isinstance(block, RegularBottleneck):
        main = x
    elif isinstance(block, DownsamplingBottleneck):
        main, indices = block.pool(x)
        main = F.pad(main, (0, 0, 0, 0, 0, branch.shape[1] - main.shape[1]))  # zero channels up to C_out
    else:
        main = block.unpool(block.main(x), indices, output_size=branch.shape[-2:])
    out = block.out_act(main + branch)
    return (out, indices) if isinstance(block, DownsamplingBottleneck) else out


@pytest.mark.parametrize("kind", ["regular", "downsampling", "upsampling"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("training, grad", [(True, True), (False, True), (False, False)])
def test_bottlenecks_in_place_sums_match_the_definition_and_leave_the_input(kind, channels_last, training, grad):
    torch.manual_seed(0)
    indices = None
    if kind == "regular":
        block, x = RegularBottleneck(16, dropout=0.3), torch.randn(2, 16, 12, 12)
    elif kind == "downsampling":
        block, x = DownsamplingBottleneck(8, 32, dropout=0.3), torch.randn(2, 8, 12, 12)
    else:
        block, x = UpsamplingBottleneck(32, 8, dropout=0.3), torch.randn(2, 32, 6, 6)
        _, indices = F.max_pool2d(torch.randn(2, 8, 12, 12), 2, return_indices=True)
    if channels_last:
        block = block.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    # training: spatial dropout on, the branch ends in dropout's product; otherwise in its last PReLU's output
    block.train(training)
    x.requires_grad_(grad)
    before = x.detach().clone()
    results = []
    for forward in (block.forward, lambda *a: _out_of_place(block, *a)):
        torch.manual_seed(1)  # same dropout masks
        with torch.set_grad_enabled(grad):
            out = forward(x, indices) if kind == "upsampling" else forward(x)
        out = out[0] if kind == "downsampling" else out
        grads = []
        if grad:
            weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
            # the output's gradient laid out as the output, as training's are (a gradient in the other layout
            # makes the unfused PReLU sum its slopes' terms in another order: a rounding apart)
            layout = torch.channels_last if channels_last else torch.contiguous_format
            weights = weights.contiguous(memory_format=layout)
            grads = torch.autograd.grad((out * weights).sum(), [x, *block.parameters()])
        results.append((out.detach(), grads))
        assert torch.equal(x.detach(), before)  # the sum is written into the branch, not the input
    (ours, our_grads), (ref, ref_grads) = results
    assert torch.equal(ours, ref)
    names = ["input"] + [name for name, _ in block.named_parameters()]
    assert len(our_grads) == len(ref_grads) == (len(names) if grad else 0)
    for name, a, b in zip(names, our_grads, ref_grads, strict=False):
        if name == "out_act.weight":  # the bottleneck-end operator (training, channels-last) sums it in its pass
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(a, b), name


def test_residual_sum_casts_the_main_path_first_as_before():
    main = torch.randn(4, 8, dtype=torch.float32) * 1000
    branch = torch.randn(4, 8).to(torch.bfloat16)
    expected = main.to(torch.bfloat16) + branch
    out = _residual_sum(branch, main)
    assert out is branch and out.dtype == torch.bfloat16
    assert torch.equal(out, expected)


@pytest.mark.parametrize("shape", [(8, 1, 64, 96), (1, 1, 6, 10), (2, 3, 8, 8)])
def test_initial_max_pool_takes_the_elementwise_path_and_gives_max_pools_values(shape):
    from napari_sizeloss import network

    pool = nn.MaxPool2d(2, stride=2)
    x = torch.randn(shape)
    x.view(-1)[::7] = float("nan")  # NaNs propagate as in torch's kernel
    x.view(-1)[1::7] = float("inf")
    calls = []
    spy = nn.MaxPool2d(2, stride=2)
    spy.register_forward_hook(lambda *_: calls.append(1))
    fast = network._max_pool_2x2(spy, x)
    assert calls == []  # the elementwise path, not the pool
    torch.testing.assert_close(fast, pool(x), equal_nan=True, rtol=0, atol=0)
    assert fast.shape == (shape[0], shape[1], shape[2] // 2, shape[3] // 2) and fast.is_contiguous()
    # where it would not be exact or would need a layout change: the pool itself
    for other in (x[..., :-1, :], x.contiguous(memory_format=torch.channels_last) if shape[1] > 1 else None,
                  x.clone().requires_grad_()):
        if other is None:
            continue
        calls.clear()
        torch.testing.assert_close(network._max_pool_2x2(spy, other), pool(other), equal_nan=True, rtol=0, atol=0)
        assert calls == [1]
    assert network._max_pool_2x2(nn.MaxPool2d(2, stride=1), x).shape[-1] == shape[3] - 1  # other settings: torch's
