"""Fuzzing the files a user or an attacker hands in (issue 19): random and mutated settings YAML, model sections and
run_config.json files. Each must end in a clean error (UsageError, one line) or valid settings; never another
exception, never a hang. Seeded (the same cases every run, so a failure reproduces) and time-bounded: each test stops
after its budget of seconds, however many cases that was.

The mutations are hand-written (no hypothesis dependency): byte and line edits, YAML/JSON syntax tokens, hostile
values (NaN, 1e400, huge integers, aliases, Python tags, NUL bytes, invalid UTF-8) and structural swaps of values
for values of another type.
"""
import copy
import json
import math
import os
import random
import time

import pytest

import build_model
import videolab.cli
from conftest import ROOT
from videolab.core.checkpoints import CONFIG_FILE, WEIGHTS_FILE, read_run_config
from videolab.core.errors import UsageError
from videolab.core.settings import Settings, settings_from_dict

BUDGET_S = float(os.environ.get("FUZZ_BUDGET_S", "6.0"))  # per test; the three together stay under 30 s
TOKENS = [":", ": ", "-", "- ", "&a ", "*a", "[", "]", "{", "}", ",", "!!python/object/apply:os.system ['true']",
          "\t", "nan", ".nan", ".inf", "-.inf", "1e400", "1.0e+400", "99999999999999999999999", "-1", "0", "'", '"',
          "\x00", "~", "<<: *a", "? ", "%YAML 1.1\n", "---\n", "...\n", "\n  ", "null", "true", "yes", "0x1F",
          "2001-12-14", "!!binary aGVsbG8=", "!!set {a, b}", "&b [*b]", "#", "|\n  text", ">-\n  x", "@", "`"]
JUNK = [None, [], {}, "", "x" * 300, float("nan"), float("inf"), 1e308, -1, 0, 10**30, True, [1, [2, [3]]],
        {"a": {"b": None}}, "../../etc", "none", 3.5]


def mutate_text(text: str, rng: random.Random) -> str:
    """1-4 random edits: delete, duplicate or swap lines, insert a token, flip characters, cut the end."""
    for _ in range(rng.randint(1, 4)):
        lines = text.splitlines(keepends=True) or [""]
        edit = rng.randrange(7)
        if edit == 0 and len(text) > 2:
            i = rng.randrange(len(text))
            text = text[:i] + text[i + rng.randint(1, 20):]
        elif edit == 1:
            i = rng.randrange(len(lines))
            text = "".join(lines[:i] + [lines[i]] * rng.randint(2, 5) + lines[i + 1:])
        elif edit == 2 and len(lines) > 1:
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
            text = "".join(lines)
        elif edit in (3, 4):
            i = rng.randrange(len(text) + 1)
            text = text[:i] + rng.choice(TOKENS) + text[i:]
        elif edit == 5 and text:
            i = rng.randrange(len(text))
            text = text[:i] + chr(rng.choice([0, 9, 10, 32, 35, 58, 123, 0xFF, 0x2028, rng.randrange(1, 0x3000)])) \
                + text[i + 1:]
        else:
            text = text[:rng.randrange(len(text) + 1)]
    return text


def mutate_value(data, rng: random.Random):
    """A deep copy of ``data`` with 1-3 values (at any depth) replaced by junk of another type, or keys renamed."""
    data = copy.deepcopy(data)
    for _ in range(rng.randint(1, 3)):
        parent, key = None, None
        node = data
        for _ in range(rng.randint(1, 4)):
            if isinstance(node, dict) and node:
                parent, key = node, rng.choice(list(node))
            elif isinstance(node, list) and node:
                parent, key = node, rng.randrange(len(node))
            else:
                break
            node = parent[key]
        if parent is None:
            return rng.choice(JUNK)
        if isinstance(parent, dict) and rng.random() < 0.2:
            parent[f"{key}_typo"] = parent.pop(key)
        else:
            parent[key] = copy.deepcopy(rng.choice(JUNK))
    return data


def check_settings_file(path: str, extra=()) -> str:
    """What main.py does with a settings file before any work: parse, resolve, check. 'ok' or 'usage'."""
    try:
        cli, explicit, _ = videolab.cli.resolve(["--config", path, *extra], "fuzz", "fuzz")
        cfg = build_model.resolve_settings(cli)
        build_model.check_settings(cfg, explicit)
    except UsageError as exc:
        assert "\n" not in str(exc).strip() and len(str(exc)) < 700, str(exc)[:500]
        return "usage"
    return "ok"


def fuzz(budget_s: float, case):
    """Run ``case(rng, i)`` with a seeded rng until the budget is spent; each case must take < 10 s (a bound for a
    hang or an expansion; a case takes milliseconds, the first ones up to seconds on a loaded machine: imports)."""
    rng, start, count, outcomes = random.Random(19), time.time(), 0, {}
    while time.time() - start < budget_s:
        t0 = time.time()
        outcome = case(rng, count)
        assert time.time() - t0 < 10.0, f"case {count} took {time.time() - t0:.1f}s"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        count += 1
    return count, outcomes


