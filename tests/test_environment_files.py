"""environment.yml (conda, Binder, JupyterHub) and requirements/*.txt (scripts/setup)
describe one environment: run.txt holds the pins; environment.yml installs run.txt
itself (never a second, drifting copy of the pins) and the package; pyproject's ranges
admit every pin; the conda Python satisfies requires-python."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")
pytest.importorskip("packaging", reason="packaging is not installed")
tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python >= 3.11")

from packaging.requirements import Requirement  # noqa: E402
from packaging.specifiers import SpecifierSet  # noqa: E402
from packaging.utils import canonicalize_name  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
REQ = REPO / "requirements"


def _lines(path: Path) -> list[str]:
    out = []
    for line in path.read_text().splitlines():
        line = line.split(" #")[0].strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def _pins(path: Path) -> dict[str, Requirement]:
    """name -> requirement for every package line of a requirements file (includes followed)."""
    pins = {}
    for line in _lines(path):
        if line.startswith("-r "):
            pins.update(_pins(path.parent / line[3:].strip()))
        elif not line.startswith("-"):
            r = Requirement(line)
            pins[canonicalize_name(r.name)] = r
    return pins


def _env() -> dict:
    return yaml.safe_load((REPO / "environment.yml").read_text())


def _pip_section(env: dict) -> list[str]:
    sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(sections) == 1, "environment.yml needs exactly one pip: section"
    return sections[0]


def _conda_packages(env: dict) -> dict[str, str]:
    out = {}
    for d in env["dependencies"]:
        if isinstance(d, str):
            m = re.match(r"^([A-Za-z0-9_.\-]+)\s*(?:=+\s*([^\s=]+))?", d)
            out[canonicalize_name(m.group(1))] = m.group(2)
    return out


def test_run_txt_pins_everything_exactly():
    pins = _pins(REQ / "run.txt")
    assert pins, "requirements/run.txt lists no package"
    for name, r in pins.items():
        specs = list(r.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{name}: pin one exact version in run.txt, got {r}"


def test_test_and_train_requirements_build_on_run_txt():
    for name in ("test.txt", "train.txt", "hub.txt"):
        assert "-r run.txt" in _lines(REQ / name), f"requirements/{name} must start from -r run.txt"
    run, test = _pins(REQ / "run.txt"), _pins(REQ / "test.txt")
    assert all(str(test[n]) == str(r) for n, r in run.items()), "test.txt must not re-pin a run.txt package"


def test_environment_yml_installs_run_txt_and_the_package():
    env = _env()
    pip = _pip_section(env)
    local = [line for line in pip if line.startswith("-r ")]
    assert local == ["-r requirements/run.txt"], f"environment.yml's pip: section must read requirements/run.txt, got {local}"
    assert (REPO / local[0][3:]).is_file()  # relative to environment.yml's folder, as conda resolves it
    assert "-e ." in pip, "environment.yml must install the package itself (-e .)"
    for line in pip:  # nothing pinned twice: a package line here would drift from run.txt
        assert line.startswith("-"), f"environment.yml pins {line!r} outside requirements/run.txt: move it there"
    run = _pins(REQ / "run.txt")
    conda = _conda_packages(env)
    assert "pip" in conda and "python" in conda
    for name, version in conda.items():  # a conda package that run.txt also pins must agree with it
        if name in run and version is not None:
            assert run[name].specifier.contains(version), f"environment.yml has {name}={version}, run.txt {run[name]}"


def test_conda_python_satisfies_requires_python():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    version = _conda_packages(_env())["python"]
    assert version, "environment.yml must pin python (e.g. python=3.11) so Binder's build is reproducible"
    assert SpecifierSet(project["requires-python"]).contains(version + ".0"), \
        f"environment.yml's python={version} is outside pyproject's requires-python {project['requires-python']}"


def test_pyproject_ranges_admit_every_pin():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = _pins(REQ / "run.txt")
    wanted = list(project["dependencies"])
    for extra in ("notebooks", "triton"):
        wanted += project.get("optional-dependencies", {}).get(extra, [])
    for line in wanted:
        r = Requirement(line)
        name = canonicalize_name(r.name)
        assert name in pins, f"pyproject needs {r.name} but requirements/run.txt does not pin it"
        pinned = next(iter(pins[name].specifier)).version
        assert r.specifier.contains(pinned, prereleases=True), f"run.txt pins {name}=={pinned}, outside pyproject's {r}"


def test_lab_settings_save_the_widget_state_everywhere_the_lab_is_set_up(tmp_path):
    """jupyter/overrides.json turns on saving the widgets' state with the notebook (else a
    reopened notebook's explorers read "model not found"); scripts/setup installs it into
    .venv, postBuild into Binder's environment, both as the same file."""
    import json
    import os
    import subprocess

    settings = json.loads((REPO / "jupyter" / "overrides.json").read_text())
    assert settings["@jupyter-widgets/jupyterlab-manager:plugin"]["saveState"] is True
    prefix = tmp_path / "prefix"
    subprocess.run(["bash", str(REPO / "postBuild")], cwd=REPO, check=True, env={**os.environ, "NB_PYTHON_PREFIX": str(prefix)})
    assert (prefix / "share/jupyter/lab/settings/overrides.json").read_bytes() == (REPO / "jupyter/overrides.json").read_bytes()
    assert "jupyter/overrides.json" in (REPO / "scripts" / "setup").read_text()
    installed = REPO / ".venv" / "share/jupyter/lab/settings/overrides.json"
    if installed.exists():  # scripts/test ran scripts/setup before this
        assert installed.read_bytes() == (REPO / "jupyter/overrides.json").read_bytes()


def test_binder_start_shares_the_weights_and_runs_its_command(tmp_path):
    """repo2docker runs `start CMD...`: it sets what scripts/lab sets, then becomes CMD."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("MISTRAL_LAB_SHARED_WEIGHTS", "XDG_CACHE_HOME")}
    out = subprocess.run([str(REPO / "start"), "sh", "-c", 'echo "$MISTRAL_LAB_SHARED_WEIGHTS $HF_HUB_OFFLINE"'],
                         capture_output=True, text=True, check=True, env={**env, "HOME": str(tmp_path)}).stdout
    assert out.split() == [f"{tmp_path}/.cache/mistral_lab/shared-weights", "1"]
    assert "mistral_lab/shared-weights" in (REPO / "scripts" / "lab").read_text()
