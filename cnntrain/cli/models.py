"""Verbs that use saved networks: eval, predict, export, serve."""

import json
import sys

import click

from cnntrain.cli.group import CONTEXT_SETTINGS, cli, data_dir_option, mirror_option
from cnntrain.console import is_stdout
from cnntrain.errors import require_extra


@cli.command("eval", context_settings=CONTEXT_SETTINGS)
@click.argument("checkpoint")
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test",
              show_default=True, help="Which part of MNIST to score.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--batch-size", type=click.IntRange(min=1), metavar="N",
              help="Images per forward pass (default: the run's eval_batch_size).")
@click.option("--errors", "errors_png", metavar="FILE.png",
              help="Also draw the misclassified digits, labelled true/predicted, into FILE.png.")
@data_dir_option
@mirror_option
def eval_command(checkpoint, split, as_json, batch_size, errors_png, data_dir, mirrors):
    """Score a saved model: accuracy, loss, per-class accuracy and the confusion matrix.

    \b
    Examples:
      cnntrain eval runs/lenet5/checkpoints/best.npz
      cnntrain eval runs/lenet5/checkpoints/last.npz --split val --json
      cnntrain eval runs/lenet5/checkpoints/best.npz --errors errors.png
    """
    from cnntrain.runs.evaluate import evaluate_checkpoint

    if errors_png is not None:  # '' too, which names no file: refused before the work
        from cnntrain.apps import plots
        require_extra("matplotlib", "plotting", "plot")
        plots.check_output(errors_png)
    result = evaluate_checkpoint(checkpoint, split=split, batch_size=batch_size,
                                 data_dir=data_dir, mirrors=mirrors,
                                 progress=not as_json and sys.stderr.isatty(),
                                 keep_errors=errors_png is not None)
    if errors_png is not None:
        plots.plot_errors(result["errors"], errors_png,
                          title=f"{checkpoint}: {len(result['errors']['labels'])} of "
                                f"{result['n']} {split} images misclassified")
    if as_json:
        keys = ("accuracy", "loss", "n", "per_class", "confusion", "split", "checkpoint", "epoch")
        click.echo(json.dumps({k: result[k] for k in keys}))
        return
    click.echo(f"{checkpoint} ({result['position']}), {split} split, {result['n']} images")
    click.echo(f"accuracy {100 * result['accuracy']:.2f}%   mean loss {result['loss']:.4f}")
    click.echo("per-class accuracy: " + "  ".join(
        f"{digit}: {100 * acc:.1f}%" for digit, acc in enumerate(result["per_class"])))
    click.echo("confusion matrix (rows: true digit, columns: predicted digit)")
    click.echo("      " + "".join(f"{d:>6}" for d in range(len(result["confusion"]))))
    for digit, row in enumerate(result["confusion"]):
        click.echo(f"{digit:>6}" + "".join(f"{count:>6}" for count in row))



@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("checkpoint")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--top", type=click.IntRange(1, 10), default=3, show_default=True, metavar="K",
              help="How many of the most likely digits to list.")
@click.option("--raw", is_flag=True,
              help="Inputs already are 28x28 MNIST-like pictures (white digit on black, "
                   "centred): skip the preprocessing.")
def predict(checkpoint, inputs, as_json, top, raw):
    """Read the digit in pictures: one line per picture with the digit, its probability and
    the top K.

    INPUT: image files (PNG, JPEG, BMP, GIF, TIFF, PGM; need pip install 'cnntrain[images]'),
    .npy arrays (one picture or a stack), MNIST IDX image files, or folders of them. Any
    picture of one digit works, dark on light or light on dark, at any size and place: it is
    cropped, scaled into 20x20 and centred in 28x28 as MNIST's digits were.

    An input that cannot be read, or holds no ink, gets a one-line error and the others go
    on; the exit code is then 1. So does an empty name, a FIFO or device (refused, not read),
    and a picture of more than 16,777,216 pixels, 4096x4096 (refused from its header). Names
    holding a newline, a quote, a backslash or bytes that are not text are printed quoted:
    'a\\nb.png'.

    \b
    Examples:
      cnntrain predict runs/lenet5/checkpoints/best.npz my-digit.jpg
      cnntrain predict runs/lenet5/checkpoints/best.npz scans/ --top 2 --json
    """
    from cnntrain.apps.predict import predict_inputs

    _, failed = predict_inputs(checkpoint, inputs, top=top, raw=raw, as_json=as_json,
                               echo=click.echo, echo_error=lambda line: click.echo(line, err=True))
    if failed:
        sys.exit(1)



