"""zbridge-daemon: the warm process that loads tools and serves calls (import name ``zbridge_daemon``)."""
