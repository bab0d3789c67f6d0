"""The verifier (`gnocchi serve`) and the action runner: unprivileged, the code
that reads network input, and all it imports. Imports only server/ and shared/."""

# The server's config, every command's --config default; here, where naming it
# loads nothing (gnocchi-arm's rearm runs while the ports are open).
DEFAULT_CONFIG = "/etc/gnocchi/gnocchi.toml"
