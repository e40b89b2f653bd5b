"""Service-layer operations shared by the routes and the CLI."""
