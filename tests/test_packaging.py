"""What colm installs: only names that start with `colm`, so it stands beside any other package,
Hugging Face's `kernels` (a dependency of today's transformers) included."""

import shutil
import subprocess
import sys
import zipfile

from tests.conftest import REPO


def test_transformers_and_colm_kernels_import_together_from_the_repository_root():
    # `python -c` puts the working directory first on sys.path, as `python -m pytest` does: a top-level
    # folder of the checkout named like an installed package would shadow it.
    code = (
        "import kernels, colm_kernels.chain_linear, colm_core.model\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "print(kernels.__file__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "site-packages" in proc.stdout  # Hugging Face's kernels package, not a folder of the checkout


def test_the_wheel_installs_only_colm_prefixed_top_level_names(tmp_path):
    source = tmp_path / "source"
    for name in ("colm_cli", "colm_core", "colm_kernels"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            tmp_path / "dist",
            source,
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "dist").glob("colm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"colm_cli", "colm_core", "colm_kernels"}
    assert "colm_kernels/chain_linear/triton.py" in names and "colm_core/hf_modeling/modeling_colm.py" in names
