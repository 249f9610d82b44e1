"""One module per `rest-jax` subcommand: `add_arguments(parser)` and `main(args) -> int`."""
