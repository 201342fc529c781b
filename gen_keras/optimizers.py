"""Adam with one fused kernel per variable: what every family trains with.

Keras 3's Adam updates each variable with about a dozen small ops (two moment updates, a
square root, a division, three assigns, the bias corrections). `Adam` here computes the same
update in TensorFlow's `ResourceApplyAdam` kernel, one op per variable:

    m <- m + (1 - beta_1) (g - m);   v <- v + (1 - beta_2) (g^2 - v)
    variable <- variable - lr sqrt(1 - beta_2^t) / (1 - beta_1^t) * m / (sqrt(v) + epsilon)

with t = iterations + 1, exactly Keras's update (equal to float rounding; a test compares
them). The optimizer variables are Keras's own (same names, slots and checkpoint layout),
so runs and checkpoints made with `keras.optimizers.Adam` restore into it and back. Sparse
gradients (an Embedding's IndexedSlices) and `amsgrad` take Keras's path.

Measured (benchmarks/results.md, "Fused Adam"): it halves the ops of a PixelCNN training
step (4,792 -> 2,488 at pytorch-generative's configuration) but not its time (paired median
0.995 over 30 alternating blocks: the convolutions dominate); the VAE's step (Burda et al.'s
MLP, batch 128) runs 1.13x faster (paired median of 20 blocks); a GAN step showed no change
beyond noise.
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="gen_keras")
class Adam(keras.optimizers.Adam):
    """`keras.optimizers.Adam` whose dense updates are one `ResourceApplyAdam` each."""

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=m.handle,
            v=v.handle,
            beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
        )
