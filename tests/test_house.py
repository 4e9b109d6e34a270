"""The shape of the package: every import points down the layers, the runtime imports no tool,
no click, no torch and no onnx, and no function in ``vfinfer/`` or ``export/`` runs over 60
lines."""

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
MAX_FUNCTION_LINES = 60
# From the bottom up; a module may import from its own package and from lower layers only.
# Packages that share a layer do not import each other.
LAYERS = (
    ("vfinfer.util",),  # decoding, gray 8-bit, PNG, atomic writes, geometry, machine facts
    ("vfinfer.model",),  # manifest, config, classes, engine records
    ("vfinfer.backends",),  # ONNX Runtime, TensorRT, OpenVINO runners
    ("vfinfer.calls",),  # dispatch, karyotype, verdict, clone rules: pure functions of probs
    ("vfinfer.segment",),  # metaphase image -> instances -> cut-outs
    ("vfinfer.pipeline",),  # the classifier flow and the metaphase pipeline
    ("vfinfer.io",),  # readers of labelled data, result writers, the batch runner
    ("vfinfer.tools", "vfinfer.serve", "vfinfer.cluster", "vfinfer.client"),
    ("vfinfer_export",),  # the PyTorch side: may use the tools (FP16, ONNX helpers)
    ("vfinfer.cli",),
)


def module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "export":
        parts[0] = "vfinfer_export"
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


def package_of(name):
    """The layered package a module belongs to, or None (the ``vfinfer`` root, outside code)."""
    return next((package for layer in LAYERS for package in layer if is_under(name, package)),
                None)


def layer_of(name):
    package = package_of(name)
    return None if package is None else next(i for i, layer in enumerate(LAYERS)
                                             if package in layer)


def all_files():
    return sorted(PACKAGE.rglob("*.py")) + sorted((ROOT / "export").rglob("*.py"))


def wrong_way_imports(files):
    """'importer -> imported' for every import that points up or sideways between packages."""
    problems = []
    for path in files:
        here = module_name(path)
        for name in sorted(imported_modules(path)):
            there = package_of(name)
            if there is None or there == package_of(here):
                continue
            if layer_of(name) >= layer_of(here):
                problems.append(f"{path.relative_to(ROOT)} imports {name} ({package_of(here)} "
                                f"is not above {there})")
    return problems


def test_every_module_has_a_layer():
    missing = [str(p.relative_to(ROOT)) for p in all_files()
               if package_of(module_name(p)) is None and module_name(p) != "vfinfer"]
    assert not missing, "put these in LAYERS: " + ", ".join(missing)


def test_imports_point_down_the_layers():
    problems = wrong_way_imports(all_files())
    assert not problems, "\n".join(problems)


def test_the_layer_check_sees_an_upward_import():
    """The check above can fail: a model module importing the pipeline, and a calls module
    importing another package of its layer's neighbours, are caught."""
    fake = PACKAGE / "model" / "_probe_for_test.py"
    fake.write_text("def f():\n    from vfinfer.pipeline import Pipeline\n")
    try:
        assert wrong_way_imports([fake]) == [
            "vfinfer/model/_probe_for_test.py imports vfinfer.pipeline (vfinfer.model is not "
            "above vfinfer.pipeline)",
            "vfinfer/model/_probe_for_test.py imports vfinfer.pipeline.Pipeline (vfinfer.model "
            "is not above vfinfer.pipeline)"]
    finally:
        fake.unlink()


def test_packages_of_one_layer_do_not_import_each_other():
    fake = PACKAGE / "serve" / "_probe_for_test.py"
    fake.write_text("from vfinfer.tools.evaluation import metrics\n")
    try:
        assert len(wrong_way_imports([fake])) == 2
    finally:
        fake.unlink()


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
    fake.write_text("def f():\n    from vfinfer.tools.evaluation.metrics import accuracy\n"
                    "    import onnx\n")
    try:
        names = imported_modules(fake)
        assert "vfinfer.tools.evaluation.metrics" in names and "onnx" in names
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
def test_no_function_over_60_lines(folder):
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
