"""The command line of every script: one parser over the settings, choices from the registries, exit codes.

Every :class:`~videolab.core.settings.Settings` field is a flag; a field whose metadata names a ``registry``
gets its choices from that registry (``models/registry.py``, ``data/registry.py``, ``data/sampling.py``,
``tasks/registry.py``), which the help lists. This module and the registries it reads import no torch, so
``--help`` and a mistyped flag answer at once.

:func:`resolve` parses defaults < YAML < flags and checks each value alone; the combinations are checked by the
parts that own them (``build_model.check_settings``). :func:`run_cli` runs a script's ``main`` and turns the
errors of ``videolab.core.errors`` into one line on stderr and their exit code.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
from typing import Any, Callable, Optional, Sequence

from videolab.core.errors import IncompleteResult, RunError, UsageError
from videolab.core.hub import check_weights_path
from videolab.core.inputs import set_data_folders
from videolab.core.registry import Choices, Registry, nearest
from videolab.core.settings import (DEFAULT_CONFIG_FILE, FIELDS, TOPIC_FIELDS, TOPICS, Settings, apply_overrides,
                                    check_values, coerce, field_type, load_yaml, topic_of)
from videolab.data.registry import DATASETS
from videolab.data.sampling import SAMPLINGS
from videolab.models.registry import BACKBONES, FUSIONS
from videolab.tasks.registry import TASK_FLAGS

# Settings field metadata ``registry`` -> the registry that owns the field's values
REGISTRIES: dict[str, Registry | Choices] = {"backbones": BACKBONES, "fusions": FUSIONS, "datasets": DATASETS,
                                             "samplings": SAMPLINGS, "task_flags": TASK_FLAGS}
# names a registry accepts besides its own (checked by the part that builds them)
OPEN_REGISTRIES = {"backbones": "or any timm model name"}


def registry_of(name: str) -> Optional[Registry | Choices]:
    key = FIELDS[name].metadata.get("registry")
    return REGISTRIES[key] if key else None


class Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (one line) instead of printing usage and exiting. A description taken from a
    docstring loses its reST ``literal`` quotes."""

    def __init__(self, *args, **kwargs):
        if kwargs.get("description"):
            kwargs["description"] = kwargs["description"].replace("``", "")
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        if message.startswith("unrecognized arguments:"):
            flag = message.split(":", 1)[1].split()[0]
            options = [o for a in self._actions for o in a.option_strings]
            raise UsageError(f"unknown flag {flag}{nearest(flag.split('=')[0], options)} (see --help)")
        raise UsageError(message)


def _help(name: str) -> str:
    f = FIELDS[name]
    text = f"{f.metadata['help']} (default: {'none' if f.default is None else f.default})"
    registry = registry_of(name)
    choices = registry.names() if registry is not None else f.metadata.get("choices")
    if choices:
        text += f" [{', '.join(choices)}" + (f", {OPEN_REGISTRIES[f.metadata['registry']]}" if registry is not None
                                             and f.metadata["registry"] in OPEN_REGISTRIES else "") + "]"
    return text


TOPIC_TITLES = {"model": "model (the architecture; fixed by a checkpoint)",
                "language": "language (vision + language models, text inputs, the language model's LoRA)",
                "data": "data (dataset, frame sampling, augmentation)",
                "training": "training (optimisation, precision, resuming, pretraining objectives)",
                "inference": "inference and evaluation (inputs, checkpoint, decoding, test views, device)",
                "output": "output (run folders, checkpoints kept, reports, export)"}
TRAINING_ORDER = ("model", "language", "data", "training", "output", "inference")
INFERENCE_ORDER = ("inference", "output", "model", "language", "data", "training")


def _listing_position(name: str) -> tuple[int, int]:
    """Within a topic: the fields settings.TOPIC_FIELDS names, in its order, then the others in field order."""
    listed = TOPIC_FIELDS.get(topic_of(name), ())
    return (listed.index(name), 0) if name in listed else (len(listed), list(FIELDS).index(name))


def build_parser(prog: str, description: str, extra: Optional[Callable[[argparse.ArgumentParser], None]] = None,
                 order: Sequence[str] = TRAINING_ORDER, notes: Optional[dict[str, str]] = None
                 ) -> argparse.ArgumentParser:
    """A parser with every Settings field as a flag, defaults suppressed (so we know what the user typed).

    ``--help`` lists the flags by topic (``settings.TOPICS``) in ``order``; ``notes`` adds a line under a topic's
    title (inference.py: which flags only pick a checkpoint). ``extra`` adds a script's own flags, listed first."""
    parser = Parser(prog=prog, usage="%(prog)s [-h] [--config FILE] [--FLAG VALUE ...] [section.key=VALUE ...]  "
                                     "(flags by topic below)",
                    description=description, allow_abbrev=False,
                    argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", default=argparse.SUPPRESS,
                        help=f"settings YAML read over the defaults (default: ./{DEFAULT_CONFIG_FILE} if present)")
    if extra:
        extra(parser)
    assert sorted(order) == sorted(TOPICS), order
    groups = {t: parser.add_argument_group(TOPIC_TITLES[t], (notes or {}).get(t)) for t in order}
    for name in sorted(FIELDS, key=_listing_position):
        f = FIELDS[name]
        kind, group = field_type(f), groups[topic_of(name)]
        if kind == "bool":
            group.add_argument(f"--{name}", nargs="?", const="true", metavar="BOOL", help=_help(name))
        else:
            group.add_argument(f"--{name}", metavar=kind.upper(), help=_help(name))
    return parser


