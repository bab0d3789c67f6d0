"""gnocchi: single-packet port knocking. The folders are the roles:

    shared/  what both sides must agree on: the wire format, the request
             grammar, key files, durable writes, strictly checked TOML files
    client/  gnocchi-knock, run by a user (`python3 -m gnocchi.client.knock`)
    server/  the verifier (`gnocchi serve`) and everything it imports, and the
             action runner: the code that reads network input, unprivileged
    admin/   the `gnocchi` command (`python3 -m gnocchi.admin`): the tools root
             runs (keygen, setup, check, arming, status, doctor, audit, ...)

shared imports only shared; client imports client and shared; server imports
server and shared; admin imports admin, server and shared. The root helper
stands apart: helper/ imports nothing from gnocchi/. tests/test_roles.py holds
the code to these rules by folder name.
"""

__version__ = "0.4.0"
