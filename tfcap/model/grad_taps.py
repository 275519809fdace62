"""Recurrent kernels' gradients as one product after the loop ("gradient taps").

Backpropagation through a T-step loop gives each kernel used inside it the sum
of T products `x_t^T g_t` (`x_t` the product's input `[rows, in]`, `g_t` the
gradient of its output `[rows, out]`), each with only `rows` terms: small,
memory-bound products whose `[in, out]` result is read and written again at
every step. With taps the loop multiplies by `stop_gradient(kernel)` (inputs
still get their gradient `g_t kernel^T`) and adds a zero tensor `z_t` to the
product; it records `x_t`. After the backward pass `dL/dz_t = g_t`, and the
kernel's gradient is the same sum as one product
`[T * rows, in]^T [T * rows, out]`. Only the order of float additions differs.

Use (teacher forcing, `tfcap.training.xe`):

    with tf.GradientTape() as tape:
        taps = GradTaps(tape)
        logits, _ = model.teacher_forcing(..., taps=taps)
        loss = ...
    grads = taps.gradients(loss, model.trainable_variables)
"""

from __future__ import annotations

import keras
import tensorflow as tf


class StepTap:
    """One step's tap on one Dense layer: `dense(layer, x)` is `layer(x)` with a zero added."""

    def __init__(self, zero):
        self.zero = zero  # [rows, out], the tap whose gradient is the output's
        self.x = None  # the step's input, recorded by `dense`

    def dense(self, layer: keras.layers.Dense, x):
        """`layer(x)` for a linear Dense layer, its kernel behind stop_gradient."""
        if layer.activation is not keras.activations.linear:
            raise ValueError(f"{layer.name}: taps need a linear Dense layer")
        self.x = x
        kernel = tf.stop_gradient(tf.cast(layer.kernel, x.dtype))
        y = tf.matmul(x, kernel) + self.zero
        if layer.use_bias:
            y = tf.nn.bias_add(y, tf.cast(layer.bias, x.dtype))
        return y


class GradTaps:
    """The taps of one teacher-forcing call and the kernel gradients they give.

    Args:
        tape: the `tf.GradientTape` the loss is recorded on (it watches the taps).
    """

    def __init__(self, tape: tf.GradientTape):
        self.tape = tape
        self.layers: dict[str, keras.layers.Dense] = {}
        self.zeros: dict[str, tf.Tensor] = {}  # [steps, rows, out]
        self.inputs: dict[str, tf.Tensor] = {}  # [steps, rows, in]

    def begin(self, layers: dict, steps, rows, dtype) -> dict[str, tf.TensorArray]:
        """Zero taps for `layers` (name -> Dense) over `steps` x `rows`; per-step readers."""
        readers = {}
        for name, layer in layers.items():
            zero = tf.zeros([steps, rows, layer.units], dtype)
            self.tape.watch(zero)
            self.layers[name], self.zeros[name] = layer, zero
            readers[name] = tf.TensorArray(dtype, size=steps).unstack(zero)
        return readers

    def finish(self, inputs: dict[str, tf.Tensor]) -> None:
        """The loop's recorded inputs, name -> `[steps, rows, in]`."""
        self.inputs.update(inputs)

    def gradients(self, target, variables) -> list:
        """`tape.gradient(target, variables)`, the tapped kernels' as one product each."""
        variables = list(variables)
        names = list(self.zeros)
        if set(names) != set(self.inputs):
            raise ValueError("GradTaps: the loop did not record every tap's inputs")
        out = self.tape.gradient(target, [*variables, *(self.zeros[n] for n in names)])
        grads = list(out[: len(variables)])
        for name, dz in zip(names, out[len(variables) :], strict=True):
            if dz is None:
                continue
            x = self.inputs[name]
            x = tf.reshape(x, [-1, x.shape[-1]])  # [steps * rows, in]
            dz = tf.reshape(tf.convert_to_tensor(dz), [-1, dz.shape[-1]])
            kernel = self.layers[name].kernel
            dw = tf.cast(tf.matmul(x, tf.cast(dz, x.dtype), transpose_a=True), kernel.dtype)
            (index,) = [i for i, v in enumerate(variables) if v is kernel]
            grads[index] = dw if grads[index] is None else grads[index] + dw
        return grads
