"""The `gnocchi` command and the tools root runs on the server. Imports admin/,
server/ and shared/, never client/."""
