"""What an admin expects of any Debian command: --version, and bash completion that
offers every command and every option the commands' own --help lists.

The completion scripts are made as the package build makes them
(packaging/completion.py, run by debian/rules), then driven by bash itself
the way bash-completion calls them (COMP_WORDS, COMP_CWORD). The commands
and options expected are read from the real --help output, not from the
generator's view of the parsers.
"""

import re
import subprocess
import sys

import pytest

from gnocchi import __version__
from support import REPO


def run(*argv, **kw):
    return subprocess.run(
        [*map(str, argv)], cwd=REPO, capture_output=True, text=True, timeout=60, **kw
    )


def gnocchi(*args):
    return run(sys.executable, "-m", "gnocchi.admin", *args)


def knock(*args):
    return run(sys.executable, "-m", "gnocchi.client.knock", *args)


def test_both_commands_say_their_version():
    assert (gnocchi("--version").returncode, gnocchi("--version").stdout) == (
        0,
        f"gnocchi {__version__}\n",
    )
    assert "gnocchi --version" in gnocchi("--help").stdout
    result = knock("--version")
    assert (result.returncode, result.stdout) == (0, f"gnocchi-knock {__version__}\n")


def help_options(help_text: str) -> list[str]:
    """The option strings of an argparse --help: "  -q, --quiet  ..." -> -q, --quiet."""
    found = []
    for line in help_text.splitlines():
        m = re.match(r"^  (-\S.*?)(?:  |$)", line)
        if m:
            found += [part.split()[0] for part in m.group(1).split(", ")]
    return found


def commands() -> list[str]:
    usage = gnocchi("--help").stdout
    return re.findall(r"^  ([a-z][a-z-]+) ", usage.split("commands")[1], re.MULTILINE)


@pytest.fixture(scope="module")
def scripts(tmp_path_factory):
    out = tmp_path_factory.mktemp("completion")
    for command in ("gnocchi", "gnocchi-knock"):
        made = run(sys.executable, "-I", REPO / "packaging" / "completion.py", command)
        assert made.returncode == 0, made.stderr
        (out / command).write_text(made.stdout)
    return out


def complete(script, function: str, *words: str) -> list[str]:
    """What bash offers for the last of words, as bash-completion would call function."""
    proc = run(
        "bash",
        "-c",
        'source "$1"; f=$2; shift 2; COMP_WORDS=("$@"); '
        'COMP_CWORD=$(( $# - 1 )); $f; printf "%s\\n" "${COMPREPLY[@]}"',
        "_",
        script,
        function,
        *words,
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return proc.stdout.split()


def test_gnocchi_completion_offers_every_command_and_each_ones_options(scripts):
    script = scripts / "gnocchi"
    listed = commands()
    assert len(listed) >= 16 and "add-client" in listed and "audit" in listed
    assert set(complete(script, "_gnocchi", "gnocchi", "")) == set(listed) | {"--help", "--version"}
    for command in listed:
        expected = help_options(gnocchi(command, "--help").stdout)
        assert "--help" in expected, command
        offered = complete(script, "_gnocchi", "gnocchi", command, "-")
        assert sorted(offered) == sorted(expected), command


def test_gnocchi_knock_completion_offers_every_option(scripts):
    expected = help_options(knock("--help").stdout)
    assert {"--pubkey", "--keygen", "--proxy", "--version"} <= set(expected)
    offered = complete(scripts / "gnocchi-knock", "_gnocchi_knock", "gnocchi-knock", "-")
    assert sorted(offered) == sorted(expected)


def test_completion_offers_files_choices_and_nothing_to_guess(scripts, tmp_path):
    (tmp_path / "client.key").write_text("")
    (tmp_path / "state").mkdir()
    script = scripts / "gnocchi"
    assert complete(script, "_gnocchi", "gnocchi", "table", "rea") == ["rearm"]
    assert complete(script, "_gnocchi", "gnocchi", "check", "--config", f"{tmp_path}/cl") == [
        f"{tmp_path}/client.key"
    ]
    assert complete(script, "_gnocchi", "gnocchi", "check", "--config", "=", f"{tmp_path}/cl") == [
        f"{tmp_path}/client.key"
    ]
    assert complete(script, "_gnocchi", "gnocchi", "arm", "--trial", "") == []
    knock_script = scripts / "gnocchi-knock"
    assert complete(
        knock_script, "_gnocchi_knock", "gnocchi-knock", "--pubkey", f"{tmp_path}/cl"
    ) == [f"{tmp_path}/client.key"]
    assert complete(
        knock_script, "_gnocchi_knock", "gnocchi-knock", "--state-dir", f"{tmp_path}/"
    ) == [f"{tmp_path}/state"]
