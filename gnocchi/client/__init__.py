"""gnocchi-knock, the client: what the pip wheel and the gnocchi-client package
ship, with shared/. Imports only client/ and shared/."""
