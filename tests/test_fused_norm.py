"""Training's batch norm + PReLU pairs as one C++ operator: torch's values within rounding, used where it applies."""

import copy

import pytest
import torch
import torch.nn.functional as F
from _native import needs_op, reload_with_a_failing_self_test
from torch import nn

from napari_sizeloss import native_op
from napari_sizeloss.network import BNPReLU, ENet, PReLU, with_torch_prelu


def _fused():
    assert native_op.wait(timeout=600), native_op.status()
    assert native_op.BN_PRELU is not None, native_op.status()
    return native_op.BN_PRELU


def _close(got: torch.Tensor, want: torch.Tensor, rel: float = 1e-5) -> None:
    """Within ``rel`` of ``want``'s largest magnitude (float rounding, sums in another order)."""
    scale = want.abs().max().item()
    assert (got - want).abs().max().item() <= rel * scale + 1e-7, (got - want).abs().max().item() / max(scale, 1e-30)


def _pair(channels: int, gen: torch.Generator) -> nn.Sequential:
    """torch's own pair (nn.PReLU, not ours) with non-trivial parameters and running statistics."""
    pair = nn.Sequential(nn.BatchNorm2d(channels), nn.PReLU(channels))
    with torch.no_grad():
        pair[0].weight.copy_(torch.rand(channels, generator=gen) + 0.5)
        pair[0].bias.copy_(torch.randn(channels, generator=gen))
        pair[0].running_mean.copy_(torch.randn(channels, generator=gen))
        pair[0].running_var.copy_(torch.rand(channels, generator=gen) + 0.5)
        pair[1].weight.copy_(torch.randn(channels, generator=gen) * 0.5)
    return pair


def _fused_copy(pair: nn.Sequential) -> BNPReLU:
    module = BNPReLU(pair[0].num_features)
    module.load_state_dict(pair.state_dict())  # the same keys
    return module


@needs_op
@pytest.mark.parametrize("shape", [(1, 16, 32, 32), (1, 64, 24, 20), (8, 16, 12, 12), (2, 11, 9, 7), (1, 3, 2, 1)])
@pytest.mark.parametrize("threads", [1, 2])
def test_the_fused_pair_trains_as_torch_batch_norm_then_prelu(shape, threads):
    """Output, the input's and the four parameters' gradients, running statistics and the batch count."""
    _fused()
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(sum(shape))
    reference = _pair(shape[1], gen).train()
    fused = _fused_copy(reference).train()
    x = (torch.randn(shape, generator=gen) * 3 + 1).contiguous(memory_format=torch.channels_last)
    g = torch.randn(shape, generator=gen).contiguous(memory_format=torch.channels_last)
    outputs = []
    for module in (fused, reference):
        xi = x.detach().requires_grad_()
        y = module(xi)
        y.backward(g)
        outputs.append([y.detach(), xi.grad, module[0].weight.grad, module[0].bias.grad, module[1].weight.grad,
                        module[0].running_mean, module[0].running_var])
    for got, want in zip(*outputs, strict=True):
        assert got.shape == want.shape
        _close(got, want)
    assert int(fused[0].num_batches_tracked) == 1 == int(reference[0].num_batches_tracked)
    assert "BNPReLUFunction" in fused(x.detach().requires_grad_()).grad_fn.name()  # it did run fused
    assert outputs[0][0].is_contiguous(memory_format=torch.channels_last)
    assert outputs[0][1].is_contiguous(memory_format=torch.channels_last)


