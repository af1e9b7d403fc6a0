"""Import direction, read from the source with `ast` (imports inside functions count too).

Stages import downward only: events/errors/codec (bottom) <- model <- kernels <- collectors <- stats <- tui;
traces/ (files) sits beside that chain; agent/, attach/, serve/ are sources. Inside traces/ the import
graph has no cycle, the run-time discovery of the format modules included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "llmtop"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


MODULES = _modules()


def _resolve(name: str, importer: str, level: int, is_pkg: bool) -> str:
    if not level:
        return name
    base = importer.split(".") if is_pkg else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def imports_of(mod: str, source: str | None = None) -> set[str]:
    """The llmtop modules `mod` imports anywhere in its file (`from pkg import sub` counts as pkg.sub)."""
    path = MODULES.get(mod, PKG / "_synthetic.py")
    tree = ast.parse(path.read_text(encoding="utf-8") if source is None else source, str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node.module or "", mod, node.level, path.name == "__init__.py")
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.add(sub if sub in MODULES else target)
    return {m for m in out if m == "llmtop" or m.startswith("llmtop.")}


def dynamic_imports(mod: str) -> list[str]:
    """Calls that import by name at run time (importlib.import_module, __import__) in `mod`."""
    path = MODULES[mod]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name in ("import_module", "__import__"):
                found.append(f"{path.name}:{node.lineno}")
    return found


def _under(mod: str, pkg: str) -> bool:
    return mod == pkg or mod.startswith(pkg + ".")


def _in(pkg: str) -> list[str]:
    return [m for m in MODULES if _under(m, pkg)]


_ABOVE_KERNELS = ("collectors", "stats", "tui", "traces", "agent", "attach", "serve", "once", "cli")


@pytest.mark.parametrize(
    ("pkg", "forbidden"),
    [
        ("llmtop.model", _ABOVE_KERNELS),
        ("llmtop.kernels", _ABOVE_KERNELS),
        ("llmtop.traces", ("collectors", "agent", "attach", "tui", "serve", "stats", "once", "cli")),
        ("llmtop.collectors", ("stats", "agent", "attach", "tui", "serve", "once", "cli")),
        ("llmtop.stats", ("model", "kernels", "collectors", "traces", "agent", "attach", "tui", "serve",
                          "once", "cli")),
        ("llmtop.tui", ("agent", "attach", "serve", "once", "cli")),
        ("llmtop.agent", ("collectors", "stats", "tui", "attach", "serve", "once", "cli")),
        ("llmtop.attach", ("tui", "serve", "once", "cli")),
        ("llmtop.serve", ("tui", "attach", "once", "cli")),
    ],
)
def test_stage_does_not_import_upward(pkg: str, forbidden: tuple[str, ...]) -> None:
    assert _in(pkg), f"no modules under {pkg}"
    bad = [f"{m} -> {t}" for m in _in(pkg) for t in sorted(imports_of(m))
           if any(_under(t, f"llmtop.{f}") for f in forbidden)]
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_bottom_layer_imports_only_bottom() -> None:
    bottom = {"llmtop.events", "llmtop.errors", "llmtop.codec"}
    bad = [f"{m} -> {t}" for m in sorted(bottom) for t in sorted(imports_of(m)) if t not in bottom]
    assert not bad, "the bottom layer imports upward:\n" + "\n".join(bad)


def _traces_graph() -> dict[str, set[str]]:
    graph = {m: {t for t in imports_of(m) if _under(t, "llmtop.traces")} for m in _in("llmtop.traces")}
    # llmtop.traces.open imports every module of llmtop.traces.importers at run time (the formats
    # register themselves on import); no other module under traces/ imports by name.
    importers = {m for m in _in("llmtop.traces.importers") if m != "llmtop.traces.importers"}
    graph["llmtop.traces.open"] |= importers
    return graph


def test_only_the_opener_imports_by_name() -> None:
    hidden = {m: dynamic_imports(m) for m in _in("llmtop.traces") if m != "llmtop.traces.open"}
    assert not {m: v for m, v in hidden.items() if v}
    assert dynamic_imports("llmtop.traces.open"), "the opener no longer discovers formats: update this test"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                return [*stack[stack.index(t):], t]
            if t not in state and (cycle := visit(t)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_no_import_cycle_in_traces() -> None:
    cycle = find_cycle(_traces_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_checks_see_function_level_imports_and_cycles() -> None:
    # the old layout: the exporter reached into collectors/ from inside a function, and recording.py and
    # the importers package imported each other (one inside a function, one relatively)
    export = "def export_file(p):\n    from llmtop.collectors.replay import open_trace_file\n"
    assert imports_of("llmtop.traces.chrome_export", export) == {"llmtop.collectors.replay"}
    rec = "def open_recording(p):\n    from llmtop.traces.importers import ImportResult\n"
    imp = "from ..recording import RecordingReader\n"
    graph = {"llmtop.traces.recording": imports_of("llmtop.traces.recording", rec),
             "llmtop.traces.importers": imports_of("llmtop.traces.importers", imp)}
    assert graph["llmtop.traces.importers"] == {"llmtop.traces.recording"}
    imp_, rec_ = "llmtop.traces.importers", "llmtop.traces.recording"
    assert find_cycle(graph) == [imp_, rec_, imp_]
    assert "llmtop.traces.registry" in imports_of("llmtop.traces.importers.kineto")


def test_model_reaches_kernels_only_through_the_ops_interface() -> None:
    """The one arrow allowed against the flow: the engine calls the `Ops` it is given (kernels/base.py)."""
    bad = [f"{m} -> {t}" for m in _in("llmtop.model") for t in sorted(imports_of(m))
           if _under(t, "llmtop.kernels") and t != "llmtop.kernels.base"]
    assert not bad, "\n".join(bad)


def _module_level_imports(mod: str) -> set[str]:
    """The llmtop modules `mod` imports outside functions (what importing it costs)."""
    path = MODULES[mod]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    out: set[str] = set()
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            src = ast.Module(body=[node], type_ignores=[])
            out |= imports_of(mod, ast.unparse(src))
        todo.extend(ast.iter_child_nodes(node))
    return out


def test_export_is_a_sink_beside_the_tui() -> None:
    """export/ (llmtop's own Prometheus metrics) reads stats/ snapshots and collectors/ gauges; it never
    imports Textual, and nothing in the chain below it imports it. The agent, which never needs the
    statistics itself, reaches it only from its entry points (start/autostart, `python -m llmtop.agent.run`)
    inside functions, when a metrics port is asked for, so arming a process costs what it did."""
    assert _in("llmtop.export"), "no modules under llmtop.export"
    up = ("model", "kernels", "traces", "agent", "attach", "tui", "serve", "once", "cli")
    bad = [f"{m} -> {t}" for m in _in("llmtop.export") for t in sorted(imports_of(m))
           if any(_under(t, f"llmtop.{f}") for f in up)]
    assert not bad, "export/ imports upward:\n" + "\n".join(bad)
    for m in _in("llmtop.export"):
        tree = ast.parse(MODULES[m].read_text(encoding="utf-8"))
        mods = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        mods |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not any(x == "textual" or x.startswith("textual.") for x in mods), m
    below = ("model", "kernels", "collectors", "stats", "traces", "tui", "attach")
    bad = [f"{m} -> {t}" for pkg in below for m in _in(f"llmtop.{pkg}") for t in sorted(imports_of(m))
           if _under(t, "llmtop.export")]
    assert not bad, "the chain imports export/:\n" + "\n".join(bad)
    users = {m for m in _in("llmtop.agent") if any(_under(t, "llmtop.export") for t in imports_of(m))}
    assert users <= {"llmtop.agent", "llmtop.agent.run"}, users
    eager = [m for m in _in("llmtop.agent")
             if any(_under(t, "llmtop.export") for t in _module_level_imports(m))]
    assert not eager, f"imported at module level: {eager}"
