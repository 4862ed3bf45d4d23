"""The network: an ordered list of named layers, and the builder that reads it from text.

A layer list has one layer per line (or ' / ' between layers on one line):

    conv F K [stride=S] [pad=P]   F kernels of K x K (or KxK2), cross-correlation
    maxpool K [stride=S]          max pooling, stride defaults to K
    meanpool K [stride=S]         mean pooling, stride defaults to K
    dense OUT                     fully connected, input size inferred
    relu | tanh | sigmoid         activations
    flatten                       (C, H, W) -> (C*H*W,), needed before the first dense

Each layer's input size is inferred from the input shape, (1, 28, 28) for MNIST, and each
gets a name from its kind and a running count (conv1, relu1, ..., dense3), so parameters
are named "conv1.W", "dense3.b", and so on.
"""

import difflib
import math
from dataclasses import dataclass

import numpy as np

from cnntrain import footprint
from cnntrain import layers as L
from cnntrain.errors import ConfigError
from cnntrain.functional import conv_output_size

MNIST_SHAPE = (1, 28, 28)


class LayerSpecError(ConfigError):
    """A line of a layer list is wrong. line_no is 1-based within the list."""

    def __init__(self, line_no, line, reason):
        self.line_no, self.line, self.reason = line_no, line, reason
        super().__init__(f"layer line {line_no} '{line}': {reason}")


@dataclass(frozen=True)
class LayerSpec:
    """One parsed line: the layer kind, positional ints and key=value ints."""

    line_no: int
    line: str
    kind: str
    args: tuple
    options: dict


@dataclass(frozen=True)
class LayerSummary:
    """One row of a network summary (shapes are per example, without the batch axis)."""

    name: str
    layer: str
    output_shape: tuple
    params: int
    multiply_adds: int


# kind -> (positional argument names, allowed options)
_GRAMMAR = {
    "conv": (("filters", "kernel"), ("stride", "pad")),
    "maxpool": (("kernel",), ("stride",)),
    "meanpool": (("kernel",), ("stride",)),
    "dense": (("out",), ()),
    "relu": ((), ()),
    "tanh": ((), ()),
    "sigmoid": ((), ()),
    "flatten": ((), ()),
}
_USAGE = {
    "conv": "conv FILTERS KERNEL [stride=S] [pad=P]",
    "maxpool": "maxpool KERNEL [stride=S]",
    "meanpool": "meanpool KERNEL [stride=S]",
    "dense": "dense OUT",
}


def split_layer_lines(text_or_lines):
    """A layer list as text (newlines or ' / ' between layers) or lines -> stripped lines."""
    if isinstance(text_or_lines, str):
        text_or_lines = text_or_lines.splitlines()
    lines = []
    for chunk in text_or_lines:
        lines.extend(part.strip() for part in chunk.split(" / ") if part.strip())
    return lines


def _positive_int(text, what, spec_line):
    line_no, line = spec_line
    try:
        value = int(text)
    except ValueError:
        raise LayerSpecError(line_no, line, f"{what} must be a whole number, got '{text}'") from None
    if value < (0 if what == "pad" else 1):
        bound = ">= 0" if what == "pad" else ">= 1"
        raise LayerSpecError(line_no, line, f"{what} must be {bound}, got {value}")
    return value


