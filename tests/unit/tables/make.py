"""Remake the committed `nft -j` listings in this folder (as root; needs unshare).

Each listing is table inet gnocchi as the kernel lists it after nft/gnocchi.nft
was loaded into a scratch user+network namespace and then changed the way an
admin, a firewall tool or an attacker might. tests/unit/test_gate.py reads them:

    sudo python3 tests/unit/tables/make.py

They are fixtures of tables, not of "the" table: when nft/gnocchi.nft changes,
they stay valid tests of the comparison and the probes, and
tests/integration/test_gate_tampering.py checks the file as it is now.
"""

import json
import pathlib
import subprocess

HERE = pathlib.Path(__file__).parent
TABLE = (HERE / "../../../nft/gnocchi.nft").resolve().read_text()
GNOCCHI = "inet gnocchi"
ELEMENTS = (
    f"add element {GNOCCHI} knock_port {{ 40000 }}\n"
    f"add element {GNOCCHI} knocked4 {{ 198.18.0.7 . tcp . 22 timeout 30s }}\n"
)

VARIANTS = {
    # name: (an edit of the file's text as (old, new), or None; nft commands after loading)
    # What gnocchi loads, with elements as a running server has them.
    "shipped": (None, ""),
    "flushed-chain": (None, f"flush chain {GNOCCHI} input"),
    "flushed-table": (None, f"flush table {GNOCCHI}"),
    "rule-deleted": (None, f"delete rule {GNOCCHI} admit handle HANDLE"),
    "set-deleted": (None, f"flush chain {GNOCCHI} knock\ndelete set {GNOCCHI} knock_sites6"),
    "accept-inserted": (None, f"insert rule {GNOCCHI} input ip saddr 203.0.113.7 accept"),
    "dormant": (None, f"add table {GNOCCHI} {{ flags dormant; }}"),
    # The forward path: emptied, bypassed, gone.
    "forward-flushed": (None, f"flush chain {GNOCCHI} forward"),
    "translated-accept-inserted": (
        None,
        f"insert rule {GNOCCHI} translated ip saddr 203.0.113.7 accept",
    ),
    "no-forward-chain": (None, f"delete chain {GNOCCHI} forward"),
    # A table file that lost the TCP gate's rule in an edit.
    "no-tcp-gate": (("tcp dport @protected_tcp tcp flags & syn == syn jump tcp_syn", ""), ""),
    # Harmless edits: a counter and a log line before the drop.
    "counted": (("\t\tdrop\n", '\t\tlog prefix "gnocchi drop " counter drop\n'), ""),
    # An exemption the probes cannot judge: a packet's interface is not known.
    "lo-exempt": (("policy accept;\n", 'policy accept;\n\t\tiifname "lo" accept\n'), ""),
}


def listing(text: str, after: str) -> dict:
    script = (
        'nft -f "$1" && nft -f "$2" && '
        "h=$(nft -a list chain inet gnocchi admit | awk '$1 == \"drop\" {print $NF}') && "
        'sed "s/HANDLE/$h/" "$3" | nft -f - && nft -j list table inet gnocchi'
    )
    tmp = HERE / ".tmp"
    tmp.mkdir(exist_ok=True)
    (tmp / "t.nft").write_text(text)
    (tmp / "e.nft").write_text(ELEMENTS)
    (tmp / "a.nft").write_text(after + "\n")
    proc = subprocess.run(
        [
            "unshare",
            "--user",
            "--net",
            "--keep-caps",
            "sh",
            "-c",
            script,
            "sh",
            str(tmp / "t.nft"),
            str(tmp / "e.nft"),
            str(tmp / "a.nft"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    return json.loads(out)


def main() -> None:
    for name, (edit, after) in VARIANTS.items():
        text = TABLE
        if edit:
            assert edit[0] in text, f"{name}: nft/gnocchi.nft no longer has {edit[0]!r}"
            text = text.replace(edit[0], edit[1], 1)
        (HERE / f"{name}.json").write_text(json.dumps(listing(text, after), indent=1) + "\n")
        print(name)


if __name__ == "__main__":
    main()
