"""Dropout and batch-normalisation maths (cnntrain.nn.functional) against loop oracles, finite
differences in float64 and PyTorch in both modes."""

import numpy as np
import pytest

from cnntrain.nn import functional as fn
from tests.support import oracle_norm
from tests.support.gradcheck import numeric_gradient, relative_error
from tests.support.optional import import_or_unavailable

torch = import_or_unavailable("torch", "TORCH", "pip install torch==2.13.0")

TOL = 1e-7
SHAPES = [(4, 3, 5, 6), (2, 5, 3, 3), (7, 4), (2, 6)]


def batch(rng, shape):
    """Channels with different means and scales, so normalisation has something to undo."""
    channels = shape[1]
    shift = rng.normal(0, 3, channels).reshape((1, -1) + (1,) * (len(shape) - 2))
    scale = rng.uniform(0.5, 4, channels).reshape((1, -1) + (1,) * (len(shape) - 2))
    return shift + scale * rng.standard_normal(shape)


def affine(rng, channels):
    return rng.uniform(0.5, 2, channels), rng.normal(0, 1, channels)


# --------------------------------------------------------------------------- batch norm

@pytest.mark.parametrize("shape", SHAPES)
def test_batchnorm_matches_loop_oracle(shape):
    rng = np.random.default_rng(0)
    x = batch(rng, shape)
    gamma, beta = affine(rng, shape[1])
    y, cache, mean, var = fn.batchnorm(x, gamma, beta, eps=1e-5)
    y_loop, mean_loop, var_loop = oracle_norm.batchnorm_forward(x, gamma, beta, 1e-5)
    np.testing.assert_allclose(y, y_loop, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mean, mean_loop, rtol=1e-12)
    np.testing.assert_allclose(var, var_loop, rtol=1e-12)

    dout = rng.standard_normal(shape)
    dx, dgamma, dbeta = fn.batchnorm_backward(dout, cache, gamma)
    dx_loop, dgamma_loop, dbeta_loop = oracle_norm.batchnorm_backward_staged(x, dout, gamma, 1e-5)
    np.testing.assert_allclose(dx, dx_loop, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dgamma, dgamma_loop, rtol=1e-12)
    np.testing.assert_allclose(dbeta, dbeta_loop, rtol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_batchnorm_finite_differences(shape):
    """dx, dgamma and dbeta against centred differences of sum(y * G), all in float64."""
    rng = np.random.default_rng(1)
    x = batch(rng, shape)
    gamma, beta = affine(rng, shape[1])
    G = rng.standard_normal(shape)
    _, cache, _, _ = fn.batchnorm(x, gamma, beta)
    dx, dgamma, dbeta = fn.batchnorm_backward(G, cache, gamma)

    def objective():
        return float(np.sum(fn.batchnorm(x, gamma, beta)[0] * G))

    assert relative_error(dx, numeric_gradient(objective, x)) < TOL
    assert relative_error(dgamma, numeric_gradient(objective, gamma)) < TOL
    assert relative_error(dbeta, numeric_gradient(objective, beta)) < TOL


def test_batchnorm_gradient_check_catches_the_usual_mistake():
    """The common wrong backward, gamma * s * dout (ignoring that mu and var depend on x), is
    far from the finite differences: the check can tell a right derivation from a wrong one."""
    rng = np.random.default_rng(2)
    x = batch(rng, (6, 3))
    gamma, beta = affine(rng, 3)
    G = rng.standard_normal(x.shape)
    _, (x_hat, inv_std), _, _ = fn.batchnorm(x, gamma, beta)
    numeric = numeric_gradient(lambda: float(np.sum(fn.batchnorm(x, gamma, beta)[0] * G)), x)
    assert relative_error(gamma * inv_std * G, numeric) > 0.1


def test_batchnorm_output_is_normalised_per_channel():
    rng = np.random.default_rng(3)
    x = batch(rng, (8, 4, 6, 5))
    y, _, _, _ = fn.batchnorm(x, np.ones(4), np.zeros(4), eps=0.0)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, rtol=1e-12)


