"""timm's own model test suite (tests/test_models.py of the installed timm version) passes for our models.

The file ships in timm's source distribution, not in the wheel: it is fetched once from PyPI with
`pip download --no-deps --no-binary :all: timm==<installed version>` into the cache
($WEIGHTFORMER_CACHE or ~/.cache/weightformer) and run in a subprocess on the `weightformer_*` models, minus
the tests that download pretrained weights. The test skips, saying why, only if the download fails.

CI (the default suite) runs it on all three models: about 2.5 to 3 minutes on 2 cores.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import timm

import weightformer

SUITE_FILES = ("tests/test_models.py",)
# test_model_load_pretrained / test_model_features_pretrained need the network (Hub weights).
NETWORK_FREE = "not pretrained"
TESTS_PER_MODEL = 8  # forward, backward, default cfgs, torchscript, features, fx forward / backward / torchscript


def _cache_dir() -> Path:
    root = os.environ.get("WEIGHTFORMER_CACHE") or Path.home() / ".cache" / "weightformer"
    return Path(root) / f"timm-{timm.__version__}-tests"


def _fetch_timm_tests() -> Path:
    """tests/test_models.py of the installed timm version, from its sdist on PyPI (cached)."""
    target = _cache_dir()
    if all((target / name).is_file() for name in SUITE_FILES):
        return target
    download = target / "sdist"
    download.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           f"timm=={timm.__version__}", "-d", str(download), "-q"]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.skip("pip download of timm's source distribution timed out (is PyPI reachable?)")
    archives = sorted(download.glob(f"timm-{timm.__version__}.tar.gz"))
    if result.returncode != 0 or not archives:
        pytest.skip(f"could not download timm {timm.__version__}'s source distribution: {result.stderr.strip()[-300:]}")
    with tarfile.open(archives[0]) as archive:
        for name in SUITE_FILES:
            member = archive.getmember(f"timm-{timm.__version__}/{name}")
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).write_bytes(archive.extractfile(member).read())
    return target


def _run_timm_suite(models: str) -> str:
    """Run timm's test_models.py on the models matching `models` (a -k expression); return pytest's summary."""
    suite = _fetch_timm_tests()
    (suite / "pytest.ini").write_text("[pytest]\n")  # keep this project's pytest options out of timm's run
    src = str(Path(weightformer.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "pytest", "tests/test_models.py", "-q", "-k", f"{models} and {NETWORK_FREE}",
           "-p", "weightformer",  # importing the package registers the models before timm's file lists them
           "-p", "no:cacheprovider", "-W", "ignore::pytest.PytestUnknownMarkWarning"]
    result = subprocess.run(cmd, cwd=suite, env=env, capture_output=True, text=True, timeout=1200)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-2000:]
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "failed" not in summary and "error" not in summary, summary
    return summary


def test_timm_model_suite_passes_for_every_weightformer_model():
    summary = _run_timm_suite("weightformer")
    assert int(re.search(r"(\d+) passed", summary).group(1)) == TESTS_PER_MODEL * len(weightformer.list_models())
