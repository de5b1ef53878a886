"""Study grids, the resumable runner, and the report/plot steps."""
