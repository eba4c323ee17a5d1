"""sipops: take an OpenSIPS fleet from bare Linux hosts to tuned, monitored, protected production."""

__version__ = "0.1.0"
