"""Data in and out of the pipeline: ingest, the labels table, its validation suites
(Great Expectations), and the bundled data files (`files/`) with their loaders.
May import `core` only."""
