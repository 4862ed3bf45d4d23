"""Resuming a run: the config a resume runs with, and what it may change."""

from cnntrain.config import load_config
from cnntrain.configschema import SCHEMA
from cnntrain.errors import ConfigError
from cnntrain.runs.build import config_from_checkpoint

RESUME_ACCEPTS = (
    ["train." + key for key in ("epochs", "lr", "lr_schedule", "lr_step_epochs", "lr_gamma",
                                "warmup_epochs", "momentum", "nesterov", "weight_decay",
                                "decay_biases", "label_smoothing", "eval_batch_size")]
    + ["augment." + key for key in SCHEMA["augment"]]
    + ["data.dir", "data.mirrors", "run.dir"])
BATCH_SIZE_KEY = "train.batch_size"  # accepted at an epoch boundary only


def _config_changes(stored, cfg):
    """[(section.key, old, new)] where cfg differs from the stored config."""
    changes = []
    for section, keys in SCHEMA.items():
        for key in keys:
            old, new = getattr(getattr(stored, section), key), getattr(getattr(cfg, section), key)
            if old != new:
                changes.append((f"{section}.{key}", old, new))
    return changes


def _shown(value):
    text = " / ".join(value) if isinstance(value, tuple) else str(value)
    return text if len(text) <= 30 else text[:27] + "..."


def resume_config(ckpt, checkpoint_path, overrides=(), config_path=None):
    """The config a resume runs with: the checkpoint's own, or the file given with --config,
    either with the --set overrides. Whatever differs from the checkpoint's config passes the
    same rule: only RESUME_ACCEPTS may change; anything else is refused, never ignored."""
    stored = config_from_checkpoint(ckpt, checkpoint_path)
    given = load_config(config_path, overrides) if config_path else \
        config_from_checkpoint(ckpt, checkpoint_path, overrides)
    mid_epoch = bool(ckpt.meta.get("step_in_epoch"))
    changes = _config_changes(stored, given)
    by = f"{config_path}" if config_path else "--set"
    if config_path and any(name.startswith("model.") for name, _, _ in changes):
        raise ConfigError(f"{config_path} describes a different network than {checkpoint_path}; "
                          "drop --config to continue the checkpoint's own run")
    refused = [(name, old, new) for name, old, new in changes
               if name not in RESUME_ACCEPTS and not (name == BATCH_SIZE_KEY and not mid_epoch)]
    if refused:
        listed = ", ".join(f"{name} {_shown(old)} -> {_shown(new)}" for name, old, new in refused)
        accepted = ", ".join(RESUME_ACCEPTS) + f", {BATCH_SIZE_KEY} (at an epoch's end)"
        raise ConfigError(
            f"{by} changes what the position saved in {checkpoint_path} means ({listed}); a "
            f"resume accepts changes to {accepted} only; to change the others, start a new "
            "run with --config FILE --out NEW_DIR")
    done = ckpt.meta["epoch"]
    if given.train.epochs < done:
        raise ConfigError(f"{checkpoint_path} has already trained {done} epochs, more than "
                          f"train.epochs = {given.train.epochs}; give --set train.epochs={done} "
                          "or more")
    return given
