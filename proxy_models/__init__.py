"""proxy_models package."""
