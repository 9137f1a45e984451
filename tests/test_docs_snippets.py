"""Every ```python block in the docs and the README runs as it is written.

A block fenced as ```python must be a complete program. A fragment that needs the reader's own model (for example
``freeze_delta(network, ...)``) is fenced as ```py instead: it is highlighted the same way but not run here.
"""
import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))) + [os.path.join(ROOT, "README.md")]
RUNNABLE_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)

# Runs each block file in one interpreter (importing MindSpore once per page), each in a fresh namespace and in
# GRAPH mode, the default. MindSpore compiles GRAPH cells from their source file, so blocks are files, not strings.
RUNNER = """
import runpy, sys
import mindspore as ms
for path in sys.argv[1:]:
    ms.set_context(mode=ms.GRAPH_MODE)
    print(f"--- {path}", flush=True)
    runpy.run_path(path, run_name="__main__")
"""


def runnable_blocks(page):
    with open(page, encoding="utf-8") as handle:
        return RUNNABLE_BLOCK.findall(handle.read())


def test_every_page_is_checked():
    # A page without a runnable block is allowed, but the pages that teach an API must keep one.
    pages_with_code = {os.path.basename(page) for page in PAGES if runnable_blocks(page)}
    assert {"lora.md", "adapter.md", "low_rank_adapter.md", "prefix.md", "ptuning2.md", "r_drop.md",
            "bitfit.md", "freeze.md", "checkpoint.md", "injection.md", "README.md"} <= pages_with_code


@pytest.mark.parametrize("page", [page for page in PAGES if runnable_blocks(page)],
                         ids=lambda page: os.path.relpath(page, ROOT))
def test_python_blocks_run(page, tmp_path):
    paths = []
    for index, block in enumerate(runnable_blocks(page)):
        path = tmp_path / f"block_{index}.py"
        path.write_text(block, encoding="utf-8")
        paths.append(str(path))
    result = subprocess.run([sys.executable, "-c", RUNNER, *paths], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, f"a block of {page} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
