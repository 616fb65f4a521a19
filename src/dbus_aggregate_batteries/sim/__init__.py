"""Simulated dbus-serialbattery packs and Victron devices, as real D-Bus services.

``sim.model`` is pure (no D-Bus, no clock); ``sim.services`` publishes those models on a bus;
``python -m dbus_aggregate_batteries.sim`` runs a bank until SIGTERM.
"""
