"""The backprop explorer's API for `cnntrain serve` (issue #30): one image's backward pass,
layer by layer, and one SGD step on a copy of the weights held for the page's session.

  POST /api/explain  an image as for /api/predict, plus "target": k (the label the loss is
                     taken against); optional: "member" (which of the served networks; 0),
                     "session" (an id from /api/step: explain that session's weights) and
                     "weight_grads" (false leaves the parameter gradients out; true)
                     -> {"probabilities", "loss", "prediction", "target", "member", "field",
                     "input_delta", "layers": [{"name", "kind", "output", "delta",
                     "weight_grad"?, "bias_grad"?, "routes"?}], "eval_mode", "session",
                     "digits"}
  POST /api/step     the same plus "lr" (0 < lr <= MAX_LR): one plain SGD step on this image's
                     cross-entropy, applied to the session's copy of the weights (made on first
                     use, under a new random id) -> {"session", "before", "after"}
  POST /api/reset    {"session": id} drops the session's copies -> {"session"}

"session" in every answer is {"id", "steps", "dropped"}: "dropped" is true when the request
named a session that is no longer held (the least recently used beyond MAX_SESSIONS, or idle
for IDLE_SECONDS): explain then shows the checkpoint's weights and a step starts a fresh copy.
The checkpoint on disk and the served networks are never changed.

Numbers are written with SIGNIFICANT_DIGITS significant digits (more for float64 networks),
so that an answer stays under MAX_EXPLAIN_BYTES for every shipped config; explain_bound gives
any network's worst case.
"""

import json
import math
import re
import secrets
import threading
import time
from collections import OrderedDict

import numpy as np

from cnntrain.apps.serveapi import RequestError, grey_from_request
from cnntrain.errors import CnnTrainError
from cnntrain.nn import functional as fn
from cnntrain.nn import layers as L
from cnntrain.nn.explain import explain
from cnntrain.nn.model import build_network

ROUTES = ("/api/explain", "/api/step", "/api/reset")
MAX_SESSIONS = 16        # weight copies held at once, over all clients
IDLE_SECONDS = 600.0     # a copy unused this long is dropped
# Explain and step requests computed at once; the others wait their turn. It bounds the
# copies alive to MAX_SESSIONS + MAX_BUSY (a request may still use a copy just dropped to make
# room, or one it made) and the answers being built to MAX_BUSY.
MAX_BUSY = 2
MAX_LR = 10.0
# Significant digits of every number in an answer, by the network's dtype: float32 computes to
# about 7; 5 keep the rounding (5e-5 relative) below the 1e-4 float32 tests allow and make the
# answer a third shorter than 9 would. float64 networks are for checking the maths.
SIGNIFICANT_DIGITS = {"float32": 5, "float64": 12}
# The largest /api/explain answer for any shipped config (configs/*.ini): explain_bound's
# worst case for bn-aug-k7.ini, whose dense1 weight gradient alone is 4704 x 384 numbers.
# /work/notes/xapi.md has the measured sizes.
MAX_EXPLAIN_BYTES = 26_000_000
EVAL_MODE = ("Evaluation mode: batch norm uses its running statistics and dropout is the "
             "identity; the loss is the plain cross-entropy of this one image against the target.")
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
IMAGE_KEYS = ("width", "height", "pixels", "png")


def copy_network(network):
    """A network of its own with the same layers, kernels, weights and running statistics."""
    kernels = next(name for name, module in L.KERNELS.items()
                   if module is network.layers[0][1].kernels)
    twin = build_network(network.lines, network.input_shape, dtype=network.dtype,
                         kernels=kernels)
    twin.load_params(network.params)
    twin.load_buffers(network.buffers)
    return twin


class _Copy:
    """One session's weights for one member: a network of its own and the steps taken on it."""

    def __init__(self, session_id, member, network, now):
        self.id, self.member, self.network = session_id, member, network
        self.steps = 0
        self.last_used = now
        self.lock = threading.Lock()   # the layers reuse scratch arrays: one thread at a time


