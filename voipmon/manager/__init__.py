"""The management port (VoIPmonitor's TCP 5029): the sensor's server and the central's client.

paths: spool confinement; pcapmerge: one call's pcaps as one capture; commands: what the
port answers (pure); server/client: the thin wire protocol on each side.
"""
