"""The `protolm` command line: on top of every package, importing each side only when its command runs."""
