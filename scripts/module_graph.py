"""Print toolkit/'s module graph for README.md ("Layout"): each part (a subpackage or a top-level module), its
modules with their line counts, and the parts it imports (lazy imports included), lowest part first.

    python scripts/module_graph.py            # paste the output into README.md's module graph block

A part's level is 1 + the highest level among the parts it imports (0: imports no other part), so the listing
reads bottom up like the architecture; tests/test_package.py enforces that imports only run downward.
"""
from __future__ import annotations

import ast
import textwrap
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "toolkit"
WIDTH = 116


def part_of(rel: Path) -> str:
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def graph() -> tuple[dict[str, set[str]], dict[str, dict[str, int]]]:
    """({part: parts it imports}, {part: {module: lines}})."""
    deps: dict[str, set[str]] = defaultdict(set)
    sizes: dict[str, dict[str, int]] = defaultdict(dict)
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts == ("__init__.py",):
            continue
        part, text = part_of(rel), path.read_text(encoding="utf-8")
        sizes[part]["/".join(rel.parts[1:]) or rel.name] = len(text.splitlines())
        deps.setdefault(part, set())
        for node in ast.walk(ast.parse(text)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
            for name in names:
                if name.startswith("toolkit.") and name.split(".")[1] != part:
                    deps[part].add(name.split(".")[1])
    return deps, sizes


def levels(deps: dict[str, set[str]]) -> dict[str, int]:
    out: dict[str, int] = {}

    def level(p: str, seen: tuple = ()) -> int:
        if p in seen:
            raise SystemExit(f"import cycle: {' -> '.join(seen + (p,))}")
        if p not in out:
            out[p] = 1 + max((level(d, seen + (p,)) for d in deps.get(p, ()) if d in deps), default=-1)
        return out[p]

    for p in deps:
        level(p)
    return out


def main() -> None:
    deps, sizes = graph()
    lv = levels(deps)
    total = sum(sum(m.values()) for m in sizes.values())
    print(f"toolkit/: {total:,} lines in {sum(len(m) for m in sizes.values())} modules; level = 1 + the highest "
          "level it imports")
    for p in sorted(deps, key=lambda p: (-lv[p], p)):
        name = f"{p}/" if len(sizes[p]) > 1 or next(iter(sizes[p])) != f"{p}.py" else f"{p}.py"
        mods = ", ".join(f"{m.removesuffix('.py')} {n}" for m, n in sorted(sizes[p].items())) \
            if name.endswith("/") else ""
        head = f"{lv[p]:>2} {name:<14}{sum(sizes[p].values()):>6,}  "
        imports = textwrap.wrap(f"imports {', '.join(sorted(deps[p])) or '-'}", WIDTH - len(head))
        print(head + imports[0])
        for line in imports[1:] + textwrap.wrap(mods, WIDTH - len(head)):
            print(" " * len(head) + line)


if __name__ == "__main__":
    main()
