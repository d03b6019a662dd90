"""Channel digests on a clock: `spec` (what a schedule is), `scheduler` (APScheduler, the digests'
table and the lease), `command` (`/tune schedule …`), `digest` (what a digest says)."""
