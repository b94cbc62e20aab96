# Copyright 2024 DeepMind Technologies Limited.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#    http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or  implied.
# See the License for the specific language governing permissions and
# limitations under the License.
# ============================================================================
"""The RG-LRU layer of RecurrentGemma, the Griffin authors' JAX code, as a test reference.

From recurrentgemma 1.0.1 (PyPI; google-deepmind/recurrentgemma), `recurrentgemma/jax/layers.py`
(`BlockDiagonalLinear`, `RGLRU`, `rnn_real_param_init`, `sqrt_bound_derivative`) and the
native path of `recurrentgemma/jax/scan.py`. The package itself cannot be installed beside
rnn_jax (it pins absl-py < 2 and numpy < 2.4), so the lines that compute the layer are copied
here unchanged; trimmed: the jaxtyping/typeguard annotations, the complex and Pallas paths,
sharding, the cache API, the unroll and one-token branches of the scan (the same result), and
einops (its two rearranges written as reshapes). Changed: the scan accumulates in the input's
dtype, where the original always accumulates in float32 (and requires a float32 carried
state), so that it can serve as a float64 reference.
"""

from collections.abc import Sequence
import functools

import jax
import jax.numpy as jnp
from flax import linen as nn


def rnn_real_param_init(min_rad: float, max_rad: float, eps: float = 1e-8):
  """Initializes the `A` real parameter of the RG-LRU uniformly on a ring."""

  def init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    unif = jax.random.uniform(key, shape=shape)
    # Proportional to area in a ring.
    a_real = 0.5 * jnp.log(unif * (max_rad**2 - min_rad**2) + min_rad**2 + eps)
    # Inverse transform.
    return jnp.log(jnp.exp(-a_real) - 1.0).astype(dtype)

  return init


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def sqrt_bound_derivative(x: jax.Array, max_gradient: float) -> jax.Array:
  """Computes a square root with a gradient clipped at `max_gradient`."""
  del max_gradient  # unused
  return jnp.sqrt(x)


def stable_sqrt_fwd(x, _):
  return jnp.sqrt(x), (x,)


def stable_sqrt_bwd(max_gradient, res, g):
  (x,) = res
  x_pre = jnp.maximum(x, 1 / (4 * max_gradient**2))
  return jax.vjp(jnp.sqrt, x_pre)[1](g)


sqrt_bound_derivative.defvjp(stable_sqrt_fwd, stable_sqrt_bwd)


class BlockDiagonalLinear(nn.Module):
  """Block-diagonal linear layer."""

  width_input: int
  num_blocks: int
  width_output: int | None = None
  w_init_variance_scale: float = 1.0

  def setup(self):
    width_output = self.width_output or self.width_input
    input_size = self.width_input // self.num_blocks
    output_size = width_output // self.num_blocks
    self.w = self.param(
        "w",
        nn.initializers.variance_scaling(
            scale=self.w_init_variance_scale, mode="fan_in", distribution="normal"),
        [self.num_blocks, input_size, output_size],
    )
    self.b = self.param("b", nn.initializers.zeros_init(), [self.num_blocks, output_size])

  def __call__(self, x: jax.Array) -> jax.Array:
    # Split x to blocks.
    x = x.reshape(*x.shape[:-1], self.num_blocks, -1)
    # Linear layer over each block + bias.
    y = jnp.einsum("... h i, h i j -> ... h j", x, self.w) + self.b
    # Flatten the output.
    return y.reshape(*y.shape[:-2], -1)


def linear_scan(x: jax.Array, a: jax.Array, h0: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """The native scan of `scan.linear_scan`: h_t = a_t * h_{t-1} + x_t over axis 1, in x's dtype."""

  def body(h_t, a_x):
    a_t, x_t = a_x
    h_t = a_t * h_t + x_t
    return h_t, h_t

  h0 = jnp.zeros_like(x[:, 0]) if h0 is None else h0
  last_h, y = jax.lax.scan(body, h0, (a.swapaxes(0, 1), x.swapaxes(0, 1)))
  return y.swapaxes(0, 1), last_h


class RGLRU(nn.Module):
  """A Real-Gated Linear Recurrent Unit (RG-LRU) layer (real-valued)."""

  width: int
  num_heads: int
  w_init_variance_scale: float = 1.0
  min_rad: float = 0.9

  def setup(self):
    self.a_real_param = self.param(
        "a_param", rnn_real_param_init(min_rad=self.min_rad, max_rad=0.999), [self.width])
    self.input_gate = BlockDiagonalLinear(
        width_input=self.width, width_output=self.width, num_blocks=self.num_heads,
        w_init_variance_scale=self.w_init_variance_scale, name="input_gate")
    self.a_gate = BlockDiagonalLinear(
        width_input=self.width, width_output=self.width, num_blocks=self.num_heads,
        w_init_variance_scale=self.w_init_variance_scale, name="a_gate")

  def __call__(self, x: jax.Array, segment_pos: jax.Array,
               cache: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """x [batch, time, width], segment_pos [batch, time] -> (y, last h)."""
    a_real_param = self.a_real_param

    bs, l, _ = x.shape
    assert segment_pos.shape == (bs, l)

    # Gate for the input.
    gate_x = jax.nn.sigmoid(self.input_gate(x))

    # Gate for `A`.
    gate_a = jax.nn.sigmoid(self.a_gate(x))

    # Compute the parameter `A` of the recurrence.
    log_a = -8.0 * gate_a * jax.nn.softplus(a_real_param)
    a, a_squared = jnp.exp(log_a), jnp.exp(2 * log_a)

    h0 = cache

    # Gate the input.
    gated_x = x * gate_x

    reset = (segment_pos == 0).astype(a.dtype)
    # Apply gamma normalization to the input. We need to clip the derivatives of
    # `sqrt` in order to prevent NaNs during training in bfloat16.
    multiplier = sqrt_bound_derivative(1 - a_squared, 1000)
    multiplier = reset[..., None] + (1 - reset)[..., None] * multiplier
    normalized_x = gated_x * multiplier.astype(x.dtype)

    y, last_h = linear_scan(x=normalized_x, a=a * (1 - reset[..., None]), h0=h0)
    return y, last_h
