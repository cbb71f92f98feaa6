"""The toolkit's library, one folder a role (the README's "How the code is organised").

``LAYERS`` is the one statement of the import direction: a module may import its own folder
and the folders listed before it, never one listed after. ``cli`` (what the commands share)
sits above them all. ``tests/test_limits.py`` holds it.
"""

LAYERS = ("core", "data", "model", "scoring", "predict", "train", "search", "serve")
