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
from dataclasses import dataclass

import numpy as np

from cnntrain import layers as L
from cnntrain.errors import ConfigError

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


def _make_layer(spec, input_shape, rng, dtype, init):
    """One LayerSpec on a per-example input shape -> a layer, or LayerSpecError naming shapes."""
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

    output_shape = layer.output_shape(input_shape)
    if min(output_shape) < 1:
        window = getattr(layer, "kernel_size", None)
        fail(f"the {window} window does not fit the input {input_shape} "
             f"(output would be {output_shape})")
    return layer, output_shape


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
        for i in range(len(layers) - 1):
            if type(layers[i]) is L.ReLU and type(layers[i + 1]) is L.MaxPool2D:
                layers[i], layers[i + 1] = layers[i + 1], layers[i]
        return layers

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


def check_layers(text_or_lines, input_shape=MNIST_SHAPE, n_classes=10):
    """Validate a layer list without drawing weights -> [LayerSummary]; LayerSpecError if wrong.

    The last layer must produce one score per class (n_classes; None skips that check).
    """
    network = build_network(text_or_lines, input_shape, rng=None, dtype=np.float32)
    rows = network.summary()
    if n_classes is not None and rows[-1].output_shape != (n_classes,):
        line_no = len(network.spec)
        raise LayerSpecError(line_no, network.spec[-1],
                             f"the last layer must output {n_classes} class scores, but outputs "
                             f"{rows[-1].output_shape}; end the list with 'dense {n_classes}'")
    return rows
