"""The web runtime: the search page and a JSON API under ``/api`` (``histocli web``)."""