def check_names(cfg: Settings) -> None:
    """Registry-backed values: each must be a name of its registry (open registries, such as the backbones that
    also take any timm name, are checked by the part that builds them)."""
    for name in FIELDS:
        registry, value = registry_of(name), getattr(cfg, name)
        if registry is None or value is None or FIELDS[name].metadata["registry"] in OPEN_REGISTRIES:
            continue
        registry.check(value)


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str, str]]]:
    """(the other arguments, the nested overrides (dotted key, value, as typed)) of a command line: ``key.sub=value``,
    ``--key.sub=value`` and ``--key.sub value`` (a flag name with a dot; flat flags have none)."""
    rest, overrides, i = [], [], 0
    while i < len(argv):
        token = argv[i]
        name = token[2:] if token.startswith("--") else token
        key = name.split("=", 1)[0]
        if "." not in key or (not token.startswith("--") and "=" not in token) or key.startswith("-"):
            rest.append(token)
        elif "=" in name:
            overrides.append((key, name.split("=", 1)[1], token.split("=", 1)[0]))
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            overrides.append((key, argv[i + 1], token))
            i += 1
        else:
            raise UsageError(f"{token} expects a value: {token} VALUE or {token}=VALUE")
        i += 1
    return rest, overrides


def resolve(argv: Optional[Sequence[str]], prog: str, description: str,
            extra: Optional[Callable[[argparse.ArgumentParser], None]] = None, order: Sequence[str] = TRAINING_ORDER,
            notes: Optional[dict[str, str]] = None) -> tuple[Settings, set[str], argparse.Namespace]:
    """Parse defaults < YAML < CLI and check each value alone. Returns (settings, names the user set on the CLI,
    the raw namespace; its ``config_keys`` are the settings the YAML file set). ``order`` / ``notes``: how
    ``--help`` lists the topics (:func:`build_parser`).

    Nested overrides (``lora.r=4``, ``--fusion.depth 3``, ``model.encoders.video.model_size=small``) apply over the
    YAML like flags (``settings.apply_overrides``); the settings they set count as typed on the command line."""
    parser = build_parser(prog, description, extra, order, notes)
    args, overrides = split_overrides(list(sys.argv[1:] if argv is None else argv))
    ns = parser.parse_args(args)
    explicit = vars(ns).copy()
    config_path = explicit.pop("config", None)
    if config_path is None and os.path.isfile(DEFAULT_CONFIG_FILE):
        config_path = DEFAULT_CONFIG_FILE
    values = load_yaml(config_path) if config_path else {}
    cli_values = {k: coerce(k, v) for k, v in explicit.items() if k in FIELDS}
    ns.config_keys, ns.config_file = set(values), config_path
    values.update(cli_values)
    values, overridden = apply_overrides(values, overrides, set(cli_values))
    cfg = Settings(**values)
    check_values(cfg)
    check_names(cfg)
    check_weights_path("pretrained", cfg.pretrained)
    check_weights_path("language_model", cfg.language_model)
    set_data_folders(data_folders(cfg))
    return cfg, set(cli_values) | overridden, ns


def data_folders(cfg: Settings) -> list[str]:
    """The folders this command reads or writes as data, never as code (``videolab.core.inputs.check_not_data``):
    runs, checkpoints, datasets, inputs, caches, exports."""
    return [cfg.output_dir, cfg.data_root, cfg.checkpoint, cfg.video_dir, cfg.cache_dir, cfg.export_dir,
            cfg.split_dir]


def run_cli(main_fn: Callable[[Optional[Sequence[str]]], Any], argv: Optional[Sequence[str]] = None) -> int:
    """Run a script's main; a UsageError becomes one line on stderr and exit code 2, a RunError exit code 1, an
    IncompleteResult exit code 3, an interrupt 130 (or the signal's code). Other exceptions are bugs: they keep
    their traceback."""
    prog = os.path.basename(sys.argv[0]) or "main.py"
    try:
        main_fn(argv)
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except RunError as exc:
        print(f"{prog}: stopped: {exc}", file=sys.stderr)
        return 1
    except IncompleteResult as exc:
        print(f"{prog}: incomplete: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:  # Ctrl-C, or train_code.TrainingInterrupted (SIGINT/SIGTERM after a save)
        print(f"{prog}: interrupted" + (f": {exc}" if str(exc) else ""), file=sys.stderr)
        return getattr(exc, "exit_code", 130)
    except OSError as exc:
        if exc.errno not in DISK_FULL:  # any other OSError is a bug or an unchecked input: keep the traceback
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        print(f"{prog}: stopped: the disk is full{where} ({os.strerror(exc.errno)}); every file written before "
              f"is complete (writes are atomic). Free space or pass another --output_dir, then resume with "
              f"--resume_from_checkpoint latest", file=sys.stderr)
        return 1
    return 0


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # OSError numbers run_cli reports as one line (exit code 1)
