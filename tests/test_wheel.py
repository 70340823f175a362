"""The wheel carries what the commands need: built from this tree and installed apart from the checkout,
`shifttune recommend --json` runs from another directory on the shipped profile and the bundled tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_installed_outside_the_checkout_recommends(tmp_path):
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    build = subprocess.run(
        [*pip, "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-w", str(wheels)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("shifttune-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "shifttune/data/profiles/tiny_cpux2.json" in names
    assert "shifttune/model/configs/tiny/model.safetensors" in names
    install = subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], capture_output=True,
                             text=True, timeout=300)  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    # The installed copy comes first on the path (before this checkout's editable install); the other
    # dependencies come from the running environment.
    env = os.environ | {"PYTHONPATH": str(target)}
    code = "import shifttune, sys; from shifttune.cli import app; print(shifttune.__file__, file=sys.stderr); app()"
    proc = subprocess.run([sys.executable, "-c", code, "recommend", "--json"], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.strip().startswith(str(target)), proc.stderr  # not the checkout's copy
    plan = json.loads(proc.stdout)
    assert plan["model"] == "tiny" and plan["world_size"] == 2 and plan["profile"].startswith(str(target))
