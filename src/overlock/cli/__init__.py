"""Command-line interface: ``overlock COMMAND``."""
