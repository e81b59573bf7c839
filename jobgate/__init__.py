"""jobgate for programs and people: a typed Python client and the client commands of the CLI."""
