"""The functions the command line calls, one module per command."""