class SessionStore:
    """At most max_sessions weight copies, keyed by (session id, member): a session holds one
    copy per member it stepped. The least recently used copy is dropped first to make room,
    and any copy unused for idle_seconds (by `clock`, seconds) is dropped. Thread-safe. Ids
    are new random ones (secrets), never chosen by a client."""

    def __init__(self, max_sessions=MAX_SESSIONS, idle_seconds=IDLE_SECONDS,
                 clock=time.monotonic):
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self.max_sessions, self.idle_seconds, self.clock = max_sessions, idle_seconds, clock
        self._copies = OrderedDict()   # least recently used first
        self._lock = threading.Lock()

    def __len__(self):
        with self._lock:
            self._expire(self.clock())
            return len(self._copies)

    def keys(self):
        """(id, member) of the copies held, least recently used first."""
        with self._lock:
            self._expire(self.clock())
            return list(self._copies)

    def _expire(self, now):
        while self._copies:
            key, copy = next(iter(self._copies.items()))
            if now - copy.last_used < self.idle_seconds:
                break
            del self._copies[key]

    def get(self, session_id, member):
        """The copy held for (session_id, member), marked as just used; None if there is none
        (never made, dropped to make room, expired or reset)."""
        with self._lock:
            now = self.clock()
            self._expire(now)
            copy = self._copies.get((session_id, member))
            if copy is not None:
                copy.last_used = now
                self._copies.move_to_end((session_id, member))
            return copy

    def holds(self, session_id):
        """True while some copy of session_id is held (for any member)."""
        with self._lock:
            self._expire(self.clock())
            return any(key[0] == session_id for key in self._copies)

    def add(self, member, network, session_id=None):
        """Hold `network` (a copy made for it) under session_id, or a new random id -> its
        _Copy, dropping the least recently used copies beyond max_sessions."""
        with self._lock:
            now = self.clock()
            self._expire(now)
            while len(self._copies) >= self.max_sessions:
                self._copies.popitem(last=False)
            session_id = session_id or secrets.token_urlsafe(16)
            copy = _Copy(session_id, member, network, now)
            self._copies[(session_id, member)] = copy
            return copy

    def drop(self, session_id):
        """Drop every copy of session_id -> how many there were."""
        with self._lock:
            self._expire(self.clock())
            keys = [key for key in self._copies if key[0] == session_id]
            for key in keys:
                del self._copies[key]
            return len(keys)


def session_answer(copy, dropped):
    if copy is None:
        return {"id": None, "steps": 0, "dropped": dropped}
    return {"id": copy.id, "steps": copy.steps, "dropped": dropped}


# ---- requests


def _integer(request, key, low, high, what, default=None):
    value = request.get(key, default)
    if value is None:
        raise RequestError(400, f"'{key}' is required: {what}")
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RequestError(400, f"'{key}' must be an integer from {low} to {high} ({what}), "
                                f"got {json.dumps(value)[:40]}")
    return value


def _learning_rate(request):
    value = request.get("lr")
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not 0 < value <= MAX_LR:
        raise RequestError(400, f"'lr' must be a number greater than 0 and at most {MAX_LR:g} "
                                f"(the step's learning rate), got {json.dumps(value)[:40]}")
    return float(value)


def _session_id(request):
    value = request.get("session")
    if value is None:
        return None
    if not isinstance(value, str) or not SESSION_ID.match(value):
        raise RequestError(400, "'session' must be an id a previous answer gave (letters, "
                                "digits, - and _), or null")
    return value


def _split(request, allowed):
    """The request's image keys (for grey_from_request) and the explorer's own; an unknown
    key is refused by name."""
    unknown = sorted(set(request) - set(IMAGE_KEYS) - set(allowed))
    if unknown:
        raise RequestError(400, f"unknown key '{unknown[0][:40]}'; this API takes the image "
                                f"keys and {', '.join(allowed)}")
    return {key: value for key, value in request.items() if key in IMAGE_KEYS}