def parse_layer_line(line_no, line):
    """'conv 6 5 pad=2' -> LayerSpec(kind='conv', args=(6, (5, 5)), options={'pad': 2})."""
    words = line.split()
    kind = words[0].lower()
    if kind not in _GRAMMAR:
        close = difflib.get_close_matches(kind, _GRAMMAR, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise LayerSpecError(line_no, line, f"unknown layer '{kind}'{hint}; known layers: "
                                            f"{', '.join(_GRAMMAR)}")
    arg_names, option_names = _GRAMMAR[kind]
    positional = [w for w in words[1:] if "=" not in w]
    usage = _USAGE.get(kind, kind)
    if len(positional) != len(arg_names):
        raise LayerSpecError(line_no, line, f"expected {len(arg_names)} number(s), "
                                            f"got {len(positional)}; usage: {usage}")
    args = []
    for name, text in zip(arg_names, positional):
        if name == "kernel" and kind == "conv" and "x" in text.lower():
            kh, _, kw = text.lower().partition("x")
            args.append((_positive_int(kh, name, (line_no, line)),
                         _positive_int(kw, name, (line_no, line))))
        else:
            value = _positive_int(text, name, (line_no, line))
            args.append((value, value) if (name == "kernel" and kind == "conv") else value)
    options = {}
    for word in (w for w in words[1:] if "=" in w):
        key, _, text = word.partition("=")
        if key not in option_names:
            allowed = ", ".join(option_names) or "none"
            raise LayerSpecError(line_no, line, f"unknown option '{key}' for {kind} "
                                                f"(allowed: {allowed}); usage: {usage}")
        options[key] = _positive_int(text, key, (line_no, line))
    return LayerSpec(line_no, line, kind, tuple(args), options)


def parse_layers(text_or_lines):
    """A layer list -> [LayerSpec]; LayerSpecError on the first bad line."""
    lines = split_layer_lines(text_or_lines)
    if not lines:
        raise LayerSpecError(0, "", "the layer list is empty")
    return [parse_layer_line(i, line) for i, line in enumerate(lines, 1)]


def infer_layer(spec, input_shape):
    """One LayerSpec on a per-example input shape -> (output shape, parameter count), without
    building the layer (nothing is allocated, so any size can be checked); LayerSpecError
    naming the shapes when the layer does not fit its input."""
    def fail(reason):
        raise LayerSpecError(spec.line_no, spec.line, reason)

    kind = spec.kind
    if kind in ("conv", "maxpool", "meanpool") and len(input_shape) != 3:
        fail(f"{kind} needs a (C, H, W) input but gets {input_shape}; "
             "put convolutions and pooling before the first flatten")
    if kind == "dense" and len(input_shape) != 1:
        fail(f"dense needs a flat input but gets {input_shape}; add a 'flatten' line before it")
    if kind == "flatten" and len(input_shape) != 3:
        fail(f"flatten needs a (C, H, W) input but gets {input_shape}")

    params, window = 0, None
    if kind == "conv":
        filters, window = spec.args
        stride, pad = spec.options.get("stride", 1), spec.options.get("pad", 0)
        channels, height, width = input_shape
        output_shape = (filters, conv_output_size(height, window[0], stride, pad),
                        conv_output_size(width, window[1], stride, pad))
        params = filters * channels * window[0] * window[1] + filters
    elif kind in ("maxpool", "meanpool"):
        window = spec.args[0]
        stride = spec.options.get("stride") or window
        channels, height, width = input_shape
        output_shape = (channels, conv_output_size(height, window, stride),
                        conv_output_size(width, window, stride))
    elif kind == "dense":
        output_shape = (spec.args[0],)
        params = input_shape[0] * spec.args[0] + spec.args[0]
    elif kind == "flatten":
        output_shape = (math.prod(input_shape),)
    else:
        output_shape = tuple(input_shape)
    if min(output_shape) < 1:
        fail(f"the {window} window does not fit the input {input_shape} "
             f"(output would be {output_shape})")
    return output_shape, params


def infer_layers(specs, input_shape=MNIST_SHAPE):
    """[(output shape, parameter count)] of each LayerSpec in turn; see infer_layer."""
    shapes, shape = [], tuple(input_shape)
    for spec in specs:
        shape, params = infer_layer(spec, shape)
        shapes.append((shape, params))
    return shapes


def _make_layer(spec, input_shape, rng, dtype, init):
    """One LayerSpec on a per-example input shape -> a layer, or LayerSpecError naming shapes."""
    output_shape, _ = infer_layer(spec, input_shape)
    kind = spec.kind
    if kind == "conv":
        filters, kernel = spec.args
        layer = L.Conv2D(input_shape[0], filters, kernel, stride=spec.options.get("stride", 1),
                         padding=spec.options.get("pad", 0), rng=rng, dtype=dtype, init=init)
    elif kind in ("maxpool", "meanpool"):
        cls = L.MaxPool2D if kind == "maxpool" else L.MeanPool2D
        layer = cls(spec.args[0], spec.options.get("stride"))
    elif kind == "dense":
        layer = L.Dense(input_shape[0], spec.args[0], rng=rng, dtype=dtype, init=init)
    else:
        layer = {"relu": L.ReLU, "tanh": L.Tanh, "sigmoid": L.Sigmoid, "flatten": L.Flatten}[kind]()
    return layer, output_shape


def execution_order(kinds):
    """Layer kinds ('relu', 'maxpool', ...) as listed -> the indices in the order forward runs
    them: as listed, except that a ReLU directly before a max pooling runs after it (see
    Network._execution_order for why that is exact)."""
    order = list(range(len(kinds)))
    for i in range(len(order) - 1):
        if kinds[order[i]] == "relu" and kinds[order[i + 1]] == "maxpool":
            order[i], order[i + 1] = order[i + 1], order[i]
    return order


def resolve_init(init, specs):
    """'auto' -> He for networks with ReLU, Glorot for tanh/sigmoid networks."""
    if init != "auto":
        return init
    return "he" if any(s.kind == "relu" for s in specs) else "glorot"


class Network:
    """An ordered list of named layers.

    forward(x: (N, *input_shape)) -> logits; backward(dout) runs the layers in reverse.
    params / grads: dicts "layer.key" -> the layers' own arrays (not copies).

    Two things are done for speed, neither changes a result:
    - A ReLU directly followed by a max pooling runs after it instead (_execution_order):
      the numbers are the same, and the ReLU touches a quarter as many of them.
    - Inference (train=False) runs the batch in even chunks of at most EVAL_CHUNK images,
      one after the other, and concatenates the outputs: every image is computed on its own
      in every layer, and a chunk's scratch arrays stay small enough for the CPU cache,
      where a whole evaluation batch of 1000 images (75 MB of conv1 columns) would not.
    """

    EVAL_CHUNK = 128  # measured: 1000-image batches ran fastest in chunks of 125-250

    def __init__(self, named_layers, input_shape=MNIST_SHAPE, spec=()):
        self.layers = list(named_layers)
        self.input_shape = tuple(input_shape)
        self.spec = tuple(spec)
        self.params = {f"{name}.{k}": v for name, layer in self.layers for k, v in layer.params.items()}
        self.grads = {f"{name}.{k}": v for name, layer in self.layers for k, v in layer.grads.items()}
        self._order = self._execution_order()

    @property
    def dtype(self):
        return next(iter(self.params.values())).dtype

    def _execution_order(self):
        """The layers in the order forward runs them: as listed, except that a ReLU directly
        before a max pooling is run after it.

        Exact in both directions. Forward: max pooling and ReLU both pick values without
        changing them, and max(relu(a), relu(b)) = relu(max(a, b)). Backward: where a
        window's maximum is positive, both orders send the delta to the same first maximum
        with a ReLU slope of 1; where it is not, both send zero to the whole window.
        """
        layers = [layer for _, layer in self.layers]
        kinds = ["relu" if type(layer) is L.ReLU else "maxpool" if type(layer) is L.MaxPool2D
                 else "" for layer in layers]
        return [layers[i] for i in execution_order(kinds)]

    def forward(self, x, train=True):
        if train or len(x) <= self.EVAL_CHUNK:
            for layer in self._order:
                x = layer.forward(x, train)
            return x
        chunks = -(-len(x) // self.EVAL_CHUNK)
        bounds = [len(x) * k // chunks for k in range(chunks + 1)]  # as even as possible
        return np.concatenate([self.forward(x[start:stop], train=False)
                               for start, stop in zip(bounds, bounds[1:])])

    def backward(self, dout, input_grad=False):
        """Backpropagate dout through every layer, filling every grads array.

        The gradient with respect to the network's input is only computed when asked for
        (input_grad=True, e.g. by gradient checks); training never needs it.
        """
        last = len(self._order) - 1
        for index, layer in enumerate(reversed(self._order)):
            dout = layer.backward(dout, input_grad=input_grad or index != last)
        return dout

    def load_params(self, arrays):
        """Copy arrays (name -> ndarray) into the parameters, checking names and shapes."""
        missing = sorted(set(self.params) - set(arrays))
        extra = sorted(set(arrays) - set(self.params))
        if missing or extra:
            raise ValueError(f"parameter names differ: missing {missing}, unexpected {extra}")
        for name, value in arrays.items():
            if value.shape != self.params[name].shape:
                raise ValueError(f"{name} has shape {value.shape}, the network expects "
                                 f"{self.params[name].shape}")
            self.params[name][...] = value

    def summary(self):
        """[LayerSummary] for each layer: output shape, parameters, multiply-adds per example."""
        rows, shape = [], self.input_shape
        for name, layer in self.layers:
            out = layer.output_shape(shape)
            rows.append(LayerSummary(name, repr(layer), out,
                                     sum(p.size for p in layer.params.values()),
                                     layer.multiply_adds(shape)))
            shape = out
        return rows

    @property
    def n_params(self):
        return sum(p.size for p in self.params.values())


def build_network(text_or_lines, input_shape=MNIST_SHAPE, *, rng=None, dtype=np.float32,
                  init="auto"):
    """A layer list -> Network, weights drawn from rng (zeros without one, to be loaded)."""
    specs = parse_layers(text_or_lines)
    scheme = resolve_init(init, specs)
    counts, named, shape = {}, [], tuple(input_shape)
    for spec in specs:
        layer, shape = _make_layer(spec, shape, rng, dtype, scheme)
        counts[spec.kind] = counts.get(spec.kind, 0) + 1
        named.append((f"{spec.kind}{counts[spec.kind]}", layer))
    return Network(named, input_shape, spec=[s.line for s in specs])


def check_memory(specs, input_shape=MNIST_SHAPE, *, batch_size, eval_batch_size,
                 dtype="float32", available=None):
    """Refuse, with numbers, a network whose training would not fit in memory.

    specs: the LayerSpecs, already checked by infer_layers. batch_size and eval_batch_size:
    images per step and per evaluation pass. available: bytes (default
    footprint.available_memory(); None there: no check). Returns the footprint.Footprint when
    it fits; else raises LayerSpecError naming the layer with the largest share, the bytes
    needed and the bytes available.
    """
    available = footprint.available_memory() if available is None else available
    itemsize = np.dtype(dtype).itemsize
    # The estimate follows the layers in the order they run, with the shapes they run on.
    order = execution_order([spec.kind for spec in specs])
    running = infer_layers([specs[i] for i in order], input_shape)
    estimate = footprint.estimate(input_shape, running, batch_size=batch_size,
                                  eval_batch_size=min(eval_batch_size, Network.EVAL_CHUNK),
                                  itemsize=itemsize)
    if available is None or estimate.total <= available:
        return estimate
    i, size = estimate.largest, footprint.format_bytes
    params, kept = estimate.layer_params[i], estimate.layer_kept[i]
    parameter_bytes = footprint.PARAMETER_COPIES * params * itemsize
    advice = ("make it smaller" if parameter_bytes * 2 >= estimate.layer_bytes[i]
              else "make it smaller or lower [train] batch_size")
    spec = specs[order[i]]
    raise LayerSpecError(spec.line_no, spec.line, (
        f"too large for memory: training needs about {size(estimate.total)} at batch "
        f"{batch_size} in {np.dtype(dtype).name}, but this machine has {size(available)}; "
        f"this layer takes {size(estimate.layer_bytes[i])} ({params:,} parameters, "
        f"{kept:,} values per image kept for backward); {advice}"))


def check_layers(text_or_lines, input_shape=MNIST_SHAPE, n_classes=10, *, batch_size=None,
                 eval_batch_size=None, dtype="float32", available=None):
    """Validate a layer list without drawing weights -> [LayerSummary]; LayerSpecError if wrong.

    The last layer must produce one score per class (n_classes; None skips that check).
    With a batch_size, training at that batch size (and evaluating at eval_batch_size, the
    same by default) in `dtype` must also fit in memory (see check_memory), which is checked
    before any array is made.
    """
    specs = parse_layers(text_or_lines)
    infer_layers(specs, input_shape)  # every shape checked before any size is estimated
    if batch_size is not None:
        check_memory(specs, input_shape, batch_size=batch_size,
                     eval_batch_size=eval_batch_size or batch_size, dtype=dtype,
                     available=available)
    network = build_network(text_or_lines, input_shape, rng=None, dtype=np.float32)
    rows = network.summary()
    if n_classes is not None and rows[-1].output_shape != (n_classes,):
        line_no = len(network.spec)
        raise LayerSpecError(line_no, network.spec[-1],
                             f"the last layer must output {n_classes} class scores, but outputs "
                             f"{rows[-1].output_shape}; end the list with 'dense {n_classes}'")
    return rows
