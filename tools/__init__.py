"""Developer tools that write checked-in files (see the Makefile)."""
