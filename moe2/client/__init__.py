"""MQTT clients of the fleet, usable without the command line: ask, read the fleet, profile it."""
