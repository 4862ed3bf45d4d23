"""`cnntrain export`: a checkpoint's network as a standard ONNX model, in evaluation mode.

The model (ONNX opset OPSET, IR version IR_VERSION, float32) takes
    image: (N, 1, 28, 28) float32 in [0, 1], ink high (white digit on black), centred as
           MNIST's digits are (cnntrain.data.preprocess.to_mnist_field makes such fields)
and gives
    logits:        (N, 10), the network's scores, equal to cnntrain's forward pass
    probabilities: (N, 10), their softmax
The checkpoint's normalisation, (x - mean) / std, is the first two nodes of the graph, so a
runtime feeds plain [0, 1] pixels; the metadata repeats it (mean, std), with the class names,
the input convention and the checkpoint it came from.

Several checkpoints (a committee, cnntrain.apps.committee) make one graph: each member's own
normalisation and layers side by side on the same input, names prefixed member0., member1.,
..., and 'probabilities' the mean of their softmax outputs, 'logits' its log
(build_committee_onnx). The graph always averages: a committee's vote is not in it.

Each layer class is translated by one function in EXPORTERS, the one table to extend when a
layer kind is added; a network holding a layer it lacks is a one-line error naming the layer.
onnx is optional: pip install 'cnntrain[onnx]'.
"""

import json

import numpy as np

from cnntrain import __version__
from cnntrain.apps.inference import CLASS_NAMES, load_predictor
from cnntrain.errors import CnnTrainError, require_extra
from cnntrain.fileio import atomic_writer, check_output, refuse_overwriting
from cnntrain.nn.activations import ReLU, Sigmoid, Tanh
from cnntrain.nn.conv import Conv2D
from cnntrain.nn.dense import Dense
from cnntrain.nn.flatten import Flatten
from cnntrain.nn.norm import BatchNorm, Dropout
from cnntrain.nn.pooling import MaxPool2D, MeanPool2D

OPSET = 17       # Conv, MaxPool, AveragePool, Gemm, Flatten, BatchNormalization and
                 # Softmax(axis) as used here
IR_VERSION = 8   # the IR version of opset 17, so runtimes of that age can load the file
INPUT, LOGITS, PROBABILITIES = "image", "logits", "probabilities"

class UnsupportedLayer(CnnTrainError):
    """A layer the exporter has no translation for."""


class GraphBuilder:
    """Collects nodes and float32 weights; each add() returns the name of its output."""

    def __init__(self, onnx):
        self.helper = onnx.helper
        self.numpy_helper = onnx.numpy_helper
        self.nodes, self.initializers = [], []

    def weight(self, name, array):
        array = np.ascontiguousarray(np.asarray(array, dtype=np.float32))
        self.initializers.append(self.numpy_helper.from_array(array, name))
        return name

    def add(self, op, inputs, name, output=None, **attributes):
        output = output or name
        self.nodes.append(self.helper.make_node(op, list(inputs), [output], name=name,
                                                **attributes))
        return output


# --------------------------------------------------------------------------- one per layer
# Each: (builder, layer name, layer, input name) -> output name.


def _conv(g, name, layer, x):
    p = layer.padding
    return g.add("Conv", [x, g.weight(f"{name}.W", layer.params["W"]),
                          g.weight(f"{name}.b", layer.params["b"])], name,
                 kernel_shape=list(layer.kernel_size), strides=[layer.stride] * 2,
                 pads=[p, p, p, p])


def _pool(op):
    def export(g, name, layer, x):
        k = layer.kernel_size
        # Floor mode (ceil_mode 0) and no padding: leftover rows and columns are dropped,
        # as cnntrain's pooling does.
        return g.add(op, [x], name, kernel_shape=[k, k], strides=[layer.stride] * 2,
                     ceil_mode=0)
    return export


def _dense(g, name, layer, x):
    # cnntrain's W is (in, out): y = x @ W + b, which is Gemm without transposes.
    return g.add("Gemm", [x, g.weight(f"{name}.W", layer.params["W"]),
                          g.weight(f"{name}.b", layer.params["b"])], name)


def _elementwise(op):
    def export(g, name, layer, x):
        return g.add(op, [x], name)
    return export


def _flatten(g, name, layer, x):
    return g.add("Flatten", [x], name, axis=1)  # (N, C, H, W) -> (N, C*H*W) in C, H, W order


