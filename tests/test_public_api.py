"""The README's library example imports only public names (gen_ssd_dagster.core's `__all__`), and they import."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_library_imports() -> list[ast.ImportFrom]:
    """The `from gen_ssd_dagster... import ...` statements of the README's python code blocks."""
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    imports = [node for block in blocks for node in ast.walk(ast.parse(block))
               if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gen_ssd_dagster")]
    assert imports, "README.md has no python block importing from gen_ssd_dagster (the library example)"
    return imports


def test_readme_example_imports_only_public_names():
    import gen_ssd_dagster.core as core

    names = {alias.name for node in readme_library_imports() for alias in node.names}
    assert names - set(core.__all__) == set(), "README imports names outside gen_ssd_dagster.core.__all__"


def test_readme_example_imports_run():
    module = ast.Module(body=readme_library_imports(), type_ignores=[])
    exec(compile(module, "README.md", "exec"), {})


def test_every_public_name_resolves_and_the_package_alone_imports_no_torch():
    code = ("import sys, gen_ssd_dagster.core as core\n"
            "assert 'torch' not in sys.modules, 'import gen_ssd_dagster.core pulled in torch'\n"
            "missing = [n for n in core.__all__ if getattr(core, n, None) is None]\n"
            "assert not missing, missing\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
