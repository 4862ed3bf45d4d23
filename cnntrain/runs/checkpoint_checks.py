"""What a checkpoint's contents must be, checked on values already read (no file is opened
here): meta.json's fields, the epoch order, and each array against what the network needs
(Need, Layout). Each check returns what is wrong in words, or None; the reader
(cnntrain.runs.checkpoint_reader) adds the file's name and refuses it.
"""

import json
import math
from dataclasses import dataclass, field

import numpy as np

from cnntrain.runs.metrics import METRIC_KEYS


def is_whole(value, low=0):
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _number(value):
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 0)


def shown(value):
    """A value as JSON for a message, cut to 40 characters."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _shape_text(shape):
    """(4, 1, 5, 5) as numpy shows it; a size given as a range shows as 'first..last'."""
    sizes = [f"{n.start}..{n.stop - 1}" if isinstance(n, range) else str(n) for n in shape]
    return f"({sizes[0]},)" if len(sizes) == 1 else f"({', '.join(sizes)})"


@dataclass(frozen=True)
class Need:
    """What a network needs of one member: its dtype and shape (a size given as a range may
    be any size in it), and whether the member may be absent."""

    shape: tuple
    dtype: np.dtype
    optional: bool = False
    # The array the member's data is to be read into (of this shape and dtype), or None.
    into: np.ndarray = field(default=None, compare=False, repr=False)

    def fits(self, dtype, shape):
        """Whether an array of `dtype` and `shape` is what is needed. A byte order other than
        the machine's is the same numbers (the reader converts it); another dtype is refused,
        not converted: cnntrain writes every array in its run's precision, so another one
        means the file was edited or made elsewhere."""
        return (dtype.newbyteorder("=") == np.dtype(self.dtype)
                and len(shape) == len(self.shape)
                and all(n in need if isinstance(need, range) else n == need
                        for n, need in zip(shape, self.shape)))

    def __str__(self):
        return f"{np.dtype(self.dtype)} of shape {_shape_text(self.shape)}"


@dataclass(frozen=True)
class Layout:
    """What a network needs of a checkpoint: {member name, as Checkpoint.named_arrays and
    'epoch_order' name them: Need}, and who needs them, as messages name it ("its config")."""

    needs: dict
    needed_by: str


def layout_problem(members, layout):
    """What is wrong with the members {name: (dtype, shape)} (meta.json aside) for `layout`,
    or None: a member it does not need, one of another dtype or shape, one it needs missing."""
    by = layout.needed_by
    for name, (dtype, shape) in members.items():
        need = layout.needs.get(name)
        if need is None:
            return (f"member {name} ({dtype} of shape {_shape_text(shape)}) is not part of what "
                    f"{by} describes")
        if not need.fits(dtype, shape):
            return (f"member {name} holds {dtype} of shape {_shape_text(shape)}, but {by} needs "
                    f"{need}")
    for name, need in layout.needs.items():
        if name not in members and not need.optional:
            return f"it has no member {name}, which {by} needs ({need})"
    return None


def fields_problem(meta, has_order):
    """What is wrong with a checkpoint's meta.json, or None (has_order: whether the file has
    an epoch_order member; order_problem checks its data).

    Every field is checked for its type and range, and the fields against each other, so a
    hand-edited or damaged file is refused in one line instead of failing somewhere later."""
    if not isinstance(meta["config"], str):
        return f"meta.json 'config' is {shown(meta['config'])}, not the config text"
    for key in ("epoch", "step", "step_in_epoch", "correct", "seen"):
        if key in meta and not is_whole(meta[key]):
            return f"meta.json '{key}' is {shown(meta[key])}, not a whole number >= 0"
    for key in ("loss_sum", "seconds"):
        if key in meta and not _number(meta[key]):
            return f"meta.json '{key}' is {shown(meta[key])}, not a finite number >= 0"
    if "run_id" in meta and not isinstance(meta["run_id"], str):
        return f"meta.json 'run_id' is {shown(meta['run_id'])}, not a string"
    if "rng" in meta:
        problem = generator_problem(meta["rng"], "'rng'")
        if problem:
            return problem
    layer_rngs = meta.get("layer_rngs", {})
    if not isinstance(layer_rngs, dict) or not all(isinstance(state, dict)
                                                   for state in layer_rngs.values()):
        return (f"meta.json 'layer_rngs' is {shown(layer_rngs)}, not one generator state per "
                "layer name")
    for name, state in layer_rngs.items():
        problem = generator_problem(state, f"'layer_rngs' {shown(name)}")
        if problem:
            return problem
    step_in_epoch = meta.get("step_in_epoch", 0)
    if step_in_epoch > meta["step"]:
        return (f"meta.json 'step_in_epoch' ({step_in_epoch}) is more than 'step' "
                f"({meta['step']})")
    if meta.get("correct", 0) > meta.get("seen", 0):
        return f"meta.json 'correct' ({meta['correct']}) is more than 'seen' ({meta['seen']})"
    if "history" in meta:
        problem = _history_problem(meta["history"], meta["epoch"])
        if problem:
            return problem
    if step_in_epoch and not has_order:
        return (f"it stops mid-epoch (step_in_epoch = {step_in_epoch}) but has no "
                "epoch_order to continue that epoch with")
    return None


def order_problem(order):
    """What is wrong with an epoch_order array (None: the file has none), or None."""
    if order is None:
        return None
    if order.ndim != 1 or order.dtype.kind not in "iu":
        return f"epoch_order is {order.dtype} of shape {order.shape}, not a list of indices"
    if not np.array_equal(np.sort(order), np.arange(len(order))):
        return (f"epoch_order is not a permutation of 0..{len(order) - 1} (an index is "
                "repeated, missing or out of range)")
    return None


# numpy's PCG64 state, as bit_generator.state gives it: what every cnntrain generator is.
_GENERATOR_FIELDS = {"state": 1 << 128, "inc": 1 << 128}


def generator_problem(state, where):
    """What is wrong with a saved PCG64 generator state (meta.json `where`), or None: its
    structure and every field's type and range, so numpy never sees a hand-edited value."""
    if not isinstance(state, dict) or set(state) != {"bit_generator", "state", "has_uint32",
                                                     "uinteger"}:
        return (f"meta.json {where} is {shown(state)}, not a generator state (bit_generator, "
                "state, has_uint32, uinteger)")
    if state["bit_generator"] != "PCG64":
        return (f"meta.json {where} field 'bit_generator' is {shown(state['bit_generator'])}, "
                "not \"PCG64\"")
    inner = state["state"]
    if not isinstance(inner, dict) or set(inner) != set(_GENERATOR_FIELDS):
        return f"meta.json {where} field 'state' is {shown(inner)}, not {{\"state\", \"inc\"}}"
    for key, limit in _GENERATOR_FIELDS.items():
        if not is_whole(inner[key]) or inner[key] >= limit:
            return (f"meta.json {where} field 'state.{key}' is {shown(inner[key])}, not a whole "
                    f"number from 0 to 2**128 - 1")
    if state["has_uint32"] not in (0, 1) or isinstance(state["has_uint32"], (bool, float)):
        return f"meta.json {where} field 'has_uint32' is {shown(state['has_uint32'])}, not 0 or 1"
    if not is_whole(state["uinteger"]) or state["uinteger"] >= 1 << 32:
        return (f"meta.json {where} field 'uinteger' is {shown(state['uinteger'])}, not a whole "
                "number from 0 to 2**32 - 1")
    return None


def _history_problem(history, epochs):
    if not isinstance(history, list) or len(history) != epochs:
        return (f"meta.json 'history' should list one entry per completed epoch ({epochs}), "
                f"not {shown(history)}")
    for i, entry in enumerate(history):
        if not isinstance(entry, dict) or set(METRIC_KEYS) - set(entry):
            missing = sorted(set(METRIC_KEYS) - set(entry)) if isinstance(entry, dict) else []
            return (f"meta.json 'history' entry {i + 1} is not a metrics record"
                    + (f" (it lacks {', '.join(missing)})" if missing else ""))
        if entry["epoch"] != i + 1 or not is_whole(entry["epoch"], 1):
            return f"meta.json 'history' entry {i + 1} says epoch {shown(entry['epoch'])}"
        for key in METRIC_KEYS:
            value = entry[key]
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, (int, float))):
                return (f"meta.json 'history' entry {i + 1} has {key} = {shown(value)}, "
                        "not a number")
    return None
