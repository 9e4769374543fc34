"""Chain sync: confirmed registry events into the DB and its projections, reorgs undone."""
