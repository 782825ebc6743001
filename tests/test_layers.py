"""The package's layers: nothing imports upward, and no module imports itself round.

Data flows one way (README, "Architecture"): the web layer calls the chat's
hub, the hub the backplane's roles; the workers' supervision stands beside
them.  A lower layer that imported a higher one would tie the chat to its
transport, or storage to the chat.
"""

from __future__ import annotations

import ast
from pathlib import Path

import chatservice

PACKAGE = Path(chatservice.__file__).parent

#: Each part of the package, and the rank of its layer: a module may import
#: modules of lower ranks, and modules of its own part (without cycles).
RANKS = {
    "chatservice": 0,  # __init__, logs, config, counters, systemd: leaves
    "chatservice.backplane": 1,
    "chatservice.workers": 1,
    "chatservice.chat": 2,
    # The application's hooks: they speak the chat's values, and the hub knows
    # them through its own interfaces (chatservice.chat.gate), given by service.py.
    "chatservice.hooks": 2.5,
    "chatservice.web": 3,
    "chatservice.service": 4,
    "chatservice.tap": 5,
}


def part_of(module: str) -> str:
    """The part of RANKS a module belongs to (the leaves: ``chatservice``)."""
    for prefix in sorted(RANKS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    raise AssertionError(f"{module} is not chatservice's")


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports() -> dict[str, set[str]]:
    """Every chatservice module and the chatservice modules it imports at run time."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        tree = ast.parse(path.read_text(), str(path))
        targets: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                node.body = [ast.Pass()]  # only for the type checker
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                base = node.module
                if node.level:
                    anchor = name.split(".")[: len(name.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base])
                for alias in node.names:
                    target = f"{base}.{alias.name}"  # a module, or a name in `base`
                    is_module = (PACKAGE.parent / target.replace(".", "/")).with_suffix(".py")
                    targets.add(target if is_module.exists() else base)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
        found[name] = {t for t in targets if t.startswith("chatservice") and t != name}
    return found


def test_nothing_imports_a_higher_layer() -> None:
    upward = []
    for module, targets in imports().items():
        here = part_of(module)
        for target in targets:
            there = part_of(target)
            if there != here and RANKS[there] >= RANKS[here]:
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_no_import_cycles() -> None:
    graph = imports()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if target not in graph:
                continue
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert cycles == []


def test_the_layers_are_where_the_architecture_says() -> None:
    """The hub's units and the backplane's roles are in their own modules."""
    graph = imports()
    for unit in ("rooms", "joins", "histories", "names", "signin", "direct", "moderators"):
        assert f"chatservice.chat.{unit}" in graph["chatservice.chat.hub"]
    assert "chatservice.backplane.roles" in graph["chatservice.chat.hub"]
    assert not any(
        t.startswith("chatservice.backplane.redis") for t in graph["chatservice.chat.hub"]
    )
