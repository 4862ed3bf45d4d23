"""The JSON API's bodies for `cnntrain serve`: a request decoded and checked into grey levels,
and the prediction answer.

POST /api/predict takes {"width": W, "height": H, "pixels": [W*H grey levels 0..255,
row-major]} or {"png": "<base64 PNG, or a data: URL>"} (needs Pillow). Sizes are checked before
anything is decoded (a PNG's from its IHDR header, before Pillow sees it). Every refusal is a
RequestError: an HTTP status and one line for the client. Nothing here knows about sockets or
HTTP: cnntrain/apps/servehttp.py reads the body and sends the answer.
"""

import base64
import binascii
import io
import json
import struct
import warnings
from http import HTTPStatus

import numpy as np

from cnntrain.apps.committee import Committee
from cnntrain.errors import CnnTrainError, MissingExtra, one_line_reason, require_extra

MAX_SIDE = 2048                    # pixels per side of an image to predict
MAX_PIXELS = 2048 * 2048           # pixels per image (checked before a PNG is decoded)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class RequestError(Exception):
    """A request the server refuses: an HTTP status and a one-line message for the client."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = HTTPStatus(status)
        self.message = message


def _reject_constant(name):
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json_body(body):
    """Request bytes -> a JSON object (dict); RequestError 400 for anything else."""
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise RequestError(400, "the body is not UTF-8 text; send JSON") from None
    except RecursionError:
        raise RequestError(400, "the JSON is nested too deeply") from None
    except ValueError as exc:
        reason = str(exc).splitlines()[0][:120]
        raise RequestError(400, f"the body is not valid JSON ({reason})") from None
    if not isinstance(value, dict):
        raise RequestError(400, "expected a JSON object: {\"width\", \"height\", \"pixels\"} "
                                "or {\"png\"}")
    return value


def _check_size(width, height):
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise RequestError(413, f"the image is {width}x{height} pixels; the limit is "
                                f"{MAX_SIDE} per side and {MAX_PIXELS:,} in all")


def grey_from_array(request):
    """{"width", "height", "pixels"} -> (H, W) float32 grey levels in [0, 1]."""
    unknown = sorted(set(request) - {"width", "height", "pixels"})
    if unknown:
        raise RequestError(400, f"unknown key '{unknown[0][:40]}'; a grey-level request has "
                                "exactly width, height and pixels")
    size = {}
    for key in ("width", "height"):
        value = request.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RequestError(400, f"'{key}' must be a positive integer (pixels)")
        size[key] = value
    width, height = size["width"], size["height"]
    _check_size(width, height)
    pixels = request.get("pixels")
    if not isinstance(pixels, list):
        raise RequestError(400, "'pixels' must be a flat list of width*height grey levels "
                                "0..255, row by row")
    if len(pixels) != width * height:
        raise RequestError(400, f"'pixels' holds {len(pixels)} values; width*height is "
                                f"{width * height}")
    try:
        grey = np.array(pixels)
    except (ValueError, OverflowError):
        grey = None
    if grey is None or grey.ndim != 1 or grey.dtype.kind not in "iuf":
        raise RequestError(400, "'pixels' must hold only numbers (grey levels 0..255)")
    grey = grey.astype(np.float64)
    if not np.isfinite(grey).all() or grey.min() < 0 or grey.max() > 255:
        raise RequestError(400, "grey levels must lie in 0..255")
    return (grey / 255.0).reshape(height, width).astype(np.float32)


def grey_from_png(request):
    """{"png": base64 text or a data: URL} -> (H, W) float32 grey levels in [0, 1];
    transparent parts count as white paper."""
    unknown = sorted(set(request) - {"png"})
    if unknown:
        raise RequestError(400, f"unknown key '{unknown[0][:40]}'; a PNG request has only 'png'")
    text = request["png"]
    if not isinstance(text, str):
        raise RequestError(400, "'png' must be a string: base64 PNG data or a data: URL")
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise RequestError(
                400, "a data: URL in 'png' must be base64 (data:image/png;base64,...)")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, "'png' is not valid base64") from None
    if not data.startswith(PNG_SIGNATURE):
        raise RequestError(400, "'png' does not hold PNG data (wrong signature)")
    if data[12:16] != b"IHDR" or len(data) < 24:
        raise RequestError(400, "'png' is not a readable PNG (no IHDR header)")
    # The size, from the header, before Pillow (or its decompression-bomb check) sees it.
    _check_size(*struct.unpack(">II", data[16:24]))
    try:
        Image = require_extra("PIL.Image", "PNG input on the server", "images")
    except MissingExtra as exc:
        raise RequestError(415, str(exc)) from None
    from cnntrain.data.inputs import picture_grey

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=["PNG"]) as picture:
                _check_size(*picture.size)
                picture.load()
                grey = picture_grey(picture)
    except RequestError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise RequestError(413, "the PNG is too large to decode") from None
    except Exception as exc:  # Pillow signals a corrupt file with many exception types
        raise RequestError(400, f"'png' is not a readable PNG ({one_line_reason(exc)})") from None
    return grey


def grey_from_request(request):
    """A parsed /api/predict request -> (H, W) float32 grey levels in [0, 1]."""
    if "png" in request:
        return grey_from_png(request)
    if "pixels" in request:
        return grey_from_array(request)
    raise RequestError(400, "send {\"width\": W, \"height\": H, \"pixels\": [...]} or "
                            "{\"png\": \"<base64>\"}")


def predict_grey(predictor, grey):
    """(H, W) grey levels -> the /api/predict answer. The server's threads share `predictor`:
    a Predictor lets their forward passes take turns."""
    from cnntrain.data.preprocess import NoInkError, to_mnist_field

    try:
        field = to_mnist_field(grey)
    except NoInkError as exc:
        raise RequestError(422, str(exc)) from None
    except (CnnTrainError, ValueError) as exc:
        raise RequestError(400, str(exc).splitlines()[0]) from None
    if isinstance(predictor, Committee):
        return {**committee_answer(predictor, field),
                "field": np.round(field.astype(np.float64), 4).tolist()}
    probabilities = np.asarray(predictor.probabilities(field[None]), dtype=np.float64)[0]
    return {
        "prediction": int(np.argmax(probabilities)),
        "probabilities": [round(float(p), 6) for p in probabilities],
        "field": np.round(field.astype(np.float64), 4).tolist(),
    }


def committee_answer(committee, field):
    """(28, 28) field -> the committee's prediction (by its rule), its mean probabilities and
    "members" (with several): each member's name, prediction and probabilities, from one
    pass of each."""
    answer = committee.answer(field[None])
    members = [{"name": name, "prediction": int(answer["member_predictions"][k, 0]),
                "probabilities": [round(float(p), 6) for p in answer["members"][k, 0]]}
               for k, name in enumerate(committee.names)]
    result = {"prediction": int(answer["predictions"][0]),
              "probabilities": [round(float(p), 6) for p in answer["probabilities"][0]]}
    if len(members) > 1:
        result["members"] = members
    return result


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def json_bytes(value):
    return json.dumps(value, default=_json_default).encode("utf-8")

