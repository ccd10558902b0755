"""wattscale's adapter: the aggregated API server, its metric store, the pipeline and the CLI."""

__version__ = "0.1.0"