def _field(image):
    """The image keys -> (28, 28) float32 field in [0, 1], as /api/predict makes it."""
    from cnntrain.data.preprocess import NoInkError, to_mnist_field

    grey = grey_from_request(image)
    try:
        return to_mnist_field(grey)
    except NoInkError as exc:
        raise RequestError(422, str(exc)) from None
    except (CnnTrainError, ValueError) as exc:
        raise RequestError(400, str(exc).splitlines()[0]) from None


class Explorer:
    """The explorer's three routes for a served model (a Predictor or a Committee: anything
    with .members, each a Predictor), with the session copies in `sessions`."""

    def __init__(self, model, sessions=None, busy=MAX_BUSY):
        # A stand-in model without networks (a test's) serves the rest; the explorer refuses.
        self.members = tuple(getattr(model, "members", ()))
        self.sessions = sessions if sessions is not None else SessionStore()
        self._busy = threading.BoundedSemaphore(busy)

    def answer(self, path, request):
        """A parsed JSON request to one of ROUTES -> the answer's bytes; RequestError (4xx)."""
        if path == "/api/reset":
            return encode(self.reset(request))
        with self._busy:
            if path == "/api/explain":
                return encode(self.explain(request))
            return encode(self.step(request))

    def _prepare(self, request, extra):
        if not self.members:
            raise RequestError(404, "this server's model has no network to explain")
        image = _split(request, ("target", "member", "session") + extra)
        member = _integer(request, "member", 0, len(self.members) - 1,
                          "the index of one of the served networks", default=0)
        target = _integer(request, "target", 0, self._classes(member) - 1,
                          "the label the loss is taken against")
        session_id = _session_id(request)
        field = _field(image)
        x = self.members[member].normalise(field[None])
        return member, target, session_id, field, x

    def _classes(self, member):
        return int(math.prod(self.members[member].network.summary()[-1].output_shape))

    def _held(self, session_id, member):
        """(the session's copy for member or None, whether the session is held at all,
        whether the request named a session that is no longer held)."""
        if session_id is None:
            return None, False, False
        copy = self.sessions.get(session_id, member)
        held = copy is not None or self.sessions.holds(session_id)
        return copy, held, not held

    def explain(self, request):
        member, target, session_id, field, x = self._prepare(request, ("weight_grads",))
        with_grads = request.get("weight_grads", True)
        if not isinstance(with_grads, bool):
            raise RequestError(400, "'weight_grads' must be true (the default) or false (leave "
                                    "out the parameter gradients, most of a large answer)")
        copy, held, dropped = self._held(session_id, member)
        # explain's arrays may be views of the layers' scratch arrays, which the next pass
        # overwrites: they are copied before the network is let go.
        if copy is not None:
            with copy.lock:
                result = _owned(explain(copy.network, x, target))
        else:
            predictor = self.members[member]
            with predictor._forward_lock:
                result = _owned(explain(predictor.network, x, target))
        if not with_grads:
            for entry in result["layers"]:
                entry.pop("weight_grad", None)
                entry.pop("bias_grad", None)
        session = session_answer(copy, dropped)
        if held and copy is None:   # a session with copies of other members only
            session["id"] = session_id
        result.update({
            "prediction": int(np.argmax(result["probabilities"])), "target": target,
            "member": member, "field": field, "eval_mode": EVAL_MODE, "session": session,
            "digits": digits_of(self.members[member].network)})
        return result

    def step(self, request):
        lr = _learning_rate(request)    # before the image is decoded
        member, target, session_id, _, x = self._prepare(request, ("lr",))
        copy, held, dropped = self._held(session_id, member)
        if copy is None:
            copy = self.sessions.add(member, copy_network(self.members[member].network),
                                     session_id if held else None)
        with copy.lock:
            before = sgd_step(copy.network, x, target, lr)
            after = fn.softmax(np.asarray(copy.network.forward(x, train=False),
                                          dtype=np.float64))[0]
            copy.steps += 1
        return {"session": session_answer(copy, dropped), "before": before, "after": after,
                "target": target, "member": member, "lr": lr}

    def reset(self, request):
        unknown = sorted(set(request) - {"session"})
        if unknown:
            raise RequestError(400, f"unknown key '{unknown[0][:40]}'; a reset takes only "
                                    "'session'")
        if "session" not in request:
            raise RequestError(400, "'session' is required: the id of the session to reset")
        session_id = _session_id(request)
        dropped = session_id is not None and self.sessions.drop(session_id) == 0
        return {"session": session_answer(None, dropped)}


