"""`python -m proxy replay`: recorded traffic sent again to a candidate, its answers recorded
beside the primary's, for the report to compare as it compares shadow copies."""
