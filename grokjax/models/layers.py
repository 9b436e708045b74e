"""Pieces shared by the models: activations by name, and the linear layers every model uses.

Why our own linear layers instead of flax's ``nn.Dense``/``nn.DenseGeneral``: on the CPU the weight
gradient x^T @ dY contracts over the sample axis, and with autodiff's default VJP XLA transposes both
operands of that product at every step (a copy of every activation, then a slow dot). ``matmul`` keeps
x^T from the forward pass and hands XLA a plain [in, N] @ [N, out] product instead. The maths, the
parameter names, shapes and initial values are exactly those of ``nn.Dense``/``nn.DenseGeneral``; the
speed-up is measured in benchmarks/PROFILE.md.
"""

from __future__ import annotations

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from grokjax.config import choices
from grokjax.config.choices import check_registry

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "gelu": lambda x: nn.gelu(x, approximate=False),  # torch's nn.GELU(): x * Phi(x), with erf
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),  # the tanh approximation (flax's default)
    "quadratic": lambda x: x * x,  # Gromov 2023: x^2, with which the MLP's solution is analytic
}
check_registry("activation", ACTIVATIONS, choices.ACTIVATIONS)


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    return ACTIVATIONS[name]


@jax.custom_vjp
def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [..., in] @ w [in, out] -> [..., out], with a VJP laid out for XLA's CPU dot (module docstring)."""
    return x @ w


def _matmul_fwd(x: jax.Array, w: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return x @ w, (x.reshape(-1, x.shape[-1]).T, w)  # residual x^T: [in, N]


def _matmul_bwd(res: tuple[jax.Array, jax.Array], dy: jax.Array) -> tuple[jax.Array, jax.Array]:
    x_t, w = res
    dy_flat = dy.reshape(-1, dy.shape[-1])  # [N, out]
    dx = (dy_flat @ w.T).reshape(dy.shape[:-1] + (w.shape[0],))
    return dx, x_t @ dy_flat


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def uniform_init(bound: float) -> nn.initializers.Initializer:
    """U(-bound, bound)."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_linear_init(fan_in: int) -> nn.initializers.Initializer:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch nn.Linear's default for weights and biases."""
    return uniform_init(1.0 / math.sqrt(fan_in))


def flat_init(init: nn.initializers.Initializer, n_in_axes: int) -> nn.initializers.Initializer:
    """``init`` applied to the kernel flattened to [prod(in axes), prod(out axes)], then reshaped: the
    values ``nn.DenseGeneral`` gives a multi-axis kernel (so fan-in and fan-out are the flat ones)."""

    def wrapped(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32) -> jax.Array:
        flat = (math.prod(shape[:n_in_axes]), math.prod(shape[n_in_axes:]))
        return init(key, flat, dtype).reshape(shape)

    return wrapped


class Dense(nn.Module):
    """x [..., in] -> [..., features]: ``nn.Dense`` (kernel [in, features] lecun-normal, bias zeros) on
    ``matmul``. ``kernel_init`` replaces the kernel's initialiser (and the bias's, as PyTorch's
    nn.Linear does, when ``bias_like_kernel``)."""

    features: int
    use_bias: bool
    dtype: jnp.dtype
    kernel_init: Callable[[int], nn.initializers.Initializer] | None = None  # fan_in -> initialiser
    bias_like_kernel: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        init = self.kernel_init(fan_in) if self.kernel_init else nn.initializers.lecun_normal()
        y = matmul(x, self.param("kernel", init, (fan_in, self.features), self.dtype))
        if self.use_bias:
            bias_init = init if self.bias_like_kernel else nn.initializers.zeros_init()
            y = y + self.param("bias", bias_init, (self.features,), self.dtype)
        return y


class Kernel(nn.Module):
    """A multi-axis kernel stored as ``nn.DenseGeneral`` stores it (param ``kernel`` of ``shape``, same
    initial values by default), returned flattened to [prod(shape[:n_in_axes]), rest] for ``matmul``: the
    attention projections [d_model, heads, d_head] and [heads, d_head, d_model]. ``init`` (of the flat
    kernel) replaces lecun-normal; ``with_bias`` adds a zero-initialised bias [rest], returned second."""

    shape: tuple[int, ...]
    n_in_axes: int
    dtype: jnp.dtype
    init: nn.initializers.Initializer | None = None
    with_bias: bool = False

    @nn.compact
    def __call__(self) -> jax.Array | tuple[jax.Array, jax.Array]:
        init = flat_init(self.init or nn.initializers.lecun_normal(), self.n_in_axes)
        kernel = self.param("kernel", init, self.shape, self.dtype)
        flat = kernel.reshape(math.prod(self.shape[: self.n_in_axes]), -1)
        if not self.with_bias:
            return flat
        bias = self.param("bias", nn.initializers.zeros_init(), (flat.shape[1],), self.dtype)
        return flat, bias
