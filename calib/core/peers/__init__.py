"""Peer tools that calib is compared with; each runs in its own environment, never imported by calib itself."""
