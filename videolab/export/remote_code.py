"""Model code that travels with an export folder, so ``from_pretrained(folder, trust_remote_code=True)`` works
where this repo is not installed.

transformers' dynamic-module loader (``transformers.dynamic_module_utils``) reads the module a config's
``auto_map`` names from the folder, copies it and every module it imports *relatively* (``from .x import y``,
recursively) into its module cache, and imports it there as part of a package of its own. It refuses absolute
imports of packages that are not installed, and it only knows flat folders: ``from .models.fusion import ...``
would be looked for as a file ``models.fusion.py``. So the code is written flat:

    videolab/models/classifier.py   ->   FOLDER/videolab_models_classifier.py
    from videolab.models.fusion import TransformerFusion   ->   from .videolab_models_fusion import TransformerFusion

:func:`write_remote_code` starts from the modules that define the exported classes, follows every ``videolab``
import (also those inside functions) and every string that names a ``videolab`` module (the registries' lazy
``"videolab.models.fusion:MambaFusion"`` targets, compose's ``_target_`` aliases; they become ``".videolab_..."``,
which ``videolab.core.registry.import_module`` resolves next to the module that reads it), and writes those
modules and nothing else, rewritten as above. A module the code reaches only through such a string is also
imported from the entry module, so a loader that fetches files one import at a time (the Hub) fetches it too.

The package's layering keeps this small: models import only ``core`` and ``models`` (never ``data`` or the top-level
scripts), and the copied code imports only ``torch``, ``transformers``, ``timm``, ``yaml`` and the standard
library at module level (``peft`` only inside the functions that apply LoRA). :func:`third_party_imports` lists
what a folder's code imports, as the loader sees it; the tests hold it to that list.
"""
from __future__ import annotations

import ast
import os
import re
import sys
from typing import Iterable

from videolab.core.files import write_text

PACKAGE = __name__.split(".")[0]  # videolab
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the package folder
PREFIX = "videolab_"  # flat module names: videolab.models.hf -> videolab_models_hf
HEADER = ("# Generated from {source} of the video-understanding repo by videolab.export.remote_code: the model code\n"
          "# of this folder (transformers loads it with trust_remote_code=True). Do not edit; re-export instead.\n")
MODULE_STRING = re.compile(rf"^{PACKAGE}(\.\w+)+(:\w+)?$")  # "videolab.models.fusion" or "...:MambaFusion"


def flat_name(module: str) -> str:
    """``videolab.models.hf`` -> ``videolab_models_hf`` (the module's file name in an export folder, no .py)."""
    if not (module == PACKAGE or module.startswith(PACKAGE + ".")):
        raise ValueError(f"{module!r} is not a module of {PACKAGE}")
    return module.replace(".", "_")


def source_file(module: str) -> str:
    """The .py file of a package module (never a package __init__: nothing imports those)."""
    path = os.path.join(os.path.dirname(ROOT), *module.split(".")) + ".py"
    if not os.path.isfile(path):
        raise ValueError(f"{module!r} is not a module file of {PACKAGE} (looked for {path})")
    return path


def _named_modules(tree: ast.AST, module: str) -> tuple[set[str], set[str]]:
    """(modules imported with ``from videolab.x import ...`` anywhere in the file, modules named by strings)."""
    imported, named = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                node.module.split(".")[0] == PACKAGE:
            if node.module.count(".") < 2:  # from videolab import x / from videolab.core import x
                raise ValueError(f"{module}: 'from {node.module} import ...' cannot be copied flat; import from "
                                 f"the module itself (from videolab.core.errors import UsageError)")
            imported.add(node.module)
        elif isinstance(node, ast.Import) and any(a.name.split(".")[0] == PACKAGE for a in node.names):
            raise ValueError(f"{module}: 'import {node.names[0].name}' cannot be copied flat; use "
                             f"'from {node.names[0].name} import ...'")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_STRING.match(node.value):
            named.add(node.value.partition(":")[0])
    return imported, named


def closure(entries: Iterable[str]) -> tuple[list[str], set[str]]:
    """(every package module the entry modules need, sorted; those reached only through strings)."""
    todo, seen, by_import = list(entries), set(), set(entries)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        with open(source_file(module), encoding="utf-8") as fh:
            imported, named = _named_modules(ast.parse(fh.read()), module)
        by_import |= imported
        todo.extend((imported | named) - seen)
    return sorted(seen), seen - by_import


def rewrite(source: str) -> str:
    """A package module's source with its ``videolab`` imports and module strings made relative and flat."""
    source = re.sub(rf"^(\s*)from ({PACKAGE}(?:\.\w+)+) import", lambda m: f"{m[1]}from .{flat_name(m[2])} import",
                    source, flags=re.MULTILINE)
    return re.sub(rf"""(["']){PACKAGE}((?:\.\w+)+)((?::\w+)?)\1""",
                  lambda m: f"{m[1]}.{flat_name(PACKAGE + m[2])}{m[3]}{m[1]}", source)


def write_remote_code(folder: str, classes: dict[str, str]) -> dict[str, str]:
    """Write the code of ``classes`` (auto class name -> ``"videolab.models.hf:VideoClassifierConfig"``) into
    ``folder`` (see the module docstring). Returns the config's ``auto_map``: auto class name ->
    ``"videolab_models_hf.VideoClassifierConfig"``."""
    entries = {target.partition(":")[0] for target in classes.values()}
    modules, only_named = closure(entries)
    for module in modules:
        with open(source_file(module), encoding="utf-8") as fh:
            text = rewrite(fh.read())
        if module in entries and only_named:
            text += "\n# modules the code above reaches through registry names: imported so every loader fetches them\n"
            text += "".join(f"from .{flat_name(m)} import __name__ as _{flat_name(m)}  # noqa: E402,F401\n"
                            for m in sorted(only_named))
        relative = os.path.relpath(source_file(module), os.path.dirname(ROOT))
        write_text(os.path.join(folder, flat_name(module) + ".py"), HEADER.format(source=relative) + text)
    return {auto: "{}.{}".format(flat_name(target.partition(':')[0]), target.partition(":")[2])
            for auto, target in classes.items()}


def code_files(folder: str) -> list[str]:
    """The generated module files in an export folder."""
    return sorted(f for f in os.listdir(folder) if f.startswith(PREFIX) and f.endswith(".py"))


def third_party_imports(folder: str) -> list[str]:
    """The top-level packages the folder's code imports outside the standard library, as transformers' loader
    counts them (``get_imports``: imports inside ``try`` blocks are optional and not counted)."""
    from transformers.dynamic_module_utils import get_imports
    found = set()
    for name in code_files(folder):
        found.update(get_imports(os.path.join(folder, name)))
    return sorted(m for m in found if m not in sys.stdlib_module_names)
