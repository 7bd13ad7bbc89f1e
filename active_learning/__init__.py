"""active_learning package."""
