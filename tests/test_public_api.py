"""The public surface: sorted, importable __all__, and imports that flow one way only."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import asyncjsoc
import asyncjsoc.events
from asyncjsoc import _events, emulator

PACKAGE = Path(asyncjsoc.__file__).parent

# Imports may only go to a strictly lower layer (see the module layout in the style anchors).
LAYERS: dict[str, int] = {
    "exceptions": 0, "_models": 0, "_handoff": 0, "_allocator": 0,
    "_stall": 0, "_privacy": 0,
    "_ratelimit": 1, "_retry": 1, "_paths": 1, "_times": 1, "_verify": 1, "_durable": 1,
    "_config": 2, "_events": 2, "_recordset": 2, "_jobfile": 2, "_http": 2, "_resume": 2,
    "_untar": 2,
    "_query": 3, "_api": 3, "_download": 3, "_store": 3, "_polling": 3, "_naming": 3,
    "_plan": 4, "_emails": 4, "_status": 4,
    "_scheduler": 5,
    "_client": 6,
    "_sync": 7, "_progress": 7, "_demo": 7, "events": 7, "_cli_parser": 7,
    "_status_report": 8,
    "__init__": 8,
    "cli": 9,
    "__main__": 10,
}
# The application edge may start the emulator (`asyncjsoc emulator`, `asyncjsoc demo`).
MAY_IMPORT_EMULATOR = {"cli", "_cli_parser", "_demo", "__main__"}
RICH_USERS = {"_progress", "cli"}


def _imports(path: Path, package: str) -> set[str]:
    """Fully qualified modules imported by ``path`` in ``package`` (relative ones resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base)
                if node.module:
                    found.add(f"{prefix}.{node.module}")
                else:
                    found.update(f"{prefix}.{alias.name}" for alias in node.names)
            elif node.module:
                found.add(node.module)
                if node.module == "asyncjsoc":
                    found.update(f"asyncjsoc.{alias.name}" for alias in node.names)
    return found


def _own_modules(imported: set[str]) -> set[str]:
    """The asyncjsoc top-level module names among ``imported``."""
    return {m.split(".")[1] for m in imported if m.startswith("asyncjsoc.")}


def test_all_is_sorted_and_importable() -> None:
    """Every public name exists and __all__ is sorted."""
    assert asyncjsoc.__all__ == sorted(asyncjsoc.__all__)
    for name in asyncjsoc.__all__:
        assert getattr(asyncjsoc, name) is not None, name
    for name in ("Client", "ClientConfig", "PullResult", "FileResult", "fetch_sync", "Query",
                 "Plan", "exceptions", "events", "Chunk", "EmailStatus", "RemoteFile"):
        assert name in asyncjsoc.__all__


def test_public_classes_are_documented() -> None:
    """Every public class and function has a docstring."""
    for name in asyncjsoc.__all__:
        obj = getattr(asyncjsoc, name)
        if isinstance(obj, type) or callable(obj):
            assert obj.__doc__, name


def test_events_module_mirrors_private_one() -> None:
    """asyncjsoc.events exports exactly the event module's names."""
    assert asyncjsoc.events.__all__ == sorted(_events.__all__)
    for name in _events.__all__:
        assert getattr(asyncjsoc.events, name) is getattr(_events, name)


def test_imports_flow_downward() -> None:
    """Each client module imports only modules of a lower layer."""
    problems: list[str] = []
    for path in sorted(PACKAGE.glob("*.py")):
        module = path.stem
        assert module in LAYERS, f"add {module} to LAYERS in {__file__}"
        for target in _own_modules(_imports(path, "asyncjsoc")):
            if target == "emulator":
                if module not in MAY_IMPORT_EMULATOR:
                    problems.append(f"{module} imports the emulator")
                continue
            if target not in LAYERS:
                continue
            if LAYERS[target] >= LAYERS[module]:
                problems.append(f"{module} (layer {LAYERS[module]}) imports {target} "
                                f"(layer {LAYERS[target]})")
    assert problems == []


def test_only_the_edge_uses_rich() -> None:
    """Only the progress module and the CLI import rich."""
    for path in sorted(PACKAGE.glob("*.py")):
        if path.stem in RICH_USERS:
            continue
        assert not any(m == "rich" or m.startswith("rich.")
                       for m in _imports(path, "asyncjsoc")), path.stem


def test_emulator_imports_nothing_from_the_client() -> None:
    """The emulator is an independent reading of the protocol: no asyncjsoc client imports."""
    emulator_dir = PACKAGE / "emulator"
    paths = sorted(emulator_dir.rglob("*.py"))
    assert paths
    for path in paths:
        rel = path.relative_to(PACKAGE.parent)
        package = ".".join(rel.parts[:-1])
        for target in _imports(path, package):
            if target.startswith("asyncjsoc"):
                assert target.startswith("asyncjsoc.emulator"), f"{rel} imports {target}"


def test_package_and_cli_parser_load_without_the_engine() -> None:
    """``import asyncjsoc`` and the CLI's parser leave aiohttp and numpy unloaded (so
    ``asyncjsoc --help`` is quick); the first public name used loads aiohttp, and numpy
    waits for the first checksum (commands that verify nothing start about 0.15 s sooner)."""
    probe = (
        "import sys, asyncjsoc, asyncjsoc.cli, asyncjsoc.emulator\n"
        "asyncjsoc.cli.build_parser()\n"
        "print(sorted(m for m in ('aiohttp', 'numpy') if m in sys.modules))\n"
        "asyncjsoc.emulator.Knobs\n"
        "print('aiohttp' in sys.modules)\n"
        "asyncjsoc.Client\n"
        "print(sorted(m for m in ('aiohttp', 'numpy') if m in sys.modules))\n"
        "from asyncjsoc._verify import _sum32\n"
        "print(_sum32(b'\\0\\0\\0\\1' * 3), 'numpy' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split("\n")
    assert out[:4] == ["[]", "False", "['aiohttp']", "3 True"]


def test_emulator_public_names_resolve() -> None:
    """Every name in the emulator package's __all__ loads (each has a home module)."""
    assert emulator.__all__ == sorted(emulator.__all__)
    for name in emulator.__all__:
        assert getattr(emulator, name).__module__.startswith("asyncjsoc.emulator."), name


def test_unknown_attribute_is_an_attribute_error() -> None:
    """A name the package does not have fails as usual (no lazy-loading surprise)."""
    with pytest.raises(AttributeError, match="no attribute 'Clinet'"):
        _ = asyncjsoc.Clinet  # type: ignore[attr-defined]
    with pytest.raises(AttributeError, match="no attribute 'Emulatr'"):
        _ = emulator.Emulatr  # type: ignore[attr-defined]
