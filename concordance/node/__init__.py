"""Running a node: supervisord and its roles, dev runs, restores, log formats."""
