"""The network: an ordered list of named layers, and the generic builder that reads it from text.

A layer list has one layer per line (or ' / ' between layers on one line). Its grammar is the
registry of layer classes in cnntrain.layers: each class declares its word, its numbers and
options (see grammar_table()), and builds itself from its parsed line and input shape.

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


class LayerLineError(ConfigError):
    """A line of a layer list is wrong. line_no is 1-based within the list."""

    def __init__(self, line_no, line, reason):
        self.line_no, self.line, self.reason = line_no, line, reason
        super().__init__(f"layer line {line_no} '{line}': {reason}")


@dataclass(frozen=True)
class LayerLine:
    """One parsed line: the layer kind and every field's value by name (defaults filled in)."""

    line_no: int
    line: str
    kind: str
    values: dict


@dataclass(frozen=True)
class LayerSummary:
    """One row of a network summary (shapes are per example, without the batch axis)."""

    name: str
    layer: str
    output_shape: tuple
    params: int
    multiply_adds: int


def grammar_table():
    """The layer grammar, one line per registered kind: usage, then what it is (README's table)."""
    rows = [(cls.usage(), cls.about) for cls in L.REGISTRY.values()]
    width = max(len(usage) for usage, _ in rows) + 2
    return "\n".join(f"{usage:<{width}}{about}".rstrip() for usage, about in rows)


def split_layer_lines(text_or_lines):
    """A layer list as text (newlines or ' / ' between layers) or lines -> stripped lines."""
    if isinstance(text_or_lines, str):
        text_or_lines = text_or_lines.splitlines()
    lines = []
    for chunk in text_or_lines:
        lines.extend(part.strip() for part in chunk.split(" / ") if part.strip())
    return lines


