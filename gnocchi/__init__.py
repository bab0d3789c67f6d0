"""gnocchi: single-packet port knocking. One flat package, three roles:

    client  knock profile
    server  verifier knock_socket config counters recover ratelimit strict
            action_client action_runner actions helper_client events audit
            dropin keytool clients check table arming status doctor
            __main__
    shared  protocol knock_request keys durable checked_toml

The client is gnocchi-knock (`python3 -m gnocchi.knock`), run by a user.
The server is the `gnocchi` command: the verifier daemon (`gnocchi serve`)
and the admin's tools. The shared modules are what both sides must agree
on: the wire format, the request grammar, key files, durable writes,
strictly checked TOML files.
Client modules import only client and shared ones, shared modules import
only shared ones, and no server module imports a client one. The root
helper stands apart: helper/ imports nothing from gnocchi/.
tests/test_roles.py holds every module to this table.
"""
__version__ = "0.3.0"
