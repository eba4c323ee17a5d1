"""The command line (Typer only): main builds the command table; each module parses one command group's
arguments and calls one plain function of the package that does the job."""
