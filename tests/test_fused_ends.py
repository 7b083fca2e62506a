"""A bottleneck's end in training (spatial dropout, residual sum, PReLU) as one C++ operator: torch's bits,
but for the slopes' gradient, a sum in another order (within float rounding)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from _native import needs_op, reload_with_a_failing_self_test
from torch import nn

from napari_sizeloss import native_op, native_prelu, network
from napari_sizeloss.network import ENet, PReLU


def _op():
    assert native_op.wait(timeout=600), native_op.status()
    assert native_op.SUM_PRELU is not None, native_op.status()
    return native_op.SUM_PRELU


def _same_values(a, b):
    """Equal values, element by element: the same bits except that any NaN matches any NaN and -0 matches +0.

    Where two NaNs meet (``-inf * 0 + nan``) which one's sign survives depends
    on the operand order a compiler picked; and autograd's own bookkeeping
    around an in-place sum on a slice adds a +0 to a -0 gradient. Neither
    changes a value.
    """
    a, b = a.detach(), b.detach()
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


def _same_bits(a, b):
    return native_prelu._same_bits(a, b)


def _inputs(shape, added, gen, dropout=0.5):
    """A branch and a main path (channels-last, awkward values included), slopes, a dropout factor, a gradient."""
    branch, grad = native_prelu._awkward_pair(shape, gen, torch.channels_last, torch.channels_last)
    main = torch.randn((shape[0], added, *shape[2:]), generator=gen) * 2
    main.view(-1)[: native_prelu._AWKWARD.numel()] = native_prelu._AWKWARD.flip(0)
    main = main.contiguous(memory_format=torch.channels_last)
    slope = torch.randn(shape[1], generator=gen) * 0.5
    noise = None
    if dropout:
        noise = torch.empty(shape[0], shape[1], 1, 1).bernoulli_(1 - dropout, generator=gen).div_(1 - dropout)
    return branch, main, slope, noise, grad


@needs_op
@pytest.mark.parametrize("shape,added", [((1, 16, 32, 32), 16), ((2, 64, 24, 20), 16), ((8, 16, 12, 12), 16),
                                         ((3, 11, 7, 5), 4), ((1, 128, 8, 8), 128)])
@pytest.mark.parametrize("dropout", [0.5, 0.0])
@pytest.mark.parametrize("threads", [1, 2])
def test_the_operator_gives_torchs_mul_add_and_prelu_bit_for_bit(shape, added, dropout, threads):
    op = _op()
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(sum(shape) + added)
    branch, main, slope, noise, grad = _inputs(shape, added, gen, dropout)
    # the path it replaces: the dropout's product, the in-place residual sum, then this package's PReLU
    # (its own operator, whose backward the fused one repeats), each with autograd's backward
    b, m = (t.detach().requires_grad_() for t in (branch, main))
    act = PReLU(shape[1])
    with torch.no_grad():
        act.weight.copy_(slope)
    s = act.weight
    z = b * noise if noise is not None else b.clone()
    z[:, :added] += m
    want = [act(z)]
    assert "PReLUFunction" in want[0].grad_fn.name()
    want += torch.autograd.grad(want[0], (b, m, s), grad)
    b, m, s = (t.detach().requires_grad_() for t in (branch, main, slope))
    y = op(b, m, s, noise)
    got = [y, *torch.autograd.grad(y, (b, m, s), grad)]
    assert "SumPReLUFunction" in y.grad_fn.name()  # the kernels ran, not torch's composition
    assert y.is_contiguous(memory_format=torch.channels_last) and got[2].shape == main.shape
    for name, a, e in zip(("output", "branch gradient", "main gradient"), got[:3], want[:3], strict=True):
        assert _same_values(a, e), name
    reference = native_op._sum_prelu_reference(branch, main, slope, noise, grad)
    assert native_op._sums_match(got[3], want[3], reference[4]), "slope gradient"
    assert not native_op._sums_match(got[3] + 1e-3 * (reference[4] + 1), want[3], reference[4])  # it can fail
    # and torch's own prelu, within rounding where the values are finite (its backward is another formula)
    finite = torch.isfinite(branch).all((1, 2, 3), keepdim=True) & torch.isfinite(grad).all((1, 2, 3), keepdim=True)
    keep = finite.flatten()
    if keep.any():
        y_torch = torch.prelu((branch * noise if noise is not None else branch).index_add(
            1, torch.arange(added), main), slope)
        torch.testing.assert_close(y[keep], y_torch[keep])
    torch.set_num_threads(2)


@needs_op
def test_each_subset_of_gradients_and_a_gradient_in_the_other_layout():
    op = _op()
    gen = torch.Generator().manual_seed(3)
    branch, main, slope, noise, grad = _inputs((2, 12, 9, 10), 6, gen)
    want = native_op._sum_prelu_reference(branch, main, slope, noise, grad)
    for needs in ((True, False, False), (False, True, False), (False, False, True), (True, True, True)):
        inputs = [t.detach().requires_grad_(n) for t, n in zip((branch, main, slope), needs, strict=True)]
        y = op(*inputs, noise)
        assert native_op._sum_prelu_backward_matches(y, inputs, grad.contiguous(), want)  # an NCHW gradient


@needs_op
def test_what_the_kernels_do_not_take_runs_torchs_composition_with_the_same_values():
    op = _op()
    gen = torch.Generator().manual_seed(4)
    branch, main, slope, noise, grad = _inputs((2, 8, 6, 5), 8, gen)
    want = native_op._sum_prelu_reference(branch, main, slope, noise, grad)
    for b, m in ((branch.contiguous(), main), (branch, main.contiguous())):  # NCHW branch; NCHW main
        y = op(b, m, slope, noise)
        assert "SumPReLUFunction" not in (y.grad_fn.name() if y.grad_fn else "")
        torch.testing.assert_close(y, want[0], equal_nan=True)
    y64 = op(branch.double(), main.double(), slope.double(), noise.double())
    torch.testing.assert_close(y64.float(), want[0], equal_nan=True)


@needs_op
def test_double_backward_is_refused_and_a_changed_input_is_caught():
    op = _op()
    gen = torch.Generator().manual_seed(5)
    branch, main, slope, noise, _ = _inputs((1, 4, 3, 3), 4, gen)
    b = branch.nan_to_num(0.0, 0.0, 0.0).requires_grad_()
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(op(b, main, slope, noise).square().sum(), b, create_graph=True)
    m = main.nan_to_num(0.0, 0.0, 0.0).requires_grad_()
    y = op(b, m * 1.0, slope, noise)  # saves its inputs (z is recomputed from them)
    out = y.sum()
    with torch.no_grad():
        b.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward()


def test_the_dropout_factor_is_nn_dropout2ds_mask():
    x = torch.ones(4, 32, 3, 3)
    for p in (0.1, 0.5, 0.9):
        drop = nn.Dropout2d(p).train()
        torch.manual_seed(7)
        want = drop(x.clone())[:, :, :1, :1]
        torch.manual_seed(7)
        got = network._dropout_noise(drop, x)
        assert got.shape == (4, 32, 1, 1) and torch.equal(got, want)
        assert torch.equal(torch.rand(3), (torch.manual_seed(7), drop(x.clone()), torch.rand(3))[2])  # same draws
    assert network._dropout_noise(nn.Dropout2d(0.0).train(), x) is None
    assert network._dropout_noise(nn.Dropout2d(0.3).eval(), x) is None
    assert torch.equal(network._dropout_noise(nn.Dropout2d(1.0).train(), x), torch.zeros(4, 32, 1, 1))


def _step(model, x, target, seed):
    torch.manual_seed(seed)
    logits = model(x)
    F.cross_entropy(logits, target).backward()
    return logits.detach(), [p.grad.clone() for p in model.parameters()], [b.clone() for b in model.buffers()], \
        torch.rand(4)  # what the generator gives next: the dropout drew as many numbers either way


@needs_op
@pytest.mark.parametrize("dropout", [0.1, 0.0])
def test_enet_trains_through_the_fused_ends_bit_for_bit_as_apart(dropout):
    op = _op()
    calls = []

    def counted(*args):
        calls.append(args[0].shape)
        return op(*args)

    torch.manual_seed(0)
    base = ENet(dropout=dropout).to(memory_format=torch.channels_last).train()
    x = torch.randn(2, 1, 48, 40).contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 2, (2, 48, 40))
    results = []
    for fused in (True, False):
        with native_op.enabled(True):
            native_op.SUM_PRELU = counted if fused else None  # (enabled restores it)
            results.append(_step(copy.deepcopy(base), x, target, seed=11))
    ends = sum(isinstance(m, (network.RegularBottleneck, network.DownsamplingBottleneck,
                              network.UpsamplingBottleneck)) for m in base.modules())
    assert ends == 27 and len(calls) == ends  # every bottleneck ended through the operator
    (logits, grads, buffers, after), (logits2, grads2, buffers2, after2) = results
    assert _same_bits(logits, logits2) and torch.equal(after, after2)
    # every gradient the same to the bit but the bottleneck-end PReLUs' slopes: sums in another order
    names = [name for name, _ in base.named_parameters()]
    ends_slopes = {name for name in names if name.endswith("out_act.weight")}
    assert len(ends_slopes) == ends
    for name, a, b in zip(names, grads, grads2, strict=True):
        if name in ends_slopes:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7 * float(b.abs().max()))
        else:
            assert _same_bits(a, b), name
    assert sum(not _same_bits(grads[names.index(n)], grads2[names.index(n)]) for n in ends_slopes) > 0
    assert all(torch.equal(a, b) for a, b in zip(buffers, buffers2, strict=True))


@needs_op
def test_the_bottlenecks_use_the_operator_only_where_it_applies():
    _op()
    block = network.RegularBottleneck(16, dropout=0.1).train()
    x = torch.randn(2, 16, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_()
    assert "SumPReLUFunction" in block(x).grad_fn.name()
    assert "SumPReLUFunction" not in block(x.contiguous()).grad_fn.name()  # NCHW: torch's operators
    assert "SumPReLUFunction" not in copy.deepcopy(block).double()(x.double()).grad_fn.name()
    with torch.no_grad():
        assert block(x).grad_fn is None  # prediction: the in-place sum and PReLU
    with native_op.enabled(False):
        assert "SumPReLUFunction" not in block(x).grad_fn.name()
    plain = copy.deepcopy(block)
    plain.out_act = nn.PReLU(16)
    assert "SumPReLUFunction" not in plain(x).grad_fn.name()
    assert type(block.out_act) is PReLU


@needs_op
def test_a_wrong_operator_is_refused_and_the_others_stay(monkeypatch):
    op = _op()

    def no_dropout(b, m, s, n):
        return op(b, m, s, None)

    with pytest.raises(RuntimeError, match="differs from torch's"):
        native_op._self_test_sum_prelu(no_dropout)
    native_op._self_test_sum_prelu(op)  # and passes the real one

    reload_with_a_failing_self_test(monkeypatch, "_self_test_sum_prelu",
                                    "the bottleneck-end operator's output differs from torch's")
    assert native_op.OP is not None and native_op.BN_PRELU is not None and native_op.SUM_PRELU is None
    assert native_op.status() == "in use (cached; bottleneck ends not fused: the bottleneck-end operator's output " \
                                 "differs from torch's)"
