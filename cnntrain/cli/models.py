"""Verbs that use saved networks: eval, predict, export, serve."""

import json
import sys

import click

from cnntrain.cli.group import CONTEXT_SETTINGS, cli, data_dir_option, mirror_option
from cnntrain.console import is_stdout
from cnntrain.errors import require_extra

# The choices are cnntrain.apps.committee.COMBINE_RULES, spelled out because importing that
# module (numpy) would slow every command's start; a test holds them equal. The default
# (None) is resolved to its DEFAULT_COMBINE when a committee is built.
combine_option = click.option(
    "--combine", type=click.Choice(["mean", "vote"]), default=None,
    help="How several networks answer together: the digit with the highest mean probability, "
         "or the digit most of them answer, a tie broken by that mean (default: the rule "
         "that measured better, cnntrain.apps.committee.DEFAULT_COMBINE).")
tta_option = click.option(
    "--tta", is_flag=True,
    help="Test-time augmentation: average each network's probabilities over the picture and "
         "its four one-pixel shifts (up, down, left, right).")


def _echo_classes(result):
    """The per-class accuracies and the confusion matrix, for one network or a committee."""
    click.echo("per-class accuracy: " + "  ".join(
        f"{digit}: {100 * acc:.1f}%" for digit, acc in enumerate(result["per_class"])))
    click.echo("confusion matrix (rows: true digit, columns: predicted digit)")
    click.echo("      " + "".join(f"{d:>6}" for d in range(len(result["confusion"]))))
    for digit, row in enumerate(result["confusion"]):
        click.echo(f"{digit:>6}" + "".join(f"{count:>6}" for count in row))


def _committee_paths(checkpoints, sweep_dir):
    """The explicit checkpoints, then a sweep's finished runs (those left out named on
    stderr)."""
    paths = list(checkpoints)
    if sweep_dir is not None:
        from cnntrain.apps.committee import sweep_checkpoints

        finished, left_out = sweep_checkpoints(sweep_dir)
        for run, state in left_out:
            click.echo(f"left out of the committee: {run} ({state}, not finished)", err=True)
        paths += [str(path) for path in finished]
    if not paths:
        raise click.UsageError("give a checkpoint (or several), or --committee SWEEP_DIR")
    return paths


def _eval_committee(paths, split, as_json, batch_size, errors_png, combine, tta, data_dir,
                    mirrors):
    """eval of several checkpoints (or one with --tta): each member, then the committee."""
    from cnntrain.apps.committee import load_model
    from cnntrain.runs.evaluate_committee import evaluate_committee

    committee = load_model(paths, combine=combine, tta=tta)
    result = evaluate_committee(committee, split=split, batch_size=batch_size,
                                data_dir=data_dir, mirrors=mirrors,
                                progress=not as_json and sys.stderr.isatty(),
                                keep_errors=errors_png is not None)
    how = f"{result['combine']}{', tta' if result['tta'] else ''}"
    if errors_png is not None:
        from cnntrain.apps import plots

        errors = result.pop("errors")
        plots.plot_errors(errors, errors_png,
                          title=f"committee of {len(paths)} ({how}): {len(errors['labels'])} "
                                f"of {result['n']} {split} images misclassified")
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"committee of {len(paths)} ({how}), {split} split, {result['n']} images")
    width = max(len(member["name"]) for member in result["members"])
    for member in result["members"]:
        click.echo(f"  {member['name']:<{width}}  accuracy {100 * member['accuracy']:6.2f}%   "
                   f"mean loss {member['loss']:.4f}")
    click.echo(f"committee accuracy {100 * result['accuracy']:.2f}%   "
               f"mean loss {result['loss']:.4f} (of the mean probabilities)")
    _echo_classes(result)


def _checkpoints_and_inputs(arguments):
    """predict's arguments: the first is a checkpoint, and so is every one after it ending in
    .npz until the first that does not; the rest are the inputs."""
    count = 1
    while count < len(arguments) and arguments[count].lower().endswith(".npz"):
        count += 1
    if count == len(arguments):
        raise click.UsageError("give at least one INPUT after the checkpoint(s); inputs are "
                               "never .npz files")
    return list(arguments[:count]), list(arguments[count:])