@needs_op
def test_a_constant_channel_a_gradient_in_the_other_layout_and_part_of_the_gradients():
    op = _fused()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 10, 8, generator=gen)
    x[:, 2] = 1.5  # zero variance: normalised to the bias
    x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn(2, 6, 10, 8, generator=gen)  # NCHW: the operator lays it out itself
    params = [torch.rand(6, generator=gen) + 0.5, torch.randn(6, generator=gen), torch.randn(6, generator=gen)]
    for needs in ((True, False, False, False), (False, True, True, True), (False, False, False, True)):
        got, want = [], []
        for fused in (True, False):
            xi = x.detach().requires_grad_(needs[0])
            pi = [p.detach().requires_grad_(n) for p, n in zip(params, needs[1:], strict=True)]
            stats = [torch.zeros(6), torch.ones(6)]
            if fused:
                y = op(xi, *pi, *stats, 0.1, 1e-5)
            else:
                y = torch.prelu(F.batch_norm(xi, *stats, pi[0], pi[1], True, 0.1, 1e-5), pi[2])
            wanted = [t for t, n in zip((xi, *pi), needs, strict=True) if n]
            (got if fused else want).extend([y.detach(), *torch.autograd.grad(y, wanted, g)])
        for a, b in zip(got, want, strict=True):
            _close(a, b, rel=1e-4)


@needs_op
def test_the_same_bits_from_run_to_run():
    op = _fused()
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 32, 64, 64, generator=gen).contiguous(memory_format=torch.channels_last).requires_grad_()
    w, b, s = (torch.rand(32).requires_grad_(), torch.randn(32).requires_grad_(), torch.rand(32).requires_grad_())
    runs = []
    for _ in range(3):
        y = op(x, w, b, s, torch.zeros(32), torch.ones(32), 0.1, 1e-5)
        runs.append([y, *torch.autograd.grad(y.square().sum(), [x, w, b, s])])
    for run in runs[1:]:
        assert all(torch.equal(a, c) for a, c in zip(run, runs[0], strict=True))


@needs_op
def test_a_nan_spoils_its_channel_as_in_torch():
    op = _fused()
    x = torch.randn(1, 4, 6, 6)
    x[0, 1, 2, 3] = float("nan")
    x = x.contiguous(memory_format=torch.channels_last)
    params = (torch.ones(4), torch.zeros(4), torch.full((4,), 0.25))
    y = op(x, *params, torch.zeros(4), torch.ones(4), 0.1, 1e-5)
    want = torch.prelu(F.batch_norm(x, torch.zeros(4), torch.ones(4), *params[:2], True, 0.1, 1e-5), params[2])
    assert torch.isnan(y[:, 1]).all() and torch.isnan(want[:, 1]).all()
    _close(y[:, [0, 2, 3]], want[:, [0, 2, 3]])


@needs_op
def test_one_value_per_channel_is_refused_as_torch_refuses_it():
    op = _fused()
    x = torch.randn(1, 4, 1, 1)
    with pytest.raises(RuntimeError, match="more than 1 value per channel"):
        op(x, torch.ones(4), torch.zeros(4), torch.ones(4), torch.zeros(4), torch.ones(4), 0.1, 1e-5)
    with pytest.raises(ValueError, match="more than 1 value per channel"):  # the module: nn.BatchNorm2d's message
        BNPReLU(4).train()(x.requires_grad_())


@needs_op
def test_the_running_statistics_are_written_in_place_as_autograd_sees_it():
    """As with torch's batch norm: a graph that saved a running statistic refuses to use it after the step."""
    op = _fused()
    x = torch.randn(2, 4, 3, 3).contiguous(memory_format=torch.channels_last).requires_grad_()
    stats = [torch.zeros(4), torch.ones(4)]
    versions = [t._version for t in stats]
    scale = torch.ones(4, requires_grad=True)
    saved = (scale * stats[0]).sum()  # mul saves stats[0] for the scale's gradient
    op(x, torch.ones(4), torch.zeros(4), torch.full((4,), 0.25), *stats, 0.1, 1e-5)
    assert all(t._version > v for t, v in zip(stats, versions, strict=True))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        saved.backward()


@needs_op
def test_double_backward_is_refused_not_silently_wrong():
    op = _fused()
    x = torch.randn(1, 4, 3, 3).contiguous(memory_format=torch.channels_last).requires_grad_()
    args = (torch.ones(4), torch.zeros(4), torch.full((4,), 0.25), torch.zeros(4), torch.ones(4), 0.1, 1e-5)
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(op(x, *args).square().sum(), x, create_graph=True)


