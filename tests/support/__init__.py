"""Real servers the tests talk to over loopback (see tokenserver and faultserver)."""
