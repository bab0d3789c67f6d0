# python3-nftables (nftables/nftables.py, 1.0.6): only what helper/ calls.
from typing import Any

class Nftables:
    def __init__(self, sofile: str = "libnftables.so.1") -> None: ...
    # (rc, output, error): output is the JSON nft printed, decoded, or "" when
    # it printed nothing; error is what libnftables wrote to stderr.
    def json_cmd(self, json_root: dict[str, Any]) -> tuple[int, Any, str]: ...
