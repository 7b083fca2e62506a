"""FlatAdam: torch's fused Adam over flat buffers gives torch's Adam, step for step.

Speed is measured by ``python scripts/adam_bench.py``, never asserted here.
"""

import copy
import os

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from napari_sizeloss.checkpoint import load_checkpoint, save_checkpoint
from napari_sizeloss.device import make_adam, match_state_layouts, to_channels_last
from napari_sizeloss.flat_adam import FlatAdam
from napari_sizeloss.network import ENet

# the fused kernel rounds a tensor's tail elements apart from its vectorised body: FlatAdam's tails are
# other elements than torch's per-parameter ones, so weights agree to a few float32 ulps, not bit for bit
TOL = {"rtol": 1e-6, "atol": 1e-8}


def _twins(channels_last=True, **options):
    torch.manual_seed(0)
    model = ENet(dropout_initial=0.0, dropout=0.0)  # no random masks: twins compute the same gradients
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    twin = copy.deepcopy(model)
    return (model, torch.optim.Adam(model.parameters(), lr=1e-2, fused=True, **options),
            twin, FlatAdam(twin.parameters(), lr=1e-2, **options))


def _grads(model, seed):
    """Gradients of a small ENet loss (the model's own), seeded."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 1, 32, 32, generator=g)
    if any(p.dim() == 4 and not p.is_contiguous() for p in model.parameters()):
        x = to_channels_last(x)
    y = torch.randint(0, 2, (2, 32, 32), generator=g)
    for p in model.parameters():
        p.grad = None
    F.cross_entropy(model(x), y).backward()
    return [p.grad.clone() for p in model.parameters()]


def _step_both(a, opt_a, b, opt_b, seed):
    """One step of each optimiser from the same gradients (``a``'s)."""
    grads = _grads(a, seed)
    for p, q, g in zip(a.parameters(), b.parameters(), grads, strict=True):
        p.grad, q.grad = g.clone(), g.clone()
    opt_a.step()
    opt_b.step()


def _assert_same(a, b, **tol):
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert p.stride() == q.stride()
        torch.testing.assert_close(q.detach(), p.detach(), **(tol or TOL))


@pytest.mark.parametrize("options", [{}, {"betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1},
                                     {"weight_decay": 0.05, "decoupled_weight_decay": True}, {"maximize": True}])
def test_flat_adam_follows_torch_fused_adam_on_enet(options):
    a, opt_a, b, opt_b = _twins(**options)
    start = [p.detach().clone() for p in a.parameters()]
    for seed in range(4):
        _step_both(a, opt_a, b, opt_b, seed)
    _assert_same(a, b)
    moved = max(float((p.detach() - s).abs().max()) for p, s in zip(a.parameters(), start, strict=True))
    assert moved > 1e-2  # the updates were real, not zeros on both sides
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        sa, sb = opt_a.state[p], opt_b.state[q]
        assert float(sb["step"]) == float(sa["step"]) == 4.0
        torch.testing.assert_close(sb["exp_avg"], sa["exp_avg"], **TOL)
        torch.testing.assert_close(sb["exp_avg_sq"], sa["exp_avg_sq"], **TOL)


def test_every_parameter_and_moment_lives_in_one_buffer_and_one_kernel_call_updates_them():
    a, opt_a, b, opt_b = _twins()
    params = list(b.parameters())
    storages = {p.untyped_storage().data_ptr() for p in params}
    assert len(storages) == 1 and len(params) == 367
    assert {opt_b.state[p]["exp_avg"].untyped_storage().data_ptr() for p in params} != storages
    assert len({opt_b.state[p]["exp_avg"].untyped_storage().data_ptr() for p in params}) == 1
    assert all(p.stride() == q.stride() for p, q in zip(a.parameters(), params, strict=True))  # channels-last kept
    _grads(b, 0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        opt_b.step()
    calls = {e.key: e.count for e in prof.key_averages()}
    assert calls.get("aten::_fused_adam_") == 1
    assert "aten::_foreach_add_" not in calls  # no per-parameter step counters incremented one by one
    _grads(a, 0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        opt_a.step()
    assert {e.key: e.count for e in prof.key_averages()}.get("aten::_foreach_add_") == 1  # torch's, for contrast


def test_state_dict_moves_both_ways_between_flat_and_torch_adam():
    a, opt_a, b, opt_b = _twins()
    for seed in range(2):
        _step_both(a, opt_a, b, opt_b, seed)
    # swap: each optimiser continues from the other's state in a fresh instance (a copy, as a checkpoint
    # holds: torch's load_state_dict keeps the very tensors it is given, so live optimisers would share them)
    c, d = copy.deepcopy(a), copy.deepcopy(b)
    opt_c = FlatAdam(c.parameters(), lr=1e-2)
    opt_c.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    opt_d = torch.optim.Adam(d.parameters(), lr=1e-2, fused=True)
    opt_d.load_state_dict(copy.deepcopy(opt_b.state_dict()))
    for seed in range(2, 4):
        _step_both(a, opt_a, c, opt_c, seed)
        _step_both(b, opt_b, d, opt_d, seed)
    _assert_same(a, c)
    _assert_same(b, d)
    assert float(opt_c.state[next(c.parameters())]["step"]) == 4.0
    assert opt_c._flat is not None and opt_c._flat["uniform"]  # the loaded state went flat, not torch's step


def test_contiguous_moments_from_a_checkpoint_pair_by_index_with_channels_last_parameters(tmp_path):
    a, opt_a, b, opt_b = _twins()
    for seed in range(2):
        _step_both(a, opt_a, b, opt_b, seed)
    path = save_checkpoint(tmp_path / "m.ckpt", b, optimizer=opt_b)
    ckpt = load_checkpoint(path)
    for state in ckpt.optimizer_state["state"].values():  # stored compact: each tensor its own elements only
        for value in state.values():
            assert value.untyped_storage().nbytes() == value.numel() * value.element_size()
    assert all(v.untyped_storage().nbytes() == v.numel() * v.element_size() for v in ckpt.state_dict.values())
    c = copy.deepcopy(b)
    opt_c = FlatAdam(c.parameters(), lr=1e-2)
    opt_c.load_state_dict(ckpt.optimizer_state)  # moments contiguous, parameters channels-last
    for seed in range(2, 4):
        _step_both(a, opt_a, c, opt_c, seed)
    _assert_same(a, c)


def test_a_parameter_without_gradient_takes_torchs_step_and_the_counts_stay_right():
    a, opt_a, b, opt_b = _twins()
    _step_both(a, opt_a, b, opt_b, 0)
    grads = _grads(a, 1)
    frozen_a, frozen_b = a.fullconv.weight, b.fullconv.weight
    for p, q, g in zip(a.parameters(), b.parameters(), grads, strict=True):
        p.grad, q.grad = g.clone(), g.clone()
    frozen_a.grad = frozen_b.grad = None
    before = frozen_b.detach().clone()
    opt_a.step()
    opt_b.step()
    assert torch.equal(frozen_b.detach(), before)
    assert float(opt_b.state[frozen_b]["step"]) == 1.0 and float(opt_b.state[b.initial.conv.weight]["step"]) == 2.0
    assert not opt_b._flat["uniform"]
    for seed in range(2, 4):  # counts differ now: torch's step on the flat views, still Adam's arithmetic
        _step_both(a, opt_a, b, opt_b, seed)
    _assert_same(a, b)


def test_replacing_parameter_data_lays_the_buffers_out_again():
    a, opt_a, b, opt_b = _twins()
    _step_both(a, opt_a, b, opt_b, 0)
    a.to(memory_format=torch.contiguous_format)
    match_state_layouts(opt_a)  # torch's fused Adam would otherwise pair moments and weights by memory order
    b.to(memory_format=torch.contiguous_format)  # new .data for every 4D parameter: off the flat buffer
    assert len({p.untyped_storage().data_ptr() for p in b.parameters()}) > 1
    for seed in range(1, 3):
        _step_both(a, opt_a, b, opt_b, seed)
    assert len({p.untyped_storage().data_ptr() for p in b.parameters()}) == 1
    assert all(p.is_contiguous() for p in b.parameters())
    _assert_same(a, b)


def test_a_graph_that_saved_a_weight_refuses_backward_after_the_step():
    """Parameters change through the flat buffer; their versions move as with an in-place update
    (torch's own per-parameter Adam does this; its fused kernel does not)."""
    for make in (lambda ps: torch.optim.Adam(ps, lr=1e-2, foreach=False), lambda ps: FlatAdam(ps, lr=1e-2)):
        layer = torch.nn.Linear(4, 3)
        opt = make(layer.parameters())
        x = torch.rand(2, 4, requires_grad=True)
        layer(x).sum().backward()
        out = layer(x).sum()  # saves the weight for its backward
        opt.step()
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            out.backward()


def test_closure_and_several_groups_fall_back_to_torchs_step():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(6, 2), torch.nn.Linear(6, 2)
    b.load_state_dict(a.state_dict())
    groups = lambda m: [{"params": [m.weight]}, {"params": [m.bias], "lr": 1e-3}]  # noqa: E731
    opt_a, opt_b = torch.optim.Adam(groups(a), lr=1e-2, fused=True), FlatAdam(groups(b), lr=1e-2)
    assert opt_b._flat is None
    x = torch.rand(5, 6)
    for _ in range(3):
        for m, opt in ((a, opt_a), (b, opt_b)):
            def closure(m=m, opt=opt):
                opt.zero_grad()
                loss = m(x).square().mean()
                loss.backward()
                return loss
            assert torch.is_tensor(opt.step(closure))
    _assert_same(a, b)


def test_options_changed_after_the_layout_take_torchs_step_with_the_same_result():
    a, opt_a, b, opt_b = _twins()
    _step_both(a, opt_a, b, opt_b, seed=1)
    assert opt_b._flat_grads() is not None
    for opt in (opt_a, opt_b):
        opt.param_groups[0]["lr"] = torch.tensor(5e-3)  # a tensor learning rate: the flat step cannot take it
    assert opt_b._flat_grads() is None
    _step_both(a, opt_a, b, opt_b, seed=2)
    _assert_same(a, b)
    for opt in (opt_a, opt_b):
        opt.param_groups[0]["lr"] = 5e-3  # back to a float: the flat step again, its counters still right
    assert opt_b._flat_grads() is not None
    _step_both(a, opt_a, b, opt_b, seed=3)
    _assert_same(a, b)
    assert all(float(s["step"]) == 3 for s in opt_b.state.values())


def test_grad_scaler_steps_match_torchs():
    a, opt_a, b, opt_b = _twins(channels_last=False)
    scalers = [torch.amp.GradScaler("cpu", init_scale=1024.0) for _ in range(2)]
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        x, y = torch.rand(2, 1, 32, 32, generator=g), torch.randint(0, 2, (2, 32, 32), generator=g)
        for (m, opt), scaler in zip(((a, opt_a), (b, opt_b)), scalers, strict=True):
            opt.zero_grad()
            scaler.scale(F.cross_entropy(m(x), y)).backward()
            scaler.step(opt)
            scaler.update()
    _assert_same(a, b, rtol=1e-5, atol=1e-7)
    assert float(opt_b.state[next(b.parameters())]["step"]) == 3.0


def test_make_adam_builds_flat_adam_on_the_cpu_and_training_still_learns():
    torch.manual_seed(0)
    model = ENet(dropout=0.0).to(memory_format=torch.channels_last)
    opt = make_adam(model.parameters(), 5e-3, "cpu")
    assert isinstance(opt, FlatAdam) and isinstance(opt, torch.optim.Adam)
    x = to_channels_last(torch.rand(2, 1, 32, 32))
    y = torch.zeros(2, 32, 32, dtype=torch.long)
    y[:, 8:24, 8:24] = 1
    losses = []
    for _ in range(15):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]


def test_making_one_starts_no_openmp_team_on_the_calling_thread():
    """A GUI makes the optimiser on one thread and may train on another; a second thread's OpenMP team halves
    training speed on 2 cores (napari_sizeloss.compute_thread), so making one runs nothing in parallel."""
    import subprocess
    import sys

    code = (
        "import os, torch\n"
        "torch.set_num_threads(2)\n"
        "count = lambda: len(os.listdir('/proc/self/task'))\n"
        "from napari_sizeloss.flat_adam import FlatAdam\n"
        "from napari_sizeloss.network import ENet\n"
        "model = ENet().to(memory_format=torch.channels_last)\n"
        "before = count()\n"
        "FlatAdam(model.parameters(), lr=1e-3)\n"
        "made = count()\n"
        "torch.zeros(1 << 20)  # a parallel fill: the team this test would see\n"
        "print(before, made, count())\n"
    )
    if not os.path.isdir("/proc/self/task"):
        pytest.skip("counts threads through Linux's /proc")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    before, made, after = map(int, out.stdout.split())
    assert made == before  # no worker thread started by making the optimiser
    assert after > before  # (the check can see one: a parallel fill starts it)
