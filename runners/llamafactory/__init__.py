"""Everything tunebot knows about LLaMA-Factory 0.9.5: the recipes (argument dicts) per job kind,
their checks by LLaMA-Factory's own parser, the command line and environment of a run, following
its trainer log, reading its results and explaining its failures."""
