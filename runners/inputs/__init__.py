"""What people hand the engine from outside (a pasted YAML, a file named on a command line), read
within bounds: a size, a depth, a kind of file; beyond them a plain `UserError`, never a hang."""