def _dropout(g, name, layer, x):
    # The graph is the network in evaluation, where inverted dropout is the identity; the node
    # keeps the layer's name so the exported graph still lists every layer.
    return g.add("Identity", [x], name)


def _batchnorm(g, name, layer, x):
    # Evaluation mode: the running statistics, never the batch's. ONNX's BatchNormalization
    # normalises axis 1 of an (N, C, H, W) or an (N, C) input, as cnntrain's layer does.
    return g.add("BatchNormalization",
                 [x, g.weight(f"{name}.gamma", layer.params["gamma"]),
                  g.weight(f"{name}.beta", layer.params["beta"]),
                  g.weight(f"{name}.running_mean", layer.buffers["running_mean"]),
                  g.weight(f"{name}.running_var", layer.buffers["running_var"])],
                 name, epsilon=float(layer.eps))


EXPORTERS = {
    Conv2D: _conv,
    MaxPool2D: _pool("MaxPool"),
    MeanPool2D: _pool("AveragePool"),
    Dense: _dense,
    ReLU: _elementwise("Relu"),
    Tanh: _elementwise("Tanh"),
    Sigmoid: _elementwise("Sigmoid"),
    Flatten: _flatten,
    Dropout: _dropout,
    BatchNorm: _batchnorm,
}


def exporter_for(layer):
    """The translation of a layer's exact class (a subclass may change the maths, so it is
    never taken for its parent), or None."""
    return EXPORTERS.get(type(layer))


def check_exportable(network, source):
    """UnsupportedLayer naming the first layer without a translation, before any work."""
    for name, layer in network.layers:
        if exporter_for(layer) is None:
            known = ", ".join(sorted(cls.__name__ for cls in EXPORTERS))
            raise UnsupportedLayer(f"{source}: cannot export layer {name} "
                                   f"({type(layer).__name__}): the ONNX exporter has no "
                                   f"translation for it (it translates {known})")


def add_network(g, network, *, mean, std, prefix="", source="the network"):
    """One network's nodes into builder `g`, reading INPUT: its normalisation, then its layers,
    every node and weight name prefixed by `prefix` ("" for a lone network, so its graph keeps
    the names it always had). Returns the name of its logits (N, 10)."""
    check_exportable(network, source)
    x = g.add("Sub", [INPUT, g.weight(f"{prefix}normalise.mean", np.array(mean))],
              f"{prefix}normalise.sub")
    x = g.add("Div", [x, g.weight(f"{prefix}normalise.std", np.array(std))],
              f"{prefix}normalise.div")
    for name, layer in network.layers:
        x = exporter_for(layer)(g, f"{prefix}{name}", layer, x)
    return x


def input_doc(input_shape, normalisation):
    """The model's doc string: its input convention and outputs."""
    return (f"input '{INPUT}': (N, {', '.join(map(str, input_shape))}) float32 "
            f"in [0, 1], ink high (white digit on black), centred as MNIST; the graph "
            f"normalises it itself ({normalisation}). Outputs '{LOGITS}' and "
            f"'{PROBABILITIES}' over classes {', '.join(CLASS_NAMES)}.")


def finish_model(onnx, g, *, input_shape, n_out, doc, props):
    """The builder's nodes as a checked ModelProto with the INPUT, LOGITS and PROBABILITIES of
    the module docstring, `doc` and the metadata `props`."""
    helper = onnx.helper
    float32 = onnx.TensorProto.FLOAT
    graph = helper.make_graph(
        g.nodes, "cnntrain", [helper.make_tensor_value_info(INPUT, float32, ["N", *input_shape])],
        [helper.make_tensor_value_info(LOGITS, float32, ["N", *n_out]),
         helper.make_tensor_value_info(PROBABILITIES, float32, ["N", *n_out])],
        initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=IR_VERSION, producer_name="cnntrain",
                              producer_version=__version__)
    model.doc_string = doc
    props = {"classes": json.dumps(list(CLASS_NAMES)), "input": doc, **props}
    helper.set_model_props(model, {key: str(value) for key, value in props.items()})
    onnx.checker.check_model(model)
    return model