def parse_layer_line(line_no, line):
    """'conv 6 5 pad=2' -> LayerLine(kind='conv', values={filters: 6, kernel: (5, 5), stride: 1, pad: 2})."""
    def fail(reason):
        raise LayerLineError(line_no, line, reason)

    words = line.split()
    kind = words[0].lower()
    if kind not in L.REGISTRY:
        close = difflib.get_close_matches(kind, L.REGISTRY, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        fail(f"unknown layer '{kind}'{hint}; known layers: {', '.join(L.REGISTRY)}")
    cls = L.REGISTRY[kind]
    positional = [w for w in words[1:] if "=" not in w]
    if len(positional) != len(cls.args):
        fail(f"expected {len(cls.args)} number(s), got {len(positional)}; usage: {cls.usage()}")
    values = {option.name: option.default for option in cls.options}
    try:
        for field, text in zip(cls.args, positional):
            values[field.name] = field.parse(text)
        options = {option.name: option for option in cls.options}
        given = set()
        for word in (w for w in words[1:] if "=" in w):
            key, _, text = word.partition("=")
            if key not in options:
                fail(f"unknown option '{key}' for {kind} (allowed: {', '.join(options) or 'none'}); "
                     f"usage: {cls.usage()}")
            if key in given:
                fail(f"option '{key}' is given twice; keep one")
            given.add(key)
            values[key] = options[key].parse(text)
    except ValueError as exc:
        fail(str(exc))
    return LayerLine(line_no, line, kind, values)


def parse_layers(text_or_lines):
    """A layer list -> [LayerLine]; LayerLineError on the first bad line."""
    lines = split_layer_lines(text_or_lines)
    if not lines:
        raise LayerLineError(0, "", "the layer list is empty")
    return [parse_layer_line(i, line) for i, line in enumerate(lines, 1)]


def _make_layer(line, input_shape, context):
    """One LayerLine on a per-example input shape -> (layer, output shape), or LayerLineError."""
    def fail(reason):
        raise LayerLineError(line.line_no, line.line, reason)

    cls = L.REGISTRY[line.kind]
    if cls.input_rank is not None and len(input_shape) != cls.input_rank:
        wanted = "a (C, H, W)" if cls.input_rank == 3 else "a flat" if cls.input_rank == 1 \
            else f"a rank-{cls.input_rank}"
        hint = f"; {cls.input_hint}" if cls.input_hint else ""
        fail(f"{line.kind} needs {wanted} input but gets {input_shape}{hint}")
    try:
        layer = cls.build(line, input_shape, context)
    except ValueError as exc:
        fail(str(exc))
    output_shape = layer.output_shape(input_shape)
    if min(output_shape) < 1:
        window = getattr(layer, "kernel_size", None)
        what = f"the {window} window" if window is not None else "it"
        fail(f"{what} does not fit the input {input_shape} (output would be {output_shape})")
    return layer, output_shape


def resolve_init(init, lines):
    """'auto' -> He for networks with a layer that asks for it (ReLU), else Glorot (tanh/sigmoid)."""
    if init != "auto":
        return init
    return "he" if any(L.REGISTRY[line.kind].init_hint == "he" for line in lines) else "glorot"


def layer_generator(seeds, index):
    """The generator of the layer at `index` (0-based) from the run's layer seeds (a
    numpy.random.SeedSequence): its own child stream, independent of every other layer's."""
    return np.random.default_rng(np.random.SeedSequence(seeds.entropy,
                                                        spawn_key=seeds.spawn_key + (index,)))


class Network:
    """An ordered list of named layers.

    forward(x: (N, *input_shape)) -> logits; backward(dout) runs the layers in reverse.
    The layers' arrays, by "layer.key" name (the layers' own arrays, not copies):
    params / grads (trained), buffers (checkpointed, never trained); random_layers: layer
    name -> each layer that needs randomness (its generator is `layer.rng`).

    Two things are done for speed, neither changes a result:
    - With the fast kernels, a ReLU directly followed by a max pooling runs after it
      instead (_execution_order): the numbers are the same, and the ReLU touches a quarter
      as many of them.
    - Inference (train=False) runs the batch in even chunks of at most EVAL_CHUNK images,
      one after the other, and concatenates the outputs: every image is computed on its own
      in every layer, and a chunk's scratch arrays stay small enough for the CPU cache,
      where a whole evaluation batch of 1000 images (75 MB of conv1 columns) would not.
    """

    EVAL_CHUNK = 128  # scripts/bench_kernels.py times the alternatives

    def __init__(self, named_layers, input_shape=MNIST_SHAPE, lines=()):
        self.layers = list(named_layers)
        self.input_shape = tuple(input_shape)
        self.lines = tuple(lines)
        self.params = self._named("params")
        self.grads = self._named("grads")
        self.buffers = self._named("buffers")
        self.decay_groups = {f"{name}.{k}": group for name, layer in self.layers
                             for k, group in layer.decay.items()}
        self.random_layers = {name: layer for name, layer in self.layers if layer.needs_rng}
        self._order = self._execution_order()

    def _named(self, kind):
        return {f"{name}.{k}": v for name, layer in self.layers
                for k, v in getattr(layer, kind).items()}

    @property
    def dtype(self):
        return next(iter(self.params.values())).dtype

    def _execution_order(self):
        """The layers in the order forward runs them: as listed, except that with the fast
        kernels a ReLU directly before a max pooling is run after it.

        Exact in both directions. Forward: max pooling and ReLU both pick values without
        changing them, and max(relu(a), relu(b)) = relu(max(a, b)). Backward: where a
        window's maximum is positive, both orders send the delta to the same first maximum
        with a ReLU slope of 1; where it is not, both send zero to the whole window.
        """
        layers = [layer for _, layer in self.layers]
        for i in range(len(layers) - 1):
            pair = layers[i:i + 2]
            if ([type(layer) for layer in pair] == [L.ReLU, L.MaxPool2D]
                    and all(layer.kernels is L.KERNELS["fast"] for layer in pair)):
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

    def decayed(self, decay_biases=True):
        """Names of the parameters weight decay applies to, as their layers declare them."""
        groups = ("weight", "bias") if decay_biases else ("weight",)
        return [name for name, group in self.decay_groups.items() if group in groups]

    @staticmethod
    def _load(target, arrays, what):
        missing = sorted(set(target) - set(arrays))
        extra = sorted(set(arrays) - set(target))
        if missing or extra:
            raise ValueError(f"{what} names differ: missing {missing}, unexpected {extra}")
        for name, value in arrays.items():
            if value.shape != target[name].shape:
                raise ValueError(f"{name} has shape {value.shape}, the network expects "
                                 f"{target[name].shape}")
            target[name][...] = value

    def load_params(self, arrays):
        """Copy arrays (name -> ndarray) into the parameters, checking names and shapes."""
        self._load(self.params, arrays, "parameter")

    def load_buffers(self, arrays):
        """Copy arrays (name -> ndarray) into the buffers, checking names and shapes."""
        self._load(self.buffers, arrays, "buffer")

    def random_state(self):
        """Layer name -> the bit generator state of each layer's generator (JSON-ready)."""
        return {name: layer._generator().bit_generator.state
                for name, layer in self.random_layers.items()}

    def load_random_state(self, states):
        """Restore what random_state returned, checking the layer names."""
        if set(states) != set(self.random_layers):
            raise ValueError(f"random generator names differ: saved {sorted(states)}, the "
                             f"network has {sorted(self.random_layers)}")
        for name, state in states.items():
            self.random_layers[name]._generator().bit_generator.state = state

    def summary(self):
        """[LayerSummary] for each layer: output shape, parameters, multiply-adds per example."""
        rows, shape = [], self.input_shape
        for name, layer in self.layers:
            out = layer.output_shape(shape)
            rows.append(LayerSummary(name, repr(layer), out, layer.n_params,
                                     layer.multiply_adds(shape)))
            shape = out
        return rows

    @property
    def n_params(self):
        return sum(p.size for p in self.params.values())


def build_network(text_or_lines, input_shape=MNIST_SHAPE, *, rng=None, dtype=np.float32,
                  init="auto", kernels="fast", seeds=None):
    """A layer list -> Network.

    rng draws the weights (zeros without one, to be loaded); kernels picks the maths
    ('fast' or 'reference'); seeds (a numpy.random.SeedSequence, e.g. run.layer_seeds) gives
    each layer that needs randomness its own generator (none without it: such a layer can
    then only run inference).
    """
    lines = parse_layers(text_or_lines)
    context = L.BuildContext(rng=rng, dtype=dtype, init=resolve_init(init, lines),
                             kernels=L.kernels_module(kernels))
    counts, named, shape = {}, [], tuple(input_shape)
    for index, line in enumerate(lines):
        layer, shape = _make_layer(line, shape, context)
        if layer.needs_rng and seeds is not None:
            layer.rng = layer_generator(seeds, index)
        counts[line.kind] = counts.get(line.kind, 0) + 1
        named.append((f"{line.kind}{counts[line.kind]}", layer))
    return Network(named, input_shape, lines=[line.line for line in lines])


def check_layers(text_or_lines, input_shape=MNIST_SHAPE, n_classes=10):
    """Validate a layer list without drawing weights -> [LayerSummary]; LayerLineError if wrong.

    The last layer must produce one score per class (n_classes; None skips that check).
    """
    network = build_network(text_or_lines, input_shape, rng=None, dtype=np.float32)
    rows = network.summary()
    if n_classes is not None and rows[-1].output_shape != (n_classes,):
        raise LayerLineError(len(network.lines), network.lines[-1],
                             f"the last layer must output {n_classes} class scores, but outputs "
                             f"{rows[-1].output_shape}; end the list with 'dense {n_classes}'")
    return rows
