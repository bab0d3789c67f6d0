"""The last good copy of the config: what gnocchi runs when the file is broken.

gnocchi.server.config.load_running() falls back to it when the config file
does not load, in the verifier, the action runner and arming. This module is
the only writer, and only root runs it: at every start of the verifier
(gnocchi.service's ExecStartPre, `gnocchi table record`), at arming
(`gnocchi table load`), and when the admin applies a change (`gnocchi
reload`, add-client, remove-client, protect, unprotect). So the copy is the
config gnocchi last started or applied, as long as it loaded.

The config is the file and its drop-ins (clients.d/NAME.toml, one client
each): the copy is one file, config.bundle() of them (the config with each
drop-in appended), so it is replaced in one rename and never holds half of
an edit spread over several files, and it loads alone as a gnocchi.toml.

Trusts the config files only as far as the verifier does: it records exactly
the bytes that it has just loaded with the verifier's own loader, from files
that pass StrictModes (root's, not writable by others), and only when the
copy, loaded alone, means what the files mean. Guarantees: the copy
is replaced durably (write, fsync, rename), mode 0644 (the action runner reads
it as user gnocchi-action; a config holds no secret), in a directory root
owns (config.LAST_GOOD's), where the verifier, user gnocchi, cannot write: a
compromised verifier cannot plant a config that a later start trusts.
"""

from __future__ import annotations

import dataclasses
import os
import time

from gnocchi.server import config as server_config
from gnocchi.server import strict
from gnocchi.shared import durable


def record(config_path: str) -> tuple[bool, str]:
    """Keep the config at config_path as its last good copy if it loads.
    (recorded or already the same, what happened in words)."""
    good = server_config.last_good_path(config_path)
    try:
        strict.check(config_path)
        data = server_config.read_bundle(config_path)
    except (OSError, strict.StrictModeError, server_config.ConfigError) as e:
        return False, f"not kept as the last good config: {e}"
    try:
        with open(good, "rb") as f:
            if f.read() == data:
                return True, f"{good} is the same"
    except OSError:
        pass

    def loads(tmp: str) -> None:
        copy = server_config.load(tmp, drop_ins=False)
        files = server_config.load(config_path)
        if dataclasses.replace(copy, path="") != dataclasses.replace(files, path=""):
            raise server_config.ConfigError(f"{config_path}: changed meanwhile")

    try:
        os.makedirs(os.path.dirname(good), mode=0o755, exist_ok=True)
        durable.replace_file(good, data, 0o644, check=loads)
    except server_config.ConfigError:
        try:
            server_config.load(config_path)  # the error naming the file itself
        except server_config.ConfigError as e:
            return False, f"not kept as the last good config: {e}"
        return False, f"not kept as the last good config: {config_path} changed meanwhile"
    except OSError as e:
        return False, f"cannot write the last good config {good}: {e.strerror or e}"
    return True, f"kept as the last good config: {good}"


def describe(config_path: str) -> tuple[str | None, str]:
    """(the error of a broken config file, or None; a line on which config runs)."""
    good = server_config.last_good_path(config_path)
    try:
        with open(good, "rb") as f:
            kept = f.read()
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.stat(good).st_mtime))
    except OSError:
        kept, when = None, ""
    try:
        cfg = server_config.load(config_path)
    except server_config.ConfigError as e:
        if kept is None:
            return (
                f"CONFIG BROKEN: {e}; and there is no last good copy ({good}), so the "
                "verifier cannot start; fix: correct the file, then `gnocchi reload`"
            ), ""
        return server_config.fell_back(e, good), f"config: the last good copy {good} (kept {when})"
    try:
        same = server_config.read_bundle(config_path) == kept
    except server_config.ConfigError:
        same = False
    drop_ins = len({c.file for c in cfg.clients} - {cfg.path})
    files = config_path + (
        f" and {drop_ins} drop-in{'s' * (drop_ins != 1)} in "
        f"{server_config.drop_in_dir(config_path)}"
        if drop_ins
        else ""
    )
    if kept is None:
        return None, f"config: {files} (no last good copy kept yet)"
    if same:
        return None, f"config: {files} (= the last good copy, kept {when})"
    return None, (
        f"config: {files}, edited since gnocchi last applied it (the last good "
        f"copy {good} is from {when}); `gnocchi reload` checks and applies it"
    )
