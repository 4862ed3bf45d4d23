"""The network: an ordered list of named layers, and the generic builder that reads it from text.

A layer list has one layer per line (or ' / ' between layers on one line). Its grammar is the
registry of layer classes in cnntrain.nn.layers: each class declares its word, its numbers and
options (see grammar_table()), and builds itself from its parsed line and input shape.

Each layer's input size is inferred from the input shape, (1, 28, 28) for MNIST, and each
gets a name from its kind and a running count (conv1, relu1, ..., dense3), so parameters
are named "conv1.W", "dense3.b", and so on.
"""

import difflib
import math
from dataclasses import dataclass

import numpy as np

from cnntrain.constants import INPUT_SHAPE as MNIST_SHAPE
from cnntrain.constants import NUM_CLASSES
from cnntrain.errors import ConfigError
from cnntrain.nn import footprint
from cnntrain.nn import layers as L


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
    """The layer grammar, one line per registered kind: usage, then what it is (the table of
    docs/layers.md)."""
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
    """'conv 6 5 pad=2' -> LayerLine(kind='conv',
    values={filters: 6, kernel: (5, 5), stride: 1, pad: 2})."""
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
                allowed = ", ".join(options) or "none"
                fail(f"unknown option '{key}' for {kind} (allowed: {allowed}); "
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


def plan_layer(line, input_shape):
    """One LayerLine on a per-example input shape -> (output shape, parameter count), without
    building the layer (nothing is allocated, so any size can be checked); LayerLineError
    naming the shapes when the layer does not fit its input."""
    def fail(reason):
        raise LayerLineError(line.line_no, line.line, reason)

    cls = L.REGISTRY[line.kind]
    if cls.input_rank is not None and len(input_shape) != cls.input_rank:
        wanted = "a (C, H, W)" if cls.input_rank == 3 else "a flat" if cls.input_rank == 1 \
            else f"a rank-{cls.input_rank}"
        hint = f"; {cls.input_hint}" if cls.input_hint else ""
        fail(f"{line.kind} needs {wanted} input but gets {input_shape}{hint}")
    try:
        output_shape, params = cls.plan(line, input_shape)
    except ValueError as exc:
        fail(str(exc))
    if min(output_shape) < 1:
        window = line.values.get("kernel")
        what = f"the {window} window" if window is not None else "it"
        fail(f"{what} does not fit the input {input_shape} (output would be {output_shape})")
    return output_shape, params


def plan_layers(lines, input_shape=MNIST_SHAPE):
    """[(output shape, parameter count)] of each LayerLine in turn; see plan_layer."""
    planned, shape = [], tuple(input_shape)
    for line in lines:
        shape, params = plan_layer(line, shape)
        planned.append((shape, params))
    return planned


def _make_layer(line, input_shape, context):
    """One LayerLine on a per-example input shape -> (layer, output shape), or LayerLineError."""
    output_shape, _ = plan_layer(line, input_shape)
    try:
        layer = L.REGISTRY[line.kind].build(line, input_shape, context)
    except ValueError as exc:
        raise LayerLineError(line.line_no, line.line, str(exc)) from None
    return layer, output_shape


def execution_order(kinds):
    """Layer kinds ('relu', 'maxpool', ...) as they run on the fast kernels (None for a layer
    on the reference kernels) -> the indices in the order forward runs them: as listed, except
    that a ReLU directly before a max pooling runs after it (see Network._execution_order for
    why that is exact)."""
    order = list(range(len(kinds)))
    for i in range(len(order) - 1):
        if kinds[order[i]] == "relu" and kinds[order[i + 1]] == "maxpool":
            order[i], order[i + 1] = order[i + 1], order[i]
    return order


def execution_order_note(kinds, rows, kernels):
    """What `cnntrain info` says when forward runs the layers in another order than listed:
    kinds (one per layer, as listed), rows (their LayerSummary) and kernels ('fast' or
    'reference') -> (the layer names in the order they run, why) or None when the order is
    the listed one."""
    order = execution_order(kinds) if kernels == "fast" else list(range(len(kinds)))
    if order == sorted(order):
        return None
    # A swapped ReLU runs on the pooling's output instead of its input.
    factors = sorted({math.prod(rows[i].output_shape) / math.prod(rows[i + 1].output_shape)
                      for i in range(len(kinds) - 1)
                      if order[i] == i + 1 and order[i + 1] == i})
    cheaper = " or ".join(f"{factor:.3g}x" for factor in factors)
    why = (f"a relu directly before a maxpool runs after it on the fast kernels: "
           f"max(relu(x)) == relu(max(x)), and pooling first makes the ReLU {cheaper} cheaper")
    return [rows[i].name for i in order], why


def resolve_init(init, lines):
    """'auto' -> He for networks with a layer that asks for it (ReLU), else Glorot
    (tanh/sigmoid)."""
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

    EVAL_CHUNK = 128  # benchmarks/bench_kernels.py times the alternatives

    def __init__(self, named_layers, input_shape=MNIST_SHAPE, lines=()):
        self.layers = list(named_layers)
        self.input_shape = tuple(input_shape)
        self.lines = tuple(lines)
        self.params = self._named(lambda layer: layer.params)
        self.grads = self._named(lambda layer: layer.grads)
        self.buffers = self._named(lambda layer: layer.buffers)
        self.decay_groups = {f"{name}.{k}": group for name, layer in self.layers
                             for k, group in layer.decay.items()}
        self.random_layers = {name: layer for name, layer in self.layers if layer.needs_rng}
        self._order = self._execution_order()

    def _named(self, arrays_of):
        return {f"{name}.{k}": v for name, layer in self.layers
                for k, v in arrays_of(layer).items()}

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
        kinds = [layer.kind if layer.kernels is L.KERNELS["fast"] else None for layer in layers]
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
    ('fast' or 'reference'); seeds (a numpy.random.SeedSequence, e.g. runs.build.layer_seeds) gives
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


def check_memory(lines, input_shape=MNIST_SHAPE, *, batch_size, eval_batch_size,
                 dtype="float32", available=None):
    """Refuse, with numbers, a network whose training would not fit in memory.

    lines: the LayerLines, already checked by plan_layers. batch_size and eval_batch_size:
    images per step and per evaluation pass. available: bytes (default
    footprint.available_memory(); None there: no check). Returns the footprint.Footprint when
    it fits; else raises LayerLineError naming the layer with the largest share, the bytes
    needed and the bytes available.
    """
    available = footprint.available_memory() if available is None else available
    itemsize = np.dtype(dtype).itemsize
    # The estimate follows the layers in the order they run, with the shapes they run on.
    order = execution_order([line.kind for line in lines])
    running = plan_layers([lines[i] for i in order], input_shape)
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
    line = lines[order[i]]
    raise LayerLineError(line.line_no, line.line, (
        f"too large for memory: training needs about {size(estimate.total)} at batch "
        f"{batch_size} in {np.dtype(dtype).name}, but this machine has {size(available)}; "
        f"this layer takes {size(estimate.layer_bytes[i])} ({params:,} parameters, "
        f"{kept:,} values per image kept for backward); {advice}"))


def check_layers(text_or_lines, input_shape=MNIST_SHAPE, n_classes=NUM_CLASSES, *, batch_size=None,
                 eval_batch_size=None, dtype="float32", available=None):
    """Validate a layer list without drawing weights -> [LayerSummary]; LayerLineError if wrong.

    The last layer must produce one score per class (n_classes; None skips that check).
    With a batch_size, training at that batch size (and evaluating at eval_batch_size, the
    same by default) in `dtype` must also fit in memory (see check_memory), which is checked
    before any array is made.
    """
    lines = parse_layers(text_or_lines)
    plan_layers(lines, input_shape)  # every shape checked before any size is estimated
    if batch_size is not None:
        check_memory(lines, input_shape, batch_size=batch_size,
                     eval_batch_size=eval_batch_size or batch_size, dtype=dtype,
                     available=available)
    network = build_network(text_or_lines, input_shape, rng=None, dtype=np.float32)
    rows = network.summary()
    if n_classes is not None and rows[-1].output_shape != (n_classes,):
        raise LayerLineError(len(network.lines), network.lines[-1],
                             f"the last layer must output {n_classes} class scores, but outputs "
                             f"{rows[-1].output_shape}; end the list with 'dense {n_classes}'")
    return rows
