"""The shipped search spaces: one YAML file per named space, installed as package data and found
with importlib.resources, so a wheel, an sdist and an editable install list the same spaces."""
