"""The ``panel serve dashboard/app.py`` script's folder; it reads llmkit through public names only."""
