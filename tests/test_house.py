"""The shape of the package: the runtime imports no tool, no click, no torch and no onnx, and
no function in ``vfinfer/`` or ``export/`` runs over 80 lines."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "vfinfer"
# subpackages (and modules) outside the runtime: what `vfinfer run` and embedding apps never load
OFFLINE = ("vfinfer.tools", "vfinfer.cli")
FORBIDDEN_IN_RUNTIME = ("vfinfer.tools", "vfinfer.cli", "vfinfer_export", "click", "torch",
                        "onnx")
MAX_FUNCTION_LINES = 80


def module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path):
    """Every module a file imports, at the top or inside functions, as absolute names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def is_under(name, prefix):
    return name == prefix or name.startswith(prefix + ".")


def runtime_files():
    return [p for p in sorted(PACKAGE.rglob("*.py"))
            if not any(is_under(module_name(p), off) for off in OFFLINE)]


def test_the_runtime_imports_no_tool_click_torch_or_onnx():
    problems = []
    for path in runtime_files():
        for name in sorted(imported_modules(path)):
            bad = [f for f in FORBIDDEN_IN_RUNTIME if is_under(name, f)]
            if bad:
                problems.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not problems, "\n".join(problems)


def test_the_import_walk_sees_a_forbidden_import(tmp_path):
    """The check above can fail: a file importing a tool inside a function is caught."""
    fake = PACKAGE / "calls" / "_probe_for_test.py"
    fake.write_text("def f():\n    from vfinfer.tools.metrics import accuracy\n    import onnx\n")
    try:
        names = imported_modules(fake)
        assert "vfinfer.tools.metrics" in names and "onnx" in names
        assert fake in runtime_files()
    finally:
        fake.unlink()


def test_runtime_loads_without_tools_in_a_fresh_interpreter():
    code = ("import sys, vfinfer.pipeline, vfinfer.io.runner, vfinfer.calls.patient, "
            "vfinfer.calls.optimal_params, vfinfer.backends.ort; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'onnx', 'click', 'vfinfer_export') or m.startswith('vfinfer.tools')); "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""


def test_only_the_model_config_knows_the_trunk():
    """The runtime runs every trunk through the same code: outside ``vfinfer.model`` (the
    config and its geometry, which the manifest carries) no runtime module names one."""
    naming = [str(path.relative_to(ROOT)) for path in runtime_files()
              if not is_under(module_name(path), "vfinfer.model")
              and any(word in path.read_text(encoding="utf-8")
                      for word in ("trunk", "vgg16-res", "chrblock", "wrn"))]
    assert naming == []


def function_lengths(root):
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                yield path, node.name, node.end_lineno - start + 1


@pytest.mark.parametrize("folder", ["vfinfer", "export"])
def test_no_function_over_80_lines(folder):
    long = [f"{path.relative_to(ROOT)}:{name} {n} lines"
            for path, name, n in function_lengths(ROOT / folder)
            if n > MAX_FUNCTION_LINES]
    assert not long, "\n".join(long)


def test_the_server_and_ray_stacks_load_only_when_asked_for():
    """``import vfinfer`` and the command line (``vfinfer run`` without --ray) load none of
    FastAPI, uvicorn, httpx, Prometheus or Ray."""
    code = ("import sys, vfinfer, vfinfer.cli, vfinfer.io.runner; "
            "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', "
            "'uvicorn', 'starlette', 'httpx', 'prometheus_client', 'ray'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""
