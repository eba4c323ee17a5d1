"""sipops tune-tcp: TCP and file-descriptor limits from one target, applied and verified."""
