"""The ``histocli`` command line: one file per command, settings loaded once in the root callback."""
