"""Installing mmpo as a package (pyproject.toml): the wheel holds the code and the word lists it
opens at run time, and the installed package works from any folder, without the checkout."""
import email
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest
from packaging.requirements import Requirement

from conftest import ROOT
import mmpo

PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]


def package_data() -> list[str]:
    """The non-Python files of mmpo/ and its subpackages in the checkout (what the code opens beside
    itself), relative to mmpo/."""
    folder = os.path.join(ROOT, "mmpo")
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, names in os.walk(folder) for f in names
                  if f.endswith((".txt", ".json")))  # not the RESULTS.md that readers open


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """mmpo's wheel, built offline from a copy of the checkout (a build writes build/ and
    mmpo.egg-info/ beside the sources: not in the checkout others work in)."""
    setuptools = pytest.importorskip("setuptools", reason="building without network needs setuptools installed")
    if tuple(int(x) for x in re.findall(r"\d+", setuptools.__version__)[:2]) < (70, 1):
        pytest.importorskip("wheel", reason="setuptools before 70.1 builds wheels with the wheel package")
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src)
    shutil.copytree(os.path.join(ROOT, "mmpo"), src / "mmpo", ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run(PIP + ["wheel", "--no-deps", "--no-build-isolation", "--no-index", "--no-cache-dir",
                              "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    (path,) = (tmp / "dist").glob("mmpo-*.whl")
    return path


def test_the_wheel_holds_the_package_and_its_word_lists(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"mmpo/objectives.py", "mmpo/prepare/__main__.py", "mmpo/prepare/build.py"} <= names  # subpackages too
    data = package_data()
    assert data, "mmpo/ has no data files: then this test checks nothing"
    assert {f"mmpo/{f}" for f in data} <= names
    # the repository's scripts and tests are not part of the package
    assert not any(n.startswith(("tests/", "train.py", "eval.py")) for n in names)


def test_the_wheel_states_the_requirements_and_the_version(wheel):
    meta = email.message_from_string(zipfile.ZipFile(wheel).read(f"mmpo-{mmpo.__version__}.dist-info/METADATA").decode())
    assert meta["Name"] == "mmpo" and meta["Version"] == mmpo.__version__ == "0.1.0"
    assert meta["Requires-Python"] == ">=3.10"
    with open(os.path.join(ROOT, "requirements.txt")) as f:  # one list of dependencies, not two
        required = [Requirement(ln.strip()) for ln in f if ln.strip() and not ln.startswith("#")]
    # compared as requirements: the metadata writes "transformers>=5.0,<6" as "transformers<6,>=5.0"
    assert [(r.name, r.specifier) for r in map(Requirement, meta.get_all("Requires-Dist"))] == \
           [(r.name, r.specifier) for r in required]


def test_the_installed_package_works_from_another_folder(wheel, tmp_path):
    site = tmp_path / "site"
    r = subprocess.run(PIP + ["install", "--no-deps", "--no-index", "--no-cache-dir", "--target", str(site), str(wheel)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    elsewhere = tmp_path / "elsewhere"  # no mmpo/ here: only the installed copy can be imported
    elsewhere.mkdir()
    # mmpo.common.chair reads its synonym list when imported: a wheel without it fails here
    r = subprocess.run([sys.executable, "-c", "import mmpo.common.chair, mmpo.objectives; print(mmpo.__file__)"],
                       capture_output=True, text=True, cwd=elsewhere, env={**os.environ, "PYTHONPATH": str(site)},
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(site / "mmpo" / "__init__.py")
