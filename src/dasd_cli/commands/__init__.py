"""One module per subcommand: parse flags, open streams, call core, report."""
