"""``protolm benchmark``: proto-lm against its baseline head on the paper's tasks, faithfulness
and ablations, one result file per run, and the tables and plots built from those files."""
