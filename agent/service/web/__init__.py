"""The web page served at ``/``: static files (no build step) and its HTTP routes (:mod:`.web_routes`)."""
