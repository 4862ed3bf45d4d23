"""The backward pass of one image, layer by layer, for a learner to look at (issue #30).

explain(network, field, target) runs the network in evaluation mode (batch norm with its
running statistics, dropout the identity) on one image, takes the plain cross-entropy of that
image against `target`, and backpropagates it, keeping every layer's output, the delta at that
output (dloss/doutput) and the gradients of its parameters for this one image.

The layers run one by one in the order the network lists them (the config's order), not in the
fast path's run order, so that each layer's output and delta are those of the layer as listed.
Nothing of the network changes: its parameters, buffers and generators are only read, and its
gradient arrays, which the layers' backward passes fill, are put back as they were.
"""

import math

import numpy as np

from cnntrain.nn import functional


def explain(network, field, target):
    """One image's forward and backward pass, every layer's part in it.

    network: a cnntrain.nn.model.Network; field: the normalised input, its input shape with or
    without a batch axis of one, e.g. (28, 28), (1, 28, 28) or (1, 1, 28, 28) for MNIST;
    target: the class index (0 .. K-1) the loss is taken against.

    -> a dict:
      "probabilities": (K,) softmax of the logits;
      "loss": float, -log probabilities[target];
      "input_delta": dloss/dinput, the field's shape without batch or single channel axes,
          (28, 28) for MNIST;
      "layers": one dict per layer, in network.layers order, each with
          "name", "kind", "output" (the layer's output without the batch axis),
          "delta" (dloss/doutput, the same shape),
          for a layer with parameters "weight_grad" (dloss/d of its first parameter, W or
          gamma, that parameter's shape) and "bias_grad" (of its second, b or beta), and for
          max pooling "routes" ((C, out_h, out_w, 2): the (row, column) of the layer's input
          to which each delta goes).
    Raises ValueError for a field of the wrong shape or with non-finite values, or a target
    that is not a class index.
    """
    x = _batch_of_one(network, field)
    n_classes = int(math.prod(network.summary()[-1].output_shape))
    _check_target(target, n_classes)
    saved_grads = {name: grad.copy() for name, grad in network.grads.items()}
    try:
        return _explain(network, x, target)
    finally:
        for name, grad in saved_grads.items():
            network.grads[name][...] = grad


def _batch_of_one(network, field):
    """field -> (1, *input_shape) in the network's dtype, or ValueError."""
    field = np.asarray(field)
    shape = network.input_shape
    accepted = {shape, (1,) + shape}
    if shape[0] == 1:
        accepted.add(shape[1:])
    if field.shape not in accepted:
        raise ValueError(f"the input must have shape {shape} (or with a batch axis of one), "
                         f"got {field.shape}")
    if not np.issubdtype(field.dtype, np.number) or not np.all(np.isfinite(field)):
        raise ValueError("the input must hold finite numbers")
    return np.ascontiguousarray(field, dtype=network.dtype).reshape((1,) + shape)


def _check_target(target, n_classes):
    if isinstance(target, (bool, np.bool_)) or not isinstance(target, (int, np.integer)) \
            or not 0 <= target < n_classes:
        raise ValueError(f"target must be a class index from 0 to {n_classes - 1}, "
                         f"got {target!r}")


def _explain(network, x, target):
    layers, inputs = [], []
    for name, layer in network.layers:
        inputs.append(x)
        x = layer.forward_eval_kept(x)
        layers.append({"name": name, "kind": layer.kind, "output": _one(x)})
    labels = np.array([target])
    log_probs = functional.log_softmax(x)
    loss = functional.cross_entropy(log_probs, labels)
    delta = functional.softmax_cross_entropy_backward(np.exp(log_probs), labels)
    for entry, (_, layer) in zip(reversed(layers), reversed(network.layers)):
        entry["delta"] = _one(delta)
        delta = layer.backward(delta, input_grad=True)
        entry.update(_parameter_grads(layer))
    for entry, (_, layer), layer_input in zip(layers, network.layers, inputs):
        if hasattr(layer, "routes"):
            entry["routes"] = layer.routes(layer_input)[0]
    return {"probabilities": _one(np.exp(log_probs)), "loss": loss,
            "input_delta": _field_shaped(_one(delta)), "layers": layers}


def _field_shaped(delta):
    """(1, H, W) -> (H, W): a single channel's delta as the field it belongs to."""
    return delta[0] if delta.shape[0] == 1 and delta.ndim == 3 else delta


def _parameter_grads(layer):
    """The layer's parameter gradients for this image: its first parameter's as weight_grad,
    its second's as bias_grad (copies: the arrays are the network's, restored afterwards)."""
    grads = list(layer.grads.values())
    return {key: grad.copy() for key, grad in zip(("weight_grad", "bias_grad"), grads)}


def _one(batch):
    """The only example of a batch of one, as a contiguous array of its own."""
    return np.ascontiguousarray(batch[0])
