"""The roles are the folders of gnocchi/ (gnocchi/__init__.py): every module
lives in one of shared/, client/, server/, admin/, and imports only what its
folder may; helper/ imports nothing from gnocchi/ (stdlib, nftables and
systemd only)."""

import ast
import re
import sys

import pytest

from support import REPO

ROLES = ("shared", "client", "server", "admin")
MAY_IMPORT = {
    "shared": {"shared"},
    "client": {"client", "shared"},
    "server": {"server", "shared"},
    "admin": {"admin", "server", "shared"},
}
PACKAGE = REPO / "gnocchi"


def modules(role: str) -> list:
    return sorted((PACKAGE / role).glob("*.py"))


def imported_roles(path) -> dict[str, str]:
    """{"gnocchi.<role>.<module>": role} for each gnocchi module a file imports, also
    lazily (inside a function, or named in a string such as the command table)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found |= set(re.findall(r"^gnocchi(?:\.\w+)+$", node.value))
    return {
        name: name.split(".")[1]
        for name in found
        if name.startswith("gnocchi.") and name.count(".") >= 1
    }


def test_the_check_sees_lazy_imports_too():
    seen = imported_roles(PACKAGE / "admin" / "__main__.py")
    assert {
        "gnocchi.admin.keygen",
        "gnocchi.admin.setup",
        "gnocchi.server.verifier",
        "gnocchi.admin.audit",
    } <= set(seen)


def test_every_module_lives_in_a_role_folder():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top == ["__init__.py"], f"modules outside the role folders: {top}"
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == sorted(ROLES)


@pytest.mark.parametrize("role", ROLES)
def test_modules_import_only_what_their_role_may(role):
    for path in modules(role):
        bad = {
            name
            for name, r in imported_roles(path).items()
            if r not in MAY_IMPORT[role] and r in ROLES
        }
        assert not bad, f"{role}/{path.name} imports {sorted(bad)}"


def test_the_verifier_reaches_only_server_and_shared_modules():
    """What a reviewer of the network-facing process must read: the verifier's
    whole import closure, inside server/ and shared/ by the rule above."""
    seen, todo = set(), ["gnocchi.server.verifier"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = PACKAGE.parent / (name.replace(".", "/") + ".py")
        if path.exists():
            todo += [n for n in imported_roles(path) if n.count(".") == 2]
    assert {n.split(".")[1] for n in seen} <= {"server", "shared"}
    # The sender's half of the wire format is the client's: not the verifier's to read.
    assert "gnocchi.shared.seal" not in seen


def test_the_helper_imports_only_the_stdlib_nftables_and_systemd():
    own = {p.stem for p in (REPO / "helper").glob("*.py")}
    for path in sorted((REPO / "helper").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or top in own | {"nftables", "systemd"}, (
                    f"{path.name} imports {name}"
                )


def test_the_bench_imports_nothing_from_tests():
    """bench/ runs the real daemons with its own lab (bench/lab.py, bench/systems.py):
    the tests can change their scaffold without breaking a measurement."""
    test_modules = {p.stem for p in (REPO / "tests").rglob("*.py")} | {"support", "conftest"}
    for path in sorted((REPO / "bench").glob("*.py")):
        text = path.read_text()
        assert "tests" not in text, f"bench/{path.name} names tests/"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not {n.split(".")[0] for n in names} & test_modules, (
                f"bench/{path.name} imports {names}"
            )


def lines_of_code(path) -> int:
    """Non-blank lines that are not comments (docstrings count), as CONTRIBUTING.md."""
    return sum(1 for line in path.read_text().splitlines() if line.strip()[:1] not in ("", "#"))


def test_the_root_helper_stays_under_200_lines_and_the_trust_path_within_600():
    # What a reviewer must read to trust gnocchi: the code that runs as root, and the
    # code that reads network input. A change that needs more says why it is worth it.
    helper = sum(lines_of_code(p) for p in sorted((REPO / "helper").glob("*.py")))
    trust = helper + sum(
        lines_of_code(PACKAGE / p) for p in ("shared/protocol.py", "server/verifier.py")
    )
    assert helper < 200, f"helper/ has {helper} lines of code"
    assert trust <= 600, f"protocol.py, verifier.py and helper/ have {trust} lines of code"
