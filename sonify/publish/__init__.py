"""Publishing a finished run: a static report site people can open from disk, and a Hugging Face
`datasets` export. Both read the run's tables (never globs) and the files the tables name."""
