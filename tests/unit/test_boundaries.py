"""`trainer/` stays a library: no web or database import, directly or through what it imports."""

import ast
import subprocess
import sys
from pathlib import Path

TRAINER = Path(__file__).resolve().parents[2] / "trainer"
FORBIDDEN = {"app", "fastapi", "sqlmodel", "sqlalchemy", "starlette", "pydantic", "uvicorn", "jinja2", "plotly"}


def test_trainer_modules_import_no_web_or_database_code():
    offenders = []
    for path in TRAINER.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []


def test_importing_trainer_loads_none_of_them():
    code = f"import sys, trainer; print(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=TRAINER.parent)
    assert out.stdout.strip() == "[]"