@needs_op
def test_the_module_hands_the_operator_only_what_it_takes():
    _fused()
    x = torch.randn(2, 6, 5, 7).contiguous(memory_format=torch.channels_last).requires_grad_()
    module = BNPReLU(6).train()
    assert "BNPReLUFunction" in module(x).grad_fn.name()
    assert "BNPReLUFunction" not in module(x.contiguous()).grad_fn.name()  # NCHW: torch's pair
    assert "BNPReLUFunction" not in copy.deepcopy(module).double()(x.double()).grad_fn.name()
    assert "BNPReLUFunction" not in module.eval()(x).grad_fn.name()  # evaluation: running statistics
    module.train()
    module[0].eval()  # a batch norm frozen on its own
    assert "BNPReLUFunction" not in module(x).grad_fn.name()
    module.train()
    with torch.no_grad():
        assert module(x).grad_fn is None
    with native_op.enabled(True, fused=False):
        assert "BNPReLUFunction" not in module(x).grad_fn.name()
    assert "BNPReLUFunction" not in with_torch_prelu(copy.deepcopy(module))(x).grad_fn.name()


def test_the_module_keeps_the_sequentials_parameters_and_keys():
    """Checkpoints written before the fused operator load as they did, and the other way round."""
    old = nn.Sequential(nn.BatchNorm2d(5), PReLU(5))
    new = BNPReLU(5)
    assert list(new.state_dict()) == list(old.state_dict())
    assert isinstance(new, nn.Sequential) and isinstance(new[0], nn.BatchNorm2d) and isinstance(new[1], PReLU)
    new.load_state_dict(old.state_dict())
    old.load_state_dict(new.state_dict())


@needs_op
def test_enet_trains_fused_as_it_trains_apart():
    """Two steps of ENet (dropout on, in place on the fused output): losses, statistics and gradients agree.

    Gradients are compared as a whole: where a PReLU's input is within
    rounding of 0 its slope may apply on one path and not the other (as
    between float32 and float64), and that one element's difference reaches
    every weight upstream, so a per-element bound would test the kink, not
    the operator (tested per element above).
    """
    op = _fused()
    torch.set_num_threads(2)
    calls = []

    def counted(*args):
        calls.append(args[0].shape)
        return op(*args)

    torch.manual_seed(0)
    x = torch.randn(2, 1, 48, 40).contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 2, (2, 48, 40))
    results = {}
    for fused in (True, False):
        with native_op.enabled(True, fused=fused):
            if fused:
                native_op.BN_PRELU = counted  # (enabled restores it)
            torch.manual_seed(11)
            model = ENet().train().to(memory_format=torch.channels_last)
            opt = torch.optim.SGD(model.parameters(), lr=1e-3)  # (Adam's first steps are about sign(gradient))
            losses = []
            for _ in range(2):
                opt.zero_grad()
                loss = F.cross_entropy(model(x), target)
                loss.backward()
                opt.step()
                losses.append(loss.item())
            results[fused] = (losses, torch.cat([p.grad.flatten() for p in model.parameters()]),
                              [b.float() for b in model.buffers()])
    pairs = sum(isinstance(m, BNPReLU) for m in model.modules())
    assert pairs == 82 and len(calls) == 2 * pairs  # every pair of both steps ran fused
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-5)
    for a, b in zip(results[True][2], results[False][2], strict=True):  # running statistics, batch counts
        _close(a, b, rel=1e-3)
    assert F.cosine_similarity(results[True][1], results[False][1], dim=0) > 0.99


@needs_op
def test_a_wrong_fused_operator_is_refused_and_the_prelu_operator_stays(monkeypatch):
    op = _fused()

    def wrong_eps(x, w, b, s, rm, rv, momentum, eps):
        return op(x, w, b, s, rm, rv, momentum, 1e-2)

    with pytest.raises(RuntimeError, match="differs from torch's"):
        native_op._self_test_bn_prelu(wrong_eps)
    native_op._self_test_bn_prelu(op)  # and passes the real one

    reload_with_a_failing_self_test(monkeypatch, "_self_test_bn_prelu",
                                    "the fused batch norm and PReLU's output differs from torch's")
    assert native_op.OP is not None and native_op.BN_PRELU is None
    assert native_op.status().startswith("in use (cached; batch norm not fused: the fused batch norm")
