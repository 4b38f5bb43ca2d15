"""A tools module that prints a secret while it loads, then fails to load."""

print("connecting with password=hunter2")
raise RuntimeError("cannot reach the model server")