def test_batchnorm_running_statistics_match_loop_oracle():
    rng = np.random.default_rng(4)
    batches = [batch(rng, (3, 2, 4, 4)) for _ in range(5)]
    running_mean, running_var = np.zeros(2), np.ones(2)
    for x in batches:
        _, _, mean, var = fn.batchnorm(x, np.ones(2), np.zeros(2))
        fn.update_running_statistics(running_mean, running_var, mean, var,
                                     fn.values_per_channel(x), momentum=0.3)
    mean_loop, var_loop = oracle_norm.batchnorm_running(batches, momentum=0.3)
    np.testing.assert_allclose(running_mean, mean_loop, rtol=1e-12)
    np.testing.assert_allclose(running_var, var_loop, rtol=1e-12)


def test_batchnorm_inference_uses_the_running_statistics_not_the_batch():
    rng = np.random.default_rng(5)
    x = batch(rng, (5, 3, 2, 2))
    gamma, beta = affine(rng, 3)
    running_mean, running_var = rng.normal(0, 1, 3), rng.uniform(0.5, 2, 3)
    y = fn.batchnorm_inference(x, gamma, beta, running_mean, running_var, eps=1e-5)
    expected = (gamma[None, :, None, None] * (x - running_mean[None, :, None, None])
                / np.sqrt(running_var[None, :, None, None] + 1e-5) + beta[None, :, None, None])
    np.testing.assert_allclose(y, expected, rtol=1e-13)
    # Each image on its own: the output of one image does not change with its batch-mates.
    np.testing.assert_allclose(
        fn.batchnorm_inference(x[:1], gamma, beta, running_mean, running_var), y[:1], rtol=1e-14)


def test_batchnorm_refuses_one_value_per_channel_in_training():
    with pytest.raises(ValueError, match="more than one value per channel"):
        fn.batchnorm(np.ones((1, 3)), np.ones(3), np.zeros(3))


def test_batchnorm_keeps_float32():
    rng = np.random.default_rng(6)
    x = batch(rng, (4, 3, 5, 5)).astype(np.float32)
    gamma, beta = (a.astype(np.float32) for a in affine(rng, 3))
    y, cache, mean, var = fn.batchnorm(x, gamma, beta)
    dx, dgamma, dbeta = fn.batchnorm_backward(np.ones_like(x), cache, gamma)
    assert {a.dtype for a in (y, mean, var, dx, dgamma, dbeta)} == {np.dtype(np.float32)}
    y64, _, _, _ = fn.batchnorm(x.astype(np.float64), gamma.astype(np.float64),
                                beta.astype(np.float64))
    np.testing.assert_allclose(y, y64, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(6, 4, 5, 7), (9, 5)])
