"""The CUDA path: DM's gradient and whole training runs on a GPU, mixed precision included.

Skipped where CUDA does not exist; run on a GPU machine with
``python -m pytest -q tests/test_cuda.py tests/test_population.py -k cuda``.
"""

from __future__ import annotations

import math

import pytest
import torch

from dm_tune import DMLoss, TrainConfig, dm_logit_grad, prepare, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _reference(logits: torch.Tensor, y: torch.Tensor, lam: float, beta: float) -> torch.Tensor:
    """DM's derivative written out in float64 on the CPU (README, "The method in one screen": the
    authors' Caffe form)."""
    z = logits.double().cpu()
    p_vec = torch.softmax(z, 1)
    p = p_vec.gather(1, y.cpu().view(-1, 1)).squeeze(1)
    w = torch.exp(beta * p.pow(lam) * (1 - p))
    onehot = torch.nn.functional.one_hot(y.cpu(), z.shape[1]).double()
    return (w / w.sum()).unsqueeze(1) * (p_vec - onehot) / (2 * (1 - p) + 1e-6).unsqueeze(1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dm_gradient_on_cuda_matches_the_float64_reference(dtype):
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(512, 100, generator=gen) * 4).to("cuda", dtype)
    y = torch.randint(0, 100, (512,), generator=gen).to("cuda")
    for lam, beta in ((0.0, 2.0), (0.5, 8.0), (1.0, 16.0), (2.0, 24.0), (1.0, -4.0)):
        got = dm_logit_grad(logits, y, lam, beta)
        assert got.device.type == "cuda" and torch.isfinite(got).all()
        ref = _reference(logits.float(), y, lam, beta)
        torch.testing.assert_close(got.double().cpu(), ref, rtol=2e-3, atol=1e-6)
        z = logits.float().clone().requires_grad_(True)
        DMLoss(lam=lam, beta=beta)(z, y).backward()
        torch.testing.assert_close(z.grad.double().cpu(), ref, rtol=2e-3, atol=1e-6)


@pytest.mark.parametrize("lam,beta", [(0.0, -6.0), (1.0, 8.0), (2.0, 24.0)])
def test_dm_on_fitted_examples_on_cuda_is_the_float64_gradient(lam, beta):
    """Examples fitted to 1 - p ~ 1e-6 (DM divides by 2 (1 - p) + 1e-6): float32 on the GPU gives
    the float64 gradient, rounded (1 - p from log p had put such rows off by tens of percent)."""
    targets = torch.arange(64) % 10
    logits = torch.randn(64, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    margin = torch.linspace(10.0, 16.0, 32, dtype=torch.float64).unsqueeze(1)
    logits[:32] = torch.zeros(32, 10, dtype=torch.float64).scatter_(1, targets[:32, None], margin)
    logits = logits.float()
    z = logits.double()
    probs = torch.softmax(z, 1)
    q = probs.scatter(1, targets[:, None], 0.0).sum(1)  # 1 - p, right to rounding in float64
    share = torch.softmax(beta * probs.gather(1, targets[:, None]).squeeze(1) ** lam * q, 0)
    want = (share / (2 * q + 1e-6)).unsqueeze(1) * (probs - torch.nn.functional.one_hot(targets, 10).double())
    got = dm_logit_grad(logits.cuda(), targets.cuda(), lam, beta)
    torch.testing.assert_close(got.double().cpu(), want, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_training_on_cuda_learns_and_matches_the_cpu_run(amp):
    base = {"dataset": "digits", "noise_rate": 0.2, "epochs": 3, "seed": 0}
    gpu = train(TrainConfig.from_dict({**base, "device": "cuda", "amp": amp}),
                prepare(TrainConfig.from_dict(base)))
    cpu = train(TrainConfig.from_dict({**base, "device": "cpu"}), prepare(TrainConfig.from_dict(base)))
    assert gpu.status == "finished" and math.isfinite(gpu.history[-1]["train_loss"])
    assert gpu.test_accuracy > 0.6
    # Same initialisation, batch order and method: the two runs learn alike (not bit for bit).
    assert abs(gpu.test_accuracy - cpu.test_accuracy) < 0.05
    assert gpu.config["amp"] == amp


def test_a_cifar_resnet_step_with_dm_on_cuda_matches_the_cpu_step():
    from dm_tune.models import ModelSpec, build_model

    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        torch.manual_seed(0)
        cpu = build_model("resnet20", ModelSpec((3, 32, 32), "image", 10, 256, None, None))
        gpu = build_model("resnet20", ModelSpec((3, 32, 32), "image", 10, 256, None, None))
        gpu.load_state_dict(cpu.state_dict())
        gpu.cuda()
        gen = torch.Generator().manual_seed(1)
        x, y = torch.randn(128, 3, 32, 32, generator=gen), torch.randint(0, 10, (128,), generator=gen)
        for model, device in ((cpu, "cpu"), (gpu, "cuda")):
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            for _ in range(2):  # two steps: the momentum buffer is used too
                loss = DMLoss(lam=1.0, beta=16.0)(model(x.to(device)), y.to(device))
                opt.zero_grad()
                loss.backward()
                opt.step()
        for (name, a), b in zip(cpu.state_dict().items(), gpu.state_dict().values()):
            torch.testing.assert_close(b.cpu(), a, rtol=1e-3, atol=1e-4, msg=name)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    # Under bf16 autocast (what training on CUDA uses by default) the steps stay finite.
    opt = torch.optim.SGD(gpu.parameters(), lr=0.1, momentum=0.9)
    for _ in range(5):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = gpu(x.cuda())
        loss = DMLoss(lam=1.0, beta=16.0)(logits, y.cuda())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.isfinite(p).all() for p in gpu.parameters())


def test_pair_max_on_cuda_is_max_pool_1d_without_waiting_for_the_gpu():
    # On CUDA the exact path runs (no finiteness check, which would synchronise every layer).
    from dm_tune.models import PairMaxPool1d, pair_max

    gen = torch.Generator().manual_seed(0)
    x = torch.randint(-2, 3, (3, 4, 10, 6), generator=gen).double().relu().cuda().requires_grad_()
    grad = torch.randn(3, 4, 5, 6, generator=gen, dtype=torch.float64).cuda()
    ref = torch.nn.MaxPool1d(2)(x.permute(0, 3, 1, 2).reshape(18, 4, 10)).reshape(3, 6, 4, -1).permute(0, 2, 3, 1)
    ours = pair_max(x, 2)
    assert torch.equal(ours, ref)
    assert torch.equal(torch.autograd.grad(ours, x, grad)[0], torch.autograd.grad(ref, x, grad)[0])
    flat = x.detach().reshape(12, 10, 6).transpose(1, 2).contiguous().requires_grad_()
    torch.testing.assert_close(PairMaxPool1d()(flat), torch.nn.MaxPool1d(2)(flat), rtol=0, atol=0)
