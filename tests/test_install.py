"""The wheel carries everything a non-editable install needs (.ci/wheel_install.sh then
installs it into a fresh venv outside the checkout and runs init, site check, submit)."""
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from hpcxtal.hpc.jobs import TEMPLATES
from hpcxtal.hpc.site import shipped_sites

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_every_site_config_and_job_template(tmp_path):
    """Built from this checkout (a real build, about 10 s): every shipped site, both job
    templates and the bundled data are in the wheel, so nothing is looked up beside it."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--wheel-dir", str(tmp_path), str(REPO)], check=True)
    (wheel,) = tmp_path.glob("hpcxtal-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = {f"hpcxtal/site_configs/{s}.yaml" for s in shipped_sites()}
    wanted |= {f"hpcxtal/jobs/{t}" for t in TEMPLATES.values()}
    wanted |= {"hpcxtal/data/sacada_sp2.h5", "hpcxtal/data/generator_default.pt",
               "hpcxtal/data/mace_carbon.model", "hpcxtal/data/environments.yaml"}
    assert wanted <= names, sorted(wanted - names)
    assert not any("__pycache__" in n for n in names)
