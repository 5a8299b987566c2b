"""Analysis over run files: summaries, and (later) correlation, SC-SDC statistics, checks."""
