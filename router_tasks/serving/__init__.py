"""Serving the champion: the OpenAI-compatible routing gateway, the traffic log it writes,
and drift detection on that traffic (level 5: may import every package below it)."""
