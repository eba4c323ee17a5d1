"""`sipops install`: the phases that take a bare host to a running OpenSIPS, as command plans."""
