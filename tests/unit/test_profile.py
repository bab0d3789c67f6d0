"""gnocchi.client.profile: the client's knock.toml is read and checked as strictly as
the server's config (gnocchi.shared.checked_toml, one error format on both sides),
and a profile's request is checked with the verifier's own grammar."""

from pathlib import Path

import pytest

from gnocchi.server import config
from gnocchi.shared import knock_request
from gnocchi.client import profile


def load(tmp_path, text: str | bytes):
    path = tmp_path / "knock.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return profile.load(path)


def test_a_profile_may_open_several_ports(tmp_path):
    profiles, default = load(
        tmp_path,
        'default = "work"\n[profiles.work]\nhost = "h"\n'
        'server_key_file = "s.key"\nrequest = "open 22 60001/udp"\n',
    )
    work = profiles["work"]
    assert default == "work" and work.server_key_file == tmp_path / "s.key"
    assert knock_request.parse(work.request.encode()).opens == (
        knock_request.Open(22, "tcp"),
        knock_request.Open(60001, "udp"),
    )


@pytest.mark.parametrize(
    "text, key, problem",
    [
        (
            "[profiles.work]\nrequest = 'open 22 22'\n",
            "profiles.work.request",
            "'open 22 22': 22/tcp named twice",
        ),
        (
            "[profiles.work]\nrequest = 'open 22 0'\n",
            "profiles.work.request",
            "'open 22 0': not open",
        ),
        (
            "[profiles.work]\nrequest = 'shut 22'\n",
            "profiles.work.request",
            "'shut 22': unknown request",
        ),
        ("[profiles.work]\nrequest = ''\n", "profiles.work.request", "must be a non-empty string"),
        (
            "[profiles.work]\nhost = ['a']\n",
            "profiles.work.host",
            "must be a non-empty string, not a list",
        ),
        (
            "[profiles.work]\nrequests = 'open 22'\n",
            "profiles.work.requests",
            "unknown key (known here: client_key_file, host, next_server_public_key, request, "
            "server_key_file, server_public_key, sign_ip)",
        ),
        ("[profiles]\nwork = 3\n", "profiles.work", "must be a table, not an integer"),
        ("profile = 'work'\n", "profile", "unknown key (known here: default, profiles)"),
        ("default = 'home'\n", "default", "'home' names no [profiles.NAME] table"),
    ],
)
def test_every_error_is_file_key_problem(tmp_path, text, key, problem):
    with pytest.raises(profile.ProfileError) as e:
        load(tmp_path, text)
    assert str(e.value).startswith(f"{tmp_path / 'knock.toml'}: {key}: {problem}")


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"[profiles.work]\nhost = 'caf\xe9'\n", "not valid UTF-8"),
        (b"[profiles.work\n", "not valid TOML: "),
        (None, "no such file"),
    ],
)
def test_a_file_that_is_not_toml_is_one_error_naming_it_as_the_server_says_it(
    tmp_path, content, problem
):
    for name, read, error in (
        ("knock.toml", profile.load, profile.ProfileError),
        ("gnocchi.toml", config.load, config.ConfigError),
    ):
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(error) as e:
            read(Path(path) if read is profile.load else str(path))
        assert str(e.value).startswith(f"{path}: {problem}")
        assert "\n" not in str(e.value)
