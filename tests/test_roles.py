"""The roles gnocchi/__init__.py states, held to the code: every module has one
role, client modules import no server module, shared modules import neither
client nor server ones, server modules import no client one, and helper/
imports nothing from gnocchi/ (stdlib, nftables and systemd only)."""
import ast
import re
import sys

import pytest

import gnocchi
from support import REPO

# The table: "    ROLE  module module ...", continued on lines indented further.
TABLE = re.findall(r"^ {4}(client|server|shared) +(.+(?:\n {12}.+)*)", gnocchi.__doc__, re.MULTILINE)
ROLES = {role: set(names.split()) for role, names in TABLE}
MAY_IMPORT = {"client": {"client", "shared"}, "shared": {"shared"},
              "server": {"server", "shared"}}


def gnocchi_imports(path) -> set[str]:
    """The gnocchi modules a file imports, also lazily (inside a function, or
    named in a string such as __main__'s command table)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found |= set(re.findall(r"^gnocchi\.\w+$", node.value))
    return {name.split(".")[1] for name in found
            if name.startswith("gnocchi.") and name.count(".") == 1} - {"__init__"}


def test_the_check_sees_lazy_imports_too():
    assert {"keytool", "dropin", "verifier", "audit"} <= gnocchi_imports(
        REPO / "gnocchi" / "__main__.py")


def test_every_module_has_exactly_one_role():
    modules = {p.stem for p in (REPO / "gnocchi").glob("*.py")} - {"__init__"}
    listed = [m for names in ROLES.values() for m in names]
    assert set(ROLES) == {"client", "server", "shared"}
    assert sorted(listed) == sorted(modules), "gnocchi/__init__.py's table and gnocchi/*.py differ"


@pytest.mark.parametrize("role", ["client", "server", "shared"])
def test_modules_import_only_what_their_role_may(role):
    allowed = set().union(*(ROLES[r] for r in MAY_IMPORT[role]))
    for module in sorted(ROLES[role]):
        imported = gnocchi_imports(REPO / "gnocchi" / f"{module}.py") & {
            m for names in ROLES.values() for m in names}
        assert imported <= allowed, f"{role} module {module} imports {imported - allowed}"


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
                assert top in sys.stdlib_module_names or top in own | {"nftables", "systemd"}, \
                    f"{path.name} imports {name}"
