"""The verifier (`gnocchi serve`) and the action runner: unprivileged, the code
that reads network input, and all it imports. Imports only server/ and shared/."""