@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("checkpoints", nargs=-1, required=True, metavar="CHECKPOINT...")
@click.option("-o", "--output", required=True, metavar="FILE.onnx", help="The model to write.")
def export(checkpoints, output):
    """Write a checkpoint's network (or a committee of several) as an ONNX model (opset 17)
    for other runtimes.

    Input 'image': (N, 1, 28, 28) float32 in [0, 1], white digit on black, centred as MNIST
    (the graph applies the checkpoint's normalisation itself). Outputs 'logits' and
    'probabilities' (N, 10). The class names and the normalisation are in its metadata.
    Needs onnx: pip install 'cnntrain[onnx]'.

    Several checkpoints make one graph of the committee: each member applies its own
    normalisation and layers (names prefixed member0., member1., ...), 'probabilities' is the
    mean of the members' probabilities and 'logits' its log, so softmax and argmax agree with
    it. The graph always averages (combine = mean): a vote is not expressible as simply, so a
    committee served or scored with --combine vote may answer differently on close calls. The
    metadata names the members. Each checkpoint may be given once, and all must read a 28x28
    field and answer the 10 digits.

    \b
    Examples:
      cnntrain export runs/lenet5/checkpoints/best.npz -o lenet5.onnx
      cnntrain export runs/a/checkpoints/best.npz runs/b/checkpoints/best.npz -o ab.onnx
    """
    from cnntrain.apps.export import OPSET, export_checkpoint, export_committee

    if len(checkpoints) == 1:
        summary = export_checkpoint(checkpoints[0], output)
        what = summary["name"]
    else:
        summary = export_committee(checkpoints, output)
        what = f"{summary['name']} (mean of probabilities)"
    click.echo(f"wrote {output}: {what}, {summary['parameters']:,} parameters, "
               f"ONNX opset {OPSET}", err=is_stdout(output))



@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("checkpoints", nargs=-1, required=True, metavar="CHECKPOINT...")
# The choices and default are cnntrain.apps.committee's COMBINE_RULES and DEFAULT_COMBINE,
# spelled out because importing that module (numpy) would slow every command's start; a test
# holds them equal.
@click.option("--combine", type=click.Choice(["mean", "vote"]), default="vote",
              show_default=True,
              help="With several checkpoints: the digit of the highest mean probability, or "
                   "the digit most members answer (ties broken by the mean).")
@click.option("--tta", is_flag=True,
              help="Average each network's probabilities over the drawing and its one-pixel "
                   "shifts (up, down, left, right).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="The address to listen on. Anything but loopback makes the page reachable "
                   "from other machines (a warning says so).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="The TCP port; 0 picks a free one.")
def serve(checkpoints, combine, tta, host, port):
    """Serve a page to draw digits on and watch CHECKPOINT (or a committee of several)
    classify them, with a JSON API.

    Open the printed address in a browser. The API: GET /api/model (the model's summary);
    POST /api/predict with {"width": W, "height": H, "pixels": [grey levels 0..255]} or
    {"png": "<base64>"} (PNG needs Pillow) returns the probabilities, the prediction and the
    28x28 field the network saw.

    Several checkpoints serve a committee: the prediction is the committee's (by --combine),
    the probabilities the mean of its members', and "members" lists each member's name,
    prediction and probabilities; the page and GET /api/model name the members. Each
    checkpoint may be given once, and all must read a 28x28 field and answer the 10 digits.

    Ctrl-C or SIGTERM stops the server; the exit code is then 0.

    \b
    Examples:
      cnntrain serve runs/lenet5/checkpoints/best.npz
      cnntrain serve runs/lenet5/checkpoints/best.npz --port 8080
      cnntrain serve runs/a/checkpoints/best.npz runs/b/checkpoints/best.npz --combine mean
    """
    from cnntrain.apps import serve as server

    server.run(checkpoints, host, port, combine=combine, tta=tta, echo=click.echo,
               warn=lambda line: click.echo(line, err=True))