def build_onnx(network, *, mean, std, metadata=None, source="the network"):
    """A cnntrain Network -> a checked onnx ModelProto (see the module docstring)."""
    onnx = require_extra("onnx", "exporting", "onnx")
    g = GraphBuilder(onnx)
    add_network(g, network, mean=mean, std=std, source=source)
    g.nodes[-1].output[0] = LOGITS
    g.add("Softmax", [LOGITS], "softmax", output=PROBABILITIES, axis=1)
    props = {"normalisation": json.dumps({"mean": mean, "std": std, "inside_graph": True}),
             **(metadata or {})}
    return finish_model(onnx, g, input_shape=network.input_shape,
                        n_out=network.summary()[-1].output_shape,
                        doc=input_doc(network.input_shape, f"(x - {mean}) / {std}"),
                        props=props)


def export_checkpoint(checkpoint, output):
    """Write `checkpoint`'s network to `output` as ONNX (by cnntrain.fileio's rule: atomically
    into a file, straight into a device, FIFO or socket); returns the summary."""
    require_extra("onnx", "exporting", "onnx")
    check_output(output)
    refuse_overwriting(output, checkpoint)
    predictor = load_predictor(checkpoint)
    summary = predictor.summary()
    metadata = {"source_checkpoint": str(checkpoint), "name": summary["name"],
                "epoch": summary["epoch"], "test_accuracy": summary["test_accuracy"],
                "opset": OPSET}
    model = build_onnx(predictor.network, mean=predictor.mean, std=predictor.std,
                       metadata=metadata, source=str(checkpoint))
    with atomic_writer(output) as f:
        f.write(model.SerializeToString())
    return summary


# --------------------------------------------------------------------------- committees


def member_prefix(index):
    """The prefix of member `index`'s node and weight names in a committee's graph."""
    return f"member{index}."


def build_committee_onnx(members, *, metadata=None):
    """Several networks -> one checked ModelProto averaging them. `members`: (name, network,
    mean, std, source) each; every member normalises INPUT itself and runs its own layers
    (names prefixed by member_prefix), then
        probabilities = Mean(softmax of each member's logits)   (N, 10)
        logits        = Log(probabilities)                      (N, 10)
    so softmax(logits) == probabilities and both have the same argmax (a probability of 0
    gives a logit of -inf). The committee's vote rule is not in the graph: it averages."""
    onnx = require_extra("onnx", "exporting", "onnx")
    for _, network, _, _, source in members:
        check_exportable(network, source)
    g = GraphBuilder(onnx)
    probabilities, described = [], []
    for index, (name, network, mean, std, source) in enumerate(members):
        prefix = member_prefix(index)
        logits = add_network(g, network, mean=mean, std=std, prefix=prefix, source=source)
        probabilities.append(g.add("Softmax", [logits], f"{prefix}softmax", axis=1))
        described.append({"name": name, "prefix": prefix, "source_checkpoint": source,
                          "normalisation": {"mean": mean, "std": std}})
    g.add("Mean", probabilities, "committee.mean", output=PROBABILITIES)
    g.add("Log", [PROBABILITIES], "committee.log", output=LOGITS)
    first = members[0][1]
    doc = (input_doc(first.input_shape, "each member its own (x - mean) / std")
           + f" A committee of {len(members)}: '{PROBABILITIES}' is the mean of the members' "
             f"softmax probabilities and '{LOGITS}' its log.")
    props = {"combine": "mean", "members": json.dumps(described),
             "normalisation": json.dumps({"members": [d["normalisation"] for d in described],
                                          "inside_graph": True}),
             **(metadata or {})}
    return finish_model(onnx, g, input_shape=first.input_shape,
                        n_out=first.summary()[-1].output_shape, doc=doc, props=props)


def export_committee(checkpoints, output):
    """Write the committee of `checkpoints` (cnntrain.apps.committee's refusals apply: each
    once, each fitting) to `output` as one ONNX graph averaging their probabilities, by the
    rule of export_checkpoint; returns the committee's summary."""
    from cnntrain.apps.committee import load_model

    require_extra("onnx", "exporting", "onnx")
    check_output(output)
    refuse_overwriting(output, *checkpoints)
    committee = load_model(checkpoints, combine="mean")
    summary = committee.summary()
    members = [(name, member.network, member.mean, member.std, str(member.path))
               for name, member in zip(committee.names, committee.members)]
    metadata = {"name": summary["name"], "opset": OPSET,
                "member_epochs": json.dumps([m["epoch"] for m in summary["members"]]),
                "member_test_accuracies": json.dumps(
                    [m["test_accuracy"] for m in summary["members"]])}
    model = build_committee_onnx(members, metadata=metadata)
    with atomic_writer(output) as f:
        f.write(model.SerializeToString())
    return summary
