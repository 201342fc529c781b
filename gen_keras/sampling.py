"""Raster-order sampling and completion for any causal pixel model, as in-graph loops.

Contract (stable; PixelCNN and PixelRNN both build on it):

- A causal model is `params_fn(x, label) -> params`: x float32 [B, H, W, C] in model
  space (see `gen_keras.data`), label int32 [B] or None, params float32
  [B, H, W, head.num_params(C)] such that params[:, i, j] depends only on pixels before
  (i, j) in raster order and, for heads with `joint_channels=False`, channel group c
  (the head's c-th parameter block) also on channels < c of pixel (i, j).
- `sample(params_fn, head, spec, seeds, label)` and `complete(params_fn, head, spec,
  images, known, seeds, label)` are the reference sampler: a `tf.while_loop` over rows
  and columns that recomputes `params_fn` on the whole image for every pixel (and every
  sub-pixel when channels are sampled one by one). They build graph ops: call them inside
  a `tf.function` (with or without `jit_compile=True`); eagerly they run, slowly.
- seeds int32 [B, 2], one per row: all randomness is the uniform noise
  `pixel_noise(head, spec, seeds)` [B, H, W, head.noise_channels(C)], drawn per row with
  `gen_keras.rng`, so a row's sample does not depend on the other rows, and any two
  samplers fed the same seeds consume the same noise. Pixel (i, j) is drawn by
  `head.sample` from its parameters and noise[:, i, j] (an inverse-CDF draw), all channels
  at once for `joint_channels` heads, else channel by channel (R -> G -> B).
- Completion: images float32 [B, H, W, C] model space, known bool/0-1 [B, H, W, C]
  (1 = known). Unknown values are zeroed before sampling (they cannot leak), pixels are
  visited in raster order, known values are kept and conditioned on, and the result
  equals `images` wherever known. For joint-channel heads a pixel is redrawn unless all
  its channels are known; known channels are still restored.
- Fast samplers plug into the same loop (`raster_sample`) as a *stepper*: an object with
      init(x) -> state                      before the loops (x: the start image)
      start_row(state, x, i) -> state       rows < i of x are final
      pixel(state, x, i, j) -> (params [B, P], state)
      end_row(state, x, i) -> state         row i of x is final
  `pixel` may be called several times at one (i, j) (once per channel, with x's pixel
  (i, j) filled up to the previous channel); the loop keeps the state of the last call.
  `Reference` is the stepper that recomputes everything; a stepper with
  `skip_known = True` is not called at pixels known in every row. State is any nest of
  tensors and TensorArrays of fixed shapes apart from the batch dimension.
  Equal seeds give equal samples from two steppers whenever their params agree to float
  rounding at every step (bit-for-bit only in the same compile mode: XLA's random stream
  differs from TF's kernels for the same seed).
"""

from __future__ import annotations

import tensorflow as tf

from gen_keras import rng


def pixel_noise(head, spec, seeds) -> tf.Tensor:
    """seeds int32 [B, 2] -> uniform noise float32 [B, H, W, head.noise_channels(C)]."""
    h, w, c = spec.shape
    return rng.row_uniform(seeds, [h, w, head.noise_channels(c)])


class Reference:
    """The stepper that runs params_fn(x, label) on the whole image at every pixel."""

    skip_known = True

    def __init__(self, params_fn, label=None):
        self.params_fn = params_fn
        self.label = label

    def init(self, x):
        return ()

    def start_row(self, state, x, i):
        return state

    def pixel(self, state, x, i, j):
        return self.params_fn(x, self.label)[:, i, j], state

    def end_row(self, state, x, i):
        return state


def _by_pixel(t):
    """[B, H, W, ...] -> [H, W, B, ...]: rows and pixels become cheap tf.gather's."""
    return tf.transpose(t, [1, 2, 0, 3])


# The loops are explicit tf.while_loops: autograph would only slow tracing down (~3x).
@tf.autograph.experimental.do_not_convert
def raster_sample(stepper, head, spec, seeds, images=None, known=None) -> tf.Tensor:
    """Samples (or completes) images pixel by pixel with `stepper`; see the module doc.

    seeds int32 [B, 2]; images float32 [B, H, W, C] model space and known [B, H, W, C]
    (both or neither). Returns float32 [B, H, W, C] in model space.
    """
    height, width, channels = spec.shape
    seeds = tf.convert_to_tensor(seeds, tf.int32)
    noise = _by_pixel(pixel_noise(head, spec, seeds))  # [H, W, B, noise channels]
    batch = tf.shape(seeds)[0]
    completing = known is not None
    if completing:
        known = tf.cast(known, tf.bool)
        x0 = tf.where(known, tf.cast(images, tf.float32), 0.0)
        known_hw, x0_hw = _by_pixel(known), _by_pixel(x0)
        skip = getattr(stepper, "skip_known", False)
    else:
        x0 = tf.zeros([batch, height, width, channels])
        skip = False
    passes = 1 if head.joint_channels else channels
    num_params = head.num_params(channels)
    # x[:, i, j] = value as one scatter: index [B, 3] = (b, i, j)
    base_index = tf.pad(tf.range(batch)[:, None], [[0, 0], [0, 2]])
    unit_i, unit_j = tf.constant([0, 1, 0]), tf.constant([0, 0, 1])

    def row(i, x, state):
        state = stepper.start_row(state, x, i)
        noise_row = tf.gather(noise, i)  # [W, B, noise channels]
        row_index = base_index + i * unit_i
        if completing:
            known_row, x0_row = tf.gather(known_hw, i), tf.gather(x0_hw, i)  # [W, B, C]
            all_known = tf.reduce_all(known_row, axis=[1, 2])  # [W]

        def column(j, x, state):
            index = row_index + j * unit_j
            noise_px = tf.reshape(tf.gather(noise_row, j), [-1, 1, 1, noise_row.shape[-1]])
            if completing:
                known_px, x0_px = tf.gather(known_row, j), tf.gather(x0_row, j)
            new_state = state
            for c in range(passes):
                if skip:
                    params = tf.cond(
                        tf.gather(all_known, j),
                        lambda: tf.zeros([batch, num_params]),
                        lambda x=x: stepper.pixel(state, x, i, j)[0],
                    )
                else:
                    params, new_state = stepper.pixel(state, x, i, j)
                params = tf.reshape(params, [-1, 1, 1, num_params])
                value = tf.reshape(head.sample(params, noise_px), [-1, channels])
                if passes > 1:  # channel c only, the others keep their current values
                    current = tf.gather_nd(x, index)
                    value = tf.where(tf.range(channels) == c, value, current)
                if completing:
                    value = tf.where(known_px, x0_px, value)
                x = tf.tensor_scatter_nd_update(x, index, value)
            return j + 1, x, new_state

        _, x, state = tf.while_loop(lambda j, *_: j < width, column, (tf.constant(0), x, state))
        return i + 1, x, stepper.end_row(state, x, i)

    _, x, _ = tf.while_loop(lambda i, *_: i < height, row, (tf.constant(0), x0, stepper.init(x0)))
    return tf.where(known, x0, x) if completing else x


def sample(params_fn, head, spec, seeds, label=None) -> tf.Tensor:
    """Reference sampler: seeds int32 [B, 2] -> float32 [B, H, W, C] model-space images."""
    return raster_sample(Reference(params_fn, label), head, spec, seeds)


def complete(params_fn, head, spec, images, known, seeds, label=None) -> tf.Tensor:
    """Reference completion of `images` where `known` is 0 (see the module doc)."""
    return raster_sample(Reference(params_fn, label), head, spec, seeds, images, known)