@cli.command("eval", context_settings=CONTEXT_SETTINGS)
@click.argument("checkpoints", nargs=-1, metavar="[CHECKPOINT]...")
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test",
              show_default=True, help="Which part of MNIST to score.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--batch-size", type=click.IntRange(min=1), metavar="N",
              help="Images per forward pass (default: the run's eval_batch_size).")
@click.option("--errors", "errors_png", metavar="FILE.png",
              help="Also draw the misclassified digits, labelled true/predicted (and each "
                   "member's answer, for a committee), into FILE.png.")
@click.option("--committee", "sweep_dir", metavar="SWEEP_DIR",
              help="Add every finished run of a sweep (its checkpoints/last.npz) to the "
                   "committee; runs not finished are left out and named on stderr.")
@combine_option
@tta_option
@data_dir_option
@mirror_option
def eval_command(checkpoints, split, as_json, batch_size, errors_png, sweep_dir, combine, tta,
                 data_dir, mirrors):
    """Score a saved model: accuracy, loss, per-class accuracy and the confusion matrix.

    Several checkpoints (or --committee) are scored as a committee: each member's accuracy
    and loss, then the committee's (its loss is that of the members' mean probabilities).
    Members may differ in architecture; they must read 28x28 fields, answer the 10 digits and
    have been trained with the same split settings.

    \b
    Examples:
      cnntrain eval runs/lenet5/checkpoints/best.npz
      cnntrain eval runs/lenet5/checkpoints/last.npz --split val --json
      cnntrain eval runs/lenet5/checkpoints/best.npz --errors errors.png
      cnntrain eval runs/a/checkpoints/last.npz runs/b/checkpoints/last.npz --combine mean
      cnntrain eval --committee sweeps/bn-aug-seed --tta
    """
    paths = _committee_paths(checkpoints, sweep_dir)
    if errors_png is not None:  # '' too, which names no file: refused before the work
        from cnntrain.apps import plots
        require_extra("matplotlib", "plotting", "plot")
        plots.check_output(errors_png)
    if len(paths) > 1 or tta:
        return _eval_committee(paths, split, as_json, batch_size, errors_png, combine, tta,
                               data_dir, mirrors)
    from cnntrain.runs.evaluate import evaluate_checkpoint

    checkpoint = paths[0]
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
    _echo_classes(result)



@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("arguments", nargs=-1, required=True, metavar="CHECKPOINT... INPUT...")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--top", type=click.IntRange(1, 10), default=3, show_default=True, metavar="K",
              help="How many of the most likely digits to list.")
@click.option("--raw", is_flag=True,
              help="Inputs already are 28x28 MNIST-like pictures (white digit on black, "
                   "centred): skip the preprocessing.")
@combine_option
@tta_option
def predict(arguments, as_json, top, raw, combine, tta):
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

    CHECKPOINT: the first argument, and every one after it that ends in .npz (inputs never
    do). With several, they answer as a committee: the digit by --combine, its mean
    probability and the top K of the members' mean probabilities (--json adds each
    member's answer).

    \b
    Examples:
      cnntrain predict runs/lenet5/checkpoints/best.npz my-digit.jpg
      cnntrain predict runs/lenet5/checkpoints/best.npz scans/ --top 2 --json
      cnntrain predict runs/a/checkpoints/last.npz runs/b/checkpoints/last.npz my-digit.jpg
    """
    from cnntrain.apps.predict import predict_inputs

    checkpoints, inputs = _checkpoints_and_inputs(arguments)
    _, failed = predict_inputs(checkpoints, inputs, top=top, raw=raw, as_json=as_json,
                               echo=click.echo, echo_error=lambda line: click.echo(line, err=True),
                               combine=combine, tta=tta)
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
@combine_option
@tta_option
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
