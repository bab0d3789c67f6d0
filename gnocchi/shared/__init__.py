"""What the client and the server must agree on: the wire format, the request
grammar, key files, durable writes and checked TOML. Imports only shared/."""
