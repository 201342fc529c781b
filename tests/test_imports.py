"""The library's import graph: every gen_keras import at the top of its module, no cycles."""

import ast
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in (ROOT / "gen_keras").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _gen_keras_imports(node) -> list[str]:
    """gen_keras modules (or names in them) that an import statement imports."""
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gen_keras"):
        return [f"{node.module}.{a.name}" for a in node.names] + [node.module]
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.startswith("gen_keras")]
    return []


def test_no_gen_keras_module_is_imported_inside_a_function_or_class():
    nested = []
    for name, path in _modules().items():
        tree = ast.parse(path.read_text())
        for scope in ast.walk(tree):
            if isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                nested += [f"{name}:{n.lineno}" for n in ast.walk(scope) if _gen_keras_imports(n)]
    assert nested == []


def test_the_import_graph_has_no_cycle():
    modules = _modules()
    edges = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            for target in _gen_keras_imports(node):
                if target in modules and target != name:
                    edges[name].add(target)
    for name in edges:  # importing a.b.c runs a.b first, unless the importer is inside a.b
        for target in list(edges[name]):
            parts = target.split(".")
            for i in range(2, len(parts)):
                package = ".".join(parts[:i])
                if package in modules and package != name and not name.startswith(package + "."):
                    edges[name].add(package)
    state, path, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert cycles == []
    assert "gen_keras.runs" in edges["gen_keras.transfer"]  # the graph is really read


_ONEDNN = (
    "import gen_keras, tensorflow\n"
    "from tensorflow.python.util import _pywrap_util_port\n"
    "print(_pywrap_util_port.IsMklEnabled())"
)


def _onednn_in_a_fresh_process(setting: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    done = subprocess.run(
        [sys.executable, "-c", _ONEDNN], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_importing_gen_keras_before_tensorflow_turns_on_onednn_unless_the_user_set_it():
    # TensorFlow leaves oneDNN off on AVX2-only x86 CPUs; gen_keras asks for it (faster steps,
    # benchmarks/results.md) unless TF_ENABLE_ONEDNN_OPTS is already set.
    assert _onednn_in_a_fresh_process(None) == "True"
    assert _onednn_in_a_fresh_process("0") == "False"