def write_bytes(path, text: str) -> None:
    with open(path, "wb") as fh:
        fh.write(text.encode("utf-8", errors="surrogateescape") if isinstance(text, str) else text)


def test_mutated_settings_files_give_a_clean_answer(in_tmp):
    with open(os.path.join(ROOT, "config_file.yaml")) as fh:
        base = fh.read()
    path = str(in_tmp / "fuzz.yaml")

    def case(rng, i):
        text = mutate_text(base, rng)
        if i % 7 == 0:  # invalid UTF-8 now and then
            data = text.encode() + bytes([0xFF, 0xFE, rng.randrange(256)])
            with open(path, "wb") as fh:
                fh.write(data)
        else:
            write_bytes(path, text)
        try:
            return check_settings_file(path, ["--output_dir", str(in_tmp / "out")])
        except Exception as exc:  # noqa: BLE001 - the test reports which input broke what
            raise AssertionError(f"case {i}: {type(exc).__name__}: {exc}\n--- input ---\n{text[:3000]}") from exc
    count, outcomes = fuzz(BUDGET_S, case)
    assert count >= 5 and outcomes.get("usage", 0) > 0, (count, outcomes)


SECTION = {"encoders": {"video": {"name": "backbone", "model_size": "tiny"}, "audio": {"name": "conv_transformer",
                                                                                    "dim": 32, "depth": 1}},
           "fusion": {"name": "bottleneck", "dim": 32, "depth": 2, "bottleneck_tokens": 4}, "head": {"name": "mlp"}}
AV_FLAGS = ["--dataset", "synthetic_av", "--num_frames", "4", "--image_size", "32", "--audio_seconds", "0.5"]


def test_mutated_model_sections_give_a_clean_answer(in_tmp):
    import yaml
    path = str(in_tmp / "model.yaml")

    def case(rng, i):
        section = mutate_value(SECTION, rng) if i % 2 else SECTION
        text = yaml.safe_dump({"model": section}, allow_unicode=True) if not isinstance(section, float) else \
            f"model: {section}\n"
        if i % 2 == 0:
            text = mutate_text(text, rng)
        write_bytes(path, text)
        try:
            return check_settings_file(path, AV_FLAGS)
        except Exception as exc:  # noqa: BLE001
            raise AssertionError(f"case {i}: {type(exc).__name__}: {exc}\n--- input ---\n{text[:3000]}") from exc
    count, outcomes = fuzz(BUDGET_S, case)
    assert count >= 5 and outcomes.get("usage", 0) > 0 and outcomes.get("ok", 0) > 0, (count, outcomes)


def base_run_config() -> dict:
    return dict(settings=Settings().to_dict(), class_names=["a", "b", "c", "d"], epoch=1, history=[],
                model_info=dict(arch={"kind": "videomae", "config": {}}, pretrained=False, weights_source="random",
                                mean=[0.5] * 3, std=[0.5] * 3))


def test_mutated_run_configs_give_a_clean_answer(tmp_path):
    """read_run_config -> settings_from_dict -> the model kind (what inference.py does to pick a run)."""
    folder = tmp_path / "best"
    os.makedirs(folder)
    (folder / WEIGHTS_FILE).write_bytes(b"")
    base = base_run_config()

    def case(rng, i):
        config = mutate_value(base, rng)
        try:
            text = json.dumps(config, allow_nan=True, default=str)
        except (ValueError, TypeError):
            text = "{}"
        if i % 3 == 0:
            text = mutate_text(text, rng)
        write_bytes(folder / CONFIG_FILE, text)
        try:
            loaded = read_run_config(str(folder))
            settings_from_dict(loaded["settings"], str(folder / CONFIG_FILE))
            build_model.checkpoint_kind(loaded["settings"])
            return "ok"
        except UsageError as exc:
            assert "\n" not in str(exc).strip(), str(exc)[:500]
            return "usage"
        except Exception as exc:  # noqa: BLE001
            raise AssertionError(f"case {i}: {type(exc).__name__}: {exc}\n--- input ---\n{text[:3000]}") from exc
    count, outcomes = fuzz(BUDGET_S, case)
    assert count >= 5 and outcomes.get("usage", 0) > 0 and outcomes.get("ok", 0) > 0, (count, outcomes)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 10**30, -1, "x", None, [1], {"a": 1}, True])
def test_every_numeric_setting_refuses_junk_or_takes_it_cleanly(value):
    """Every numeric field, saved in a checkpoint with a junk value: a clean CheckpointError or a valid value."""
    for name, default in Settings().to_dict().items():
        if not isinstance(default, (int, float)) or isinstance(default, bool):
            continue
        saved = Settings().to_dict()
        saved[name] = value
        try:
            cfg = settings_from_dict(saved, "run_config.json")
        except UsageError as exc:
            assert "run_config.json" in str(exc) and name in str(exc), str(exc)
            continue
        got = getattr(cfg, name)
        assert got is None or (isinstance(got, (int, float)) and math.isfinite(got)), (name, value, got)
