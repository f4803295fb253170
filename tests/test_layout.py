"""The three layers stay visible: imports run one way (jobs -> stages -> video, clip_model, datasets), no import
circles, and the README's layout section names every module."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("clip_model", "pipeline", "datasets", "configs")


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages."""
    found = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imports(name: str, source: str, is_package: bool, known: set[str]) -> set[str]:
    """The project modules that module ``name`` imports, at top level or inside functions (lazy imports count)."""
    package = name if is_package else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(source)):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                stem = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(stem + ([node.module] if node.module else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):  # a parent package's __init__
                out.add(target)
    return out


def _in_video_layer(name: str) -> bool:
    return name == "pipeline.video" or name.startswith("pipeline.video.")  # not pipeline.video_* siblings


def _layer(name: str) -> int:
    if name.startswith("pipeline.jobs") or name == "pipeline.cli":
        return 3
    if _in_video_layer(name):
        return 1
    if name.startswith("pipeline"):
        return 2
    return 1 if name.startswith(("clip_model", "datasets")) else 2  # configs validate what jobs run


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path.read_text(encoding="utf-8"), path.name == "__init__.py", set(modules))
            for name, path in modules.items()}


def _upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return [(n, d) for n, deps in graph.items() for d in sorted(deps) if _layer(d) > _layer(n)]


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (as a path that ends where it starts), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep, path + [dep])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


GRAPH = _graph()


def test_video_layer_never_imports_the_model_or_anything_above_it():
    bad = {n: sorted(d for d in deps if not _in_video_layer(d) and d != "pipeline")
           for n, deps in GRAPH.items() if _in_video_layer(n)}
    assert not {n: d for n, d in bad.items() if d}


def test_imports_run_down_the_layers():
    assert not _upward(GRAPH), "imports against the layers (jobs -> stages -> video, clip_model, datasets)"


def test_no_import_circles():
    cycle = _cycle(GRAPH)
    assert cycle is None, f"import circle: {' -> '.join(cycle or [])}"


def test_the_checks_catch_a_lazy_upward_import_and_a_circle():
    """The checks above can fail: on made-up modules they flag what they should."""
    known = {"pipeline.jobs.classify", "pipeline.video.open", "pipeline.windows", "pipeline.video"}
    source = "def f():\n    from .jobs.classify import ClassifySettings\n    import pipeline.video.open\n"
    deps = _imports("pipeline.windows", source, False, known)
    assert deps == {"pipeline.jobs.classify", "pipeline.video.open"}
    assert _upward({"pipeline.windows": deps}) == [("pipeline.windows", "pipeline.jobs.classify")]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_readme_layout_names_every_module():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = re.search(r"## Layout\n.*?```\n(.+?)\n```", readme, re.S)
    assert section, "README has no ## Layout code block"
    rows: dict[str, str] = {}  # folder -> the text of its rows
    folder = ""
    for line in section.group(1).splitlines():
        if not line.startswith(" "):  # a folder's first row: the folder, then what it holds
            folder, _, line = line.partition(" ")
        rows[folder] = rows.get(folder, "") + " " + line
    missing = []
    for path in _modules().values():
        if path.name == "__init__.py":
            continue
        where = path.parent.relative_to(ROOT).as_posix() + "/"
        text = rows.get(where, "")
        if not re.search(rf"(?<![\w/]){re.escape(path.stem)}\.py\b", text):
            missing.append(f"{where}{path.name}")
    assert not missing, f"README's layout section does not name: {missing}"


MAX_LINES = 400  # a module past this is split by concern (STYLE.md; issue 24)


def test_no_module_is_longer_than_max_lines():
    long = {str(path.relative_to(ROOT)): n for path in _modules().values()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