def _owned(value):
    """explain's answer with every array copied."""
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, dict):
        return {key: _owned(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_owned(item) for item in value]
    return value


def sgd_step(network, x, target, lr):
    """One plain SGD step (no momentum, no weight decay) on the cross-entropy of the one input
    x (1, *input_shape) against target, with the gradients explain gives (evaluation mode:
    batch norm's running statistics are used, not updated) -> the probabilities before it."""
    result = explain(network, x, target)
    for entry, (_, layer) in zip(result["layers"], network.layers):
        grads = [entry[key] for key in ("weight_grad", "bias_grad") if key in entry]
        for param, grad in zip(layer.params.values(), grads):
            param -= np.asarray(lr * grad, dtype=param.dtype)
    return result["probabilities"]


# ---- answers


def digits_of(network):
    return SIGNIFICANT_DIGITS.get(np.dtype(network.dtype).name, 17)


def encode(value):
    """A JSON-ready answer (dicts, lists, numbers, strings, numpy arrays and scalars) -> UTF-8
    JSON bytes. Floats carry value["digits"] (else 5) significant digits; arrays become nested
    lists; non-finite numbers become null."""
    digits = value.get("digits", 5) if isinstance(value, dict) else 5
    out = []
    _write(value, out, "{:.%dg}" % digits)
    return "".join(out).encode("utf-8")


def _write(value, out, form):
    if isinstance(value, np.ndarray):
        out.append(_array_text(value, form))
    elif isinstance(value, dict):
        out.append("{")
        for index, (key, item) in enumerate(value.items()):
            out.append(("," if index else "") + json.dumps(str(key)) + ":")
            _write(item, out, form)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _write(item, out, form)
        out.append("]")
    elif isinstance(value, (float, np.floating)):
        out.append(_number_texts(np.array([value], dtype=np.float64), form)[0])
    elif isinstance(value, np.integer):
        out.append(str(int(value)))
    else:
        out.append(json.dumps(value))


def _number_texts(flat, form):
    if flat.dtype.kind in "iub":
        return [str(v) for v in flat.astype(np.int64).tolist()]
    values = flat.astype(np.float64).tolist()
    if np.isfinite(flat).all():
        return list(map(form.format, values))
    return [form.format(v) if math.isfinite(v) else "null" for v in values]


def _array_text(array, form):
    """(d1, ..., dk) array -> its nested-list JSON text, a row at a time: the strings of all
    of a 4704 x 384 gradient's numbers at once would take ten times the answer's size."""
    if array.ndim == 0:
        return _number_texts(array.reshape(1), form)[0]
    if array.ndim == 1:
        return "[" + ",".join(_number_texts(array, form)) + "]"
    return "[" + ",".join(_array_text(row, form) for row in array) + "]"


def explain_bound(network):
    """The most bytes an /api/explain answer for `network` can take: every number at its
    widest ("-1.2345e-38" at 5 digits), every bracket and comma, every key."""
    digits = digits_of(network)
    exponent = 4 if np.dtype(network.dtype).itemsize <= 4 else 5   # e-45 (float32), e-308
    widest = 1 + digits + 1 + exponent                             # sign, digits, point
    shapes = [(28, 28), (28, 28), (10,)]  # field, input_delta, probabilities
    for item, (_, layer) in zip(network.summary(), network.layers):
        shapes += [item.output_shape] * 2
        shapes += [param.shape for param in layer.params.values()]
        if hasattr(layer, "routes"):
            shapes.append(item.output_shape + (2,))
    total = 2000 + 200 * len(network.layers)  # keys, the sentence, the session, scalars
    for shape in shapes:
        numbers = math.prod(shape)
        rows = sum(math.prod(shape[:k]) for k in range(len(shape)))
        total += numbers * (widest + 1) + rows * 3
    return total
