"""The layering rules (tests/layers.py): the repo keeps them, the command line's modules import no torch, and the
checker catches a forbidden import, an import of a script and an import circle planted in a copy of the repo."""
import os
import shutil
import subprocess
import sys

from conftest import ROOT
from layers import LIGHT, check


def test_the_repo_keeps_its_layers():
    assert check(ROOT) == []


def test_the_modules_the_command_line_reads_import_no_torch():
    code = (f"import sys; sys.path.insert(0, {ROOT!r}); import " + ", ".join(LIGHT) +
            "; heavy = [m for m in ('torch', 'transformers', 'timm', 'accelerate') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def copy_of_the_repo(tmp_path) -> str:
    root = str(tmp_path / "repo")
    shutil.copytree(os.path.join(ROOT, "videolab"), os.path.join(root, "videolab"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("main.py", "inference.py", "build_model.py", "train_code.py", "VLoader.py"):
        shutil.copy(os.path.join(ROOT, name), root)
    return root


def test_a_deliberately_bad_module_is_caught(tmp_path):
    root = copy_of_the_repo(tmp_path)
    assert check(root) == []
    with open(os.path.join(root, "videolab", "data", "bad.py"), "w") as fh:
        fh.write("import os\n\n\ndef load():\n    from videolab.models import backbones  # data never imports models\n"
                 "    import main  # nothing imports a script\n    return backbones, main, os\n")
    with open(os.path.join(root, "VLoader.py"), "a") as fh:
        fh.write("\n\ndef helper():\n    import build_model  # assemblers do not import each other\n")
    with open(os.path.join(root, "videolab", "core", "errors.py"), "a") as fh:
        fh.write("\n\ndef registry():\n    from videolab.core import registry  # it imports errors: a circle\n"
                 "    return registry\n")
    problems = check(root)
    assert any(p.startswith("videolab.data.bad -> videolab.models.backbones (line 5)") and "videolab.data may import"
               in p for p in problems), problems
    assert any(p.startswith("videolab.data.bad -> main") and "nothing imports a script" in p for p in problems)
    assert any(p.startswith("VLoader -> build_model") and "do not import each other" in p for p in problems)
    assert any(p.startswith("import circle:") and "videolab.core.errors" in p and "videolab.core.registry" in p
               for p in problems), problems


def test_a_lazy_registry_target_counts_as_an_import(tmp_path):
    """A registry pointing at a module that imports the registry back is a circle, though no import statement
    closes it."""
    root = copy_of_the_repo(tmp_path)
    with open(os.path.join(root, "videolab", "models", "fusion.py"), "a") as fh:
        fh.write("\n\ndef names():\n    from videolab.models.registry import FUSIONS\n    return FUSIONS.names()\n")
    problems = check(root)
    assert any(p.startswith("import circle:") and "videolab.models.fusion" in p and "videolab.models.registry" in p
               for p in problems), problems
