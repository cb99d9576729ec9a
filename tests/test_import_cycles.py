"""The package's module-level imports form no cycle; families never import the patches, record and measure no driver.

A cycle works only while every module in it happens to be imported in a lucky order; the layering is
strategies and families below patches, drivers and reporters on top. Read from the source (ast), so
nothing is imported here; imports inside functions and under `TYPE_CHECKING` are not module-level.
"""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pruning_bench"


def modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_nodes(body: list[ast.stmt], module_level: bool = True):
    """The import statements run when the module body runs (module_level) or anywhere in it."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _type_checking(node.test):
            continue
        elif not module_level or isinstance(node, (ast.If, ast.Try, ast.With)):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    yield from import_nodes([child], module_level)
                elif isinstance(child, ast.ExceptHandler):
                    yield from import_nodes(child.body, module_level)


def imported(name: str, path: Path, is_package: bool, known, module_level: bool = True) -> set[str]:
    """The package modules `name` imports: `from .a import b` counts `a.b` when it is a module, else `a`."""
    package = name if is_package else name.rpartition(".")[0]
    targets = set()
    for node in import_nodes(ast.parse(path.read_text()).body, module_level):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
            continue
        base = node.module or ""
        if node.level:
            parts = package.split(".")
            parts = parts[: len(parts) - node.level + 1]
            base = ".".join(parts + ([node.module] if node.module else []))
        targets |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names}
    return {t for t in targets if t in known and t != name}


def graph(module_level: bool = True) -> dict[str, set[str]]:
    known = modules()
    return {name: imported(name, path, is_package, known, module_level) for name, (path, is_package) in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle_and_only_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_walker_reads_relative_and_absolute_imports():
    edges = graph()
    assert "pruning_bench.report.fields" in edges["pruning_bench.report.load"]  # from .fields import ...
    assert "pruning_bench.sweep.control" in edges["pruning_bench.sweep"]  # from .control import ... in __init__
    assert "pruning_bench.strategies.tome_cap" in edges["pruning_bench.strategies.tome"]


def test_no_import_cycle_among_the_package_modules():
    found = cycles(graph())
    assert not found, "module-level import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_families_never_import_the_patches():
    wrong = sorted((name, target) for name, targets in graph(module_level=False).items()
                   if name.startswith("pruning_bench.families") for target in targets
                   if target.startswith("pruning_bench.patches"))
    assert not wrong, wrong


def test_record_and_measure_never_import_a_driver():
    drivers = ("evaluate", "clip_benchmark_ext", "sweep", "commands", "cli")
    wrong = sorted((name, target) for name, targets in graph(module_level=False).items()
                   if name.split(".")[1:2] in (["record"], ["measure"]) for target in targets
                   if target.split(".")[1:2] and target.split(".")[1] in drivers)
    assert not wrong, wrong


def test_the_untangled_pairs_stay_one_way_even_inside_functions():
    edges = graph(module_level=False)
    for low, high in [("strategies.tome_cap", "strategies.tome"), ("report.fields", "report.load"),
                      ("report.build_csv", "report.load"), ("saved.validate", "saved")]:
        assert f"pruning_bench.{high}" not in edges[f"pruning_bench.{low}"], (low, high)
