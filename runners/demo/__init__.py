"""The demo: a tiny Llama built on first use and the embedded demo datasets (`make demo`)."""