def test_batchnorm_matches_torch_in_both_modes(shape):
    """Outputs and gradients in training, running statistics after several steps (PyTorch's
    unbiased running variance), then outputs and input gradients in evaluation."""
    rng = np.random.default_rng(7)
    channels = shape[1]
    gamma, beta = affine(rng, channels)
    running_mean, running_var = np.zeros(channels), np.ones(channels)
    module = (torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d)(
        channels, momentum=0.1, eps=1e-5).double()
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(gamma))
        module.bias.copy_(torch.from_numpy(beta))
    module.train()
    for _ in range(4):
        x, G = batch(rng, shape), rng.standard_normal(shape)
        y, cache, mean, var = fn.batchnorm(x, gamma, beta)
        fn.update_running_statistics(running_mean, running_var, mean, var, fn.values_per_channel(x))
        dx, dgamma, dbeta = fn.batchnorm_backward(G, cache, gamma)
        tx = torch.tensor(x, requires_grad=True)
        module.zero_grad()
        ty = module(tx)
        ty.backward(torch.from_numpy(G))
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(dgamma, module.weight.grad.numpy(), rtol=1e-10)
        np.testing.assert_allclose(dbeta, module.bias.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(running_mean, module.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(running_var, module.running_var.numpy(), rtol=1e-12)

    module.eval()
    x, G = batch(rng, shape), rng.standard_normal(shape)
    y = fn.batchnorm_inference(x, gamma, beta, running_mean, running_var)
    tx = torch.tensor(x, requires_grad=True)
    ty = module(tx)
    ty.backward(torch.from_numpy(G))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    # In evaluation the map is affine per channel: dx = gamma / sqrt(running_var + eps) * dout.
    scale = gamma / np.sqrt(running_var + 1e-5)
    dx = G * scale.reshape((1, -1) + (1,) * (len(shape) - 2))
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12)


# ------------------------------------------------------------------------------ dropout

def test_dropout_mask_is_inverted_and_drawn_from_the_generator():
    mask = fn.dropout_mask((200, 300), 0.25, np.random.default_rng(8), dtype=np.float64)
    assert set(np.unique(mask)) == {0.0, 1 / 0.75}
    assert abs((mask == 0).mean() - 0.25) < 0.01  # 60,000 draws: the rate is within 4 sigma
    assert abs(mask.mean() - 1) < 0.02  # the expected output equals the input
    again = fn.dropout_mask((200, 300), 0.25, np.random.default_rng(8), dtype=np.float64)
    np.testing.assert_array_equal(mask, again)
    other = fn.dropout_mask((200, 300), 0.25, np.random.default_rng(9), dtype=np.float64)
    assert not np.array_equal(mask, other)
    assert fn.dropout_mask((3, 4), 0.5, np.random.default_rng(0)).dtype == np.float32


def test_dropout_matches_loop_oracle_and_finite_differences():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((3, 2, 4, 5))
    mask = fn.dropout_mask(x.shape, 0.4, rng, dtype=np.float64)
    y = fn.dropout(x, mask)
    np.testing.assert_allclose(y, oracle_norm.dropout(x, mask != 0, 0.4), rtol=1e-15)
    G = rng.standard_normal(x.shape)
    dx = fn.dropout_backward(G, mask)
    numeric = numeric_gradient(lambda: float(np.sum(fn.dropout(x, mask) * G)), x)
    assert relative_error(dx, numeric) < TOL
    assert np.all(dx[mask == 0] == 0)


def test_dropout_matches_torch_given_the_same_mask():
    rng = np.random.default_rng(11)
    x, G = rng.standard_normal((8, 50)), rng.standard_normal((8, 50))
    mask = fn.dropout_mask(x.shape, 0.3, rng, dtype=np.float64)
    tx = torch.tensor(x, requires_grad=True)
    # torch's own dropout draws its mask from torch's generator; the same maths with our mask:
    ty = tx * torch.from_numpy((mask != 0).astype(np.float64)) / (1 - 0.3)
    ty.backward(torch.from_numpy(G))
    np.testing.assert_allclose(fn.dropout(x, mask), ty.detach().numpy(), rtol=1e-15)
    np.testing.assert_allclose(fn.dropout_backward(G, mask), tx.grad.numpy(), rtol=1e-15)
    # and torch's dropout keeps the same expected value and zero pattern semantics
    torch.manual_seed(0)
    t_out = torch.nn.functional.dropout(torch.ones(400, 400, dtype=torch.float64), 0.3)
    assert set(np.unique(t_out.numpy())) == set(np.unique(fn.dropout_mask((5, 400), 0.3, rng,
                                                                          np.float64)))


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_dropout_rejects_probabilities_outside_0_1(p):
    with pytest.raises(ValueError, match="dropout probability"):
        fn.dropout_mask((2, 2), p, np.random.default_rng(0))


# ------------------------------------------------------------------------ the fast path

def batch_innermost(a):
    """The same logical array stored (C, H, W, N) in memory, as the fast convolutions make it."""
    return np.ascontiguousarray(a.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2) if a.ndim == 4 else a


@pytest.mark.parametrize("layout", ["nchw", "batch-innermost"])
@pytest.mark.parametrize("shape", SHAPES)
def test_fast_batchnorm_agrees_with_the_textbook(shape, layout):
    from cnntrain.nn import fast

    rng = np.random.default_rng(12)
    x, G = batch(rng, shape), rng.standard_normal(shape)
    if layout == "batch-innermost":
        x, G = batch_innermost(x), batch_innermost(G)
    gamma, beta = affine(rng, shape[1])
    y, cache, mean, var = fn.batchnorm(x, gamma, beta)
    y_fast, cache_fast, mean_fast, var_fast = fast.batchnorm(x, gamma, beta)
    for ours, quick in [(y, y_fast), (mean, mean_fast), (var, var_fast), (cache[0], cache_fast[0]),
                       (cache[1], cache_fast[1])]:
        np.testing.assert_allclose(quick, ours, rtol=1e-12, atol=1e-12)
    for ours, quick in zip(fn.batchnorm_backward(G, cache, gamma),
                          fast.batchnorm_backward(G, cache_fast, gamma)):
        np.testing.assert_allclose(quick, ours, rtol=1e-10, atol=1e-12)
    if layout == "batch-innermost" and len(shape) == 4:
        # the output keeps the layout the next fast layer reads without copying
        assert np.shares_memory(y_fast, y_fast.transpose(1, 2, 3, 0).reshape(shape[1], -1))
