"""The command line: one module per `rest-jax` subcommand, and the gin flags.

Each subcommand module provides `add_arguments(parser)` and `main(args) -> int`;
`gin_flags` is the only gin parser. `rest_jax.cli` dispatches to them.

May import: every package.
"""
